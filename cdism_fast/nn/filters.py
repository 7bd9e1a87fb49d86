"""Image filters over the ops, as modules without parameters."""
import torch
from torch import nn

from ..ops import gaussian_highpass


class GaussianHighPass(nn.Module):
    """HF(x) = x - gaussian_blur(x), the paper's high-pass filter (no parameters).

    >>> import torch
    >>> from cdism_fast.nn import GaussianHighPass
    >>> GaussianHighPass()(torch.full((1, 3, 6, 6), 0.5)).abs().max().item()  # a flat image: no high frequencies
    0.0
    """

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gaussian_highpass(x, self.backend)
