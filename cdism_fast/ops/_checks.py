"""Argument validation shared by the ops: clear ``ValueError`` messages."""
from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum")


def _describe(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"


def check_float(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (float32, float16 or bfloat16), "
                         f"got {_describe(t)}; convert images with .float() / 255")


def check_image(name: str, x, min_hw: int = 1) -> None:
    """``x`` is a floating NCHW batch at least ``min_hw`` pixels high and wide.

    >>> import torch
    >>> from cdism_fast.ops import check_image
    >>> check_image("x", torch.rand(1, 3, 8, 8))
    >>> check_image("x", torch.rand(3, 8, 8))
    Traceback (most recent call last):
        ...
    ValueError: x must be an NCHW image batch (4 dimensions), got shape (3, 8, 8); add a batch dimension with x[None]
    """
    check_float(name, x)
    if x.dim() != 4:
        raise ValueError(f"{name} must be an NCHW image batch (4 dimensions), got shape {tuple(x.shape)}; "
                         "add a batch dimension with x[None]")
    if x.shape[1] < 1:
        raise ValueError(f"{name} has 0 channels (shape {tuple(x.shape)}); pass images with at least one channel")
    if min(x.shape[-2:]) < min_hw:
        raise ValueError(f"{name} is {x.shape[-2]}x{x.shape[-1]} pixels; this op needs at least "
                         f"{min_hw}x{min_hw}")


def check_pair(x_name: str, x, y_name: str, y, min_hw: int = 1, images: bool = True) -> None:
    """``x`` and ``y`` are images (or any floating tensors) of one shape, device and dtype."""
    if images:
        check_image(x_name, x, min_hw)
        check_image(y_name, y, min_hw)
    else:
        check_float(x_name, x)
        check_float(y_name, y)
    if x.shape != y.shape:
        raise ValueError(f"{x_name} and {y_name} must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.device != y.device:
        raise ValueError(f"{x_name} and {y_name} must be on one device, got {x.device} and {y.device}")
    if x.dtype != y.dtype:
        raise ValueError(f"{x_name} and {y_name} must have the same dtype, got {x.dtype} and {y.dtype}")


def check_reduction(reduction: str, allowed=REDUCTIONS, x=None) -> None:
    """``reduction`` is one of ``allowed``; a mean needs at least one element of ``x`` (it is NaN otherwise).

    >>> from cdism_fast.ops import check_reduction
    >>> check_reduction("sum")
    >>> check_reduction("max")
    Traceback (most recent call last):
        ...
    ValueError: reduction must be one of ('mean', 'sum'), got 'max'
    """
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}")
    if reduction == "mean" and x is not None and x.numel() == 0:
        raise ValueError(f"the mean of an empty input (shape {tuple(x.shape)}) is undefined; pass at least one "
                         "element, or use reduction='sum'")


def check_nonnegative(name: str, value: float) -> None:
    """``value`` >= 0 (NaN is refused too).

    >>> from cdism_fast.ops import check_nonnegative
    >>> check_nonnegative("eps", 0.0)
    >>> check_nonnegative("eps", float("nan"))
    Traceback (most recent call last):
        ...
    ValueError: eps must be >= 0, got nan
    """
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value}")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp16/bf16/fp32 inputs, fp64 for fp64 ones."""
    return torch.float64 if dtype == torch.float64 else torch.float32
