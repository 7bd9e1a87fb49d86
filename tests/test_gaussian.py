"""Gaussian blur and high-pass: every backend against a float64 NumPy formulation."""
import pytest
import torch

import float64_references as ref
from cdism_fast.ops import available_backends, gaussian_blur, gaussian_highpass
from tolerances import assert_close, assert_compiles_like_eager

BACKENDS = available_backends("gaussian_blur")
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
    for backend in BACKENDS:
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


@pytest.mark.skipif("cpp" not in BACKENDS, reason="the C++ extension is not available")
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

