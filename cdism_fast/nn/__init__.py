"""Drop-in ``nn.Module`` wrappers of the ops, for this package's trainer and others'."""
from . import functional
from .filters import GaussianHighPass
from .losses import CharbonnierLoss, DistillationLoss, LaplacianPyramidLoss

__all__ = ["functional", "CharbonnierLoss", "DistillationLoss", "GaussianHighPass", "LaplacianPyramidLoss"]
