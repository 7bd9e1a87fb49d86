"""Drop-in ``nn.Module`` wrappers of the ops, for this package's trainer and others'."""
from . import functional
from .losses import CharbonnierLoss, DistillationLoss, GaussianHighPass, LaplacianPyramidLoss

__all__ = ["functional", "CharbonnierLoss", "DistillationLoss", "GaussianHighPass", "LaplacianPyramidLoss"]
