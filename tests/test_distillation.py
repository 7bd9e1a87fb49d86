"""Distillation loss (eq. 8-9): every backend against a float64 NumPy formulation.

Small cases run on CPU tensors (reference, cpp, Triton in its interpreter), a
training batch on a CUDA device (see tests/op_targets.py).
"""
import pytest
import torch

import cdism_fast.ops as ops
from cdism_fast.ops import CHARBONNIER_EPS, BackendUnavailable, distillation_loss, samples

import float64_references as ref
from helpers.fuzz import fuzz_image_op
from op_targets import (
    DEVICE,
    cpu_backends,
    float64_reference,
    gpu_backends,
    loss_scale,
    relative,
    require,
    skip_without_cpp,
)
from tolerances import assert_close, assert_compiles_like_eager

OP = "distillation_loss"
BACKENDS = cpu_backends(OP)
CASES = [((2, 3, 32, 48), 5), ((2, 3, 37, 41), 5), ((1, 2, 20, 9), 3), ((2, 1, 5, 3), 2), ((1, 1, 4, 6), 1)]


def _triple(shape, dtype=torch.float32):
    gt = torch.rand(shape, dtype=dtype)
    return gt + 0.05 * torch.randn(shape, dtype=dtype), gt + 0.02 * torch.randn(shape, dtype=dtype), gt


def _expected(student, teacher, gt, alpha=0.1, student_loss="l1", levels=5, reduction="mean"):
    value = ref.distillation_loss(ref.as_float64(student), ref.as_float64(teacher), ref.as_float64(gt),
                                  alpha, student_loss, levels, reduction)
    return torch.tensor(value, dtype=torch.float64)


def _student_grad(student, teacher, gt, backend, **kwargs):
    s = student.detach().clone().requires_grad_()
    distillation_loss(s, teacher, gt, backend=backend, **kwargs).backward()
    return s.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("student_loss", ["l1", "charbonnier"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape, levels", CASES)
def test_matches_float64_numpy(backend, student_loss, reduction, shape, levels):
    student, teacher, gt = _triple(shape)
    kwargs = dict(alpha=0.3, student_loss=student_loss, levels=levels, reduction=reduction)
    loss = distillation_loss(student, teacher, gt, backend=backend, **kwargs)
    assert loss.shape == () and loss.dtype == student.dtype
    assert_close(loss, _expected(student, teacher, gt, **kwargs))
    triple64 = [t.double() for t in (student, teacher, gt)]
    assert_close(distillation_loss(*triple64, backend=backend, **kwargs), _expected(*triple64, **kwargs))


def test_equal_student_and_teacher_leave_the_student_term():
    student, _, gt = _triple((2, 3, 24, 20))
    for backend in ops.available_backends(OP):
        loss = distillation_loss(student, student, gt, alpha=0.5, backend=backend)
        assert_close(loss, 0.5 * (student.double() - gt.double()).abs().mean(), dtype=torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("student_loss", ["l1", "charbonnier"])
def test_student_gradient_only_and_layouts(backend, student_loss):
    student, teacher, gt = _triple((2, 3, 21, 26))
    kwargs = dict(student_loss=student_loss, levels=4)
    expected = _student_grad(student, teacher, gt, "reference", **kwargs)
    for (name, s), t in zip(ref.layouts(student).items(), ref.layouts(teacher).values()):
        s.requires_grad_(), t.requires_grad_()
        distillation_loss(s, t, gt, backend=backend, **kwargs).backward()
        assert_close(s.grad, expected, msg=name)
        assert t.grad is None  # the teacher output is a constant


@pytest.mark.parametrize("backend", BACKENDS)
def test_gt_requiring_a_gradient(backend):
    student, teacher, gt = _triple((1, 2, 20, 18))
    gt = gt.requires_grad_()
    if backend == "cpp":
        with pytest.raises(BackendUnavailable, match="gt requires a gradient"):
            distillation_loss(student, teacher, gt, backend="cpp")
        backend = "auto"  # falls back to a backend that differentiates gt
    distillation_loss(student, teacher, gt, alpha=0.2, backend=backend).backward()
    gt_ref = gt.detach().clone().requires_grad_()
    distillation_loss(student, teacher, gt_ref, alpha=0.2, backend="reference").backward()
    assert_close(gt.grad, gt_ref.grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("student_loss", ["l1", "charbonnier"])
@pytest.mark.parametrize("shape, levels, fast", [((2, 1, 5, 3), 2, False), ((1, 2, 9, 10), 3, True)])
def test_gradcheck_float64(backend, student_loss, shape, levels, fast):
    student, teacher, gt = _triple(shape, torch.float64)
    student.requires_grad_()
    fn = lambda s: distillation_loss(s, teacher, gt, 0.4, student_loss, levels, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (student,), fast_mode=fast)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(backend, dtype):
    student, teacher, gt = (t.to(dtype) for t in _triple((2, 3, 33, 35)))
    student.requires_grad_()
    loss = distillation_loss(student, teacher, gt, backend=backend)
    assert loss.dtype == dtype
    assert_close(loss, _expected(student, teacher, gt))
    loss.backward()
    assert student.grad.dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    student, teacher, gt = _triple((2, 3, 34, 33))
    assert_compiles_like_eager(lambda s, t, g: distillation_loss(s, t, g, student_loss="charbonnier", backend=backend),
                               student, teacher, gt, backend=backend)


@skip_without_cpp(OP)
def test_opcheck():
    op = torch.ops.cdism_fast.distillation_loss
    student, teacher, gt = _triple((2, 3, 19, 17))
    eps = CHARBONNIER_EPS
    torch.library.opcheck(op, (student.requires_grad_(), teacher, gt, 0.1, False, eps, 3, True, True))
    torch.library.opcheck(op, (student.detach(), teacher, gt, 0.5, True, eps, 2, False, False))
    s64, t64, g64 = (t.double().contiguous(memory_format=torch.channels_last) for t in _triple((1, 2, 9, 8)))
    torch.library.opcheck(op, (s64.requires_grad_(), t64, g64, 0.2, True, eps, 2, True, True))
    torch.library.opcheck(op, (student.detach().bfloat16(), teacher.bfloat16(), gt.bfloat16(), 0.1, False, eps, 4,
                               True, False))


@skip_without_cpp(OP)
def test_kernel_takes_the_charbonnier_eps_from_its_arguments():
    student, teacher, gt = _triple((1, 2, 9, 8), torch.float64)
    s64, t64, g64 = (ref.as_float64(t) for t in (student, teacher, gt))
    pyramid_terms = ref.distillation_loss(s64, t64, g64, 0.0, "l1", 2, "mean")
    for eps in (CHARBONNIER_EPS, 0.5):
        loss, _ = torch.ops.cdism_fast.distillation_loss(student, teacher, gt, 0.3, True, eps, 2, True, False)
        expected = pyramid_terms + 0.3 * ref.charbonnier(s64, g64, eps, "mean")
        assert_close(loss, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_nan_out(backend):
    student, teacher, gt = _triple((1, 2, 20, 20))
    student[0, 1, 3, 4] = float("nan")
    student.requires_grad_()
    loss = distillation_loss(student, teacher, gt, backend=backend)
    assert loss.isnan()
    loss.backward()
    # The gradient follows torch's sign(nan) = 0, as the reference's autograd does.
    assert_close(student.grad, _student_grad(student, teacher, gt, "reference"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(student_loss="l2"), "student_loss must be one of"),
    (dict(alpha=-0.1), "alpha must be >= 0"),
    (dict(alpha=float("nan")), "alpha must be >= 0"),
    (dict(levels=0), "levels must be an integer >= 1"),
    (dict(reduction="none"), "reduction must be one of"),
    (dict(teacher=torch.rand(2, 3, 32, 30)), "student and teacher must have the same shape"),
    (dict(gt=torch.rand(2, 3, 32, 32).half()), "student and gt must have the same dtype"),
    (dict(student=torch.rand(2, 3, 16, 32), teacher=torch.rand(2, 3, 16, 32), gt=torch.rand(2, 3, 16, 32)),
     "at least 17x17"),
    (dict(student=torch.rand(1, 1, 2, 8), teacher=torch.rand(1, 1, 2, 8), gt=torch.rand(1, 1, 2, 8), levels=1),
     "at least 3x3"),
])
def test_bad_input(kwargs, match):
    args = dict(student=torch.rand(2, 3, 32, 32), teacher=torch.rand(2, 3, 32, 32), gt=torch.rand(2, 3, 32, 32))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        distillation_loss(**args)


@pytest.mark.parametrize("backend", cpu_backends(OP, triton=True))
def test_charbonnier_student_loss_and_gradient(backend, monkeypatch):
    # The high-pass filter inside runs on "auto": the reference here, not a C++ build.
    monkeypatch.setenv("CDISM_BACKEND", "reference")
    student_loss = "charbonnier"
    student = torch.randn(2, 3, 16, 20, requires_grad=True)
    teacher, gt = torch.randn(2, 3, 16, 20), torch.randn(2, 3, 16, 20)
    loss = distillation_loss(student, teacher, gt, 0.1, student_loss, 3, backend=backend)
    (grad,) = torch.autograd.grad(loss, student)
    expected = ref.distillation_loss(ref.as_float64(student), ref.as_float64(teacher), ref.as_float64(gt), 0.1,
                                     student_loss, 3, "mean")
    assert_close(loss, torch.tensor(expected))
    reference = distillation_loss(student, teacher, gt, 0.1, student_loss, 3, backend="reference")
    (expected_grad,) = torch.autograd.grad(reference, student)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize("backend", gpu_backends(OP))
@pytest.mark.parametrize("dtype", samples.GPU_DTYPES)
def test_training_batch_on_gpu(backend, dtype):
    require(OP, backend)
    require("gaussian_highpass", "cuda")  # the high-pass filter inside runs on "auto"
    shape = samples.DISTILLATION_LOSS_GPU.shape
    student = torch.randn(shape, device=DEVICE).to(dtype).requires_grad_()
    teacher, gt = (torch.randn(shape, device=DEVICE).to(dtype) for _ in range(2))
    loss = distillation_loss(student, teacher, gt, backend=backend)
    (grad,) = torch.autograd.grad(loss, student, loss_scale(dtype))
    expected, (s64, _, _) = float64_reference(ops.distillation_loss, student, teacher, gt)
    (expected_grad,) = torch.autograd.grad(expected, s64, loss_scale(torch.float64))
    assert_close(loss, expected, dtype)
    assert_close(relative(grad, expected_grad), relative(expected_grad, expected_grad), dtype)


def test_fuzz_against_the_reference():
    fuzz_image_op(OP, 3, lambda x, y, z, backend: distillation_loss(x, y, z, levels=3, backend=backend))


def test_huge_levels_are_refused_in_one_line():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="levels must be an integer >= 1 and <= 32, got 1000000"):
        distillation_loss(x, x, x, levels=10 ** 6)
