"""The GPU kernels (CUDA C++ and Triton) against the float64 reference, at training shapes, on a CUDA device.

Skipped without a CUDA device (CI has none: ``benchmarks/gpu_check.sh`` runs
this file on a lent GPU). Each fast path runs forward and backward in fp32,
fp16 and bf16; the expected values are the reference backend's, computed in
float64 from the same (rounded) inputs, compared with tests/tolerances.py.
"""
import pytest
import torch

from tolerances import assert_close

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

import cdism_fast.ops as ops  # noqa: E402
from cdism_fast import _extension  # noqa: E402
from cdism_fast.ops import triton as triton_backends  # noqa: E402

DEVICE = torch.device("cuda")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _require(reason):
    if reason is not None:
        pytest.fail(f"backend unavailable on a CUDA machine: {reason}")


@pytest.fixture(scope="module")
def cuda_extension():
    _require(_extension.missing_reason("cuda"))


@pytest.fixture(scope="module")
def triton_kernels():
    _require(triton_backends.missing_reason())


def _float64_reference(op, *tensors, **kwargs):
    """op(backend="reference") on float64 copies of the tensors, and its input gradients."""
    leaves = [t.detach().double().requires_grad_(t.requires_grad) for t in tensors]
    out = op(*leaves, backend="reference", **kwargs)
    return out, leaves


def _loss_scale(dtype):
    """An incoming gradient of 2^14, as loss scaling does: a mean over millions of pixels has
    gradients near 1e-7, below fp16's normal range."""
    return torch.tensor(2.0 ** 14, device=DEVICE, dtype=dtype)


def _relative(tensor, scale_of):
    """tensor / (max |scale_of|): compares sums of many terms relative to their size."""
    return tensor.double() / scale_of.double().abs().max().clamp_min(1e-30)


# ------------------------------------------------------------------ CUDA C++: Gaussian filters


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["gaussian_blur", "gaussian_highpass"])
def test_gaussian_filter(cuda_extension, name, dtype):
    op = getattr(ops, name)
    x = torch.randn(16, 3, 256, 256, device=DEVICE).to(dtype).requires_grad_()
    grad_out = torch.randn(x.shape, device=DEVICE).to(dtype)
    out = op(x, backend="cuda")
    (grad,) = torch.autograd.grad(out, x, grad_out)
    expected, (x64,) = _float64_reference(op, x)
    (expected_grad,) = torch.autograd.grad(expected, x64, grad_out.double())
    assert_close(out, expected, dtype)
    assert_close(grad, expected_grad, dtype)


@pytest.mark.parametrize("layout", ["channels_last", "odd-size-strided"])
def test_gaussian_filter_layouts(cuda_extension, layout):
    base = torch.randn(3, 5, 37, 70, device=DEVICE)
    x = base.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else base[:, :, :, ::2]
    x.requires_grad_()
    out = ops.gaussian_highpass(x, backend="cuda")
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    expected, (x64,) = _float64_reference(ops.gaussian_highpass, x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x64)
    assert_close(out, expected, torch.float32)
    assert_close(grad, expected_grad, torch.float32)


def test_gaussian_filter_opcheck(cuda_extension):
    x = torch.randn(2, 3, 9, 11, device=DEVICE)
    for highpass in (False, True):
        torch.library.opcheck(torch.ops.cdism_fast.gaussian_filter.default, (x, highpass))
        torch.library.opcheck(torch.ops.cdism_fast.gaussian_filter_backward.default, (x, highpass))


# ------------------------------------------------------------------ CUDA C++: OBProx-SG step


def _parameter_list(dtype):
    # EDSR-like convolutions and biases, odd sizes, a strided view, and a 2M-element tensor.
    shapes = [(64, 3, 3, 3), (64,), *[(64, 64, 3, 3), (64,)] * 8, (12, 64, 3, 3), (12,), (1000, 2049), (7,), (1,)]
    params = [torch.randn(s, device=DEVICE).to(dtype) for s in shapes]
    params.append(torch.randn(40, 64, device=DEVICE).to(dtype).t())  # non-contiguous
    for p in params:
        p[torch.rand(p.shape, device=DEVICE) < 0.3] = 0  # zeros for the orthant phase
    grads = [torch.randn(p.shape, device=DEVICE).to(dtype) for p in params]
    return params, grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("orthant", [False, True])
def test_obproxsg_step(cuda_extension, dtype, orthant):
    params, grads = _parameter_list(dtype)
    expected = [p.double() for p in params]
    ops.obproxsg_step(expected, [g.double() for g in grads], 0.05, 0.3, orthant, eps=1e-4, backend="reference")
    ops.obproxsg_step(params, grads, 0.05, 0.3, orthant, eps=1e-4, backend="cuda")
    for i, (actual, wanted) in enumerate(zip(params, expected)):
        assert actual.dtype == dtype
        assert_close(actual, wanted, dtype, msg=f"params[{i}]")


def test_obproxsg_step_nan_and_mixed_dtypes(cuda_extension):
    params = [torch.randn(5000, device=DEVICE), torch.randn(300, device=DEVICE).half()]
    grads = [torch.randn(5000, device=DEVICE), torch.randn(300, device=DEVICE).half()]
    params[0][7] = float("nan")
    grads[1][3] = float("nan")
    params[1][3] = 0
    for orthant in (False, True):
        expected = [p.clone() for p in params]
        ops.obproxsg_step(expected, grads, 0.1, 0.01, orthant, backend="reference")
        ops.obproxsg_step(params, grads, 0.1, 0.01, orthant, backend="cuda")
        for actual, wanted in zip(params, expected):
            assert_close(actual, wanted)
        assert torch.isnan(params[0][7]) and (torch.isnan(params[1][3]) or not orthant)


# ------------------------------------------------------------------ Triton: Laplacian-pyramid loss


@pytest.mark.parametrize("dtype", DTYPES)
def test_laplacian_loss(triton_kernels, dtype):
    x = torch.randn(16, 3, 256, 256, device=DEVICE).to(dtype).requires_grad_()
    y = torch.randn(16, 3, 256, 256, device=DEVICE).to(dtype).requires_grad_()
    loss = ops.laplacian_loss(x, y, 5, backend="triton")
    grad_x, grad_y = torch.autograd.grad(loss, (x, y), _loss_scale(dtype))
    expected, (x64, y64) = _float64_reference(ops.laplacian_loss, x, y, levels=5)
    expected_grad, _ = torch.autograd.grad(expected, (x64, y64), _loss_scale(torch.float64))
    assert_close(loss, expected, dtype)
    assert_close(_relative(grad_x, expected_grad), _relative(expected_grad, expected_grad), dtype)
    assert_close(grad_y, -grad_x, dtype)


def test_laplacian_loss_odd_size_channels_last(triton_kernels):
    x = torch.randn(4, 3, 90, 77, device=DEVICE).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = torch.randn(4, 3, 90, 77, device=DEVICE)
    loss = ops.laplacian_loss(x, y, 4, "sum", backend="triton")
    (grad,) = torch.autograd.grad(loss, x)
    expected, (x64, _) = _float64_reference(ops.laplacian_loss, x, y, levels=4, reduction="sum")
    (expected_grad,) = torch.autograd.grad(expected, x64)
    assert_close(_relative(loss, expected), _relative(expected, expected), torch.float32)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_distillation_loss(triton_kernels, cuda_extension, dtype):
    student = torch.randn(16, 3, 128, 128, device=DEVICE).to(dtype).requires_grad_()
    teacher, gt = (torch.randn(16, 3, 128, 128, device=DEVICE).to(dtype) for _ in range(2))
    loss = ops.distillation_loss(student, teacher, gt, backend="triton")
    (grad,) = torch.autograd.grad(loss, student, _loss_scale(dtype))
    expected, (s64, _, _) = _float64_reference(ops.distillation_loss, student, teacher, gt)
    (expected_grad,) = torch.autograd.grad(expected, s64, _loss_scale(torch.float64))
    assert_close(loss, expected, dtype)
    assert_close(_relative(grad, expected_grad), _relative(expected_grad, expected_grad), dtype)


# ------------------------------------------------------------------ Triton: window attention

# (label, head dim): SwinIR_LW and SwinIRmini; batch 16 of 64x64 LR patches, 8x8 windows, shift 4, 6 heads.
ATTENTION_SHAPES = [("SwinIR_LW", 10), ("SwinIRmini", 4)]


def _attention_inputs(dim, dtype, images=16, grid=64, window=8, heads=6):
    windows = images * (grid // window) ** 2
    q, k, v = (torch.randn(windows, heads, window * window, dim, device=DEVICE).to(dtype).requires_grad_()
               for _ in range(3))
    table = torch.randn((2 * window - 1) ** 2, heads, device=DEVICE).to(dtype).requires_grad_()
    return q, k, v, table


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label,dim", ATTENTION_SHAPES)
def test_window_attention(triton_kernels, label, dim, dtype):
    q, k, v, table = _attention_inputs(dim, dtype)
    grad_out = torch.randn(q.shape, device=DEVICE).to(dtype)
    for shift in (0, 4):
        out = ops.window_attention(q, k, v, table, 8, shift, (64, 64), backend="triton")
        grads = torch.autograd.grad(out, (q, k, v, table), grad_out)
        expected, leaves = _float64_reference(ops.window_attention, q, k, v, table, window_size=8,
                                              shift_size=shift, hw=(64, 64))
        expected_grads = torch.autograd.grad(expected, leaves, grad_out.double())
        assert_close(out, expected, dtype, msg=f"{label} shift {shift} output")
        for name, actual, wanted in zip(("q", "k", "v", "bias_table"), grads, expected_grads):
            # Sums with cancellation (over 64 tokens, or 16k windows for the table): relative to their size.
            assert_close(_relative(actual, wanted), _relative(wanted, wanted), dtype,
                         msg=f"{label} shift {shift} gradient of {name}")


def test_window_attention_stores_no_score_matrix(triton_kernels):
    """Forward + backward allocate far less than one (B·nW, heads, N, N) fp32 tensor."""
    q, k, v, table = _attention_inputs(10, torch.float32)
    grad_out = torch.randn(q.shape, device=DEVICE)
    scores_bytes = q.shape[0] * q.shape[1] * q.shape[2] ** 2 * 4
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = ops.window_attention(q, k, v, table, 8, 4, (64, 64), backend="triton")
    torch.autograd.grad(out, (q, k, v, table), grad_out)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < scores_bytes / 4, f"peak {extra} bytes above the inputs; a score matrix is {scores_bytes}"


def test_window_attention_head_dims(triton_kernels):
    # Non-powers of two up to 64 (64 takes half the token block: several blocks, atomic backward).
    for dim in (5, 24, 33, 64):
        q, k, v, table = _attention_inputs(dim, torch.float32, images=2, grid=16)
        out = ops.window_attention(q, k, v, table, 8, 4, (16, 16), backend="triton")
        grads = torch.autograd.grad(out.square().sum(), (q, k, v, table))
        expected, leaves = _float64_reference(ops.window_attention, q, k, v, table, window_size=8, shift_size=4,
                                              hw=(16, 16))
        expected_grads = torch.autograd.grad(expected.square().sum(), leaves)
        assert_close(out, expected, msg=f"head dim {dim}")
        for actual, wanted in zip(grads, expected_grads):
            assert_close(_relative(actual, wanted), _relative(wanted, wanted), torch.float32,
                         msg=f"head dim {dim} gradients")


def test_auto_picks_the_gpu_backends(cuda_extension, triton_kernels):
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    q = torch.randn(4, 2, 64, 10, device=DEVICE)
    table = torch.randn(225, 2, device=DEVICE)
    chosen = {
        "gaussian_highpass": ops.registered_ops()["gaussian_highpass"].select("auto", x, x).name,
        "laplacian_loss": ops.registered_ops()["laplacian_loss"].select("auto", x, x, x, 5, "mean").name,
        "window_attention": ops.registered_ops()["window_attention"].select(
            "auto", q, q, q, q, table, 8, 0, None, 0.3).name,
        "obproxsg_step": ops.registered_ops()["obproxsg_step"].select("auto", x, [x], [x], 0.1, 0.1, False,
                                                                       0.0).name,
    }
    assert chosen == {"gaussian_highpass": "cuda", "laplacian_loss": "triton", "window_attention": "triton",
                      "obproxsg_step": "cuda"}
