"""Functional forms of the losses and filters of :mod:`cdism_fast.nn`.

The same functions as :mod:`cdism_fast.ops`, gathered beside the modules that
wrap them (as ``torch.nn.functional`` sits beside ``torch.nn``).
"""
from ..ops import charbonnier, distillation_loss, gaussian_blur, gaussian_highpass, laplacian_loss, laplacian_pyramid

__all__ = [
    "charbonnier",
    "distillation_loss",
    "gaussian_blur",
    "gaussian_highpass",
    "laplacian_loss",
    "laplacian_pyramid",
]
