"""EDSR (Lim et al. 2017): head conv, N_b residual blocks, a conv after the body, pixel-shuffle
upsampler, tail conv.

Each residual block is N_l + 1 3x3 convolutions with a ReLU between consecutive
ones, scaled by ``res_scale`` and added to the block's input (EDSR's block is
N_l = 1). Parameter names follow BasicSR's ``EDSR`` (``conv_first``,
``body.i.conv1`` ..., ``conv_after_body``, ``upsample.0``, ``conv_last``), with
``conv3``, ``conv4`` ... for N_l > 1.

Input and output are RGB in [0, 1]. Inside, the DIV2K mean is subtracted and the
values are multiplied by ``rgb_range`` (255 as EDSR-PyTorch and BasicSR train
it, which works on 0-255 values): ``(x − mean)·255`` is exactly what EDSR-PyTorch's
``sub_mean`` computes on a 0-255 image, so official weights give the official
outputs divided by 255.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..compress import Structure
from .common import DIV2K_RGB_MEAN, MeanShift, check_positive_float, check_positive_int, check_rgb, \
    check_shuffle_scale, construct, shuffle_upsampler

#: What N_c is kept a multiple of when compressing: friendly to 8-wide vector units.
EDSR_CHANNEL_MULTIPLE = 8


class ResidualBlock(nn.Module):
    """x + res_scale · conv(relu(conv(... relu(conv(x))))) with ``depth`` convolutions."""

    def __init__(self, channels: int, depth: int, res_scale: float):
        super().__init__()
        self.depth = depth
        self.res_scale = res_scale
        for i in range(depth):
            self.add_module(f"conv{i + 1}", nn.Conv2d(channels, channels, 3, padding=1))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        for i in range(2, self.depth + 1):
            y = getattr(self, f"conv{i}")(self.relu(y))
        return x + y * self.res_scale


class EDSR(nn.Module):
    """EDSR with N_c channels, N_b residual blocks of N_l + 1 convolutions, ×``scale`` (2^n or 3)."""

    family = "edsr"

    def __init__(self, scale: int = 2, n_c: int = 64, n_b: int = 16, n_l: int = 1, res_scale: float = 1.0,
                 rgb_range: float = 255.0, rgb_mean=DIV2K_RGB_MEAN):
        super().__init__()
        self.scale = check_shuffle_scale(scale, "EDSR")
        self.n_c = check_positive_int("n_c", n_c)
        self.n_b = check_positive_int("n_b", n_b)
        self.n_l = check_positive_int("n_l", n_l)
        self.res_scale = check_positive_float("res_scale", res_scale)
        self.rgb_mean = tuple(float(m) for m in rgb_mean)
        if len(self.rgb_mean) != 3:
            raise ValueError(f"rgb_mean must be 3 numbers (R, G, B), got {rgb_mean!r}")
        self.mean_shift = MeanShift(rgb_range, self.rgb_mean)
        self.conv_first = nn.Conv2d(3, n_c, 3, padding=1)
        self.body = nn.Sequential(*(ResidualBlock(n_c, n_l + 1, self.res_scale) for _ in range(n_b)))
        self.conv_after_body = nn.Conv2d(n_c, n_c, 3, padding=1)
        self.upsample = shuffle_upsampler(n_c, scale)
        self.conv_last = nn.Conv2d(n_c, 3, 3, padding=1)

    @property
    def rgb_range(self) -> float:
        return self.mean_shift.value_range

    @classmethod
    def from_structure(cls, n_c: int, n_l: int, n_b: int, scale: int = 2, **options) -> "EDSR":
        """EDSR with N_c channels, N_b blocks of N_l + 1 convolutions; ``options``: res_scale, rgb_range,
        rgb_mean."""
        return construct(cls, "from_structure", options, scale=scale, n_c=n_c, n_l=n_l, n_b=n_b)

    def config(self) -> dict:
        """The constructor's arguments: ``EDSR(**model.config())`` builds the same architecture."""
        return dict(scale=self.scale, n_c=self.n_c, n_b=self.n_b, n_l=self.n_l, res_scale=self.res_scale,
                    rgb_range=self.rgb_range, rgb_mean=self.rgb_mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_rgb(x)
        features = self.conv_first(self.mean_shift.subtract(x))
        features = self.conv_after_body(self.body(features)) + features
        return self.mean_shift.add(self.conv_last(self.upsample(features)))

    # --- compression protocol ---------------------------------------------------------------------------------

    def structure(self) -> Structure:
        return Structure(self.n_b, self.n_l, self.n_c)

    def with_structure(self, n_b: int, n_l: int, n_c: int) -> "EDSR":
        return EDSR(**{**self.config(), "n_b": n_b, "n_l": n_l, "n_c": n_c})

    def deep_feature_parameters(self) -> Iterator[nn.Parameter]:
        """The residual blocks and the conv after them (EDSR-PyTorch's ``body``)."""
        yield from self.body.parameters()
        yield from self.conv_after_body.parameters()

    def channel_multiple(self) -> int:
        return EDSR_CHANNEL_MULTIPLE

    def extra_repr(self) -> str:
        return (f"scale={self.scale}, n_c={self.n_c}, n_b={self.n_b}, n_l={self.n_l}, res_scale={self.res_scale}, "
                f"rgb_range={self.rgb_range:g}")
