"""Window attention: every backend against SwinIR's formulation and independent float64 ones.

Every backend runs the samples of cdism_fast/ops/samples.py (see tests/op_targets.py): the
small ones on CPU tensors (reference, cpp, Triton in its interpreter), the training shapes on
a CUDA device.
"""
import math

import numpy as np
import pytest
import torch

import cdism_fast.ops as ops
from cdism_fast.ops import relative_position_index, samples, shift_window_mask, window_attention

from helpers.fuzz import FUZZ_CASES, assert_as_accurate, fast_backends
from model_references import official_mask as swinir_mask
from model_references import official_relative_index as swinir_relative_index
from model_references import window_partition as swinir_partition
from model_references import window_reverse as swinir_reverse
from op_targets import (
    DEVICE,
    cpu_backends,
    float64_reference,
    gpu_backends,
    interpreter_backends,
    relative,
    require,
    skip_without_cpp,
)
from tolerances import assert_close

OP = "window_attention"
BACKENDS = cpu_backends(OP)


# --- SwinIR's window attention, re-implemented from the paper and the released code's facts -------------------

class SwinIRWindowAttention(torch.nn.Module):
    """qkv Linear, windowed multi-head attention with bias (and mask when shifted), proj Linear; on
    (B, H, W, C) tokens, rolled by −shift before the partition and back after."""

    def __init__(self, dim, heads, ws, shift):
        super().__init__()
        self.heads, self.ws, self.shift = heads, ws, shift
        self.scale = (dim // heads) ** -0.5
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.table = torch.nn.Parameter(torch.randn((2 * ws - 1) ** 2, heads))

    def attention(self, q, k, v, h, w):
        n = q.shape[2]
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        bias = self.table[swinir_relative_index(self.ws).view(-1)].view(n, n, -1).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if self.shift > 0:
            mask = swinir_mask(h, w, self.ws, self.shift)
            nw = mask.shape[0]
            attn = attn.view(-1, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        return attn.softmax(dim=-1) @ v

    def forward(self, x, op=None):
        b, h, w, c = x.shape
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = swinir_partition(x, self.ws)
        bn, n, _ = windows.shape
        qkv = self.qkv(windows).reshape(bn, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        out = self.attention(q, k, v, h, w) if op is None else op(q, k, v, self.table, self.ws, self.shift, (h, w))
        out = self.proj(out.transpose(1, 2).reshape(bn, n, c))
        x = swinir_reverse(out, self.ws, b, h, w)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        return x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch,h,w,dim,heads,ws,shift", [
    (2, 8, 8, 24, 3, 4, 0),
    (2, 8, 8, 24, 3, 4, 2),
    (3, 8, 12, 12, 2, 4, 2),     # non-square token grid
    (1, 15, 10, 20, 2, 5, 2),    # odd window size, non-square
    (2, 16, 8, 36, 6, 8, 4),     # SwinIR's 8x8 windows, head dim 6
])
def test_matches_swinir_window_attention(backend, batch, h, w, dim, heads, ws, shift):
    module = SwinIRWindowAttention(dim, heads, ws, shift)
    x = torch.randn(batch, h, w, dim)
    expected = module(x)

    def op(q, k, v, table, ws, shift, hw):
        assert not q.is_contiguous()  # the qkv split is a strided view: the op must take it as it is
        return window_attention(q, k, v, table, ws, shift, hw, backend=backend)

    assert_close(module(x, op), expected)


# --- an independent float64 formulation: token pairs in grid coordinates ----------------------------------------

def grid_attention_float64(q, k, v, table, ws, shift, hw, scale):
    """Attention of every token against the tokens of its window, from each token's (row, col) in the grid."""
    q, k, v, table = (t.double() for t in (q, k, v, table))
    bn, heads, n, _ = q.shape
    height, width = hw if hw is not None else (ws, ws * bn)  # unshifted: any grid gives the same result
    per_row = width // ws

    def region(coord, extent):
        return 0 if coord < extent - ws else (1 if coord < extent - shift else 2)

    out = torch.empty_like(q)
    for window in range(bn):
        image_window = window % ((height // ws) * per_row)
        top, left = (image_window // per_row) * ws, (image_window % per_row) * ws
        pos = [(top + t // ws, left + t % ws) for t in range(n)]
        logits = torch.empty(heads, n, n, dtype=torch.float64)
        for a, (ra, ca) in enumerate(pos):
            for b, (rb, cb) in enumerate(pos):
                bias = table[(ra - rb + ws - 1) * (2 * ws - 1) + (ca - cb + ws - 1)]
                masked = shift > 0 and ((region(ra, height), region(ca, width))
                                        != (region(rb, height), region(cb, width)))
                logits[:, a, b] = (scale * (q[window, :, a] * k[window, :, b]).sum(-1) + bias
                                   - (100.0 if masked else 0.0))
        weights = torch.exp(logits - logits.amax(-1, keepdim=True))
        out[window] = (weights / weights.sum(-1, keepdim=True)) @ v[window]
    return out


def random_inputs(bn, heads, ws, dim, dtype=torch.float32, requires_grad=False):
    n = ws * ws
    q, k, v = (torch.randn(bn, heads, n, dim, dtype=dtype, requires_grad=requires_grad) for _ in range(3))
    table = torch.randn((2 * ws - 1) ** 2, heads, dtype=dtype, requires_grad=requires_grad)
    return q, k, v, table


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bn,heads,ws,dim,shift,hw", [
    (3, 2, 4, 8, 0, None),
    (12, 3, 4, 5, 2, (8, 12)),   # two images of a non-square grid
    (4, 1, 3, 4, 1, (6, 6)),
    (2, 2, 2, 1, 1, (2, 4)),     # single token row of windows, head dim 1
    (6, 4, 3, 10, 2, (9, 6)),
])
def test_matches_float64_formulation(backend, bn, heads, ws, dim, shift, hw):
    q, k, v, table = random_inputs(bn, heads, ws, dim)
    scale = dim ** -0.5
    expected = grid_attention_float64(q, k, v, table, ws, shift, hw, scale)
    assert_close(window_attention(q, k, v, table, ws, shift, hw, backend=backend), expected, torch.float32)
    # an explicit scale replaces D^-0.5
    expected = grid_attention_float64(q, k, v, table, ws, shift, hw, 0.3)
    assert_close(window_attention(q, k, v, table, ws, shift, hw, scale=0.3, backend=backend), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bn,heads,ws,dim,shift,hw",
                         [(2, 2, 2, 3, 0, None), (8, 1, 2, 2, 1, (4, 8)), (4, 1, 3, 2, 1, (6, 6))])
def test_gradcheck(backend, bn, heads, ws, dim, shift, hw):
    inputs = random_inputs(bn, heads, ws, dim, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v, t: window_attention(q, k, v, t, ws, shift, hw, backend=backend),
                                    inputs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_and_channels_last_inputs(backend):
    q, k, v, table = random_inputs(8, 3, 4, 6)
    expected = window_attention(q, k, v, table, 4, 2, (8, 16), backend="reference")
    assert_close(window_attention(q.contiguous(memory_format=torch.channels_last), k.transpose(2, 3).contiguous()
                                  .transpose(2, 3), v[:, :, :, :], table.t().contiguous().t(), 4, 2, (8, 16),
                                  backend=backend), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    q, k, v, table = random_inputs(6, 2, 4, 5, requires_grad=True)

    def step(q, k, v, table):
        return window_attention(q, k, v, table, 4, 2, (8, 12), backend=backend).square().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(q, k, v, table)
    grads = torch.autograd.grad(loss, (q, k, v, table))
    expected_loss = step(q, k, v, table)
    expected_grads = torch.autograd.grad(expected_loss, (q, k, v, table))
    assert_close(loss, expected_loss)
    for got, want in zip(grads, expected_grads):
        assert_close(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates(backend):
    q, k, v, table = random_inputs(4, 2, 2, 3)
    q[1, 0, 2, 1] = float("nan")
    out = window_attention(q, k, v, table, 2, 1, (4, 4), backend=backend)
    assert out[1, 0, 2].isnan().all()
    expected = window_attention(q, k, v, table, 2, 1, (4, 4), backend="reference")
    assert_close(out, expected)


# --- helpers ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ws", [1, 2, 5, 8])
def test_relative_position_index_is_swins(ws):
    assert torch.equal(relative_position_index(ws), swinir_relative_index(ws))


@pytest.mark.parametrize("hw,ws,shift", [((8, 8), 4, 2), ((8, 12), 4, 2), ((15, 10), 5, 3), ((64, 48), 8, 4)])
def test_shift_window_mask_is_swinirs(hw, ws, shift):
    assert torch.equal(shift_window_mask(hw, ws, shift), swinir_mask(*hw, ws, shift))


def test_helpers_are_cached_per_size():
    assert shift_window_mask((8, 12), 4, 2) is shift_window_mask([8, 12], 4, 2)
    assert shift_window_mask((8, 12), 4, 2) is not shift_window_mask((8, 16), 4, 2)
    assert relative_position_index(4) is relative_position_index(4, "cpu")


# --- bad input -------------------------------------------------------------------------------------------------

def _call(**overrides):
    q, k, v, table = random_inputs(4, 2, 2, 3)
    args = dict(q=q, k=k, v=v, bias_table=table, window_size=2, shift_size=1, hw=(4, 4))
    args.update(overrides)
    return window_attention(**args)


@pytest.mark.parametrize("overrides,match", [
    (dict(q=torch.randn(4, 2, 4)), "q must be"),
    (dict(q=torch.randint(0, 3, (4, 2, 4, 3))), "q must be a floating"),
    (dict(k=torch.randn(4, 2, 4, 2)), "k must have q's shape"),
    (dict(v=torch.randn(4, 2, 4, 3, dtype=torch.float64)), "v must have q's dtype"),
    (dict(window_size=3), "N = window_size"),
    (dict(window_size=0), "window_size must be"),
    (dict(bias_table=torch.randn(9, 3)), r"bias_table must be .* = \(9, 2\)"),
    (dict(bias_table=torch.randn(16, 2)), "bias_table must be"),
    (dict(shift_size=2), "shift_size must be"),
    (dict(shift_size=-1), "shift_size must be"),
    (dict(hw=None), "hw .* is required"),
    (dict(hw=(4, 5)), "hw must be multiples"),
    (dict(hw=(4,)), "hw must be"),
    (dict(hw=(4, 8)), "multiple of the 8 windows"),
])
def test_bad_input_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        _call(**overrides)


def test_bad_helper_input_raises():
    with pytest.raises(ValueError, match="hw must be multiples"):
        shift_window_mask((8, 10), 4, 2)
    with pytest.raises(ValueError, match="shift_size must be > 0"):
        shift_window_mask((8, 8), 4, 0)
    with pytest.raises(ValueError, match="window_size must be"):
        relative_position_index(-1)


# --- the compiled kernel against the reference ------------------------------------------------------------------

FAST_BACKENDS = [p for p in BACKENDS if p.values != ("reference",)]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("bn,heads,ws,dim,shift,hw", [
    (16, 6, 8, 10, 4, (32, 16)),   # SwinIR_LW attention (head dim 10), two 32x16 images
    (8, 6, 8, 4, 0, None),         # SwinIRmini head dim 4, unshifted
    (6, 3, 7, 32, 3, (14, 21)),    # 7x7 windows (N = 49, not a multiple of the vector width), head dim 32
])
def test_forward_and_gradients_match_reference(backend, bn, heads, ws, dim, shift, hw):
    inputs = random_inputs(bn, heads, ws, dim, requires_grad=True)
    grad_out = torch.randn(bn, heads, ws * ws, dim)

    def forward_backward(name, tensors, grad):
        out = window_attention(*tensors, ws, shift, hw, backend=name)
        return (out, *torch.autograd.grad(out, tensors, grad))

    exact = forward_backward("reference", [t.detach().double().requires_grad_() for t in inputs], grad_out.double())
    fast = forward_backward(backend, inputs, grad_out)
    reference = forward_backward("reference", inputs, grad_out)
    for name, got, want, ref in zip(("out", "q", "k", "v", "bias_table"), fast, exact, reference):
        assert (got - ref).norm() <= 1e-5 * ref.norm(), name
        if name == "bias_table":
            # each entry sums up to B·nW·N products: compare at the scale of the values
            got, want = got / want.abs().max(), want / want.abs().max()
        assert_close(got, want, torch.float32, msg=name)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(backend, dtype):
    q, k, v, table = random_inputs(8, 2, 4, 6, dtype=dtype, requires_grad=True)
    out = window_attention(q, k, v, table, 4, 2, (8, 16), backend=backend)
    assert out.dtype == dtype
    # the reference upcasts the same rounded inputs to fp32
    expected = window_attention(q.float(), k.float(), v.float(), table.float(), 4, 2, (8, 16), backend="reference")
    assert_close(out, expected, dtype)
    grads = torch.autograd.grad(out.float().sum(), (q, k, v, table))
    assert all(g.dtype == dtype for g in grads)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_float32_bias_table_with_half_tokens(backend):
    # under autocast the tokens are fp16 while the bias table parameter stays fp32
    q, k, v, _ = random_inputs(4, 2, 2, 3, dtype=torch.float16)
    table = torch.randn(9, 2, requires_grad=True)
    out = window_attention(q, k, v, table, 2, 1, (4, 4), backend=backend)
    expected = window_attention(q, k, v, table, 2, 1, (4, 4), backend="reference")
    assert_close(out, expected)
    (grad,) = torch.autograd.grad(out.float().sum(), table)
    (expected_grad,) = torch.autograd.grad(expected.float().sum(), table)
    assert grad.dtype == torch.float32
    assert_close(grad, expected_grad, torch.float16)


@skip_without_cpp(OP)
@pytest.mark.parametrize("shift,hw", [(0, None), (1, (4, 8))])
def test_opcheck_cpp(shift, hw):
    q, k, v, table = random_inputs(8, 2, 2, 3, requires_grad=True)
    height, width = hw or (0, 0)
    torch.library.opcheck(torch.ops.cdism_fast.window_attention.default,
                          (q, k, v, table, 2, shift, height, width, 3 ** -0.5))
    out, lse = torch.ops.cdism_fast.window_attention(q, k, v, table, 2, shift, height, width, 3 ** -0.5)
    torch.library.opcheck(torch.ops.cdism_fast.window_attention_backward.default,
                          (torch.randn_like(out), q.detach(), k.detach(), v.detach(), table.detach(), lse,
                           2, shift, height, width, 3 ** -0.5))


@skip_without_cpp(OP)
def test_auto_prefers_cpp_on_cpu():
    q, k, v, table = random_inputs(2, 1, 2, 2)
    assert torch.equal(window_attention(q, k, v, table, 2), window_attention(q, k, v, table, 2, backend="cpp"))


# --- the samples on every backend: Swin's formula in float64, with explicit loops --------------------------------

def swin_attention_float64(q, k, v, table, window, shift, grid):
    """Swin/SwinIR window attention from the definition, in float64, with explicit loops
    for the relative-position bias and the shifted-window regions."""
    q, k, v, table = q.double(), k.double(), v.double(), table.double()
    windows, heads, tokens, dim = q.shape
    bias = torch.empty(heads, tokens, tokens, dtype=torch.float64)
    for n in range(tokens):
        for m in range(tokens):
            (i, j), (i2, j2) = divmod(n, window), divmod(m, window)
            bias[:, n, m] = table[(i - i2 + window - 1) * (2 * window - 1) + (j - j2 + window - 1)]
    scores = (q @ k.transpose(-1, -2)) * dim ** -0.5 + bias
    if shift:
        height, width = grid
        per_row = width // window
        per_image = (height // window) * per_row

        def region(coord, extent):
            return (coord >= extent - window) + (coord >= extent - shift)

        mask = torch.zeros(windows, 1, tokens, tokens, dtype=torch.float64)
        for w in range(windows):
            local = w % per_image
            rows = [(local // per_row) * window + n // window for n in range(tokens)]
            cols = [(local % per_row) * window + n % window for n in range(tokens)]
            ids = [3 * region(r, height) + region(c, width) for r, c in zip(rows, cols)]
            for n in range(tokens):
                for m in range(tokens):
                    if ids[n] != ids[m]:
                        mask[w, 0, n, m] = -100.0
        scores = scores + mask
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("backend", cpu_backends(OP, triton=True))
@pytest.mark.parametrize("case", samples.WINDOW_ATTENTION)
def test_sample_forward_backward(backend, case):
    sample = samples.WINDOW_ATTENTION[case]
    dtype, window, shift, grid = sample.dtype, sample.window, sample.shift, sample.grid
    q, k, v, table = sample.inputs()
    grad_out = torch.randn(q.shape).to(dtype)
    out = window_attention(q, k, v, table, window, shift, grid, backend=backend)
    grads = torch.autograd.grad(out, (q, k, v, table), grad_out)
    expected = swin_attention_float64(q, k, v, table, window, shift, grid)
    expected_grads = torch.autograd.grad(expected, (q, k, v, table), grad_out.double())
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out, expected, dtype)
    for name, actual, wanted in zip(("q", "k", "v", "bias_table"), grads, expected_grads):
        assert actual.dtype == dtype
        # The bias gradient sums over every window: its scale grows with their number.
        scale = 1.0 if name != "bias_table" else math.sqrt(sample.windows * window ** 2)
        assert_close(actual / scale, wanted / scale, dtype, msg=f"gradient of {name}")


def _small_inputs(windows, heads, window, dim):
    return samples.AttentionSample(windows, heads, window, dim, 0, None).inputs()


@pytest.mark.parametrize("backend", cpu_backends(OP, triton=True))
def test_nan_in_nan_out(backend):
    q, k, v, table = (t.detach() for t in _small_inputs(2, 1, 4, 4))
    q[1, 0, 3, 2] = float("nan")
    out = window_attention(q, k, v, table, 4, backend=backend)
    assert torch.isnan(out[1, 0, 3]).all()
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[1, 0, :3]).all()


@pytest.mark.parametrize("backend", interpreter_backends(OP))
def test_opcheck_triton(backend):
    from cdism_fast.ops.triton import window_attention as triton_attention

    q, k, v, table = (t.detach() for t in _small_inputs(2, 1, 4, 5))
    args = (q, k, v, table, 4, 2, 4, 8, 0.4)
    torch.library.opcheck(triton_attention.window_attention_forward, args)
    out, lse = triton_attention.window_attention_forward(*args)
    torch.library.opcheck(triton_attention.window_attention_backward,
                          (torch.randn_like(out), q, k, v, out, lse, table, 4, 2, 4, 8, 0.4))


@pytest.mark.parametrize("backend", interpreter_backends(OP))
def test_compiles_fullgraph_with_inductor(backend):
    q, k, v, table = _small_inputs(2, 2, 4, 5)

    def step(q, k, v, table):
        return window_attention(q, k, v, table, 4, 2, (4, 8), backend=backend).square().sum()

    eager_grads = torch.autograd.grad(step(q, k, v, table), (q, k, v, table))
    compiled_grads = torch.autograd.grad(torch.compile(step, fullgraph=True)(q, k, v, table), (q, k, v, table))
    for eager, compiled in zip(eager_grads, compiled_grads):
        assert_close(compiled, eager)


# --- training shapes on a CUDA device ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", gpu_backends(OP))
@pytest.mark.parametrize("dtype", samples.GPU_DTYPES)
@pytest.mark.parametrize("case", samples.WINDOW_ATTENTION_GPU)
def test_training_shapes_on_gpu(backend, case, dtype):
    require(OP, backend)
    sample = samples.WINDOW_ATTENTION_GPU[case]
    q, k, v, table = sample.inputs(DEVICE, dtype)
    grad_out = torch.randn(q.shape, device=DEVICE).to(dtype)
    out = window_attention(q, k, v, table, sample.window, sample.shift, sample.grid, backend=backend)
    grads = torch.autograd.grad(out, (q, k, v, table), grad_out)
    expected, leaves = float64_reference(ops.window_attention, q, k, v, table, window_size=sample.window,
                                         shift_size=sample.shift, hw=sample.grid)
    expected_grads = torch.autograd.grad(expected, leaves, grad_out.double())
    assert_close(out, expected, dtype, msg=f"{case} output")
    for name, actual, wanted in zip(("q", "k", "v", "bias_table"), grads, expected_grads):
        # Sums with cancellation (over 64 tokens, or 16k windows for the table): relative to their size.
        assert_close(relative(actual, wanted), relative(wanted, wanted), dtype, msg=f"{case} gradient of {name}")


@pytest.mark.parametrize("backend", gpu_backends(OP))
def test_stores_no_score_matrix_on_gpu(backend):
    """Forward + backward allocate far less than one (B·nW, heads, N, N) fp32 tensor."""
    require(OP, backend)
    sample = samples.WINDOW_ATTENTION_GPU["SwinIR_LW-shift4"]
    q, k, v, table = sample.inputs(DEVICE)
    grad_out = torch.randn(q.shape, device=DEVICE)
    scores_bytes = q.shape[0] * q.shape[1] * q.shape[2] ** 2 * 4
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = window_attention(q, k, v, table, sample.window, sample.shift, sample.grid, backend=backend)
    torch.autograd.grad(out, (q, k, v, table), grad_out)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < scores_bytes / 4, f"peak {extra} bytes above the inputs; a score matrix is {scores_bytes}"


@pytest.mark.parametrize("backend", gpu_backends(OP))
@pytest.mark.parametrize("case", samples.WINDOW_ATTENTION_HEAD_DIMS_GPU)
def test_head_dims_on_gpu(backend, case):
    require(OP, backend)
    sample = samples.WINDOW_ATTENTION_HEAD_DIMS_GPU[case]
    q, k, v, table = sample.inputs(DEVICE)
    out = window_attention(q, k, v, table, sample.window, sample.shift, sample.grid, backend=backend)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v, table))
    expected, leaves = float64_reference(ops.window_attention, q, k, v, table, window_size=sample.window,
                                         shift_size=sample.shift, hw=sample.grid)
    expected_grads = torch.autograd.grad(expected.square().sum(), leaves)
    assert_close(out, expected, msg=case)
    for actual, wanted in zip(grads, expected_grads):
        assert_close(relative(actual, wanted), relative(wanted, wanted), torch.float32, msg=f"{case} gradients")


def test_fuzz_against_the_reference():
    backends = fast_backends(OP)
    rng = np.random.default_rng(12)
    torch.manual_seed(12)
    for case in range(FUZZ_CASES):
        dtype = (torch.float32, torch.float64)[case % 2]
        window, heads, dim = int(rng.integers(2, 6)), int(rng.integers(1, 4)), int(rng.integers(1, 17))
        batch, tokens = int(rng.integers(1, 5)), window * window
        q, k, v = (torch.randn(batch, heads, tokens, dim, dtype=dtype) for _ in range(3))
        k = k.transpose(-1, -2).contiguous().transpose(-1, -2)  # strided
        table = torch.randn((2 * window - 1) ** 2, heads, dtype=dtype)
        grad_out = torch.randn(batch, heads, tokens, dim, dtype=dtype)
        exact = [t.double().requires_grad_() for t in (q, k, v, table)]
        expected = window_attention(*exact, window, backend="reference")
        expected_grads = torch.autograd.grad(expected, exact, grad_out.double())
        described = f"window_attention case {case}: window {window}, heads {heads}, dim {dim}, {dtype}"

        def run(backend, inputs=(q, k, v, table), window=window, grad_out=grad_out):
            leaves = [t.clone().requires_grad_() for t in inputs]
            out = window_attention(*leaves, window, backend=backend)
            return (out, *torch.autograd.grad(out, leaves, grad_out))

        reference = run("reference")
        for backend in backends:
            names = ("forward", "gradient of q", "gradient of k", "gradient of v", "gradient of bias_table")
            for name, got, ref, want in zip(names, run(backend), reference, (expected, *expected_grads)):
                # at the scale of the values ("a few ulps of the values' scale", tests/tolerances.py)
                scale = want.abs().max()
                assert_as_accurate(got / scale, ref / scale, want / scale, dtype, f"{backend} {name}, {described}")
