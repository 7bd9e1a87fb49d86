"""Laplacian-pyramid loss in Triton, forward and backward; the distillation loss built on it.

The pyramid is linear, so L_i(x) - L_i(y) = L_i(x - y): the kernels build one
pyramid, of d = x - y, read straight from x and y at the finest level. Per axis
the operators are small stencils with reflect borders:

- reduce R (blur, then 2x2 average): r[u] = sum_t c[t] g[refl(2u - 2 + t)],
  c = [1, 5, 10, 10, 5, 1] / 32;
- expand E (zero-stuffed upsampling, then 4k with reflect padding): an even
  pixel p takes r at refl(p - 2)/2, p/2, refl(p + 2)/2 with weights 1/8, 3/4, 1/8,
  an odd one r at (p - 1)/2 and refl(p + 1)/2 with 1/2 each;
- L_i = g_i - E(R(g_i)), g_{i+1} = R(g_i).

Forward, ``levels`` launches: launch k computes g_k = R(g_{k-1}) and, in other
programs of the same launch, the weighted L1 partial sums of level k - 2 (whose
coarse level is complete by then) and finally of the top level. Only the
coarse levels (a third of the input in fp32) and, when a gradient is needed, the
sign of every L_i (int8) are written.

Backward, with s_i = w_i sign(L_i) and a_i the gradient with respect to g_i:
a_{levels-1} = s_{levels-1} and a_i = s_i + R^T(a_{i+1} - E^T s_i), one launch per
level from the top; each launch computes a_i and t_{i-1} = a_i - E^T s_{i-1}
pixel by pixel, and the last writes the gradient of x (that of y is its negation).
As in the reference, a NaN input makes the loss NaN and its residuals count as
sign 0 in the gradient (torch.sign(NaN) is 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..charbonnier import CHARBONNIER_EPS, charbonnier_reference
from ..gaussian import gaussian_highpass
from ..laplacian import needs_grad, pad_to_pyramid
from . import INTERPRET

# The interpreter's cost is per operation, not per element: large tiles keep it fast.
BLOCK_H = 64 if INTERPRET else 16
BLOCK_W = 64 if INTERPRET else 32
NUM_WARPS = 8


@triton.jit
def _reflect(index, size):
    # Reflect padding (edge not repeated): -1 -> 1, size -> size - 2.
    index = tl.where(index < 0, -index, index)
    return tl.where(index >= size, 2 * size - 2 - index, index)


@triton.jit
def _reduce_tap(t: tl.constexpr):
    # 32 c[t]: the binomial taps [1, 4, 6, 4, 1] / 16 convolved with the 2-pixel average.
    if t == 0 or t == 5:
        weight = 1.0
    elif t == 1 or t == 4:
        weight = 5.0
    else:
        weight = 10.0
    return weight


@triton.jit
def _expand_tap(p, size, k: tl.constexpr):
    # Coarse index and weight of E's k-th tap at fine pixel p of a level `size` pixels long.
    even = p % 2 == 0
    if k == 0:
        coarse = tl.where(even, _reflect(p - 2, size) // 2, (p - 1) // 2)
        weight = tl.where(even, 0.125, 0.5)
    elif k == 1:
        coarse = tl.where(even, p // 2, _reflect(p + 1, size) // 2)
        weight = tl.where(even, 0.75, 0.5)
    else:
        coarse = tl.where(even, _reflect(p + 2, size) // 2, (p - 1) // 2)
        weight = tl.where(even, 0.125, 0.0)
    return coarse, weight


@triton.jit
def _expand_adjoint_weight(coarse, coarse_size, d: tl.constexpr):
    # Weight with which fine pixel 2 coarse - 2 + d takes `coarse` in E (E^T's taps). Inside:
    # 1/8, 1/2, 3/4, 1/2, 1/8; at the borders the reflected taps of fine pixels 0, n-2 and n-1
    # land on coarse pixels 1, m-1 and m-1 (n = 2m fine pixels).
    if d == 0:
        weight = tl.where(coarse == 1, 0.25, tl.where(coarse >= 1, 0.125, 0.0))
    elif d == 1:
        weight = tl.where(coarse >= 1, 0.5, 0.0) + tl.zeros_like(coarse).to(tl.float32)
    elif d == 2:
        weight = tl.where(coarse == coarse_size - 1, 0.875, 0.75) + tl.zeros_like(coarse).to(tl.float32)
    elif d == 3:
        weight = tl.where(coarse == coarse_size - 1, 1.0, 0.5) + tl.zeros_like(coarse).to(tl.float32)
    else:
        weight = tl.where(coarse < coarse_size - 1, 0.125, 0.0) + tl.zeros_like(coarse).to(tl.float32)
    return weight


@triton.jit
def _reduce_adjoint_weight(p, size, d: tl.constexpr):
    # 32 x the weight with which coarse pixel p // 2 - 1 + d takes fine pixel p in R (R^T's taps).
    # Directly tap t = p + 2 - 2u of c; reflected taps add c[2 - p] from coarse 0 at p = 1, 2
    # and c[4], c[5] from coarse m - 1 at p = n - 2, n - 3 (n = 2m fine pixels).
    odd = p % 2 == 1
    coarse = p // 2 - 1 + d
    if d == 0:
        weight = tl.where(odd, 1.0, 5.0) + tl.where(p == 2, 1.0, 0.0)
    elif d == 1:
        weight = 10.0 + tl.where(p == 1, 5.0, 0.0) + tl.where(p == size - 2, 5.0, 0.0)
    else:
        weight = tl.where(odd, 5.0, 1.0) + tl.where(p == size - 3, 1.0, 0.0)
    return tl.where((coarse >= 0) & (coarse < size // 2), weight, 0.0)


@triton.jit
def _sign(value):
    # As torch.sign, the reference's |.| backward: 0 for 0 and for NaN (a NaN loss, no NaN gradient).
    return tl.where(value > 0, 1.0, tl.where(value < 0, -1.0, 0.0))


@triton.jit
def _decode(codes_ptr, mask):
    return tl.load(codes_ptr, mask=mask, other=0).to(tl.float32)


@triton.jit
def _tile(local, height, width, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # (plane, rows [BLOCK_H, 1], cols [1, BLOCK_W]) of tile `local` of a stack of height x width planes.
    tiles_x = tl.cdiv(width, BLOCK_W)
    tiles = tl.cdiv(height, BLOCK_H) * tiles_x
    plane = local // tiles
    tile = local % tiles
    rows = (tile // tiles_x) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    cols = (tile % tiles_x) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    return plane, rows, cols


@triton.jit
def _plane(x_ptr, y_ptr, pyr_ptr, plane, offset, height, width, channels, sxn, sxc, sxh, sxw,
           FROM_INPUT: tl.constexpr):
    # Pointers to one plane of a level of the pyramid of x - y, and its row and column strides:
    # the inputs themselves at level 0 (x - y is loaded), else the fp32 buffer (loaded once).
    if FROM_INPUT:
        start = (plane // channels).to(tl.int64) * sxn + (plane % channels).to(tl.int64) * sxc
        first = x_ptr + start
        second = y_ptr + start
        row_stride = sxh
        col_stride = sxw
    else:
        first = pyr_ptr + offset + plane.to(tl.int64) * height * width
        second = first
        row_stride = width
        col_stride = 1
    return first, second, row_stride, col_stride


@triton.jit
def _load_plane(first, second, offsets, mask, FROM_INPUT: tl.constexpr):
    value = tl.load(first + offsets, mask=mask, other=0.0).to(tl.float32)
    if FROM_INPUT:
        value -= tl.load(second + offsets, mask=mask, other=0.0).to(tl.float32)
    return value


@triton.jit
def _reduce_taps(ptr, c0, c1, c2, c3, c4, c5, mask):
    # 32 x R along one fine row: taps 1, 5, 10, 10, 5, 1.
    return (tl.load(ptr + c0, mask=mask, other=0.0).to(tl.float32)
            + tl.load(ptr + c5, mask=mask, other=0.0).to(tl.float32)
            + 5.0 * (tl.load(ptr + c1, mask=mask, other=0.0).to(tl.float32)
                     + tl.load(ptr + c4, mask=mask, other=0.0).to(tl.float32))
            + 10.0 * (tl.load(ptr + c2, mask=mask, other=0.0).to(tl.float32)
                      + tl.load(ptr + c3, mask=mask, other=0.0).to(tl.float32)))


@triton.jit
def _weighted3(ptr, c0, w0, c1, w1, c2, w2, mask):
    # sum_k w_k ptr[c_k]; taps of weight 0 are not loaded (they may lie off the level).
    return (w0 * tl.load(ptr + c0, mask=mask & (w0 != 0), other=0.0)
            + w1 * tl.load(ptr + c1, mask=mask & (w1 != 0), other=0.0)
            + w2 * tl.load(ptr + c2, mask=mask & (w2 != 0), other=0.0))


@triton.jit
def _weighted_codes5(codes_ptr, c0, w0, w1, w2, w3, w4, mask):
    # sum_k w_k s[c0 + k] over sign codes; taps of weight 0 are not loaded.
    return (w0 * _decode(codes_ptr + c0, mask & (w0 != 0))
            + w1 * _decode(codes_ptr + c0 + 1, mask & (w1 != 0))
            + w2 * _decode(codes_ptr + c0 + 2, mask & (w2 != 0))
            + w3 * _decode(codes_ptr + c0 + 3, mask & (w3 != 0))
            + w4 * _decode(codes_ptr + c0 + 4, mask & (w4 != 0)))


@triton.jit
def _reduce_tile(local, x_ptr, y_ptr, pyr_ptr, height, width, src_offset, dst_offset, channels,
                 sxn, sxc, sxh, sxw, FROM_INPUT: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # g_{i+1} = R(g_i) on one tile of the coarse level (height x width).
    plane, rows, cols = _tile(local, height, width, BLOCK_H, BLOCK_W)
    valid = (rows < height) & (cols < width)
    fine_h = 2 * height
    fine_w = 2 * width
    first, second, row_stride, col_stride = _plane(x_ptr, y_ptr, pyr_ptr, plane, src_offset, fine_h, fine_w,
                                                   channels, sxn, sxc, sxh, sxw, FROM_INPUT)
    c0 = _reflect(2 * cols - 2, fine_w) * col_stride
    c1 = _reflect(2 * cols - 1, fine_w) * col_stride
    c2 = 2 * cols * col_stride
    c3 = _reflect(2 * cols + 1, fine_w) * col_stride
    c4 = _reflect(2 * cols + 2, fine_w) * col_stride
    c5 = _reflect(2 * cols + 3, fine_w) * col_stride
    acc = tl.zeros([BLOCK_H, BLOCK_W], tl.float32)
    for t in tl.static_range(6):
        row = _reflect(2 * rows - 2 + t, fine_h) * row_stride
        row_acc = _reduce_taps(first + row, c0, c1, c2, c3, c4, c5, valid)
        if FROM_INPUT:  # R is linear: R(x - y) = R(x) - R(y)
            row_acc -= _reduce_taps(second + row, c0, c1, c2, c3, c4, c5, valid)
        acc += _reduce_tap(t) * row_acc
    dst = dst_offset + plane.to(tl.int64) * height * width
    tl.store(pyr_ptr + dst + rows * width + cols, acc * (1.0 / 1024.0), mask=valid)


@triton.jit
def _residual_tile(local, x_ptr, y_ptr, pyr_ptr, codes_ptr, partial_ptr, height, width, fine_offset,
                   coarse_offset, codes_offset, weight, channels, sxn, sxc, sxh, sxw,
                   FROM_INPUT: tl.constexpr, SAVE_CODES: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # Weighted sum of |L_i| = |g_i - E(g_{i+1})| over one tile of level i; the signs if asked.
    plane, rows, cols = _tile(local, height, width, BLOCK_H, BLOCK_W)
    valid = (rows < height) & (cols < width)
    first, second, row_stride, col_stride = _plane(x_ptr, y_ptr, pyr_ptr, plane, fine_offset, height, width,
                                                   channels, sxn, sxc, sxh, sxw, FROM_INPUT)
    fine = _load_plane(first, second, rows * row_stride + cols * col_stride, valid, FROM_INPUT)
    coarse_w = width // 2
    coarse = pyr_ptr + coarse_offset + plane.to(tl.int64) * (height // 2) * coarse_w
    c0, w0 = _expand_tap(cols, width, 0)
    c1, w1 = _expand_tap(cols, width, 1)
    c2, w2 = _expand_tap(cols, width, 2)
    expanded = tl.zeros([BLOCK_H, BLOCK_W], tl.float32)
    for a in tl.static_range(3):
        coarse_row, row_weight = _expand_tap(rows, height, a)
        expanded += row_weight * _weighted3(coarse + coarse_row * coarse_w, c0, w0, c1, w1, c2, w2,
                                            valid & (row_weight != 0))
    laplacian = fine - expanded
    tl.store(partial_ptr + local, tl.sum(tl.where(valid, tl.abs(laplacian), 0.0)) * weight)
    if SAVE_CODES:
        tl.store(codes_ptr + codes_offset + plane.to(tl.int64) * height * width + rows * width + cols,
                 _sign(laplacian).to(tl.int8), mask=valid)


@triton.jit
def _top_tile(local, x_ptr, y_ptr, pyr_ptr, partial_ptr, height, width, offset, weight, channels,
              sxn, sxc, sxh, sxw, FROM_INPUT: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # Weighted sum of |g_{levels-1}| over one tile of the top level.
    plane, rows, cols = _tile(local, height, width, BLOCK_H, BLOCK_W)
    valid = (rows < height) & (cols < width)
    first, second, row_stride, col_stride = _plane(x_ptr, y_ptr, pyr_ptr, plane, offset, height, width,
                                                   channels, sxn, sxc, sxh, sxw, FROM_INPUT)
    top = _load_plane(first, second, rows * row_stride + cols * col_stride, valid, FROM_INPUT)
    tl.store(partial_ptr + local, tl.sum(tl.where(valid, tl.abs(top), 0.0)) * weight)


@triton.jit
def _pyramid_forward_kernel(
        x_ptr, y_ptr, pyr_ptr, codes_ptr, partial_ptr, channels, sxn, sxc, sxh, sxw,
        reduce_programs, reduce_h, reduce_w, reduce_src, reduce_dst,
        residual_programs, residual_h, residual_w, residual_fine, residual_coarse, residual_codes,
        residual_weight, residual_slot,
        top_programs, top_h, top_w, top_offset, top_weight, top_slot,
        REDUCE_FROM_INPUT: tl.constexpr, RESIDUAL_FROM_INPUT: tl.constexpr, TOP_FROM_INPUT: tl.constexpr,
        SAVE_CODES: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # One launch of the forward: its programs split into up to three roles (see the module docstring).
    pid = tl.program_id(0)
    if pid < reduce_programs:
        _reduce_tile(pid, x_ptr, y_ptr, pyr_ptr, reduce_h, reduce_w, reduce_src, reduce_dst, channels,
                     sxn, sxc, sxh, sxw, REDUCE_FROM_INPUT, BLOCK_H, BLOCK_W)
    elif pid < reduce_programs + residual_programs:
        _residual_tile(pid - reduce_programs, x_ptr, y_ptr, pyr_ptr, codes_ptr, partial_ptr + residual_slot,
                       residual_h, residual_w, residual_fine, residual_coarse, residual_codes, residual_weight,
                       channels, sxn, sxc, sxh, sxw, RESIDUAL_FROM_INPUT, SAVE_CODES, BLOCK_H, BLOCK_W)
    elif pid < reduce_programs + residual_programs + top_programs:
        _top_tile(pid - reduce_programs - residual_programs, x_ptr, y_ptr, pyr_ptr, partial_ptr + top_slot,
                  top_h, top_w, top_offset, top_weight, channels, sxn, sxc, sxh, sxw, TOP_FROM_INPUT,
                  BLOCK_H, BLOCK_W)


@triton.jit
def _pyramid_backward_kernel(
        x_ptr, y_ptr, pyr_ptr, codes_ptr, adj_ptr, grad_ptr, grad_out_ptr, channels,
        sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw,
        height, width, level_offset, codes_offset, finer_codes_offset, coarse_offset, weight, finer_weight,
        TOP: tl.constexpr, FROM_INPUT: tl.constexpr, EMIT: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # One level i of the backward (see the module docstring): a_i on a tile, then t_{i-1} or the gradient.
    plane, rows, cols = _tile(tl.program_id(0), height, width, BLOCK_H, BLOCK_W)
    valid = (rows < height) & (cols < width)
    plane64 = plane.to(tl.int64)
    here = plane64 * height * width + rows * width + cols
    if TOP:
        first, second, row_stride, col_stride = _plane(x_ptr, y_ptr, pyr_ptr, plane, level_offset, height, width,
                                                       channels, sxn, sxc, sxh, sxw, FROM_INPUT)
        grad = _sign(_load_plane(first, second, rows * row_stride + cols * col_stride, valid, FROM_INPUT)) * weight
    else:
        # a_i = s_i + R^T t_i, with t_i = a_{i+1} - E^T s_i held at level i + 1.
        grad = _decode(codes_ptr + codes_offset + here, valid) * weight
        coarse_w = width // 2
        coarse = adj_ptr + coarse_offset + plane64 * (height // 2) * coarse_w
        c0 = cols // 2 - 1
        w0 = _reduce_adjoint_weight(cols, width, 0)
        w1 = _reduce_adjoint_weight(cols, width, 1)
        w2 = _reduce_adjoint_weight(cols, width, 2)
        spread = tl.zeros([BLOCK_H, BLOCK_W], tl.float32)
        for a in tl.static_range(3):
            row_weight = _reduce_adjoint_weight(rows, height, a)
            spread += row_weight * _weighted3(coarse + (rows // 2 - 1 + a) * coarse_w, c0, w0, c0 + 1, w1,
                                              c0 + 2, w2, valid & (row_weight != 0))
        grad += spread * (1.0 / 1024.0)
    if EMIT:
        # t_{i-1} = a_i - E^T s_{i-1}: level i - 1 is twice as large.
        fine_w = 2 * width
        finer = codes_ptr + finer_codes_offset + plane64 * (2 * height) * fine_w
        w0 = _expand_adjoint_weight(cols, width, 0)
        w1 = _expand_adjoint_weight(cols, width, 1)
        w2 = _expand_adjoint_weight(cols, width, 2)
        w3 = _expand_adjoint_weight(cols, width, 3)
        w4 = _expand_adjoint_weight(cols, width, 4)
        gathered = tl.zeros([BLOCK_H, BLOCK_W], tl.float32)
        for a in tl.static_range(5):
            row_weight = _expand_adjoint_weight(rows, height, a)
            gathered += row_weight * _weighted_codes5(finer + (2 * rows - 2 + a) * fine_w, 2 * cols - 2,
                                                      w0, w1, w2, w3, w4, valid & (row_weight != 0))
        tl.store(adj_ptr + level_offset + here, grad - gathered * finer_weight, mask=valid)
    else:
        scale = tl.load(grad_out_ptr).to(tl.float32)
        tl.store(grad_ptr + (plane // channels).to(tl.int64) * sgn + (plane % channels).to(tl.int64) * sgc
                 + rows * sgh + cols * sgw, (grad * scale).to(grad_ptr.dtype.element_ty), mask=valid)


class _Geometry:
    """Level sizes and the offsets of each level in the flat fp32 and int8 buffers."""

    def __init__(self, x: torch.Tensor, levels: int, mean: bool):
        batch, self.channels, height, width = x.shape
        self.planes = batch * self.channels
        self.levels = levels
        self.sizes = [(height >> i, width >> i) for i in range(levels)]
        counts = [self.planes * h * w for h, w in self.sizes]
        # Levels 1..levels-1 in the fp32 buffer, levels 0..levels-2 in the int8 buffer.
        self.offsets = [0, 0]
        for count in counts[1:-1]:
            self.offsets.append(self.offsets[-1] + count)
        # At least one element each: a launch takes a valid pointer even where a level is absent.
        self.pyramid_numel = max(1, sum(counts[1:]))
        self.codes_offsets = [0]
        for count in counts[:-2]:
            self.codes_offsets.append(self.codes_offsets[-1] + count)
        self.codes_numel = max(1, sum(counts[:-1]))
        self.weights = [2.0 ** i / (counts[i] if mean else 1) for i in range(levels)]

    def programs(self, level: int) -> int:
        h, w = self.sizes[level]
        return self.planes * triton.cdiv(h, BLOCK_H) * triton.cdiv(w, BLOCK_W)


@torch.library.custom_op("cdism_fast_triton::laplacian_loss", mutates_args=())
def laplacian_loss_forward(x: torch.Tensor, y: torch.Tensor, levels: int, mean: bool,
                           save_codes: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fp32 loss, coarse levels of x - y, sign codes of every L_i or a 1-element placeholder)."""
    geo = _Geometry(x, levels, mean)
    pyramid = torch.empty(geo.pyramid_numel, device=x.device, dtype=torch.float32)
    codes = torch.empty(geo.codes_numel if save_codes else 1, device=x.device, dtype=torch.int8)
    slots = [geo.programs(i) for i in range(levels)]
    partials = torch.empty(sum(slots), device=x.device, dtype=torch.float32)
    slot_starts = [sum(slots[:i]) for i in range(levels)]
    for launch in range(1, levels + 1):
        reduce_level, residual_level = launch, launch - 2
        reduce_programs = geo.programs(reduce_level) if reduce_level < levels else 0
        residual_programs = geo.programs(residual_level) if residual_level >= 0 else 0
        top_programs = geo.programs(levels - 1) if launch == levels else 0
        reduce_args = (reduce_programs, *(geo.sizes[reduce_level] if reduce_programs else (1, 1)),
                       geo.offsets[reduce_level - 1] if reduce_level >= 2 else 0,
                       geo.offsets[reduce_level] if reduce_programs else 0)
        if residual_programs:
            residual_args = (residual_programs, *geo.sizes[residual_level],
                             geo.offsets[residual_level] if residual_level >= 1 else 0,
                             geo.offsets[residual_level + 1], geo.codes_offsets[residual_level],
                             geo.weights[residual_level], slot_starts[residual_level])
        else:
            residual_args = (0, 1, 1, 0, 0, 0, 0.0, 0)
        top = levels - 1
        top_args = (top_programs, *geo.sizes[top], geo.offsets[top], geo.weights[top], slot_starts[top])
        _pyramid_forward_kernel[(reduce_programs + residual_programs + top_programs,)](
            x, y, pyramid, codes, partials, geo.channels, *x.stride(), *reduce_args, *residual_args, *top_args,
            REDUCE_FROM_INPUT=reduce_level == 1, RESIDUAL_FROM_INPUT=residual_level == 0,
            TOP_FROM_INPUT=levels == 1, SAVE_CODES=save_codes, BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W,
            num_warps=NUM_WARPS)
    return partials.sum(), pyramid, codes


@laplacian_loss_forward.register_fake
def _(x, y, levels, mean, save_codes):
    geo = _Geometry(x, levels, mean)
    return (x.new_empty((), dtype=torch.float32), x.new_empty(geo.pyramid_numel, dtype=torch.float32),
            x.new_empty(geo.codes_numel if save_codes else 1, dtype=torch.int8))


@torch.library.custom_op("cdism_fast_triton::laplacian_loss_backward", mutates_args=())
def laplacian_loss_backward(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, pyramid: torch.Tensor,
                            codes: torch.Tensor, levels: int, mean: bool) -> torch.Tensor:
    """Gradient of laplacian_loss_forward's loss with respect to x (that of y is its negation)."""
    geo = _Geometry(x, levels, mean)
    grad_x = torch.empty_like(x)
    adjoint = torch.empty_like(pyramid)
    for level in range(levels - 1, -1, -1):
        top, emit = level == levels - 1, level > 0
        _pyramid_backward_kernel[(geo.programs(level),)](
            x, y, pyramid, codes, adjoint, grad_x, grad, geo.channels, *x.stride(), *grad_x.stride(),
            *geo.sizes[level],
            geo.offsets[level] if level >= 1 else 0,
            geo.codes_offsets[level] if not top else 0,
            geo.codes_offsets[level - 1] if emit else 0,
            geo.offsets[level + 1] if not top else 0,
            geo.weights[level], geo.weights[level - 1] if emit else 0.0,
            TOP=top, FROM_INPUT=level == 0, EMIT=emit, BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, num_warps=NUM_WARPS)
    return grad_x


@laplacian_loss_backward.register_fake
def _(grad, x, y, pyramid, codes, levels, mean):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, y, levels, mean, save_codes = inputs
    _, pyramid, codes = output
    ctx.save_for_backward(x, y, pyramid, codes)
    ctx.levels, ctx.mean = levels, mean


def _backward(ctx, grad, grad_pyramid, grad_codes):
    x, y, pyramid, codes = ctx.saved_tensors
    grad_x = laplacian_loss_backward(grad, x, y, pyramid, codes, ctx.levels, ctx.mean)
    grad_y = -grad_x if ctx.needs_input_grad[1] else None
    return grad_x if ctx.needs_input_grad[0] else None, grad_y, None, None, None


torch.library.register_autograd("cdism_fast_triton::laplacian_loss", _backward, setup_context=_setup_context)


def laplacian_loss_fp32(x: torch.Tensor, y: torch.Tensor, levels: int, reduction: str) -> torch.Tensor:
    """The loss in fp32, after the reflect padding of sizes not divisible by 2^(levels-1)."""
    x, y = pad_to_pyramid(x, levels), pad_to_pyramid(y, levels)
    if x.stride() != y.stride():  # the kernels address both with one set of strides
        x, y = x.contiguous(), y.contiguous()
    save_codes = needs_grad(x, y)
    return laplacian_loss_forward(x, y, levels, reduction == "mean", save_codes)[0]


def laplacian_loss_triton(x, y, levels, reduction):
    return laplacian_loss_fp32(x, y, levels, reduction).to(x.dtype)


def distillation_loss_triton(student, teacher, gt, alpha, student_loss, levels, reduction):
    # The reference's composition with the fast ops: the pyramids run in Triton and the
    # high-pass filter on its fastest backend; inputs are widened to fp32 as the reference does.
    dtype = student.dtype
    student, teacher, gt = student.float(), teacher.detach().float(), gt.float()
    if student_loss == "l1":
        loss = F.l1_loss(student, gt, reduction=reduction)
    else:
        loss = charbonnier_reference(student, gt, CHARBONNIER_EPS, reduction)
    loss = alpha * loss + laplacian_loss_fp32(student, teacher, levels, reduction)
    loss = loss + laplacian_loss_fp32(gaussian_highpass(student), gaussian_highpass(teacher), levels, reduction)
    return loss.to(dtype)
