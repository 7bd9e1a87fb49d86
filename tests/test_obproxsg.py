"""obproxsg_step: every backend against a per-element float64 loop (float64_references),
both phases, all dtypes and layouts, NaN, bad input, opcheck and torch.compile;
the CUDA kernel against the float64 reference on a CUDA device (see tests/op_targets.py)."""
import math

import numpy as np
import pytest
import torch

from cdism_fast import _extension
from cdism_fast.ops import available_backends, obproxsg_step, samples

import float64_references as ref
from helpers.fuzz import FUZZ_CASES, fast_backends, fuzz_inputs
from op_targets import DEVICE, cpu_backends, gpu_backends, require
from tolerances import assert_close

OP = "obproxsg_step"
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Odd shapes, a scalar, an empty tensor, and tensors longer than the C++ kernel's
# work item (32768 elements) so that threads split inside and across tensors.
SHAPES = [(5, 3, 3, 3), (7,), (), (0, 4), (40000,), (3, 11, 13), (70001,), (1, 1)]


@pytest.fixture(params=cpu_backends(OP))
def backend(request):
    return request.param


def random_pair(shape, dtype, zero_fraction=0.3):
    p = torch.randn(shape, dtype=torch.float64)
    p[torch.rand(shape) < zero_fraction] = 0
    return p.to(dtype), torch.randn(shape, dtype=torch.float64).to(dtype)


def _long_shapes_only_for_fast_backends(backend, shapes):
    # The per-element loop is slow in Python: keep the long tensors for runs that need them.
    return shapes if backend == "cpp" else [s for s in shapes if math.prod(s) < 10000]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("orthant", [False, True], ids=["prox_sg", "orthant"])
def test_one_step_matches_the_definition(backend, dtype, orthant):
    pairs = [random_pair(s, dtype) for s in _long_shapes_only_for_fast_backends(backend, SHAPES)]
    params, grads = [p.clone() for p, _ in pairs], [g for _, g in pairs]
    lr, lam, eps = 0.3, 0.7, 0.05
    expected = [ref.obproxsg_step(p, g, lr, lam, orthant, eps) for p, g in pairs]
    obproxsg_step(params, grads, lr, lam, orthant, eps, backend=backend)
    for p, e in zip(params, expected):
        assert p.dtype == dtype
        assert_close(p, e, dtype)


def test_several_steps_through_both_phases(backend):
    shapes = [(4, 3, 3, 3), (9,), (17, 5)]
    params = [random_pair(s, torch.float32, zero_fraction=0.0)[0] for s in shapes]
    phases = [False, False, False, True, True, False, True, True]
    for step, orthant in enumerate(phases):
        grads = [torch.randn_like(p) for p in params]
        expected = [ref.obproxsg_step(p, g, 0.1, 0.5, orthant, 0.01) for p, g in zip(params, grads)]
        obproxsg_step(params, grads, 0.1, 0.5, orthant, 0.01, backend=backend)
        for p, e in zip(params, expected):
            assert_close(p, e, msg=f"step {step}, orthant={orthant}")
    # Prox-SG zeroes entries with |p - lr*g| <= lr*lam and the orthant steps keep them.
    assert 0 < sum(int((p == 0).sum()) for p in params) < sum(p.numel() for p in params)


def test_backends_agree_on_a_model_sized_list():
    if "cpp" not in available_backends("obproxsg_step"):
        pytest.skip(f"cpp unavailable: {_extension.missing_reason('cpp')}")
    shapes = [(64, 64, 3, 3), (64,)] * 4 + [(180, 60), (225, 6), (3, 64, 3, 3), (3,)]
    for dtype in (torch.float32, torch.bfloat16):
        for orthant in (False, True):
            pairs = [random_pair(s, dtype) for s in shapes]
            ref = [p.clone() for p, _ in pairs]
            fast = [p.clone() for p, _ in pairs]
            grads = [g for _, g in pairs]
            obproxsg_step(ref, grads, 0.05, 0.3, orthant, 0.001, backend="reference")
            obproxsg_step(fast, grads, 0.05, 0.3, orthant, 0.001, backend="cpp")
            for r, f in zip(ref, fast):
                assert_close(f, r)


def test_mixed_dtypes_in_one_list(backend):
    pairs = [random_pair((6, 5), torch.float32), random_pair((31,), torch.bfloat16),
             random_pair((2, 3), torch.float64), random_pair((9,), torch.float16)]
    params = [p.clone() for p, _ in pairs]
    obproxsg_step(params, [g for _, g in pairs], 0.2, 0.4, True, 0.0, backend=backend)
    for (p0, g), p in zip(pairs, params):
        assert_close(p, ref.obproxsg_step(p0, g, 0.2, 0.4, True, 0.0), p.dtype)


@pytest.mark.parametrize("orthant", [False, True], ids=["prox_sg", "orthant"])
def test_layouts_are_updated_in_place(backend, orthant):
    """Non-contiguous and channels_last params, grads in another layout, and a strided
    view whose update must reach the tensor it views."""
    base = torch.randn(6, 10, 5, 7)
    strided_view = base[:, ::2, 1:, ::3]
    transposed = torch.randn(9, 13).t()
    channels_last = torch.randn(3, 8, 5, 4).to(memory_format=torch.channels_last)
    params = [strided_view, transposed, channels_last]
    grads = [torch.randn(strided_view.shape).to(memory_format=torch.channels_last),
             torch.randn(13, 9), torch.randn(3, 8, 5, 4)]
    expected = [ref.obproxsg_step(p, g, 0.3, 0.2, orthant, 0.0) for p, g in zip(params, grads)]
    untouched = base.clone()
    untouched[:, ::2, 1:, ::3] = 0
    pointers = [p.data_ptr() for p in params]
    obproxsg_step(params, grads, 0.3, 0.2, orthant, 0.0, backend=backend)
    for p, e, ptr in zip(params, expected, pointers):
        assert p.data_ptr() == ptr
        assert_close(p, e)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    outside = base.clone()
    outside[:, ::2, 1:, ::3] = 0
    assert torch.equal(outside, untouched), "the update leaked outside the strided view"


def test_orthant_keeps_zeros_and_zeroes_sign_flips(backend):
    p = torch.tensor([0.0, 0.0, 1.0, -1.0, 1.0, -1.0, 0.5, 0.5, -0.5])
    g = torch.tensor([1e3, -1e3, 20.0, -20.0, 1.0, -1.0, 4.0, 4.96, -4.8])
    # lr = 0.1, lam = 0.1: x_hat = p - 0.1*(g + 0.1*sign(p)); eps = 0.02. The last
    # entry keeps its sign but lands within eps of zero (x_hat = -0.01): projected to 0.
    obproxsg_step([p], [g], 0.1, 0.1, True, 0.02, backend=backend)
    expected = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.89, -0.89, 0.09, 0.0, 0.0])
    assert_close(p, expected)
    assert (p[:4] == 0).all() and (p[7:] == 0).all()


def test_prox_sg_soft_thresholds_and_can_revive_zeros(backend):
    p = torch.tensor([0.0, 0.0, 1.0, -1.0, 0.05])
    g = torch.tensor([-5.0, 0.5, 0.0, 0.0, 0.0])
    obproxsg_step([p], [g], 0.1, 1.0, False, backend=backend)
    assert_close(p, torch.tensor([0.4, 0.0, 0.9, -0.9, 0.0]))


def test_zero_lam_prox_sg_is_sgd(backend):
    p, g = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    expected = p - 0.01 * g
    obproxsg_step([p], [g], 0.01, 0.0, False, backend=backend)
    assert_close(p, expected)


@pytest.mark.parametrize("orthant", [False, True], ids=["prox_sg", "orthant"])
def test_nan_in_nan_out(backend, orthant):
    nan, inf = float("nan"), float("inf")
    p = torch.tensor([nan, 1.0, 0.0, 0.0, 2.0, -3.0])
    g = torch.tensor([0.5, nan, nan, inf, 0.1, 0.2])
    obproxsg_step([p], [g], 0.1, 0.1, orthant, backend=backend)
    assert p[:3].isnan().all(), p
    # An infinite gradient: Prox-SG follows it; an orthant step cannot (0 * inf), so NaN.
    assert p[3].isnan() if orthant else p[3] == -inf, p
    assert_close(p[4:], ref.obproxsg_step(p.new_tensor([2.0, -3.0]), g[4:], 0.1, 0.1, orthant, 0.0))


def test_empty_list_and_empty_tensors(backend):
    obproxsg_step([], [], 0.1, 0.1, True, backend=backend)
    p = torch.empty(0, 3)
    obproxsg_step([p], [torch.empty(0, 3)], 0.1, 0.1, False, backend=backend)
    assert p.shape == (0, 3)


def test_does_not_record_autograd_history(backend):
    p = torch.nn.Parameter(torch.randn(4, 5))
    g = torch.randn(4, 5)
    obproxsg_step([p], [g], 0.1, 0.1, False, backend=backend)
    assert p.grad_fn is None and p.requires_grad and p.is_leaf


@pytest.mark.parametrize("call, match", [
    (lambda b: obproxsg_step([torch.ones(3)], [torch.ones(3)], -0.1, 0.1, True, backend=b), "lr must be >= 0"),
    (lambda b: obproxsg_step([torch.ones(3)], [torch.ones(3)], float("nan"), 0.1, True, backend=b), "lr must be"),
    (lambda b: obproxsg_step([torch.ones(3)], [torch.ones(3)], 0.1, -1e-4, True, backend=b), "lam must be >= 0"),
    (lambda b: obproxsg_step([torch.ones(3)], [torch.ones(3)], 0.1, 0.1, True, -1.0, backend=b), "eps must be >= 0"),
    (lambda b: obproxsg_step([torch.ones(3)], [torch.ones(3)], 0.1, 0.1, 1, backend=b), "orthant must be a bool"),
    (lambda b: obproxsg_step(torch.ones(3), [torch.ones(3)], 0.1, 0.1, True, backend=b), "params must be a list"),
    (lambda b: obproxsg_step([torch.ones(3)], [], 0.1, 0.1, True, backend=b), "same length, got 1 and 0"),
    (lambda b: obproxsg_step([torch.ones(3)], [None], 0.1, 0.1, True, backend=b), r"grads\[0\] must be a torch"),
    (lambda b: obproxsg_step([torch.ones(3, dtype=torch.long)], [torch.ones(3, dtype=torch.long)], 0.1, 0.1,
                             True, backend=b), r"params\[0\] must be a float"),
    (lambda b: obproxsg_step([torch.ones(2), torch.ones(3)], [torch.ones(2), torch.ones(4)], 0.1, 0.1, True,
                             backend=b), r"params\[1\] and grads\[1\] must have the same shape"),
    (lambda b: obproxsg_step([torch.ones(2), torch.ones(3)], [torch.ones(2), torch.ones(3).double()], 0.1, 0.1,
                             True, backend=b), r"params\[1\] and grads\[1\] must have the same dtype"),
    (lambda b: obproxsg_step([torch.ones(2), torch.ones(3, dtype=torch.int32)],
                             [torch.ones(2), torch.ones(3, dtype=torch.int32)], 0.1, 0.1, True, backend=b),
     r"params\[1\] must be a float"),
    (lambda b: obproxsg_step([torch.ones(2, 2)], [torch.ones(2, 2).to_sparse()], 0.1, 0.1, True, backend=b),
     "dense"),
    (lambda b: obproxsg_step([torch.ones(2), torch.ones(2, device="meta")],
                             [torch.ones(2), torch.ones(2, device="meta")], 0.1, 0.1, True, backend=b),
     "device|CPU tensors"),
])
def test_bad_input_is_a_value_error(backend, call, match):
    with pytest.raises(ValueError, match=match):
        call(backend)


def test_opcheck():
    if "cpp" not in available_backends("obproxsg_step"):
        pytest.skip(f"cpp unavailable: {_extension.missing_reason('cpp')}")
    op = torch.ops.cdism_fast.obproxsg_step_.default
    for dtype in (torch.float32, torch.bfloat16):
        for orthant in (False, True):
            params = [torch.randn(5, 3, dtype=dtype), torch.randn(7, dtype=dtype)]
            grads = [torch.randn_like(p) for p in params]
            torch.library.opcheck(op, (params, grads, 0.1, 0.2, orthant, 0.0))


@pytest.mark.parametrize("orthant", [False, True], ids=["prox_sg", "orthant"])
def test_torch_compile_fullgraph(backend, orthant):
    def step(params, grads):
        obproxsg_step(params, grads, 0.1, 0.3, orthant, 0.01, backend=backend)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    params = [torch.randn(6, 4, 3, 3), torch.randn(6)]
    grads = [torch.randn_like(p) for p in params]
    eager = [p.clone() for p in params]
    step(eager, grads)
    compiled(params, grads)
    for c, e in zip(params, eager):
        assert_close(c, e)


# --- the CUDA kernel on a CUDA device ----------------------------------------------------------------------------

def _gpu_parameter_list(dtype):
    # EDSR-like convolutions and biases, odd sizes, a strided view, and a 2M-element tensor.
    shapes = [(64, 3, 3, 3), (64,), *[(64, 64, 3, 3), (64,)] * 8, (12, 64, 3, 3), (12,), (1000, 2049), (7,), (1,)]
    params = [torch.randn(s, device=DEVICE).to(dtype) for s in shapes]
    params.append(torch.randn(40, 64, device=DEVICE).to(dtype).t())  # non-contiguous
    for p in params:
        p[torch.rand(p.shape, device=DEVICE) < 0.3] = 0  # zeros for the orthant phase
    grads = [torch.randn(p.shape, device=DEVICE).to(dtype) for p in params]
    return params, grads


@pytest.mark.parametrize("gpu_backend", gpu_backends(OP))
@pytest.mark.parametrize("dtype", samples.GPU_DTYPES)
@pytest.mark.parametrize("orthant", [False, True])
def test_model_sized_step_on_gpu(gpu_backend, dtype, orthant):
    require(OP, gpu_backend)
    params, grads = _gpu_parameter_list(dtype)
    expected = [p.double() for p in params]
    obproxsg_step(expected, [g.double() for g in grads], 0.05, 0.3, orthant, eps=1e-4, backend="reference")
    obproxsg_step(params, grads, 0.05, 0.3, orthant, eps=1e-4, backend=gpu_backend)
    for i, (actual, wanted) in enumerate(zip(params, expected)):
        assert actual.dtype == dtype
        assert_close(actual, wanted, dtype, msg=f"params[{i}]")


@pytest.mark.parametrize("gpu_backend", gpu_backends(OP))
def test_nan_and_mixed_dtypes_on_gpu(gpu_backend):
    require(OP, gpu_backend)
    params = [torch.randn(5000, device=DEVICE), torch.randn(300, device=DEVICE).half()]
    grads = [torch.randn(5000, device=DEVICE), torch.randn(300, device=DEVICE).half()]
    params[0][7] = float("nan")
    grads[1][3] = float("nan")
    params[1][3] = 0
    for orthant in (False, True):
        expected = [p.clone() for p in params]
        obproxsg_step(expected, grads, 0.1, 0.01, orthant, backend="reference")
        obproxsg_step(params, grads, 0.1, 0.01, orthant, backend=gpu_backend)
        for actual, wanted in zip(params, expected):
            assert_close(actual, wanted)
        assert torch.isnan(params[0][7]) and (torch.isnan(params[1][3]) or not orthant)


def _aliasing_cases():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [(backend, device) for device in devices for backend in available_backends(OP, device)]


@pytest.mark.parametrize("backend, device", _aliasing_cases())
def test_refuses_aliased_parameters_in_every_backend(backend, device):
    x = torch.zeros(6, 8, device=device)
    cases = ([x, x], [x.t()[:4], x.t()[2:6]], [x[:, ::2], x[:, ::3]])
    for params in cases:
        before = x.clone()
        with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
            obproxsg_step(params, [torch.ones_like(p) for p in params], 0.1, 0.01, False, backend=backend)
        assert torch.equal(x, before)
    obproxsg_step([x[:3], x[3:]], [torch.ones(3, 8, device=device)] * 2, 0.1, 0.0, False, backend=backend)
    assert torch.equal(x, torch.full_like(x, -0.1))


def test_fuzz_against_the_reference():
    backends = fast_backends(OP)
    rng = np.random.default_rng(11)
    torch.manual_seed(11)
    for case in range(FUZZ_CASES * 4):
        dtype = (torch.float32, torch.float64)[case % 2]
        params, described = fuzz_inputs(rng, 2, dtype)
        grads = [torch.randn(p.shape, dtype=dtype) for p in params]
        for p in params:
            p.mul_(torch.rand(p.shape, dtype=dtype) > 0.3)  # zeros for the orthant step to hold
        orthant, lr, lam = bool(case % 3 == 0), float(rng.uniform(0, 0.5)), float(rng.uniform(0, 0.5))
        expected = [p.clone() for p in params]
        obproxsg_step(expected, grads, lr, lam, orthant, 0.001, backend="reference")
        for backend in backends:
            actual = [p.clone() for p in params]
            obproxsg_step(actual, grads, lr, lam, orthant, 0.001, backend=backend)
            for a, e in zip(actual, expected):
                assert_close(a, e, msg=f"obproxsg {backend} orthant={orthant}, {described}")
