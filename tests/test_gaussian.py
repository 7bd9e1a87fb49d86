"""Gaussian blur and high-pass: every backend against a float64 NumPy formulation.

CPU tensors for the reference and the C++ kernel; training batches on a CUDA
device for the CUDA kernel (see tests/op_targets.py).
"""
import pytest
import torch

import cdism_fast.ops as ops
from cdism_fast.ops import gaussian_blur, gaussian_highpass, samples

import float64_references as ref
from helpers.fuzz import fuzz_image_op
from op_targets import DEVICE, cpu_backends, float64_reference, gpu_backends, require, skip_without_cpp
from tolerances import assert_close, assert_compiles_like_eager

OP = "gaussian_blur"
BACKENDS = cpu_backends(OP)
FILTERS = {"blur": (gaussian_blur, ref.blur), "highpass": (gaussian_highpass, ref.highpass)}
SHAPES = [(2, 3, 17, 23), (1, 1, 3, 3), (3, 4, 8, 5), (2, 2, 3, 40), (1, 3, 70, 9)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", FILTERS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_float64_numpy(backend, name, shape):
    fn, oracle = FILTERS[name]
    x = torch.randn(shape)
    out = fn(x, backend=backend)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert_close(out, torch.from_numpy(oracle(ref.as_float64(x))))
    x64 = x.double()
    assert_close(fn(x64, backend=backend), torch.from_numpy(oracle(ref.as_float64(x64))))


def test_kernel_is_the_outer_product_over_256():
    # An impulse far from the borders returns the kernel itself.
    x = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    x[0, 0, 4, 4] = 1
    b = torch.tensor([1.0, 4, 6, 4, 1], dtype=torch.float64)
    for backend in ops.available_backends(OP):
        assert_close(gaussian_blur(x, backend=backend)[0, 0, 2:7, 2:7], torch.outer(b, b) / 256)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", FILTERS)
def test_half_inputs_compute_in_float32(backend, dtype, name):
    fn, oracle = FILTERS[name]
    x = torch.randn(2, 3, 19, 13).to(dtype)
    out = fn(x, backend=backend)
    assert out.dtype == dtype
    assert_close(out, torch.from_numpy(oracle(ref.as_float64(x))))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", FILTERS)
def test_layouts_and_gradients(backend, name):
    fn, _ = FILTERS[name]
    x = torch.randn(2, 3, 11, 14)
    weight = torch.randn_like(x)
    expected = fn(x, backend="reference")
    x_ref = x.clone().requires_grad_()
    (fn(x_ref, backend="reference") * weight).sum().backward()
    for layout, xl in ref.layouts(x).items():
        xl.requires_grad_()
        out = fn(xl, backend=backend)
        assert_close(out, expected, msg=layout)
        (out * weight).sum().backward()
        assert_close(xl.grad, x_ref.grad, msg=layout)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", FILTERS)
@pytest.mark.parametrize("shape", [(2, 1, 5, 6), (1, 1, 3, 4)])
def test_gradcheck_float64(backend, name, shape):
    fn, _ = FILTERS[name]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fn(t, backend=backend), (x,))
    if backend != "reference":  # the kernels register their own double backward
        assert torch.autograd.gradgradcheck(lambda t: fn(t, backend=backend), (x,))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", FILTERS)
def test_torch_compile_fullgraph(backend, name):
    fn, _ = FILTERS[name]
    x = torch.randn(2, 3, 12, 9)
    assert_compiles_like_eager(lambda t: fn(t, backend=backend).square().sum(), x, backend=backend)


@skip_without_cpp(OP)
def test_opcheck():
    for highpass in (False, True):
        for x in (torch.randn(2, 3, 7, 6, requires_grad=True),
                  torch.randn(1, 2, 5, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last),
                  torch.randn(1, 1, 4, 3).to(torch.bfloat16)):
            torch.library.opcheck(torch.ops.cdism_fast.gaussian_filter, (x, highpass))
            torch.library.opcheck(torch.ops.cdism_fast.gaussian_filter_backward, (x, highpass))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_stays_local(backend):
    x = torch.rand(1, 2, 12, 12)
    x[0, 1, 6, 6] = float("nan")
    for fn in (gaussian_blur, gaussian_highpass):
        nan = fn(x, backend=backend).isnan()
        assert nan[0, 1, 4:9, 4:9].all()
        assert nan.sum() == 25


@pytest.mark.parametrize("bad, match", [
    (torch.rand(3, 8, 8), "NCHW"),
    (torch.zeros(1, 1, 8, 8, dtype=torch.int64), "floating-point"),
    (torch.rand(1, 1, 2, 8), "at least 3x3"),
    (torch.rand(1, 1, 8, 2), "at least 3x3"),
    ([[1.0]], "torch.Tensor"),
])
def test_bad_input(bad, match):
    for fn in (gaussian_blur, gaussian_highpass):
        with pytest.raises(ValueError, match=match):
            fn(bad)



# --- the CUDA kernel on a CUDA device ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", gpu_backends(OP))
@pytest.mark.parametrize("dtype", samples.GPU_DTYPES)
@pytest.mark.parametrize("name", ["gaussian_blur", "gaussian_highpass"])
def test_training_batch_on_gpu(backend, name, dtype):
    require(name, backend)
    op = getattr(ops, name)
    x = torch.randn(16, 3, 256, 256, device=DEVICE).to(dtype).requires_grad_()
    grad_out = torch.randn(x.shape, device=DEVICE).to(dtype)
    out = op(x, backend=backend)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    expected, (x64,) = float64_reference(op, x)
    (expected_grad,) = torch.autograd.grad(expected, x64, grad_out.double())
    assert_close(out, expected, dtype)
    assert_close(grad, expected_grad, dtype)


@pytest.mark.parametrize("backend", gpu_backends(OP))
@pytest.mark.parametrize("layout", ["channels_last", "odd-size-strided"])
def test_layouts_on_gpu(backend, layout):
    require("gaussian_highpass", backend)
    base = torch.randn(3, 5, 37, 70, device=DEVICE)
    x = base.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else base[:, :, :, ::2]
    x.requires_grad_()
    out = gaussian_highpass(x, backend=backend)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    expected, (x64,) = float64_reference(ops.gaussian_highpass, x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x64)
    assert_close(out, expected, torch.float32)
    assert_close(grad, expected_grad, torch.float32)


@pytest.mark.parametrize("backend", gpu_backends(OP))
def test_opcheck_on_gpu(backend):
    require(OP, backend)
    x = torch.randn(2, 3, 9, 11, device=DEVICE)
    for highpass in (False, True):
        torch.library.opcheck(torch.ops.cdism_fast.gaussian_filter.default, (x, highpass))
        torch.library.opcheck(torch.ops.cdism_fast.gaussian_filter_backward.default, (x, highpass))


@pytest.mark.parametrize("name", ["gaussian_blur", "gaussian_highpass"])
def test_fuzz_against_the_reference(name):
    fuzz_image_op(name, 1, lambda x, backend: FILTERS[name.removeprefix("gaussian_")][0](x, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_refuses_zero_channels_and_stays_finite_near_the_float_limit(backend):
    with pytest.raises(ValueError, match="has 0 channels"):
        gaussian_blur(torch.rand(1, 0, 8, 8), backend=backend)
    huge = torch.full((1, 1, 8, 8), 3e38)
    blurred = gaussian_blur(huge, backend=backend)
    assert torch.isfinite(blurred).all()
    assert_close(blurred, gaussian_blur(huge, backend="reference"))
