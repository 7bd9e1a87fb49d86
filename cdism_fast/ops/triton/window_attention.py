"""Window attention in Triton, forward and backward in the flash manner.

Forward: one program per (window, head, block of query rows) walks the keys
block by block with an online softmax; the relative-position bias is gathered
from the table and the shifted-window mask computed from the window's position
in the token grid inside the kernel. Only the output and the per-row
log-sum-exp (B·nW, heads, N) are written: nothing of size (B·nW, heads, N, N).

Backward: one program per (head, query block, key block, chunk of windows)
recomputes the probabilities from the saved log-sum-exp and accumulates dq,
dk, dv (plain stores when a window is one block, as for Swin's 64-token
windows; fp32 atomics otherwise) and, in registers across its windows, the
gradient of the (head, query, key) bias, which is reduced over chunks and
scattered into the table by its index afterwards.

Inputs are widened to fp32 on load and all sums accumulate in fp32. fp32 inputs
take exact fp32 products (``input_precision="ieee"``), so they match the
reference to fp32 rounding; fp16/bf16 inputs use TF32 tensor cores (see
``dot_precision``). Block sizes and warps are fixed per head dim (no autotuning,
which the interpreter cannot run); ``python -m cdism_fast.ops.triton.compile_report``
shows each variant's registers, spills and shared memory.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..window_attention import MASK_VALUE, relative_position_index

#: Query and key rows per block: a Swin window of 8x8 tokens is one block.
MAX_BLOCK_TOKENS = 64
#: Smallest block edge tl.dot accepts.
MIN_BLOCK = 16
#: Head dims above this take half the token block: with 64-token blocks, the backward of a head
#: 32 wide needs 123 KB of shared memory, over an sm_86 multiprocessor's 99 KB.
WIDE_HEAD_DIM = 16
FORWARD_WARPS = 4
BACKWARD_WARPS = 8
#: Backward programs per multiprocessor to aim for (chunks of windows are sized from it).
PROGRAMS_PER_SM = 2
#: Processors assumed for the interpreter, which runs programs one after another: any
#: split is as fast there, and several chunks exercise the reduction of bias partials.
INTERPRETER_PROCESSORS = 4
#: The shifted-window mask value, as a constant the kernels can read.
_MASK_VALUE = tl.constexpr(MASK_VALUE)


@triton.jit
def _region(coordinate, extent, window_size: tl.constexpr, shift_size):
    # SwinIR's regions along one axis: [0, E-ws), [E-ws, E-shift), [E-shift, E).
    return (coordinate >= extent - window_size).to(tl.int32) + (coordinate >= extent - shift_size).to(tl.int32)


@triton.jit
def _token_regions(window, tokens, windows_per_image, windows_per_row, grid_h, grid_w, shift_size,
                   WINDOW: tl.constexpr):
    # Region id (0..8) of each token of `window` (images' windows in row-major order).
    local = window % windows_per_image
    row = (local // windows_per_row) * WINDOW + tokens // WINDOW
    col = (local % windows_per_row) * WINDOW + tokens % WINDOW
    return _region(row, grid_h, WINDOW, shift_size) * 3 + _region(col, grid_w, WINDOW, shift_size)


@triton.jit
def _bias_tile(table_ptr, stride_table_r, stride_table_h, head, rows, cols, valid, WINDOW: tl.constexpr):
    # bias[n, m] = table[(i_n - i_m + ws - 1) * (2 ws - 1) + (j_n - j_m + ws - 1), head]
    relative = ((rows // WINDOW)[:, None] - (cols // WINDOW)[None, :] + WINDOW - 1) * (2 * WINDOW - 1) \
        + ((rows % WINDOW)[:, None] - (cols % WINDOW)[None, :] + WINDOW - 1)
    return tl.load(table_ptr + relative * stride_table_r + head * stride_table_h, mask=valid, other=0.0
                   ).to(tl.float32)


@triton.jit
def _window_attention_fwd_kernel(
        q_ptr, k_ptr, v_ptr, table_ptr, out_ptr, lse_ptr,
        stride_qw, stride_qh, stride_qn, stride_qd,
        stride_kw, stride_kh, stride_kn, stride_kd,
        stride_vw, stride_vh, stride_vn, stride_vd,
        stride_ow, stride_oh, stride_on, stride_od,
        stride_table_r, stride_table_h,
        heads, tokens, head_dim, scale,
        windows_per_image, windows_per_row, grid_h, grid_w, shift_size,
        WINDOW: tl.constexpr, SHIFTED: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # Axis 0 (up to 2^31 - 1 programs) takes the windows and heads; axis 1 (65535) the query blocks.
    window = tl.program_id(0) // heads
    head = tl.program_id(0) % heads
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < tokens
    dim_ok = dims < head_dim
    w64 = window.to(tl.int64)
    q = tl.load(q_ptr + w64 * stride_qw + head * stride_qh + rows[:, None] * stride_qn + dims[None, :] * stride_qd,
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0).to(tl.float32) * scale
    if SHIFTED:
        row_regions = _token_regions(window, rows, windows_per_image, windows_per_row, grid_h, grid_w,
                                     shift_size, WINDOW)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, tokens, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < tokens
        k_t = tl.load(k_ptr + w64 * stride_kw + head * stride_kh + cols[None, :] * stride_kn
                      + dims[:, None] * stride_kd, mask=dim_ok[:, None] & col_ok[None, :], other=0.0
                      ).to(tl.float32)
        v = tl.load(v_ptr + w64 * stride_vw + head * stride_vh + cols[:, None] * stride_vn
                    + dims[None, :] * stride_vd, mask=col_ok[:, None] & dim_ok[None, :], other=0.0
                    ).to(tl.float32)
        valid = row_ok[:, None] & col_ok[None, :]
        scores = tl.dot(q, k_t, input_precision=DOT_PRECISION) \
            + _bias_tile(table_ptr, stride_table_r, stride_table_h, head, rows, cols, valid, WINDOW)
        if SHIFTED:
            col_regions = _token_regions(window, cols, windows_per_image, windows_per_row, grid_h, grid_w,
                                         shift_size, WINDOW)
            scores += tl.where(row_regions[:, None] != col_regions[None, :], _MASK_VALUE, 0.0)
        scores = tl.where(col_ok[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        rescale = tl.exp(row_max - new_max)
        probs = tl.exp(scores - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(probs, 1)
        acc = acc * rescale[:, None] + tl.dot(probs, v, input_precision=DOT_PRECISION)
        row_max = new_max
    out = acc / row_sum[:, None]
    tl.store(out_ptr + w64 * stride_ow + head * stride_oh + rows[:, None] * stride_on + dims[None, :] * stride_od,
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])
    tl.store(lse_ptr + (w64 * heads + head) * tokens + rows, row_max + tl.log(row_sum), mask=row_ok)


@triton.jit
def _window_attention_bwd_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, dout_ptr, lse_ptr, table_ptr,
        dq_ptr, dk_ptr, dv_ptr, dbias_ptr,
        stride_qw, stride_qh, stride_qn, stride_qd,
        stride_kw, stride_kh, stride_kn, stride_kd,
        stride_vw, stride_vh, stride_vn, stride_vd,
        stride_ow, stride_oh, stride_on, stride_od,
        stride_gw, stride_gh, stride_gn, stride_gd,
        stride_dqw, stride_dqh, stride_dqn, stride_dqd,
        stride_dkw, stride_dkh, stride_dkn, stride_dkd,
        stride_dvw, stride_dvh, stride_dvn, stride_dvd,
        stride_table_r, stride_table_h,
        windows, heads, tokens, head_dim, scale, windows_per_chunk, token_blocks,
        windows_per_image, windows_per_row, grid_h, grid_w, shift_size,
        WINDOW: tl.constexpr, SHIFTED: tl.constexpr, ATOMIC: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    # Program (head, query block, key block) over the windows of one chunk.
    pid = tl.program_id(0)
    head = pid // (token_blocks * token_blocks)
    block_m = (pid // token_blocks) % token_blocks
    block_n = pid % token_blocks
    chunk = tl.program_id(1)
    rows = block_m * BLOCK + tl.arange(0, BLOCK)
    cols = block_n * BLOCK + tl.arange(0, BLOCK)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < tokens
    col_ok = cols < tokens
    dim_ok = dims < head_dim
    valid = row_ok[:, None] & col_ok[None, :]
    row_tile = row_ok[:, None] & dim_ok[None, :]
    col_tile = col_ok[:, None] & dim_ok[None, :]
    # The bias of this tile is the same in every window: gathered once.
    bias = _bias_tile(table_ptr, stride_table_r, stride_table_h, head, rows, cols, valid, WINDOW)
    dbias = tl.zeros([BLOCK, BLOCK], tl.float32)
    first = chunk * windows_per_chunk
    for offset in range(0, tl.minimum(windows_per_chunk, windows - first)):
        window = first + offset
        w64 = window.to(tl.int64)
        q = tl.load(q_ptr + w64 * stride_qw + head * stride_qh + rows[:, None] * stride_qn
                    + dims[None, :] * stride_qd, mask=row_tile, other=0.0).to(tl.float32) * scale
        dout = tl.load(dout_ptr + w64 * stride_gw + head * stride_gh + rows[:, None] * stride_gn
                       + dims[None, :] * stride_gd, mask=row_tile, other=0.0).to(tl.float32)
        out = tl.load(out_ptr + w64 * stride_ow + head * stride_oh + rows[:, None] * stride_on
                      + dims[None, :] * stride_od, mask=row_tile, other=0.0).to(tl.float32)
        lse = tl.load(lse_ptr + (w64 * heads + head) * tokens + rows, mask=row_ok, other=0.0)
        k = tl.load(k_ptr + w64 * stride_kw + head * stride_kh + cols[:, None] * stride_kn
                    + dims[None, :] * stride_kd, mask=col_tile, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + w64 * stride_vw + head * stride_vh + cols[:, None] * stride_vn
                    + dims[None, :] * stride_vd, mask=col_tile, other=0.0).to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) + bias
        if SHIFTED:
            row_regions = _token_regions(window, rows, windows_per_image, windows_per_row, grid_h, grid_w,
                                         shift_size, WINDOW)
            col_regions = _token_regions(window, cols, windows_per_image, windows_per_row, grid_h, grid_w,
                                         shift_size, WINDOW)
            scores += tl.where(row_regions[:, None] != col_regions[None, :], _MASK_VALUE, 0.0)
        probs = tl.where(valid, tl.exp(scores - lse[:, None]), 0.0)
        # softmax backward: dS = P * (dP - rowsum(dO * O)).
        delta = tl.sum(dout * out, 1)
        dprobs = tl.dot(dout, tl.trans(v), input_precision=DOT_PRECISION)
        dscores = probs * (dprobs - delta[:, None])
        dbias += dscores
        dv = tl.dot(tl.trans(probs), dout, input_precision=DOT_PRECISION)
        dk = tl.dot(tl.trans(dscores), q, input_precision=DOT_PRECISION)
        dq = tl.dot(dscores, k, input_precision=DOT_PRECISION) * scale
        dq_ptrs = dq_ptr + w64 * stride_dqw + head * stride_dqh + rows[:, None] * stride_dqn \
            + dims[None, :] * stride_dqd
        dk_ptrs = dk_ptr + w64 * stride_dkw + head * stride_dkh + cols[:, None] * stride_dkn \
            + dims[None, :] * stride_dkd
        dv_ptrs = dv_ptr + w64 * stride_dvw + head * stride_dvh + cols[:, None] * stride_dvn \
            + dims[None, :] * stride_dvd
        if ATOMIC:  # a window spans several blocks: fp32 buffers summed over the other index
            tl.atomic_add(dq_ptrs, dq, mask=row_tile)
            tl.atomic_add(dk_ptrs, dk, mask=col_tile)
            tl.atomic_add(dv_ptrs, dv, mask=col_tile)
        else:
            tl.store(dq_ptrs, dq.to(dq_ptr.dtype.element_ty), mask=row_tile)
            tl.store(dk_ptrs, dk.to(dk_ptr.dtype.element_ty), mask=col_tile)
            tl.store(dv_ptrs, dv.to(dv_ptr.dtype.element_ty), mask=col_tile)
    tl.store(dbias_ptr + ((chunk * heads + head) * tokens + rows[:, None]) * tokens + cols[None, :], dbias,
             mask=valid)


def _block_sizes(tokens: int, head_dim: int) -> tuple[int, int]:
    """(token block, head-dim block). Wide heads take smaller token blocks, so that the
    backward's operand tiles fit an sm_86 multiprocessor's 99 KB of shared memory."""
    block_d = max(MIN_BLOCK, triton.next_power_of_2(head_dim))
    largest = MAX_BLOCK_TOKENS if block_d <= WIDE_HEAD_DIM else MAX_BLOCK_TOKENS // 2
    return max(MIN_BLOCK, min(largest, triton.next_power_of_2(tokens))), block_d


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs: exact fp32 products ("ieee"), as the reference. fp16/bf16 inputs are exact
    in TF32, so their products q kᵀ and dO vᵀ are exact on tensor cores; the probabilities and
    score gradients fed to the other products are rounded to TF32, below fp16's own rounding."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _grid_geometry(window_size: int, shift_size: int, grid_h: int, grid_w: int) -> tuple[int, int]:
    """(windows per image, windows per row) of the token grid; (1, 1) without a shift."""
    if shift_size == 0:
        return 1, 1
    return (grid_h // window_size) * (grid_w // window_size), grid_w // window_size


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.stride())


@torch.library.custom_op("cdism_fast_triton::window_attention", mutates_args=())
def window_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_table: torch.Tensor,
                             window_size: int, shift_size: int, grid_h: int, grid_w: int,
                             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): softmax(scale q kᵀ + bias + mask) v and the fp32 log-sum-exp of each score row."""
    windows, heads, tokens, head_dim = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((windows, heads, tokens), device=q.device, dtype=torch.float32)
    block, block_d = _block_sizes(tokens, head_dim)
    per_image, per_row = _grid_geometry(window_size, shift_size, grid_h, grid_w)
    _window_attention_fwd_kernel[(windows * heads, triton.cdiv(tokens, block))](
        q, k, v, bias_table, out, lse,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out), *_strides(bias_table),
        heads, tokens, head_dim, scale, per_image, per_row, grid_h, grid_w, shift_size,
        WINDOW=window_size, SHIFTED=shift_size > 0, DOT_PRECISION=dot_precision(q.dtype),
        BLOCK_M=block, BLOCK_N=block, BLOCK_D=block_d,
        num_warps=FORWARD_WARPS)
    return out, lse


@window_attention_forward.register_fake
def _(q, k, v, bias_table, window_size, shift_size, grid_h, grid_w, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


def backward_chunks(windows: int, heads: int, token_blocks: int, device: torch.device) -> tuple[int, int]:
    """(windows per chunk, chunks): enough backward programs to fill the device, few bias partials."""
    if device.type == "cuda":
        processors = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        processors = INTERPRETER_PROCESSORS
    chunks = max(1, min(windows, math.ceil(PROGRAMS_PER_SM * processors / (heads * token_blocks ** 2))))
    per_chunk = math.ceil(windows / chunks)
    return per_chunk, math.ceil(windows / per_chunk)


@torch.library.custom_op("cdism_fast_triton::window_attention_backward", mutates_args=())
def window_attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              out: torch.Tensor, lse: torch.Tensor, bias_table: torch.Tensor, window_size: int,
                              shift_size: int, grid_h: int, grid_w: int,
                              scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of window_attention_forward's output with respect to q, k, v and bias_table."""
    windows, heads, tokens, head_dim = q.shape
    block, block_d = _block_sizes(tokens, head_dim)
    token_blocks = triton.cdiv(tokens, block)
    atomic = token_blocks > 1
    if atomic:
        dq, dk, dv = (torch.zeros(t.shape, device=t.device, dtype=torch.float32) for t in (q, k, v))
    else:
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    per_chunk, chunks = backward_chunks(windows, heads, token_blocks, q.device)
    dbias_partial = torch.empty((chunks, heads, tokens, tokens), device=q.device, dtype=torch.float32)
    per_image, per_row = _grid_geometry(window_size, shift_size, grid_h, grid_w)
    _window_attention_bwd_kernel[(heads * token_blocks * token_blocks, chunks)](
        q, k, v, out, grad_out, lse, bias_table, dq, dk, dv, dbias_partial,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out), *_strides(grad_out),
        *_strides(dq), *_strides(dk), *_strides(dv), *_strides(bias_table),
        windows, heads, tokens, head_dim, scale, per_chunk, token_blocks,
        per_image, per_row, grid_h, grid_w, shift_size,
        WINDOW=window_size, SHIFTED=shift_size > 0, ATOMIC=atomic, DOT_PRECISION=dot_precision(q.dtype),
        BLOCK=block, BLOCK_D=block_d,
        num_warps=BACKWARD_WARPS)
    if atomic:
        dq, dk, dv = dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
    # Bias gradient: sum over chunks, then over the (query, key) pairs sharing a table row.
    dbias = dbias_partial.sum(0).permute(1, 2, 0).reshape(tokens * tokens, heads)
    index = relative_position_index(window_size, q.device).reshape(-1)
    dtable = torch.zeros(bias_table.shape, device=q.device, dtype=torch.float32).index_add_(0, index, dbias)
    return dq, dk, dv, dtable.to(bias_table.dtype)


@window_attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, bias_table, window_size, shift_size, grid_h, grid_w, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(bias_table)


def _setup_context(ctx, inputs, output):
    q, k, v, bias_table, window_size, shift_size, grid_h, grid_w, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, bias_table)
    ctx.geometry = (window_size, shift_size, grid_h, grid_w, scale)


def _backward(ctx, grad_out, grad_lse):
    # lse is an auxiliary output for the backward; nothing differentiates through it.
    q, k, v, out, lse, bias_table = ctx.saved_tensors
    grads = window_attention_backward(grad_out, q, k, v, out, lse, bias_table, *ctx.geometry)
    return (*grads, None, None, None, None, None)


torch.library.register_autograd("cdism_fast_triton::window_attention", _backward, setup_context=_setup_context)


def window_attention_triton(q, k, v, bias_table, window_size, shift_size, hw, scale):
    grid_h, grid_w = hw if hw is not None else (0, 0)
    return window_attention_forward(q, k, v, bias_table, window_size, shift_size, grid_h, grid_w, scale)[0]
