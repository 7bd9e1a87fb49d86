"""MATLAB-compatible bicubic resizing (``imresize(img, scale, 'bicubic')``).

Published super-resolution results use low-resolution inputs made by MATLAB,
so the resize has to agree with it exactly, not merely look similar:

* Keys cubic kernel with a = -0.5; when downscaling it is widened by
  ``1/scale`` and its height divided by the same factor (antialiasing).
* Output pixel ``x`` (1-based) samples the source at
  ``u = x/scale + 0.5*(1 - 1/scale)``; the weights of each output pixel are
  normalised to sum to one.
* Source indices outside the image are mirrored (symmetric padding).
* The height is resized first, then the width.
* uint8 images are rounded to uint8 after each one-dimensional pass, halves
  away from zero, which is what makes the result equal MATLAB bit for bit.
  Floating-point images are not rounded or clamped (MATLAB neither).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

__all__ = ["imresize", "resized_length"]


def resized_length(length: int, scale: float) -> int:
    """Output length MATLAB gives for ``length`` resized by ``scale``: ``ceil(length*scale)``.

    A product within 1e-9 of an integer counts as that integer, so that
    ``scale=1/3`` on a length divisible by 3 is not pushed up by float error.
    """
    exact = length * scale
    nearest = round(exact)
    return int(nearest) if abs(exact - nearest) < 1e-9 else math.ceil(exact)


def _cubic(x: torch.Tensor) -> torch.Tensor:
    # MATLAB's own expression of the a = -0.5 kernel, kept term for term so the
    # float64 weights round the same way.
    absx = x.abs()
    absx2 = absx * absx
    absx3 = absx2 * absx
    near = (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
    far = (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2))
    return near + far


@lru_cache(maxsize=256)
def _contributions(in_length: int, out_length: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 weights (out, taps) and mirrored source indices (out, taps) of one axis."""
    antialias = scale < 1
    kernel_width = 4.0 / scale if antialias else 4.0
    x = torch.arange(1, out_length + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    distance = u[:, None] - indices
    weights = scale * _cubic(distance * scale) if antialias else _cubic(distance)
    weights = weights / weights.sum(dim=1, keepdim=True)
    # Drop taps whose weight is zero for every output pixel (MATLAB does too).
    used = (weights != 0).any(dim=0)
    weights, indices = weights[:, used], indices[:, used]
    # Mirror: ... 2 1 | 1 2 ... n | n n-1 ... (1-based), i.e. period 2n.
    zero_based = indices.long() - 1
    period = zero_based.remainder(2 * in_length)
    mirrored = torch.where(period < in_length, period, 2 * in_length - 1 - period)
    return weights, mirrored


def _resize_axis(x: torch.Tensor, dim: int, out_length: int, scale: float, round_to_uint8: bool) -> torch.Tensor:
    weights, indices = _contributions(x.shape[dim], out_length, scale)
    weights = weights.to(device=x.device, dtype=x.dtype)
    indices = indices.to(x.device)
    # With the resized axis first and contiguous, every tap gathers whole
    # rows; one gathered slice per tap keeps memory at one output-sized
    # buffer, and the taps are summed in MATLAB's order.
    rows = x.movedim(dim, 0).contiguous()
    column = (-1,) + (1,) * (rows.dim() - 1)
    out = rows.index_select(0, indices[:, 0]) * weights[:, 0].view(column)
    for tap in range(1, weights.shape[1]):
        out.addcmul_(rows.index_select(0, indices[:, tap]), weights[:, tap].view(column))
    if round_to_uint8:
        # Halves away from zero (floor(v + 0.5) for the non-negative values
        # that survive the clamp), then saturate like a uint8 cast in MATLAB.
        out = out.add_(0.5).floor_().clamp_(0, 255)
    return out.movedim(0, dim)


def imresize(img: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize ``img`` by ``scale`` exactly as MATLAB's ``imresize(img, scale, 'bicubic')``.

    ``img`` is CHW or NCHW, uint8 or floating point, on any device. ``scale``
    multiplies the size (0.5 halves it, 2 doubles it); the output has
    ``ceil(H*scale) x ceil(W*scale)`` pixels and the input's dtype. uint8 input
    is rounded after each pass (bit-exact MATLAB); float input is computed in
    float32 (float64 for float64 input) without intermediate rounding.
    """
    if not isinstance(img, torch.Tensor):
        raise ValueError(f"imresize: img must be a torch.Tensor (CHW or NCHW), got {type(img).__name__}")
    if img.dim() not in (3, 4):
        raise ValueError(f"imresize: img must be CHW or NCHW, got shape {tuple(img.shape)}; "
                         "add a channel dimension to a 2-D image with img[None]")
    if not (img.dtype == torch.uint8 or img.is_floating_point()):
        raise ValueError(f"imresize: img must be uint8 or floating point, got {img.dtype}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"imresize: scale must be a positive number (0.5 halves the size), got {scale!r}")
    out_h, out_w = (resized_length(n, scale) for n in img.shape[-2:])
    if min(img.shape[-2:]) < 1 or min(out_h, out_w) < 1:
        raise ValueError(f"imresize: cannot resize an image of size {tuple(img.shape[-2:])} by {scale}")
    is_uint8 = img.dtype == torch.uint8
    work_dtype = torch.float64 if is_uint8 or img.dtype == torch.float64 else torch.float32
    out = img.to(work_dtype)
    out = _resize_axis(out, out.dim() - 2, out_h, float(scale), is_uint8)
    out = _resize_axis(out, out.dim() - 1, out_w, float(scale), is_uint8)
    return out.to(img.dtype).contiguous()
