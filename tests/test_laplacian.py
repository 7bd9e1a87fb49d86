"""Laplacian pyramid and loss: every backend against a float64 NumPy formulation.

The samples of cdism_fast/ops/samples.py run on every backend: the small ones on
CPU tensors (reference, cpp, Triton in its interpreter), the training shapes on
a CUDA device (see tests/op_targets.py).
"""
import numpy as np
import pytest
import torch

import cdism_fast.ops as ops
from cdism_fast.ops import laplacian_loss, laplacian_pyramid, samples

import float64_references as ref
from helpers.fuzz import fuzz_image_op
from helpers.losses import assert_gradients_in_every_layout, assert_half_inputs_compute_in_float32
from op_targets import (
    DEVICE,
    cpu_backends,
    float64_reference,
    gpu_backends,
    interpreter_backends,
    loss_scale,
    relative,
    require,
    skip_without_cpp,
)
from tolerances import assert_close, assert_compiles_like_eager

OP = "laplacian_loss"
BACKENDS = cpu_backends(OP)
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
    for backend in ops.available_backends(OP):
        assert_close(laplacian_loss(x, y, backend=backend), torch.tensor(16 * 0.5))
        assert_close(laplacian_loss(x, y, reduction="sum", backend=backend), torch.tensor(16 * 0.5 * 4))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(backend, dtype):
    x, y = (t.to(dtype) for t in _pair((2, 3, 33, 35)))
    expected = ref.laplacian_loss(ref.as_float64(x), ref.as_float64(y), 5, "mean")
    assert_half_inputs_compute_in_float32(lambda a, b: laplacian_loss(a, b, backend=backend), x, y,
                                          torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradients_of_both_inputs_and_layouts(backend, reduction):
    x, y = _pair((2, 3, 21, 26))
    assert_gradients_in_every_layout(lambda a, b, name: laplacian_loss(a, b, 4, reduction, backend=name), x, y,
                                     backend)


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


@skip_without_cpp(OP)
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


# --- the samples on every backend: loss and directional derivatives in float64 --------------------------------

def loss_and_directional_check(x, y, levels, reduction, directions=2):
    """The float64 loss, and for random directions u the float64 central difference of the
    loss along u, which is <grad, u> exactly: the loss is piecewise linear, and a step of
    1e-7 crosses no kink of a generic input."""
    x64, y64 = ref.as_float64(x), ref.as_float64(y)
    loss = ref.laplacian_loss(x64, y64, levels, reduction)
    generator = np.random.default_rng(0)
    checks = []
    for _ in range(directions):
        u = generator.standard_normal(x64.shape)
        step = 1e-7
        slope = (ref.laplacian_loss(x64 + step * u, y64, levels, reduction)
                 - ref.laplacian_loss(x64 - step * u, y64, levels, reduction)) / (2 * step)
        checks.append((torch.from_numpy(u), slope))
    return loss, checks


@pytest.mark.parametrize("backend", cpu_backends(OP, triton=True))
@pytest.mark.parametrize("case", samples.LAPLACIAN_LOSS)
def test_sample_loss_and_gradients(backend, case):
    sample = samples.LAPLACIAN_LOSS[case]
    shape, levels, reduction, dtype = sample.shape, sample.levels, sample.reduction, sample.dtype
    x, y = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    if sample.layout is not None:
        x, y = ref.layouts(x)[sample.layout], ref.layouts(y)[sample.layout]
    x.requires_grad_()
    y.requires_grad_()
    loss = laplacian_loss(x, y, levels, reduction, backend=backend)
    grad_x, grad_y = torch.autograd.grad(loss * 1.5, (x, y))
    expected, checks = loss_and_directional_check(x, y, levels, reduction)
    assert loss.dtype == dtype
    assert_close(loss, torch.tensor(expected), dtype)
    assert_close(grad_y, -grad_x, torch.float64)
    for direction, slope in checks:
        derivative = (grad_x.double() * direction).sum() / 1.5
        # A sum of many gradient entries: relative to the size of its terms.
        size = (grad_x.double().abs() * direction.abs()).sum() / 1.5
        assert_close(derivative / size, torch.tensor(slope) / size, dtype)


@pytest.mark.parametrize("backend", cpu_backends(OP, triton=True))
def test_nan_in_nan_out_like_the_reference(backend):
    # The loss is NaN; its gradient is the reference's (torch.sign(NaN) = 0 in |.|'s backward).
    x, y = torch.randn(1, 1, 16, 16, requires_grad=True), torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        x[0, 0, 5, 9] = float("nan")
    losses, grads = [], []
    for name in (backend, "reference"):
        losses.append(laplacian_loss(x, y, 3, backend=name))
        grads.append(torch.autograd.grad(losses[-1], x)[0])
    assert torch.isnan(losses[0]) and torch.isnan(losses[1])
    assert_close(grads[0], grads[1])


@pytest.mark.parametrize("backend", interpreter_backends(OP))
def test_triton_without_grad_saves_no_signs(backend):
    from cdism_fast.ops.triton import laplacian as triton_laplacian

    x, y = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)
    loss, _, codes = triton_laplacian.laplacian_loss_forward(x, y, 3, True, False)
    assert codes.numel() == 1
    assert_close(loss, torch.tensor(ref.laplacian_loss(x.double().numpy(), y.double().numpy(), 3, "mean")))


@pytest.mark.parametrize("backend", interpreter_backends(OP))
def test_opcheck_triton(backend):
    from cdism_fast.ops.triton import laplacian as triton_laplacian

    x, y = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8)
    torch.library.opcheck(triton_laplacian.laplacian_loss_forward, (x, y, 2, True, True))
    loss, pyramid, codes = triton_laplacian.laplacian_loss_forward(x, y, 2, True, True)
    torch.library.opcheck(triton_laplacian.laplacian_loss_backward,
                          (torch.tensor(1.3), x, y, pyramid, codes, 2, True))


@pytest.mark.parametrize("backend", interpreter_backends(OP))
def test_compiles_fullgraph_with_inductor(backend):
    x, y = torch.randn(1, 2, 16, 16, requires_grad=True), torch.randn(1, 2, 16, 16)

    def loss(x, y):
        return laplacian_loss(x, y, 3, backend=backend)

    (eager,) = torch.autograd.grad(loss(x, y), x)
    (compiled,) = torch.autograd.grad(torch.compile(loss, fullgraph=True)(x, y), x)
    assert_close(compiled, eager)


# --- training shapes on a CUDA device ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", gpu_backends(OP))
@pytest.mark.parametrize("dtype", samples.GPU_DTYPES)
def test_training_batch_on_gpu(backend, dtype):
    require(OP, backend)
    sample = samples.LAPLACIAN_LOSS_GPU["training-batch"]
    x = torch.randn(sample.shape, device=DEVICE).to(dtype).requires_grad_()
    y = torch.randn(sample.shape, device=DEVICE).to(dtype).requires_grad_()
    loss = laplacian_loss(x, y, sample.levels, backend=backend)
    grad_x, grad_y = torch.autograd.grad(loss, (x, y), loss_scale(dtype))
    expected, (x64, y64) = float64_reference(ops.laplacian_loss, x, y, levels=sample.levels)
    expected_grad, _ = torch.autograd.grad(expected, (x64, y64), loss_scale(torch.float64))
    assert_close(loss, expected, dtype)
    assert_close(relative(grad_x, expected_grad), relative(expected_grad, expected_grad), dtype)
    assert_close(grad_y, -grad_x, dtype)


@pytest.mark.parametrize("backend", gpu_backends(OP))
def test_odd_size_channels_last_on_gpu(backend):
    require(OP, backend)
    sample = samples.LAPLACIAN_LOSS_GPU["odd-size-channels-last"]
    x = torch.randn(sample.shape, device=DEVICE).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = torch.randn(sample.shape, device=DEVICE)
    loss = laplacian_loss(x, y, sample.levels, sample.reduction, backend=backend)
    (grad,) = torch.autograd.grad(loss, x)
    expected, (x64, _) = float64_reference(ops.laplacian_loss, x, y, levels=sample.levels,
                                           reduction=sample.reduction)
    (expected_grad,) = torch.autograd.grad(expected, x64)
    assert_close(relative(loss, expected), relative(expected, expected), torch.float32)
    assert_close(grad, expected_grad)


def test_fuzz_against_the_reference():
    fuzz_image_op(OP, 2, lambda x, y, backend: laplacian_loss(x, y, levels=3, backend=backend))


def test_the_mean_of_an_empty_input_is_refused():
    empty = torch.rand(0, 3, 8, 8)
    with pytest.raises(ValueError, match="the mean of an empty input"):
        laplacian_loss(empty, empty, levels=2)
