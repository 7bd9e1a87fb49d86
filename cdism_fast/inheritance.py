"""Students that start from their teacher: the compact structure's weights sliced out of the teacher.

A student of the teacher's family (stage 2's compressed structure, same options) can take its initial weights
from the teacher instead of a random initialisation (``distill --init inherit``). What to keep is chosen from
the magnitudes of a *pruned* copy of the teacher (stage 1's output, whose λ‖θ‖₁ fine-tune has zeroed what
matters least; without one, the teacher's own magnitudes):

* **blocks**: the student's N̂_b blocks are the teacher's N̂_b deep-feature blocks of the largest L1 norm of
  weights (tensors of two or more dimensions), in their original order;
* **channels**: per channel space the family declares (:class:`~cdism_fast.models.Inheritance`: the residual
  stream shared by the shallow-feature module, every block and the reconstruction's input; each inner feature
  map of a kept block), the channels of the largest L1 norm summed over every kept weight that reads or writes
  them, in their original order;
* **layers**: a block keeps its first N̂_l − 1 layers and its last (:func:`~cdism_fast.models.kept_layers`).

The values copied are the teacher's (the pruned copy only chooses). The family says how each parameter's
dimensions map onto its channel spaces (:meth:`~cdism_fast.models.SRModel.inheritance`); a family that does
not, or a student of another family, another scale or other options, larger than the teacher in any of
the three knobs or needing more channels of one of its channel spaces than the teacher has (IMDN: a one-conv
block whose first conv would read a narrower feature map), cannot inherit, and :func:`inheritance_problem`
says why.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["inheritance_problem", "inherit", "block_scores", "channel_scores"]


def _family(model) -> str:
    return getattr(model, "family", None) or type(model).__name__


def inheritance_problem(teacher, student) -> Optional[str]:
    """Why ``student`` cannot take its weights from ``teacher`` (None: it can), in words that name both."""
    from .models import SRModel

    if not isinstance(teacher, SRModel) or not isinstance(student, SRModel) or type(teacher) is not type(student):
        return (f"the student is of family {_family(student)} and the teacher of family {_family(teacher)}: only a "
                "student of the teacher's own family can inherit its weights")
    if teacher.block_module is None:
        return f"family {teacher.family} cannot inherit: {teacher.inheritance_refusal}"
    if student.scale != teacher.scale:
        return f"the student is x{student.scale} and the teacher x{teacher.scale}"
    if student.inherited_options() != teacher.inherited_options():
        return (f"the student's options {student.inherited_options()} are not the teacher's "
                f"{teacher.inherited_options()}")
    larger = [f"{knob} {mine} > {theirs}" for knob, mine, theirs in
              zip(("n_b", "n_l", "n_c"), student.structure(), teacher.structure()) if mine > theirs]
    if larger:
        return f"the student is larger than the teacher ({', '.join(larger)})"
    plan = teacher.inheritance(student, list(range(student.structure().n_b)))  # the sizes do not depend on which
    mine = {name for name, _ in student.named_parameters()}
    if set(plan.weights) != mine:
        missing, extra = sorted(mine - set(plan.weights)), sorted(set(plan.weights) - mine)
        return (f"family {teacher.family}'s inheritance does not map the student's parameters (missing "
                f"{missing[:4]}, unknown {extra[:4]})")
    for name, (teacher_channels, student_channels) in plan.spaces.items():
        if not 0 <= student_channels <= teacher_channels:
            return (f"the student's structure {tuple(student.structure())} needs {student_channels} channels of the "
                    f"teacher's {teacher_channels} in {name}")
    return None


def _weights(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.dim() >= 2]


def block_scores(model) -> list[float]:
    """L1 norm of each deep-feature block's weights (tensors of two or more dimensions), in block order."""
    blocks = getattr(model, model.block_module)
    return [float(sum(p.detach().abs().sum(dtype=torch.float64) for p in _weights(block))) for block in blocks]


def _top(scores: torch.Tensor, count: int) -> list[int]:
    """The ``count`` largest scores' indices in ascending index order (ties go to the lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:count])


def _runs(dim_parts, spaces: dict, which: int) -> list[tuple]:
    """(part, offset, channels) of each part along a dimension, in the teacher (``which=0``) or student (1)."""
    runs, offset = [], 0
    for part in dim_parts:
        channels = part.size if part.space is None else spaces[part.space][which]
        runs.append((part, offset, channels))
        offset += channels * part.group
    return runs


def channel_scores(model, plan) -> dict[str, torch.Tensor]:
    """Per channel space of ``plan``, the L1 norm of ``model``'s kept weights along each of its channels."""
    scores = {name: torch.zeros(teacher, dtype=torch.float64) for name, (teacher, _) in plan.spaces.items()}
    parameters = dict(model.named_parameters())
    for target in plan.weights.values():
        tensor = parameters[target.source].detach()
        if tensor.dim() < 2:
            continue
        for dim, dim_parts in enumerate(target.dims):
            if dim_parts is None:
                continue
            others = [d for d in range(tensor.dim()) if d != dim]
            along = tensor.abs().sum(dim=others, dtype=torch.float64)
            for part, offset, channels in _runs(dim_parts, plan.spaces, 0):
                if part.space is not None:
                    scores[part.space] += along[offset: offset + channels * part.group].view(channels,
                                                                                             part.group).sum(1)
    return scores


def _indices(dim_parts, spaces: dict, kept: dict[str, list[int]]) -> torch.Tensor:
    teacher = _runs(dim_parts, spaces, 0)
    picked = []
    for part, offset, _ in teacher:
        if part.space is not None:
            picked += [offset + c * part.group + k for c in kept[part.space] for k in range(part.group)]
    return torch.tensor(picked, dtype=torch.long)


def inherit(student, teacher, pruned=None) -> dict:
    """Copy into ``student`` (in place) its slices of ``teacher``'s weights, the blocks and channels chosen from
    ``pruned``'s magnitudes (a pruned copy of ``teacher``; None: ``teacher``'s own); returns what was kept:
    ``{"blocks": teacher blocks (0-based), "channels": {space: teacher channels}, "chosen_from": ...}``.

    A ``ValueError`` says why when the student cannot inherit (:func:`inheritance_problem`), or when ``pruned``
    is not a copy of the teacher's architecture.
    """
    from .models import model_spec

    problem = inheritance_problem(teacher, student)
    if problem is not None:
        raise ValueError(problem)
    source = teacher if pruned is None else pruned
    if pruned is not None and model_spec(pruned) != model_spec(teacher):
        raise ValueError(f"the pruned model ({pruned.family} {model_spec(pruned)['config']}) is not a copy of the "
                         f"teacher ({teacher.family} {model_spec(teacher)['config']}); pass the model.pt that "
                         "`cdism-fast prune` wrote from this teacher")
    blocks = _top(torch.tensor(block_scores(source)), student.structure().n_b)
    plan = teacher.inheritance(student, blocks)
    mine = dict(student.named_parameters())
    kept = {name: _top(scores, plan.spaces[name][1]) for name, scores in channel_scores(source, plan).items()}
    weights = dict(teacher.named_parameters())
    with torch.no_grad():
        for name, target in plan.weights.items():
            value = weights[target.source].detach()
            for dim, dim_parts in enumerate(target.dims):
                if dim_parts is not None:
                    value = value.index_select(dim, _indices(dim_parts, plan.spaces, kept).to(value.device))
            if value.shape != mine[name].shape:
                raise ValueError(f"family {teacher.family}'s inheritance gives {name} the shape {tuple(value.shape)} "
                                 f"from {target.source}, but the student's is {tuple(mine[name].shape)}")
            mine[name].copy_(value)
    return {"blocks": blocks, "channels": kept, "chosen_from": "the teacher" if pruned is None else "the pruned model"}
