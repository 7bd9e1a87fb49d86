"""Pieces shared by the model families: argument checks, mean shift, upsamplers, padding."""
from __future__ import annotations

import inspect

import torch
from torch import nn

from .._checks import check_int
from ..ops import check_image

#: RGB mean of DIV2K on a [0, 1] range, subtracted by EDSR and SwinIR before the network.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """:func:`cdism_fast._checks.check_int` in the models' wording ("n_c must be an int >= 1, got 0")."""
    return check_int(name, value, minimum, expected=f"an int >= {minimum}")


def check_positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def construct(cls: type[nn.Module], what: str, options: dict, **fixed) -> nn.Module:
    """``cls(**fixed, **options)``, with a ValueError for options the constructor does not take
    or that ``fixed`` already sets."""
    accepted = [name for name in inspect.signature(cls).parameters if name not in fixed]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{what} got options {unknown} it cannot take; {cls.__name__} accepts {accepted}")
    return cls(**fixed, **options)


def is_shuffle_scale(scale: int) -> bool:
    """Scales a stack of 2x pixel shuffles (or one 3x) can do: 2^n and 3."""
    return scale == 3 or (scale >= 2 and scale & (scale - 1) == 0)


def check_shuffle_scale(scale, upsampler: str) -> int:
    check_positive_int("scale", scale, 2)
    if not is_shuffle_scale(scale):
        raise ValueError(f"scale must be a power of 2 or 3 for the {upsampler} upsampler, got {scale}")
    return scale


def shuffle_upsampler(channels: int, scale: int) -> nn.Sequential:
    """EDSR's and SwinIR-classical's upsampler: per 2x (or one 3x), a 3x3 conv to r²·C channels and a
    pixel shuffle. Module indices (0: conv, 1: shuffle, 2: conv, ...) follow the official files."""
    factors = [3] if scale == 3 else [2] * (scale.bit_length() - 1)
    layers = []
    for factor in factors:
        layers += [nn.Conv2d(channels, factor * factor * channels, 3, padding=1), nn.PixelShuffle(factor)]
    return nn.Sequential(*layers)


def upsampler_scale(conv_out_channels: list[int], channels: int) -> int | None:
    """The scale of a :func:`shuffle_upsampler` from its convolutions' output channels, or None."""
    if conv_out_channels == [9 * channels]:
        return 3
    if conv_out_channels and all(c == 4 * channels for c in conv_out_channels):
        return 2 ** len(conv_out_channels)
    return None


def check_rgb_mean(rgb_mean) -> tuple[float, float, float]:
    """The per-channel mean a :class:`MeanShift` subtracts, as a tuple of three floats."""
    values = tuple(float(m) for m in rgb_mean)
    if len(values) != 3:
        raise ValueError(f"rgb_mean must be 3 numbers (R, G, B), got {rgb_mean!r}")
    return values


class MeanShift(nn.Module):
    """``(x − mean)·range`` in, ``y/range + mean`` out: RGB in [0, 1] for a network trained on
    mean-subtracted values in [0, range] (EDSR: 255, SwinIR: 1). The mean is a fixed buffer, not a
    parameter, and not in the state dict (neither official format stores it as a tensor); it is
    kept in float64 so that a float64 model uses the exact mean (``.to(dtype)`` converts it)."""

    def __init__(self, value_range: float, rgb_mean=DIV2K_RGB_MEAN):
        super().__init__()
        self.value_range = check_positive_float("value_range", value_range)
        self.register_buffer("mean", torch.tensor(rgb_mean, dtype=torch.float64).view(1, 3, 1, 1),
                             persistent=False)

    def subtract(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) * self.value_range

    def add(self, y: torch.Tensor) -> torch.Tensor:
        return y / self.value_range + self.mean.to(y.dtype)


def check_rgb(x) -> None:
    check_image("x", x)
    if x.shape[1] != 3:
        raise ValueError(f"x must be an RGB batch (N, 3, H, W), got shape {tuple(x.shape)}")


def reflect_pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom and right of ``x`` by reflection (mirror without repeating the edge, as
    ``F.pad(mode="reflect")``) up to the next multiple of ``multiple``. The reflection repeats
    when the pad exceeds the image (a 1-pixel side is repeated)."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    # A symbolic size (torch.export with a free size; not an int) pads always: testing the
    # pad would fix which sizes the exported graph accepts.
    if not (isinstance(pad_h, int) and pad_h == 0):
        x = x.index_select(-2, _reflect_index(height, height + pad_h, x.device))
    if not (isinstance(pad_w, int) and pad_w == 0):
        x = x.index_select(-1, _reflect_index(width, width + pad_w, x.device))
    return x


def _reflect_index(size: int, length: int, device) -> torch.Tensor:
    position = torch.arange(length, device=device)
    if size == 1:
        return torch.zeros_like(position)
    # The period as a tensor: a symbolic size as a scalar operand does not export to ONNX.
    period = torch.full((), 2 * (size - 1), dtype=position.dtype, device=device)
    phase = position % period
    return torch.where(phase < size, phase, period - phase)
