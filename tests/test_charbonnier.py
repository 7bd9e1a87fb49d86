"""Charbonnier loss: every backend against a float64 NumPy formulation."""
import numpy as np
import pytest
import torch

from cdism_fast.ops import CHARBONNIER_EPS, BackendUnavailable, available_backends, charbonnier

import float64_references as ref
from helpers.fuzz import fuzz_image_op
from helpers.losses import assert_gradients_in_every_layout, assert_half_inputs_compute_in_float32
from op_targets import cpu_backends, skip_without_cpp
from tolerances import assert_close, assert_compiles_like_eager

OP = "charbonnier"
BACKENDS = cpu_backends(OP)
# Images, odd sizes, a flat vector, and one large enough to be summed in several parallel chunks.
SHAPES = [(2, 3, 17, 23), (1, 1, 1, 1), (3, 5), (7,), (4, 3, 101, 97)]


def _pair(shape, dtype=torch.float32):
    x = torch.rand(shape, dtype=dtype)
    return x, x + 0.05 * torch.randn(shape, dtype=dtype)


def _expected(x, y, eps, reduction):
    return torch.from_numpy(np.asarray(ref.charbonnier(ref.as_float64(x), ref.as_float64(y), eps, reduction)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("eps", [CHARBONNIER_EPS, 0.0, 0.5])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_float64_numpy(backend, reduction, eps, shape):
    x, y = _pair(shape)
    loss = charbonnier(x, y, eps, reduction, backend=backend)
    assert loss.shape == () and loss.dtype == x.dtype
    assert_close(loss, _expected(x, y, eps, reduction))
    x64, y64 = x.double(), y.double()
    assert_close(charbonnier(x64, y64, eps, reduction, backend=backend), _expected(x64, y64, eps, reduction))


def test_reduction_none():
    x, y = _pair((2, 3, 5, 4))
    out = charbonnier(x, y, reduction="none")
    assert out.shape == x.shape
    assert_close(out, _expected(x, y, CHARBONNIER_EPS, "none"))
    if "cpp" in available_backends(OP):
        with pytest.raises(BackendUnavailable, match="reduction='none' is not fused"):
            charbonnier(x, y, reduction="none", backend="cpp")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(backend, dtype):
    x, y = _pair((4, 3, 64, 61), dtype)
    assert_half_inputs_compute_in_float32(lambda a, b: charbonnier(a, b, backend=backend), x, y,
                                          _expected(x, y, CHARBONNIER_EPS, "mean"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradients_of_both_inputs_and_layouts(backend, reduction):
    x, y = _pair((2, 3, 11, 14))
    assert_gradients_in_every_layout(lambda a, b, name: charbonnier(a, b, 1e-2, reduction, backend=name), x, y,
                                     backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradcheck_float64(backend, reduction):
    x, y = (t.requires_grad_() for t in _pair((2, 3, 4, 5), torch.float64))
    assert torch.autograd.gradcheck(lambda a, b: charbonnier(a, b, 1e-2, reduction, backend=backend), (x, y))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    x, y = _pair((2, 3, 16, 15))
    assert_compiles_like_eager(lambda a, b: charbonnier(a, b, backend=backend), x, y, backend=backend)


@skip_without_cpp(OP)
def test_opcheck():
    x, y = _pair((2, 3, 7, 6))
    x64, y64 = (t.double().contiguous(memory_format=torch.channels_last) for t in _pair((1, 2, 5, 9)))
    for args in ((x.requires_grad_(), y, 1e-3, True), (x64, y64.requires_grad_(), 0.1, False),
                 (x.detach().bfloat16(), y.bfloat16(), 1e-3, True)):
        torch.library.opcheck(torch.ops.cdism_fast.charbonnier_loss, args)
        grad = torch.tensor(0.7, dtype=args[0].dtype)
        torch.library.opcheck(torch.ops.cdism_fast.charbonnier_loss_backward, (grad, *(a.detach() if
                              isinstance(a, torch.Tensor) else a for a in args)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_nan_out(backend):
    x, y = _pair((2, 3, 8, 8))
    x[1, 2, 3, 4] = float("nan")
    x.requires_grad_()
    loss = charbonnier(x, y, backend=backend)
    assert loss.isnan()
    loss.backward()
    assert x.grad[1, 2, 3, 4].isnan() and x.grad.isnan().sum() == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(y=torch.rand(2, 3, 8, 7)), "same shape"),
    (dict(y=torch.rand(2, 3, 8, 8, dtype=torch.float64)), "same dtype"),
    (dict(x=torch.ones(2, 3, 8, 8, dtype=torch.int64)), "floating-point"),
    (dict(eps=-1e-3), "eps must be >= 0"),
    (dict(eps=float("nan")), "eps must be >= 0"),
    (dict(reduction="avg"), "reduction must be one of"),
])
def test_bad_input(kwargs, match):
    args = dict(x=torch.rand(2, 3, 8, 8), y=torch.rand(2, 3, 8, 8))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        charbonnier(**args)


def test_fuzz_against_the_reference():
    fuzz_image_op(OP, 2, lambda x, y, backend: charbonnier(x, y, backend=backend))


def test_the_mean_of_an_empty_input_is_refused_and_its_sum_is_zero():
    empty = torch.rand(0, 3, 8, 8)
    with pytest.raises(ValueError, match="the mean of an empty input"):
        charbonnier(empty, empty)
    assert charbonnier(empty, empty, reduction="sum") == 0
