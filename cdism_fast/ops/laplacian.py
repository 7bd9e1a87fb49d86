"""Laplacian pyramid and the Laplacian-pyramid loss used for distillation.

With g_0 = x and for i < levels - 1: r = avg_pool2d(gaussian_blur(g_i), 2),
L_i = g_i - expand(r), g_{i+1} = r; the last level is g_{levels-1}. expand(r)
places r on the even rows and columns of a zero image twice its size and filters
it with 4k (reflect padding). The loss is sum_i 2^i * L1(L_i(x), L_i(y)), L1
being the per-level mean ("mean", as the authors' released code) or sum ("sum",
as Niklaus and Liu).

Sizes: every level but the last is halved, so the height and width must be
multiples of 2^(levels-1). Other sizes are first reflect-padded at the bottom
and right to the next multiple (both inputs alike, and the per-level means then
count the padded pixels); divisible sizes are used exactly as given. Every level
that is blurred must be at least 3 pixels (reflect padding of 2) and every
expanded one at least 2, so images must be larger than 2^(levels-1) pixels in
each direction (any size for levels = 1).

Backends of the loss: ``reference`` (PyTorch, the definition step by step),
``cpp`` (one fused sweep per image plane on CPU: the pyramid of x - y, its loss
and, when a gradient is needed, the gradient in the same call) and ``triton``
(one pyramid of x - y on CUDA tensors, ops/triton/laplacian.py). The pyramid
itself has the reference only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _extension
from . import triton as _triton
from ._checks import accumulation_dtype, check_image, check_pair, check_reduction
from ._dispatch import new_op
from .gaussian import blur_reference

PYRAMID_OP = new_op("laplacian_pyramid")
LOSS_OP = new_op("laplacian_loss")


#: More levels would need images wider than 2^31 pixels (and their size would not even print).
MAX_LEVELS = 32


def check_levels(levels) -> None:
    """``levels`` is an integer from 1 to :data:`MAX_LEVELS`.

    >>> from cdism_fast.ops import check_levels
    >>> check_levels(5)
    >>> check_levels(0)
    Traceback (most recent call last):
        ...
    ValueError: levels must be an integer >= 1 and <= 32, got 0
    """
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_LEVELS:
        shown = repr(levels) if not isinstance(levels, int) or abs(levels) < 10 ** 12 else "a huge number"
        raise ValueError(f"levels must be an integer >= 1 and <= {MAX_LEVELS}, got {shown}")


def min_size(levels: int) -> int:
    """Smallest height and width a ``levels``-level pyramid accepts."""
    return 1 if levels == 1 else 2 ** (levels - 1) + 1


def pad_to_pyramid(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Reflect-pad ``x`` at the bottom and right to multiples of 2^(levels-1)."""
    multiple = 2 ** (levels - 1)
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else x


def _expand(r: torch.Tensor) -> torch.Tensor:
    up = r.new_zeros(*r.shape[:-2], 2 * r.shape[-2], 2 * r.shape[-1])
    up[..., ::2, ::2] = r
    return 4 * blur_reference(up)


def pyramid_reference(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The pyramid in ``x``'s dtype, after the padding described in the module docstring."""
    g = pad_to_pyramid(x, levels)
    pyramid = []
    for _ in range(levels - 1):
        r = F.avg_pool2d(blur_reference(g), 2)
        pyramid.append(g - _expand(r))
        g = r
    pyramid.append(g)
    return pyramid


@PYRAMID_OP.implementation("reference", devices=("cpu", "cuda"))
def laplacian_pyramid_reference(x, levels):
    return [level.to(x.dtype) for level in pyramid_reference(x.to(accumulation_dtype(x.dtype)), levels)]


@LOSS_OP.implementation("reference", devices=("cpu", "cuda"))
def laplacian_loss_reference(x, y, levels, reduction):
    acc = accumulation_dtype(x.dtype)
    pairs = zip(pyramid_reference(x.to(acc), levels), pyramid_reference(y.to(acc), levels))
    l1 = F.l1_loss if reduction == "mean" else (lambda a, b: (a - b).abs().sum())
    return sum(2 ** i * l1(lx, ly) for i, (lx, ly) in enumerate(pairs)).to(x.dtype)


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will ask for a gradient of any of ``tensors``."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


@LOSS_OP.implementation("cpp", devices=("cpu",), requirement=lambda: _extension.missing_reason("cpp"))
def laplacian_loss_cpp(x, y, levels, reduction):
    loss, _ = torch.ops.cdism_fast.laplacian_loss(x, y, levels, reduction == "mean", needs_grad(x, y))
    return loss.to(x.dtype)


@LOSS_OP.implementation("triton", devices=_triton.DEVICES, dtypes=_triton.DTYPES, requirement=_triton.missing_reason)
def laplacian_loss_triton(x, y, levels, reduction):
    return _triton.laplacian.laplacian_loss_triton(x, y, levels, reduction)


def register_loss_autograd(qualname: str, input_signs: tuple) -> None:
    """Autograd of a fused loss op returning ``(loss, grad)``, where ``grad`` is
    d loss / d (its first input) when its last argument, ``with_grad``, is true.

    The backward only scales that gradient: input i receives
    ``input_signs[i] * grad_loss * grad`` (sign +1 or -1; None: no gradient).
    """
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])
        ctx.dtypes = [t.dtype if isinstance(t, torch.Tensor) else None for t in inputs]
        ctx.with_grad = inputs[-1]

    def backward(ctx, grad_loss, _):
        if not ctx.with_grad:
            raise RuntimeError(f"{qualname} was called with with_grad=False, so it holds no gradient to return")
        (grad,) = ctx.saved_tensors
        scaled = grad_loss * grad
        return tuple(None if sign is None or not wanted else (scaled if sign > 0 else -scaled).to(dtype)
                     for sign, dtype, wanted in zip(input_signs, ctx.dtypes, ctx.needs_input_grad))

    torch.library.register_autograd(qualname, backward, setup_context=setup_context)


@_extension.on_load("cpp")
def _register_cpp_op():
    @torch.library.register_fake("cdism_fast::laplacian_loss")
    def _(x, y, levels, mean, with_grad):
        acc = accumulation_dtype(x.dtype)
        grad = torch.empty_like(x, dtype=acc) if with_grad else x.new_empty((0,), dtype=acc)
        return x.new_empty((), dtype=acc), grad

    # The loss is a function of x - y: d loss / d y = -d loss / d x.
    register_loss_autograd("cdism_fast::laplacian_loss", (1, -1, None, None, None))


def laplacian_pyramid(x: torch.Tensor, levels: int = 5, backend: str = "auto") -> list[torch.Tensor]:
    """The ``levels`` tensors [L_0, ..., L_{levels-2}, g_{levels-1}] of ``x`` (see
    the module docstring; sizes not divisible by 2^(levels-1) are reflect-padded
    at the bottom and right first). In ``x``'s dtype, computed in fp32 (fp64 for
    fp64 inputs).

    >>> import torch
    >>> from cdism_fast.ops import laplacian_pyramid
    >>> _ = torch.manual_seed(0)
    >>> x = torch.rand(1, 3, 8, 8)
    >>> [tuple(level.shape) for level in laplacian_pyramid(x, levels=3)]
    [(1, 3, 8, 8), (1, 3, 4, 4), (1, 3, 2, 2)]
    >>> [tuple(level.shape[-2:]) for level in laplacian_pyramid(torch.rand(1, 3, 7, 9), levels=3)]  # padded to 8x12
    [(8, 12), (4, 6), (2, 3)]
    """
    check_levels(levels)
    check_image("x", x, min_size(levels))
    return PYRAMID_OP(backend, x, x, levels)


def laplacian_loss(x: torch.Tensor, y: torch.Tensor, levels: int = 5, reduction: str = "mean",
                   backend: str = "auto") -> torch.Tensor:
    """sum_i 2^i * L1(L_i(x), L_i(y)) over a ``levels``-level Laplacian pyramid.

    ``reduction`` "mean" takes each level's mean absolute difference, "sum" its
    sum. Gradients flow into both ``x`` and ``y``. Returns ``x``'s dtype.

    >>> import torch
    >>> from cdism_fast.ops import laplacian_loss
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    >>> round(laplacian_loss(x, y, levels=3).item(), 4)
    0.693
    >>> laplacian_loss(x, x, levels=3).item()
    0.0
    """
    check_levels(levels)
    check_pair("x", x, "y", y, min_size(levels))
    check_reduction(reduction, x=x)
    return LOSS_OP(backend, x, x, y, levels, reduction)
