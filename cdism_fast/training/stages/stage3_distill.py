"""Stage 3: the compact student distilled from the frozen teacher (or, as the ablation, trained without it)."""
from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ...ops import STUDENT_LOSSES
from .. import distributed
from ..artifacts import (
    build_from_spec,
    data_source,
    model_spec,
    records_failure,
    stage_inputs,
)
from ..engine import (
    Trainer,
    uses_channels_last,
)
from .common import (
    StageResult,
    StageSettings,
    finish_stage,
    fit_stage,
    make_validator,
    settings_record,
    stage_patches,
    start_stage,
    step_scheduler,
    to_unit,
    training_pairs,
    validation_sets,
)

#: ``family:n_b,n_l,n_c``, a student named by its structure (e.g. ``edsr:8,1,16``).
STRUCTURE_SPEC = re.compile(r"^([a-z_]+):(\d+),(\d+),(\d+)$")


def student_from(spec_or_file, scale: int = 2) -> nn.Module:
    """An untrained student from a model, a student.json (stage 2's output) or its dict, a preset
    name of :mod:`cdism_fast.models` or ``family:n_b,n_l,n_c`` (both at ×``scale``)."""
    if isinstance(spec_or_file, nn.Module):
        return spec_or_file
    source = "the student spec"
    if isinstance(spec_or_file, (str, Path)):
        from ...models import ARCHITECTURES, build, from_structure
        from ..artifacts import read_json

        text = str(spec_or_file)
        path = Path(spec_or_file)
        if path.is_file():
            spec_or_file, source = read_json(path, "student file"), f"student file {path}"
        elif text in ARCHITECTURES:
            return build(text, scale=scale)
        elif match := STRUCTURE_SPEC.match(text):
            family, n_b, n_l, n_c = match.group(1), *map(int, match.groups()[1:])
            return from_structure(family, n_c=n_c, n_l=n_l, n_b=n_b, scale=scale)
        elif path.suffix or len(path.parts) > 1:
            raise FileNotFoundError(f"student file {path} does not exist; pass the student.json that "
                                    "`cdism-fast compress` wrote, a preset or family:n_b,n_l,n_c")
        else:
            raise ValueError(f"student must be a student.json, a preset ({', '.join(ARCHITECTURES)}) or "
                             f"family:n_b,n_l,n_c (e.g. edsr:8,1,16), got {text!r}")
    spec = spec_or_file.get("student", spec_or_file) if isinstance(spec_or_file, dict) else None
    if not isinstance(spec, dict):
        raise ValueError(f"{source} does not describe a model (no family and config); pass the student.json "
                         "that `cdism-fast compress` wrote")
    try:
        return build_from_spec(spec)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def _scale_of(model: nn.Module) -> int:
    """The model's ``scale`` attribute, or the scale measured on a probe input."""
    scale = getattr(model, "scale", None)
    if isinstance(scale, int) and not isinstance(scale, bool):
        return scale
    from ...evaluation import infer_scale

    return infer_scale(model)


def _describe(model: nn.Module) -> dict:
    """The family record of a family model, the class name of any other module."""
    try:
        return model_spec(model)
    except ValueError:
        return {"module": type(model).__name__}


@records_failure
def distill(teacher: Optional[nn.Module], student, out_dir, settings: StageSettings, data=None, val=None, *,
            kd: bool = True, alpha: float = 0.1, student_loss: str = "l1", reduction: str = "mean",
            teacher_cache=True, resume: bool = False, overwrite: bool = False, scale: Optional[int] = None,
            context: distributed.DistributedContext | None = None, inputs: dict | None = None) -> StageResult:
    """Stage 3: train ``student`` (re-initialised from ``settings.seed``) with AdaMax, betas (0.9, 0.99).

    With ``kd`` the loss is ``distillation_loss(student(x), teacher(x), gt,
    alpha, student_loss)``; the teacher is frozen, in eval mode, and runs under
    ``no_grad`` (in the autocast dtype when AMP is on). Without ``kd`` (the
    ablation) the loss is ``student_loss(student(x), gt)`` alone and no teacher
    is needed. The teacher may be any module mapping RGB [0, 1] to RGB [0, 1] at
    the student's scale (another family than the student's, too); another scale is
    refused before anything is written. ``student``: a model, a student.json or its
    dict, a preset or ``family:n_b,n_l,n_c`` (these two at ``scale``, default: the
    teacher's, else 2). ``reduction``
    is the distillation loss's: ``"mean"`` per pyramid level (the authors'
    released code) or ``"sum"`` (Niklaus and Liu's Laplacian loss).

    ``teacher_cache``: True (default) runs the teacher once per whole training
    image before training and trains on its stored outputs (see
    :mod:`~cdism_fast.training.teacher_cache`: the teacher sees the whole
    image, and flips are applied to its output instead of its input), in
    :func:`~cdism_fast.training.teacher_cache.default_cache_folder`; a folder
    puts the cache there; False runs the teacher on every patch.
    """
    _check_losses(student_loss, reduction)
    if kd and teacher is None:
        raise ValueError("teacher is required for distillation (kd=True); pass kd=False for the ground-truth-only "
                         "ablation")
    teacher_scale = _scale_of(teacher) if teacher is not None and kd else None
    student = student_from(student, scale=scale or teacher_scale or 2)
    if teacher_scale is not None and teacher_scale != student.scale:
        raise ValueError(f"the teacher upscales ×{teacher_scale} but the student ×{student.scale}; distill from a "
                         "teacher of the student's scale (nothing was written)")
    context = context or distributed.setup()
    torch.manual_seed(settings.seed)  # the same initial student for the KD run and its ablation
    model = build_from_spec(model_spec(student))
    kind = "distill" if kd else "distill-no-kd"
    record = settings_record(settings, kd=kd, alpha=alpha, student_loss=student_loss, reduction=reduction,
                             student=model_spec(model), teacher=_describe(teacher) if teacher is not None else None,
                             data=data_source(data))
    given = {**(inputs or {}), "--student": student if isinstance(student, (str, Path)) else None}
    start_stage(out_dir, kind, record, resume, overwrite, stage_inputs(data, val, given))
    teacher = _frozen(teacher, context.device, settings) if teacher is not None and kd else None
    optimizer = torch.optim.Adamax(model.parameters(), lr=settings.lr, betas=(0.9, 0.99))
    pairs = training_pairs(data, model.scale)
    patches = stage_patches(pairs, settings)
    cache = _teacher_cache(teacher, patches, teacher_cache, settings) if kd and teacher_cache else None
    step_loss = _step_loss(teacher, cache, alpha=alpha, student_loss=student_loss, reduction=reduction)
    trainer = Trainer(model, step_loss, optimizer, patches,
                      settings.train_config("stage 3: distill" if kd else "stage 3: no-KD ablation"), out_dir,
                      scheduler=step_scheduler(optimizer, settings), context=context, kind=kind,
                      validate=make_validator(validation_sets(val, data, model.scale), model.scale),
                      metadata={"student": model_spec(model), "kd": kd, "alpha": alpha, "student_loss": student_loss,
                                "reduction": reduction, "teacher_cache": str(cache.folder) if cache else None})
    return finish_stage(fit_stage(trainer, out_dir, resume), trainer, out_dir, extra_info={"kd": kd})


def _check_losses(student_loss: str, reduction: str) -> None:
    if student_loss not in STUDENT_LOSSES:
        raise ValueError(f"student_loss must be one of {STUDENT_LOSSES}, got {student_loss!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _frozen(teacher: nn.Module, device, settings: StageSettings) -> nn.Module:
    """A copy of the teacher on the training device, in eval mode, without gradients, in the faster layout."""
    teacher = copy.deepcopy(teacher).to(device).eval().requires_grad_(False)
    if uses_channels_last(settings.channels_last, device, teacher):
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher


def _step_loss(teacher: Optional[nn.Module], cache, *, alpha: float, student_loss: str, reduction: str) -> Callable:
    """``loss(student, batch)`` of one step: the distillation loss against the cached or the live teacher's
    output, or (no teacher: the ablation) the student loss against the ground truth alone."""
    from ...ops import charbonnier, distillation_loss

    def gt_loss(output, hr):
        if student_loss == "l1":
            return torch.nn.functional.l1_loss(output, hr)
        return charbonnier(output, hr)

    def step_loss(net, batch):
        lr, hr = to_unit(batch[:2])
        output = net(lr).float()
        if teacher is None:
            return gt_loss(output, hr)
        if cache is not None:
            target = cache.targets_for(batch[2], lr)
        else:
            with torch.no_grad():
                target = teacher(lr).float()
        return distillation_loss(output, target, hr, alpha=alpha, student_loss=student_loss, reduction=reduction)

    return step_loss


def _teacher_cache(teacher: nn.Module, patches, folder, settings: StageSettings):
    """The teacher's outputs on every training image, checked and built before training (see distill)."""
    from ..engine import AMP_DTYPES
    from ..teacher_cache import TeacherCache, default_cache_folder

    cache = TeacherCache(default_cache_folder() if folder is True else folder, teacher, patches,
                         amp_dtype=AMP_DTYPES[settings.amp], progress=settings.progress)
    cache.prepare()
    patches.use_targets(cache)
    return cache
