"""Optimizers for sparse training: OBProx-SG and the density of the result."""
from .obproxsg import OBProxSG
from .sparsity import density

__all__ = ["OBProxSG", "density"]
