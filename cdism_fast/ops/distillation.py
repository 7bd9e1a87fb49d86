"""The distillation loss of the paper, eq. (8)-(9):

    alpha * L_stu(student, gt) + laplacian_loss(student, teacher)
          + laplacian_loss(HF(student), HF(teacher))

with HF the Gaussian high-pass filter. The teacher output is a constant (no
gradient flows into it). ``student_loss`` is "l1" (mean absolute error, what
EDSR and SwinIR were trained with) or "charbonnier" (eps = CHARBONNIER_EPS, the
paper's 1e-3); ``reduction``
("mean" or "sum") applies to the student loss and to each pyramid level alike.

Backends: ``reference`` (the ops' references composed), ``cpp`` (one fused
sweep per image plane on CPU, computing the loss and the student's gradient) and
``triton`` (the composition with the pyramids in Triton, on CUDA tensors).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _extension
from . import triton as _triton
from ._checks import accumulation_dtype, check_nonnegative, check_pair, check_reduction
from ._dispatch import new_op
from .charbonnier import CHARBONNIER_EPS, charbonnier_reference
from .gaussian import MIN_SIZE as HIGHPASS_MIN_SIZE
from .gaussian import gaussian_highpass_reference
from .laplacian import check_levels, laplacian_loss_reference, min_size, needs_grad, register_loss_autograd

OP = new_op("distillation_loss")

#: The student losses L_stu of eq. (8); "charbonnier" uses CHARBONNIER_EPS.
STUDENT_LOSSES = ("l1", "charbonnier")


@OP.implementation("reference", devices=("cpu", "cuda"))
def distillation_loss_reference(student, teacher, gt, alpha, student_loss, levels, reduction):
    dtype, acc = student.dtype, accumulation_dtype(student.dtype)
    student, teacher, gt = student.to(acc), teacher.detach().to(acc), gt.to(acc)
    if student_loss == "l1":
        stu = F.l1_loss(student, gt, reduction=reduction)
    else:
        stu = charbonnier_reference(student, gt, CHARBONNIER_EPS, reduction)
    pyramid = laplacian_loss_reference(student, teacher, levels, reduction)
    high_freq = laplacian_loss_reference(gaussian_highpass_reference(student),
                                         gaussian_highpass_reference(teacher), levels, reduction)
    return (alpha * stu + pyramid + high_freq).to(dtype)


def _cpp_check(student, teacher, gt, alpha, student_loss, levels, reduction):
    if needs_grad(gt):
        return "gt requires a gradient, and the fused kernel treats gt as a constant"
    return None


@OP.implementation("cpp", devices=("cpu",), requirement=lambda: _extension.missing_reason("cpp"), check=_cpp_check)
def distillation_loss_cpp(student, teacher, gt, alpha, student_loss, levels, reduction):
    loss, _ = torch.ops.cdism_fast.distillation_loss(student, teacher, gt, float(alpha), student_loss == "charbonnier",
                                                     CHARBONNIER_EPS, levels, reduction == "mean", needs_grad(student))
    return loss.to(student.dtype)


@OP.implementation("triton", devices=_triton.DEVICES, dtypes=_triton.DTYPES, requirement=_triton.missing_reason)
def distillation_loss_triton(student, teacher, gt, alpha, student_loss, levels, reduction):
    return _triton.laplacian.distillation_loss_triton(student, teacher, gt, alpha, student_loss, levels, reduction)


@_extension.on_load("cpp")
def _register_cpp_op():
    @torch.library.register_fake("cdism_fast::distillation_loss")
    def _(student, teacher, gt, alpha, charbonnier, eps, levels, mean, with_grad):
        acc = accumulation_dtype(student.dtype)
        grad = torch.empty_like(student, dtype=acc) if with_grad else student.new_empty((0,), dtype=acc)
        return student.new_empty((), dtype=acc), grad

    # Only the student receives a gradient: the teacher is a constant, and gt is
    # one too on this backend (see _cpp_check).
    register_loss_autograd("cdism_fast::distillation_loss", (1, None, None, None, None, None, None, None, None))


#: The pyramid depth of the distillation loss unless told otherwise.
PYRAMID_LEVELS = 5


def distillation_min_size(levels: int = PYRAMID_LEVELS) -> int:
    """Smallest height and width the images of :func:`distillation_loss` may have.

    >>> from cdism_fast.ops import distillation_min_size
    >>> distillation_min_size()  # a five-level pyramid: 2**4 + 1
    17
    """
    return max(min_size(levels), HIGHPASS_MIN_SIZE)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, gt: torch.Tensor, alpha: float = 0.1,
                      student_loss: str = "l1", levels: int = PYRAMID_LEVELS, reduction: str = "mean",
                      backend: str = "auto") -> torch.Tensor:
    """alpha * L_stu(student, gt) + laplacian_loss(student, teacher)
    + laplacian_loss(HF(student), HF(teacher)) (see the module docstring).

    All three are NCHW batches of one shape and dtype; images must be larger than
    2^(levels-1) pixels (and at least 3) in each direction. No gradient flows
    into ``teacher``. Returns the student's dtype.

    >>> import torch
    >>> from cdism_fast.ops import distillation_loss
    >>> _ = torch.manual_seed(0)
    >>> student, teacher = torch.rand(1, 3, 8, 8).requires_grad_(), torch.rand(1, 3, 8, 8)
    >>> loss = distillation_loss(student, teacher, gt=student.detach(), levels=3)
    >>> round(loss.item(), 4)
    1.0553
    >>> loss.backward()
    >>> tuple(student.grad.shape), teacher.grad
    ((1, 3, 8, 8), None)
    """
    check_levels(levels)
    size = distillation_min_size(levels)
    check_pair("student", student, "teacher", teacher, size)
    check_pair("student", student, "gt", gt, size)
    check_reduction(reduction, x=student)
    check_nonnegative("alpha", alpha)
    if student_loss not in STUDENT_LOSSES:
        raise ValueError(f"student_loss must be one of {STUDENT_LOSSES}, got {student_loss!r}")
    return OP(backend, student, student, teacher, gt, alpha, student_loss, levels, reduction)
