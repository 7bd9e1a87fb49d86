"""Loss modules over the ops, shaped for trainers such as BasicSR.

Every loss takes ``loss_weight`` (a factor on its value) and ``backend`` (see
:mod:`cdism_fast.ops`) and is called as ``loss(pred, target)``, or
``loss(student, teacher, gt)`` for :class:`DistillationLoss`. The optional
``weight`` argument of BasicSR's calling convention is accepted: element-wise
weights for :class:`CharbonnierLoss`, and only ``None`` for the pyramid losses,
whose levels have no per-pixel correspondence with the input.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ops import (
    CHARBONNIER_EPS,
    STUDENT_LOSSES,
    charbonnier,
    check_levels,
    check_nonnegative,
    check_reduction,
    distillation_loss,
    laplacian_loss,
)


def _check_loss_weight(loss_weight) -> float:
    if isinstance(loss_weight, bool) or not isinstance(loss_weight, (int, float)):
        raise ValueError(f"loss_weight must be a number, got {loss_weight!r}")
    return float(loss_weight)


def _refuse_weight(loss: nn.Module, weight) -> None:
    if weight is not None:
        raise ValueError(f"weight must be None for {type(loss).__name__} (its pyramid levels have no "
                         f"per-pixel correspondence with the input), got a {type(weight).__name__}")


def _check_weight(weight, pred: torch.Tensor) -> None:
    if isinstance(weight, torch.Tensor):
        try:
            if torch.broadcast_shapes(weight.shape, pred.shape) == pred.shape:
                return
        except RuntimeError:
            pass
    shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
    raise ValueError(f"weight must be a tensor that broadcasts to pred's shape {tuple(pred.shape)}, got {shape}")


class CharbonnierLoss(nn.Module):
    """``loss_weight * charbonnier(pred, target, eps, reduction)``.

    With element-wise ``weight`` (broadcast to ``pred``), the loss of each element
    is multiplied by it; "mean" then divides by the sum of the broadcast weights
    (BasicSR's weighted mean).

    >>> import torch
    >>> from cdism_fast.nn import CharbonnierLoss
    >>> _ = torch.manual_seed(0)
    >>> pred, target = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    >>> CharbonnierLoss(loss_weight=2.0)
    CharbonnierLoss(eps=0.001, reduction='mean', loss_weight=2.0)
    >>> round(CharbonnierLoss(loss_weight=2.0)(pred, target).item(), 4)
    0.6409
    """

    def __init__(self, eps: float = CHARBONNIER_EPS, reduction: str = "mean", loss_weight: float = 1.0,
                 backend: str = "auto"):
        super().__init__()
        check_nonnegative("eps", eps)
        check_reduction(reduction, ("mean", "sum", "none"))
        self.eps, self.reduction, self.backend = float(eps), reduction, backend
        self.loss_weight = _check_loss_weight(loss_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        if weight is None:
            return self.loss_weight * charbonnier(pred, target, self.eps, self.reduction, self.backend)
        _check_weight(weight, pred)
        weighted = charbonnier(pred, target, self.eps, "none", self.backend) * weight
        if self.reduction == "mean":
            weighted = weighted.sum() / weight.expand_as(weighted).sum()
        elif self.reduction == "sum":
            weighted = weighted.sum()
        return self.loss_weight * weighted

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}, loss_weight={self.loss_weight}"


class LaplacianPyramidLoss(nn.Module):
    """``loss_weight * laplacian_loss(pred, target, levels, reduction)``.

    >>> import torch
    >>> from cdism_fast.nn import LaplacianPyramidLoss
    >>> _ = torch.manual_seed(0)
    >>> pred, target = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    >>> round(LaplacianPyramidLoss(levels=3)(pred, target).item(), 4)
    0.693
    """

    def __init__(self, levels: int = 5, reduction: str = "mean", loss_weight: float = 1.0,
                 backend: str = "auto"):
        super().__init__()
        check_levels(levels)
        check_reduction(reduction)
        self.levels, self.reduction, self.backend = levels, reduction, backend
        self.loss_weight = _check_loss_weight(loss_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, weight: None = None) -> torch.Tensor:
        _refuse_weight(self, weight)
        return self.loss_weight * laplacian_loss(pred, target, self.levels, self.reduction, self.backend)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, reduction={self.reduction!r}, loss_weight={self.loss_weight}"


class DistillationLoss(nn.Module):
    """``loss_weight * distillation_loss(student, teacher, gt, ...)``, eq. (8)-(9) of the paper.

    Called as ``loss(student_output, teacher_output, gt)``; no gradient flows into
    the teacher output.

    >>> import torch
    >>> from cdism_fast.nn import DistillationLoss
    >>> _ = torch.manual_seed(0)
    >>> student, teacher = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    >>> round(DistillationLoss(alpha=0.1, levels=3)(student, teacher, student).item(), 4)
    1.0553
    """

    def __init__(self, alpha: float = 0.1, student_loss: str = "l1", levels: int = 5, reduction: str = "mean",
                 loss_weight: float = 1.0, backend: str = "auto"):
        super().__init__()
        check_nonnegative("alpha", alpha)
        if student_loss not in STUDENT_LOSSES:
            raise ValueError(f"student_loss must be one of {STUDENT_LOSSES}, got {student_loss!r}")
        check_levels(levels)
        check_reduction(reduction)
        self.alpha, self.student_loss, self.levels, self.reduction = float(alpha), student_loss, levels, reduction
        self.backend = backend
        self.loss_weight = _check_loss_weight(loss_weight)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, gt: torch.Tensor,
                weight: None = None) -> torch.Tensor:
        _refuse_weight(self, weight)
        return self.loss_weight * distillation_loss(student, teacher, gt, self.alpha, self.student_loss,
                                                    self.levels, self.reduction, self.backend)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, student_loss={self.student_loss!r}, levels={self.levels}, "
                f"reduction={self.reduction!r}, loss_weight={self.loss_weight}")
