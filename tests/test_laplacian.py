"""Laplacian pyramid and loss: every backend against a float64 NumPy formulation."""
import numpy as np
import pytest
import torch

import float64_references as ref
from cdism_fast.ops import available_backends, laplacian_loss, laplacian_pyramid
from tolerances import assert_close, assert_compiles_like_eager

BACKENDS = available_backends("laplacian_loss")
# Divisible by 16, odd, non-square, the smallest for 5 levels, and fewer levels.
CASES = [((2, 3, 32, 48), 5), ((2, 3, 37, 41), 5), ((1, 1, 17, 17), 5), ((3, 4, 20, 9), 3),
         ((2, 1, 3, 5), 2), ((2, 2, 6, 7), 1)]


def _pair(shape, dtype=torch.float32):
    x = torch.rand(shape, dtype=dtype)
    return x, (x + 0.1 * torch.randn(shape, dtype=dtype))


@pytest.mark.parametrize("shape, levels", CASES)
def test_pyramid_matches_float64_numpy(shape, levels):
    x = torch.randn(shape)
    levels_out = laplacian_pyramid(x, levels)
    expected = ref.pyramid(ref.as_float64(x), levels)
    assert len(levels_out) == levels
    for got, want in zip(levels_out, expected):
        assert got.dtype == x.dtype
        assert_close(got, torch.from_numpy(want))


def test_pyramid_collapses_back_to_the_padded_input():
    x = torch.randn(2, 3, 37, 30, dtype=torch.float64)
    levels = laplacian_pyramid(x, 4)
    image = levels[-1]
    for band in reversed(levels[:-1]):
        image = band + torch.from_numpy(ref.expand(image.numpy()))
    assert image.shape == (2, 3, 40, 32)
    assert_close(image[..., :37, :30], x)
    assert_close(image[..., 37:, :30], x[..., [35, 34, 33], :])  # reflected rows, no edge repeat


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape, levels", CASES)
def test_loss_matches_float64_numpy(backend, reduction, shape, levels):
    x, y = _pair(shape)
    loss = laplacian_loss(x, y, levels, reduction, backend=backend)
    assert loss.shape == () and loss.dtype == x.dtype
    expected = torch.tensor(ref.laplacian_loss(ref.as_float64(x), ref.as_float64(y), levels, reduction),
                            dtype=torch.float64)
    assert_close(loss, expected)
    assert_close(laplacian_loss(x.double(), y.double(), levels, reduction, backend=backend), expected)


def test_level_weights_and_default_levels():
    # Only the last level (the coarse image) differs: its weight 2^(levels-1) shows alone.
    x = torch.zeros(1, 1, 32, 32)
    y = torch.full_like(x, 0.5)
    for backend in BACKENDS:
        assert_close(laplacian_loss(x, y, backend=backend), torch.tensor(16 * 0.5))
        assert_close(laplacian_loss(x, y, reduction="sum", backend=backend), torch.tensor(16 * 0.5 * 4))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(backend, dtype):
    x, y = (t.to(dtype) for t in _pair((2, 3, 33, 35)))
    x.requires_grad_()
    loss = laplacian_loss(x, y, backend=backend)
    assert loss.dtype == dtype
    expected = ref.laplacian_loss(ref.as_float64(x), ref.as_float64(y), 5, "mean")
    assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    loss.backward()
    assert x.grad.dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradients_of_both_inputs_and_layouts(backend, reduction):
    x, y = _pair((2, 3, 21, 26))
    x_ref, y_ref = x.clone().requires_grad_(), y.clone().requires_grad_()
    laplacian_loss(x_ref, y_ref, 4, reduction, backend="reference").backward()
    for (name, xl), yl in zip(ref.layouts(x).items(), ref.layouts(y).values()):
        xl.requires_grad_(), yl.requires_grad_()
        laplacian_loss(xl, yl, 4, reduction, backend=backend).backward()
        assert_close(xl.grad, x_ref.grad, msg=name)
        assert_close(yl.grad, y_ref.grad, msg=name)
    # Only y requiring a gradient (a target that is itself trained).
    y_only = y.clone().requires_grad_()
    laplacian_loss(x, y_only, 4, reduction, backend=backend).backward()
    assert_close(y_only.grad, y_ref.grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, levels, fast", [((2, 1, 5, 3), 2, False), ((1, 2, 9, 10), 3, True),
                                                 ((1, 1, 17, 18), 5, True)])
def test_gradcheck_float64(backend, shape, levels, fast):
    x = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    y = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: laplacian_loss(a, b, levels, "mean", backend=backend), (x, y),
                                    fast_mode=fast)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_call(backend):
    x, y = _pair((2, 3, 19, 22))
    x.requires_grad_()
    with torch.no_grad():
        loss = laplacian_loss(x, y, backend=backend)
    assert not loss.requires_grad
    assert_close(loss, laplacian_loss(x.detach(), y, backend="reference"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    x, y = _pair((2, 3, 34, 33))
    assert_compiles_like_eager(lambda a, b: laplacian_loss(a, b, backend=backend), x, y, backend=backend)


@pytest.mark.skipif("cpp" not in BACKENDS, reason="the C++ extension is not available")
def test_opcheck():
    op = torch.ops.cdism_fast.laplacian_loss
    x, y = _pair((2, 3, 19, 17))
    torch.library.opcheck(op, (x.requires_grad_(), y, 3, True, True))
    torch.library.opcheck(op, (x.detach(), y, 3, False, False))
    x64, y64 = (t.double().contiguous(memory_format=torch.channels_last) for t in _pair((1, 2, 9, 8)))
    torch.library.opcheck(op, (x64, y64.requires_grad_(), 2, True, True))
    torch.library.opcheck(op, (x.detach().half(), y.half(), 4, True, False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_nan_out(backend):
    x, y = _pair((1, 2, 20, 20))
    x[0, 1, 3, 4] = float("nan")
    x.requires_grad_()
    loss = laplacian_loss(x, y, backend=backend)
    assert loss.isnan()
    loss.backward()
    # The gradient follows torch's sign(nan) = 0, as the reference's autograd does.
    x_ref = x.detach().requires_grad_()
    laplacian_loss(x_ref, y, backend="reference").backward()
    assert_close(x.grad, x_ref.grad)


def test_min_size_follows_levels():
    x = torch.rand(1, 1, 16, 40)
    with pytest.raises(ValueError, match="at least 17x17"):
        laplacian_loss(x, x)
    assert laplacian_loss(x, x, levels=4).item() == 0
    with pytest.raises(ValueError, match="at least 17x17"):
        laplacian_pyramid(x)


@pytest.mark.parametrize("kwargs, match", [
    (dict(levels=0), "levels must be an integer >= 1"),
    (dict(levels=2.0), "levels must be an integer >= 1"),
    (dict(levels=True), "levels must be an integer >= 1"),
    (dict(reduction="none"), "reduction must be one of"),
    (dict(y=torch.rand(2, 3, 32, 31)), "same shape"),
    (dict(y=torch.rand(2, 3, 32, 32, dtype=torch.float64)), "same dtype"),
    (dict(x=torch.rand(3, 32, 32), y=torch.rand(3, 32, 32)), "NCHW"),
    (dict(x=torch.ones(2, 3, 32, 32, dtype=torch.int32)), "floating-point"),
])
def test_bad_input(kwargs, match):
    args = dict(x=torch.rand(2, 3, 32, 32), y=torch.rand(2, 3, 32, 32))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        laplacian_loss(**args)


def test_numpy_oracle_matches_definition_on_a_hand_case():
    # expand() of a constant is that constant, so a constant image has zero band-pass levels.
    levels = ref.pyramid(np.full((1, 1, 8, 8), 3.0), 3)
    assert np.allclose(levels[0], 0) and np.allclose(levels[1], 0) and np.allclose(levels[2], 3.0)
