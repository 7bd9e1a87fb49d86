"""Parameter and multiply-accumulate counts, the way the paper's Table I reports them.

The paper's "FLOPs" are multiply-accumulates (one MAC = one multiplication and one
addition) for producing one output image (1280x720 at ×2 in Table I): a 3x3 conv
from C_in to C_out channels costs 9·C_in·C_out per output pixel; biases,
activations, normalisations, softmax and additions are not counted.
:func:`count_flops` counts them by running the model on meta tensors (no memory,
no arithmetic) under :class:`torch.utils.flop_counter.FlopCounterMode`, which works
for any model, and splits the count into convolutions, linear layers and the
attention matrix products (q·kᵀ and attn·v).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

from ..ops import on_extension_load

_aten = torch.ops.aten
#: aten ops by category; the counter's FLOPs are 2 per multiply-accumulate.
_CATEGORIES = {
    "conv": (_aten.convolution, _aten._convolution, _aten.cudnn_convolution),
    "linear": (_aten.mm, _aten.addmm),
    "attention": (_aten.bmm, _aten.baddbmm, _aten._scaled_dot_product_efficient_attention,
                  _aten._scaled_dot_product_flash_attention, _aten._scaled_dot_product_cudnn_attention),
}
#: Name of the compiled window-attention op, counted as attention when a kernel runs under the counter.
WINDOW_ATTENTION_OPS = ("window_attention",)


def count_params(model: nn.Module, exclude: Iterable[str] = ()) -> int:
    """Number of parameters of ``model`` (shared ones once), without those whose name contains
    any string of ``exclude`` (e.g. ``("relative_position_bias_table",)``). Buffers, such as
    the mean shifts, are not parameters.

    >>> from cdism_fast.models import build, count_params
    >>> model = build("swinir_mini")
    >>> count_params(model), count_params(model, exclude=("relative_position_bias_table",))
    (98868, 82668)
    """
    if isinstance(exclude, str):
        exclude = (exclude,)
    exclude = tuple(exclude)
    return sum(p.numel() for name, p in model.named_parameters() if not any(part in name for part in exclude))


def count_flops(model: nn.Module, out_hw: tuple[int, int] = (720, 1280), scale: int | None = None) -> dict:
    """Multiply-accumulates for one ``out_hw`` = (H, W) output image of ``model``.

    The input is (H/scale)×(W/scale) RGB; ``scale`` defaults to ``model.scale``. Returns
    ``conv``, ``linear``, ``attention`` (q·kᵀ and attn·v of the attention layers),
    ``total`` (all three) and ``total_without_attention``, as ints. Runs the model on the
    meta device, so it takes well under a second and no memory; the model is not changed.

    >>> from cdism_fast.models import build, count_flops
    >>> count_flops(build("edsr_mini"), out_hw=(64, 64))["total"]
    51757056
    >>> flops = count_flops(build("swinir_mini"), out_hw=(64, 64))
    >>> flops["attention"], flops["total_without_attention"]
    (37748736, 81174528)
    """
    scale = getattr(model, "scale", None) if scale is None else scale
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int (the model has no int .scale attribute), got {scale!r}")
    if (not isinstance(out_hw, (tuple, list)) or len(out_hw) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in out_hw)):
        raise ValueError(f"out_hw must be (height, width) as two positive ints, got {out_hw!r}")
    if out_hw[0] % scale or out_hw[1] % scale:
        raise ValueError(f"out_hw must be divisible by the scale {scale}, got {tuple(out_hw)}")
    tensors = dict(itertools.chain(model.named_parameters(remove_duplicate=False),
                                   model.named_buffers(remove_duplicate=False)))
    meta = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
    dtype = next(iter(tensors.values())).dtype if tensors else torch.float32
    x = torch.empty(1, 3, out_hw[0] // scale, out_hw[1] // scale, device="meta", dtype=dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = functional_call(model, meta, (x,), tie_weights=False, strict=False)
    if tuple(out.shape[-2:]) != tuple(out_hw):
        raise ValueError(f"scale {scale} does not match the model: a {tuple(x.shape[-2:])} input gave a "
                         f"{tuple(out.shape[-2:])} output, not {tuple(out_hw)}")
    flops = counter.get_flop_counts()["Global"]
    counts = {category: 0 for category in _CATEGORIES}
    attention_ops = _CATEGORIES["attention"] + tuple(_window_attention_ops())
    for op, value in flops.items():
        category = next((c for c, ops in _CATEGORIES.items() if op in ops), None)
        if category is None and op in attention_ops:
            category = "attention"
        if category is None:
            raise RuntimeError(f"count_flops: the counter reported {value} FLOPs for {op}, which is neither a "
                               "convolution, a linear layer nor an attention product")
        counts[category] += value // 2
    counts["total"] = counts["conv"] + counts["linear"] + counts["attention"]
    counts["total_without_attention"] = counts["conv"] + counts["linear"]
    return counts


def _window_attention_ops() -> list:
    namespace = torch.ops.cdism_fast
    return [getattr(namespace, name) for name in WINDOW_ATTENTION_OPS if hasattr(namespace, name)]


def _window_attention_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """q·kᵀ and attn·v of (B·nW, heads, N, D) windows, in the counter's FLOPs (2 per MAC)."""
    windows, heads, tokens, head_dim = q_shape
    return 2 * 2 * windows * heads * tokens * tokens * head_dim


@on_extension_load("cpp")
@on_extension_load("cuda")
def _register_window_attention_formula() -> None:
    # Compiled kernels are opaque to torch's FLOP counter: give it the formula (once).
    for op in _window_attention_ops():
        if op not in flop_registry:
            register_flop_formula(op)(_window_attention_flops)
