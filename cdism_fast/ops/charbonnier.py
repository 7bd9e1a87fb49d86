"""Charbonnier loss: mean (or sum) of sqrt((x - y)^2 + eps^2).

The paper's pruning loss (eps = 1e-3) and a common SR student loss.
Backends: ``reference`` (PyTorch) and ``cpp`` (one fused pass, CPU).
"""
from __future__ import annotations

import torch

from .. import _extension
from ._checks import accumulation_dtype, check_nonnegative, check_pair, check_reduction
from ._dispatch import new_op

OP = new_op("charbonnier")

#: The paper's eps, the default of every Charbonnier loss of the package (ops, nn, training).
CHARBONNIER_EPS = 1e-3


@OP.implementation("reference", devices=("cpu", "cuda"))
def charbonnier_reference(x, y, eps, reduction):
    acc = accumulation_dtype(x.dtype)
    diff = x.to(acc) - y.to(acc)
    loss = torch.sqrt(diff * diff + eps * eps)
    if reduction == "none":
        return loss.to(x.dtype)
    return (loss.mean() if reduction == "mean" else loss.sum()).to(x.dtype)


def _cpp_check(x, y, eps, reduction):
    return None if reduction in ("mean", "sum") else f"reduction={reduction!r} is not fused (mean and sum are)"


@OP.implementation("cpp", devices=("cpu",), requirement=lambda: _extension.missing_reason("cpp"), check=_cpp_check)
def charbonnier_cpp(x, y, eps, reduction):
    return torch.ops.cdism_fast.charbonnier_loss(x, y, float(eps), reduction == "mean").to(x.dtype)


@_extension.on_load("cpp")
def _register_cpp_op():
    @torch.library.register_fake("cdism_fast::charbonnier_loss")
    def _(x, y, eps, mean):
        return x.new_empty((), dtype=accumulation_dtype(x.dtype))

    @torch.library.register_fake("cdism_fast::charbonnier_loss_backward")
    def _(grad, x, y, eps, mean):
        return torch.empty_like(x)

    def setup_context(ctx, inputs, output):
        x, y, eps, mean = inputs
        ctx.save_for_backward(x, y)
        ctx.eps, ctx.mean = eps, mean

    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        grad_x = torch.ops.cdism_fast.charbonnier_loss_backward(grad, x, y, ctx.eps, ctx.mean)
        return grad_x, -grad_x, None, None

    torch.library.register_autograd("cdism_fast::charbonnier_loss", backward, setup_context=setup_context)


def charbonnier(x: torch.Tensor, y: torch.Tensor, eps: float = CHARBONNIER_EPS, reduction: str = "mean",
                backend: str = "auto") -> torch.Tensor:
    """Charbonnier loss of ``x`` against ``y``: reduction of sqrt((x - y)^2 + eps^2).

    ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"``; accumulates in fp32
    (fp64 for fp64 inputs) and returns ``x``'s dtype. Gradients flow into both
    ``x`` and ``y``.

    >>> import torch
    >>> from cdism_fast.ops import charbonnier
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    >>> round(charbonnier(x, y).item(), 4)
    0.3205
    >>> round(charbonnier(x, x, eps=1e-3).item(), 4)  # eps where x == y
    0.001
    >>> tuple(charbonnier(x, y, reduction="none").shape)
    (1, 3, 8, 8)
    """
    check_pair("x", x, "y", y, images=False)
    check_reduction(reduction, ("mean", "sum", "none"), x)
    check_nonnegative("eps", eps)
    return OP(backend, x, x, y, eps, reduction)
