"""Swin/SwinIR window self-attention with relative position bias and shifted-window mask.

For q, k, v of shape (B·nW, heads, N, D), N = window_size², the windows of each
image in row-major order:

    out = softmax(scale · q·kᵀ + bias + mask) · v

``bias[h, n, m] = bias_table[relative_position_index(ws)[n, m], h]`` (the
standard Swin index) and, when ``shift_size > 0``, ``mask`` is SwinIR's
shifted-window mask of the padded (H, W) token grid: −100 between tokens of
different regions, regions cut at H − ws and H − shift (same for W), 0 elsewhere.

Backends: ``reference`` (PyTorch: materialised bias and mask, matmul, softmax),
``cpp`` (per window and head in C++; bias gathered from the table, the mask
computed from the window's coordinates, only the per-row logsumexp kept for the
backward, which recomputes the scores) and ``triton`` (the same scheme on CUDA
tensors, ops/triton/window_attention.py).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Optional

import torch

from .. import _extension
from . import triton as _triton
from ._checks import accumulation_dtype, check_float
from ._dispatch import new_op

OP = new_op("window_attention")

#: SwinIR's additive mask between tokens of different shifted-window regions.
MASK_VALUE = -100.0


def _check_window_size(window_size) -> int:
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
        raise ValueError(f"window_size must be a positive int, got {window_size!r}")
    return window_size


def _check_shift_size(shift_size, window_size: int) -> int:
    if isinstance(shift_size, bool) or not isinstance(shift_size, int) or not 0 <= shift_size < window_size:
        raise ValueError(f"shift_size must be an int in [0, window_size={window_size}), got {shift_size!r}")
    return shift_size


def _check_hw(hw, window_size: int) -> tuple[int, int]:
    # SymInt: a size left free by torch.export (ONNX export of any input size).
    if (not isinstance(hw, (tuple, list, torch.Size)) or len(hw) != 2
            or not all(isinstance(s, (int, torch.SymInt)) and not isinstance(s, bool) for s in hw)):
        raise ValueError(f"hw must be the (H, W) of the padded token grid as two ints, got {hw!r}")
    height, width = hw
    if height < window_size or width < window_size or height % window_size or width % window_size:
        raise ValueError(f"hw must be multiples of window_size={window_size} (pad the token grid first), "
                         f"got {tuple(hw)}")
    return height, width


def _cached(builder):
    # Under torch.compile the builder is traced into the graph (constants there);
    # Dynamo would bypass the cache anyway, with a warning.
    return builder.__wrapped__ if torch.compiler.is_compiling() else builder


def relative_position_index(window_size: int, device="cpu") -> torch.Tensor:
    """Swin's relative position index: (N, N) int64, N = window_size².

    For tokens n = (i, j) and m = (i', j') of a window (row-major),
    ``index[n, m] = (i − i' + ws − 1)·(2·ws − 1) + (j − j' + ws − 1)``, a row of
    the ((2·ws − 1)², heads) bias table. Cached per (window_size, device): the
    returned tensor is shared, do not modify it in place (``.clone()`` it to
    register it as a buffer that ``load_state_dict`` may overwrite).

    >>> from cdism_fast.ops import relative_position_index
    >>> relative_position_index(2)
    tensor([[4, 3, 1, 0],
            [5, 4, 2, 1],
            [7, 6, 4, 3],
            [8, 7, 5, 4]])
    """
    return _cached(_relative_position_index)(_check_window_size(window_size), torch.device(device))


@functools.lru_cache(maxsize=64)
def _relative_position_index(window_size: int, device: torch.device) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    span = 2 * window_size - 1
    index = (rows[:, None] - rows[None, :] + window_size - 1) * span + (cols[:, None] - cols[None, :] + window_size - 1)
    return index.to(device)


def shift_window_mask(hw: Sequence[int], window_size: int, shift_size: int, device="cpu") -> torch.Tensor:
    """SwinIR's shifted-window attention mask: (nW, N, N) float32 of 0 and −100.

    ``hw`` = (H, W) is the padded token grid (multiples of ``window_size``),
    nW = (H/ws)·(W/ws) windows in row-major order. Rows are split into the
    regions [0, H−ws), [H−ws, H−shift), [H−shift, H), columns likewise; tokens
    of one window in different regions get −100. Cached per (hw, window_size,
    shift_size, device), so it is built once per token-grid size: the returned
    tensor is shared, do not modify it in place.

    >>> from cdism_fast.ops import shift_window_mask
    >>> mask = shift_window_mask((4, 4), window_size=2, shift_size=1)
    >>> tuple(mask.shape)
    (4, 4, 4)
    >>> mask[0].abs().max().item(), mask[3]  # the first window is one region, the last one four
    (0.0, tensor([[   0., -100., -100., -100.],
            [-100.,    0., -100., -100.],
            [-100., -100.,    0., -100.],
            [-100., -100., -100.,    0.]]))
    """
    window_size = _check_window_size(window_size)
    shift_size = _check_shift_size(shift_size, window_size)
    if shift_size == 0:
        raise ValueError("shift_size must be > 0 for a shifted-window mask, got 0")
    return _cached(_shift_window_mask)(_check_hw(hw, window_size), window_size, shift_size, torch.device(device))


def _region(coordinate: torch.Tensor, extent: int, window_size: int, shift_size: int) -> torch.Tensor:
    return (coordinate >= extent - window_size).long() + (coordinate >= extent - shift_size).long()


@functools.lru_cache(maxsize=64)
def _shift_window_mask(hw: tuple[int, int], window_size: int, shift_size: int, device: torch.device) -> torch.Tensor:
    height, width = hw
    region = (_region(torch.arange(height), height, window_size, shift_size)[:, None] * 3
              + _region(torch.arange(width), width, window_size, shift_size)[None, :])
    # (H, W) -> (nW, N): windows row-major, tokens row-major inside each window.
    windows = (region.view(height // window_size, window_size, width // window_size, window_size)
               .permute(0, 2, 1, 3).reshape(-1, window_size * window_size))
    differs = windows[:, :, None] != windows[:, None, :]
    return torch.where(differs, MASK_VALUE, 0.0).to(device=device, dtype=torch.float32)


@OP.implementation("reference", devices=("cpu", "cuda"))
def window_attention_reference(q, k, v, bias_table, window_size, shift_size, hw, scale):
    acc = accumulation_dtype(q.dtype)
    heads, tokens = q.shape[1], q.shape[2]
    index = relative_position_index(window_size, q.device)
    bias = bias_table.to(acc)[index.view(-1)].view(tokens, tokens, heads).permute(2, 0, 1)
    scores = (q.to(acc) * scale) @ k.to(acc).transpose(-2, -1) + bias
    if shift_size > 0:
        mask = shift_window_mask(hw, window_size, shift_size, q.device).to(acc)
        windows = mask.shape[0]
        scores = (scores.view(-1, windows, heads, tokens, tokens) + mask[None, :, None]).view(-1, heads, tokens, tokens)
    return (scores.softmax(dim=-1) @ v.to(acc)).to(q.dtype)


@OP.implementation("cpp", devices=("cpu",), requirement=lambda: _extension.missing_reason("cpp"))
def window_attention_cpp(q, k, v, bias_table, window_size, shift_size, hw, scale):
    height, width = hw if hw is not None else (0, 0)  # the grid only matters for the shift mask
    out, _ = torch.ops.cdism_fast.window_attention(q, k, v, bias_table, window_size, shift_size, height, width, scale)
    return out


def _triton_check(q, k, v, bias_table, window_size, shift_size, hw, scale) -> Optional[str]:
    if q.shape[-1] > _triton.MAX_HEAD_DIM:
        return f"head dim {q.shape[-1]} > {_triton.MAX_HEAD_DIM}"
    return None


@OP.implementation("triton", devices=_triton.DEVICES, dtypes=_triton.DTYPES, requirement=_triton.missing_reason,
                   check=_triton_check)
def window_attention_triton(q, k, v, bias_table, window_size, shift_size, hw, scale):
    return _triton.window_attention.window_attention_triton(q, k, v, bias_table, window_size, shift_size, hw, scale)


@_extension.on_load("cpp")
def _register_cpp_op():
    @torch.library.register_fake("cdism_fast::window_attention")
    def _(q, k, v, bias_table, window_size, shift_size, height, width, scale):
        return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=accumulation_dtype(q.dtype))

    @torch.library.register_fake("cdism_fast::window_attention_backward")
    def _(grad_out, q, k, v, bias_table, logsumexp, window_size, shift_size, height, width, scale):
        return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape), bias_table.new_empty(bias_table.shape)

    def setup_context(ctx, inputs, output):
        q, k, v, bias_table, *ctx.options = inputs
        logsumexp = output[1]
        ctx.mark_non_differentiable(logsumexp)
        ctx.save_for_backward(q, k, v, bias_table, logsumexp)

    def backward(ctx, grad_out, _grad_logsumexp):
        grads = torch.ops.cdism_fast.window_attention_backward(grad_out, *ctx.saved_tensors, *ctx.options)
        return (*grads, None, None, None, None, None)

    torch.library.register_autograd("cdism_fast::window_attention", backward, setup_context=setup_context)


def _check_inputs(q, k, v, bias_table, window_size, shift_size, hw) -> Optional[tuple[int, int]]:
    for name, t in (("q", q), ("k", k), ("v", v), ("bias_table", bias_table)):
        check_float(name, t)
    if q.dim() != 4:
        raise ValueError(f"q must be (B·nW, heads, N, D) (4 dimensions), got shape {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}, got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise ValueError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
    for name, t in (("k", k), ("v", v), ("bias_table", bias_table)):
        if t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")
    window_size = _check_window_size(window_size)
    shift_size = _check_shift_size(shift_size, window_size)
    batch_windows, heads, tokens, head_dim = q.shape
    if tokens != window_size * window_size:
        raise ValueError(f"q must hold N = window_size² = {window_size * window_size} tokens per window "
                         f"(dimension 2), got N = {tokens}")
    if batch_windows == 0 or head_dim == 0 or heads == 0:
        raise ValueError(f"q must have at least one window, head and channel, got shape {tuple(q.shape)}")
    span = (2 * window_size - 1) ** 2
    if tuple(bias_table.shape) != (span, heads):
        raise ValueError(f"bias_table must be ((2·window_size−1)², heads) = ({span}, {heads}), "
                         f"got {tuple(bias_table.shape)}")
    if hw is None:
        if shift_size > 0:
            raise ValueError("hw (the padded token grid (H, W)) is required when shift_size > 0, got None")
        return None
    height, width = _check_hw(hw, window_size)
    per_image = (height // window_size) * (width // window_size)
    if batch_windows % per_image:
        raise ValueError(f"q's B·nW = {batch_windows} windows must be a multiple of the "
                         f"{per_image} windows of an hw = {(height, width)} grid")
    return height, width


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_table: torch.Tensor,
                     window_size: int, shift_size: int = 0, hw: Optional[Sequence[int]] = None,
                     scale: Optional[float] = None, backend: str = "auto") -> torch.Tensor:
    """Swin/SwinIR window attention: softmax(scale·q·kᵀ + bias + mask)·v.

    ``q``, ``k``, ``v``: (B·nW, heads, N, D), N = window_size², the windows of
    each image in row-major order (any strides). ``bias_table``:
    ((2·window_size − 1)², heads), gathered with :func:`relative_position_index`.
    With ``shift_size > 0``, ``hw`` = (H, W) of the padded token grid and
    :func:`shift_window_mask` is added. ``scale`` defaults to D^−0.5.
    fp16/bf16 inputs are computed in fp32; returns q's dtype, shape
    (B·nW, heads, N, D). Gradients flow into q, k, v and bias_table.

    >>> import torch
    >>> from cdism_fast.ops import window_attention
    >>> _ = torch.manual_seed(0)
    >>> q, k, v = (torch.randn(2, 3, 4, 8) for _ in range(3))  # 2 windows of 2x2 tokens, 3 heads, head dim 8
    >>> bias_table = torch.zeros(9, 3)  # (2*2 - 1)^2 rows
    >>> out = window_attention(q, k, v, bias_table, window_size=2)
    >>> tuple(out.shape)
    (2, 3, 4, 8)
    >>> reference = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1) @ v
    >>> torch.allclose(out, reference, atol=1e-5)
    True
    """
    hw = _check_inputs(q, k, v, bias_table, window_size, shift_size, hw)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return OP(backend, q, q, k, v, bias_table, window_size, shift_size, hw, scale)
