"""Stage 3: the compact student distilled from the frozen teacher (or, as the ablation, trained without it)."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ...ops import STUDENT_LOSSES
from .. import distributed
from ..artifacts import build_from_spec, mark_stage, model_spec, records_failure
from ..distributed import on_main
from .common import (
    CACHE_OFF,
    StageResult,
    StageSettings,
    TargetOptions,
    TeacherOutputs,
    check_cache_folder,
    finish_stage,
    frozen_teacher,
    open_stage,
    setting,
    teacher_targets,
    to_unit,
    train_stage,
    unlabelled_split,
)

#: How the distillation loss sums a pyramid level.
REDUCTIONS = ("mean", "sum")
#: The student's initial weights: sliced from the teacher, random, or the first where the student can inherit.
INITS = ("auto", "inherit", "scratch")


@dataclass(frozen=True)
class DistillOptions(TargetOptions):
    """The loss of stage 3, its targets and where the teacher's outputs are kept.

    ``reduction`` is the distillation loss's: ``"mean"`` per pyramid level (the
    authors' released code) or ``"sum"`` (Niklaus and Liu's Laplacian loss).
    ``targets``, ``holdout`` and ``teacher_cache`` are :class:`TargetOptions`'
    (shared with pruning): with ``targets="teacher"`` there is no ground truth,
    so the loss is the distillation term L_dis alone (``alpha`` does not apply).
    ``init``: the student's initial weights. ``"inherit"`` slices them out of the
    teacher (:mod:`cdism_fast.inheritance`: the blocks and channels of the largest
    magnitudes in the pruned teacher, stage 1's output), for a student of the
    teacher's own family; ``"scratch"`` draws them from ``seed``; ``"auto"``
    inherits where the student can and starts from scratch otherwise (a student of
    another family, e.g. EDSRmini from IMDN), saying so.
    """
    alpha: float = setting(0.1, help="weight of the student loss (not used with --targets teacher: no ground truth)")
    student_loss: str = setting("l1", help="the teacher family's original loss (l1: EDSR and SwinIR)",
                                choices=STUDENT_LOSSES)
    reduction: str = setting("mean", help="of the distillation loss, per pyramid level: mean (the authors' code; "
                                          "paper presets) or sum (Niklaus and Liu; the demo and cpu-291 presets)",
                             choices=REDUCTIONS)
    high_pass: bool = setting(True, help="the high-pass term L_Lap(HF(s), HF(t)) of eq. (9); --no-high-pass "
                                         "drops it (an ablation: the student loss and the pyramid term remain)")
    init: str = setting("scratch", help="the student's initial weights: inherit (sliced from the teacher, the "
                                        "blocks and channels of the largest magnitudes in the pruned teacher; a "
                                        "student of the teacher's family), scratch (random, from --seed) or auto "
                                        "(inherit where the student can, else scratch)", choices=INITS)

    def __post_init__(self):
        super().__post_init__()
        if self.student_loss not in STUDENT_LOSSES:
            raise ValueError(f"student_loss must be one of {STUDENT_LOSSES}, got {self.student_loss!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")


#: What distillation says once, in the log and on the terminal, when the targets are the teacher's outputs.
TEACHER_TARGETS_NOTE = ("targets: the teacher's outputs on the images of --data, each an LR input as it is (no ground "
                        "truth): the loss is L_dis alone, the alpha * L_stu term is dropped")


def teacher_only_loss(student: torch.Tensor, teacher: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """L_dis, the distillation loss without its ground-truth term: laplacian_loss(student, teacher) +
    laplacian_loss(HF(student), HF(teacher)) (what ``distillation_loss`` adds to alpha * L_stu)."""
    from ...ops import gaussian_highpass, laplacian_loss

    return (laplacian_loss(student, teacher, reduction=reduction)
            + laplacian_loss(gaussian_highpass(student), gaussian_highpass(teacher), reduction=reduction))


#: ``family:n_b,n_l,n_c``, a student named by its structure (e.g. ``edsr:8,1,16``).
STRUCTURE_SPEC = re.compile(r"^([a-z_]+):(\d+),(\d+),(\d+)$")


def student_from(spec_or_file, scale: int = 2) -> nn.Module:
    """An untrained student from a model, a student.json (stage 2's output) or its dict, a preset
    name of :mod:`cdism_fast.models` or ``family:n_b,n_l,n_c`` (both at ×``scale``)."""
    if isinstance(spec_or_file, nn.Module):
        return spec_or_file
    source = "the student spec"
    if isinstance(spec_or_file, (str, Path)):
        from ...evaluation import warn_name_over_file
        from ...models import ARCHITECTURES, build, from_structure
        from ..artifacts import read_json

        text = str(spec_or_file)
        path = Path(spec_or_file)
        if text in ARCHITECTURES:  # a preset name wins over a file of that name, as in load_model
            warn_name_over_file("--student", text, "the preset")
            return build(text, scale=scale)
        elif path.is_file():
            spec_or_file, source = read_json(path, "student file"), f"student file {path}"
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


def check_patch_size(patch_size: int, scale: int) -> None:
    """The distillation loss compares the student's output patches (``patch_size * scale`` pixels wide) through a
    Laplacian pyramid, which needs a minimum size."""
    from ...ops import distillation_min_size

    least = -(-distillation_min_size() // scale)
    if patch_size < least:
        raise ValueError(f"--patch-size {patch_size} is too small to distil at ×{scale}: the distillation loss needs "
                         f"output patches of at least {distillation_min_size()} pixels, so pass --patch-size {least} "
                         "or more (nothing was written)")


def _scale_of(model: nn.Module) -> int:
    """The model's ``scale`` attribute, or the scale measured on a probe input."""
    scale = getattr(model, "scale", None)
    if isinstance(scale, int) and not isinstance(scale, bool):
        return scale
    from ...evaluation import infer_scale

    return infer_scale(model)


def _describe(model: nn.Module) -> dict:
    """The family record of a family model, what was detected of an external one (spandrel's architecture,
    scale, parameters, size requirements, tags), the class name of any other module."""
    from ...models import model_record

    return model_record(model)


def init_problem(init: str, teacher: Optional[nn.Module], student: nn.Module) -> Optional[str]:
    """Why ``student`` will not inherit from ``teacher`` under ``init`` (None: it will, or ``init`` is scratch);
    ``init="inherit"`` turns a reason into a one-line ValueError naming it (raised before anything is written)."""
    from ...inheritance import inheritance_problem

    if init == "scratch":
        return None
    problem = "no teacher was given" if teacher is None else inheritance_problem(teacher, student)
    if problem is not None and init == "inherit":
        raise ValueError(f"--init inherit: {problem}; pass --init scratch (nothing was written)")
    return problem


def initial_weights(init: str, teacher: Optional[nn.Module], student: nn.Module,
                    pruned: Optional[nn.Module] = None) -> dict:
    """Give ``student`` its initial weights by ``init`` (see :class:`DistillOptions`): it keeps its random ones,
    or inherits ``teacher``'s, chosen by ``pruned``'s magnitudes (:func:`cdism_fast.inheritance.inherit`); returns
    what was done, and why, for ``stage.json``."""
    from ...inheritance import inherit

    problem = init_problem(init, teacher, student)
    if init == "scratch":
        return {"init": "scratch", "requested": init, "reason": "asked for"}
    if problem is not None:
        return {"init": "scratch", "requested": init, "reason": problem}
    kept = inherit(student, teacher, pruned)
    return {"init": "inherit", "requested": init,
            "reason": f"sliced from the teacher, blocks and channels chosen by {kept['chosen_from']}'s magnitudes",
            "blocks": kept["blocks"], "channels": kept["channels"]}


@records_failure
def distill(teacher: Optional[nn.Module], student, out_dir, settings: StageSettings,
            options: DistillOptions = DistillOptions(), data=None, val=None, *, kd: bool = True,
            scale: Optional[int] = None, resume: bool = False, overwrite: bool = False,
            context: distributed.DistributedContext | None = None, inputs: dict | None = None,
            pruned: Optional[nn.Module] = None) -> StageResult:
    """Stage 3: train ``student`` (initialised from ``settings.seed``, or from the teacher: ``options.init``) with
    AdaMax, betas (0.9, 0.99).

    With ``kd`` the loss is ``distillation_loss(student(x), teacher(x), gt,
    alpha, student_loss)`` with the options' ``alpha``, ``student_loss`` and
    ``reduction``; the teacher is frozen, in eval mode, and runs under
    ``no_grad`` (in the autocast dtype when AMP is on). Without ``kd`` (the
    ablation) the loss is ``student_loss(student(x), gt)`` alone, and a teacher, when given,
    only gives the initial weights of an inheriting student (so that the ablation starts where its KD twin
    does). The teacher may be any module mapping RGB [0, 1] to RGB [0, 1] at
    the student's scale (another family than the student's, too); another scale is
    refused before anything is written. ``student``: a model, a student.json or its
    dict, a preset or ``family:n_b,n_l,n_c`` (these two at ``scale``, default: the
    teacher's, else 2). ``pruned``: the pruned teacher (stage 1's model) whose magnitudes choose what an
    inheriting student keeps; None: the teacher's own.

    With ``options.targets == "teacher"`` each image of ``data`` is an LR input as
    it is, the target is the teacher's output on it (cached or live) and the loss
    is :func:`teacher_only_loss` alone (there is no ground truth: ``kd=False`` is
    refused); ``options.holdout`` images are held back and the student is validated
    against the teacher's output on them (``psnr_vs_teacher``), besides ``val``.
    """
    from ..teacher_cache import teacher_fingerprint

    if options.teacher_targets and not kd:
        raise ValueError("--targets teacher trains on the teacher's outputs, so there is no ground truth to train "
                         "the --no-kd ablation on; drop --no-kd, or pass --targets hr with HR images in --data "
                         "(nothing was written)")
    if kd and teacher is None:
        raise ValueError("teacher is required for distillation (kd=True); pass kd=False for the ground-truth-only "
                         "ablation")
    teacher_scale = _scale_of(teacher) if teacher is not None else None
    spec = student
    student = student_from(spec, scale=scale or teacher_scale or 2)
    if kd and teacher_scale != student.scale:
        raise ValueError(f"the teacher upscales ×{teacher_scale} but the student ×{student.scale}; distill from a "
                         "teacher of the student's scale (nothing was written)")
    if kd:
        check_patch_size(settings.patch_size, student.scale)
    cache_folder = check_cache_folder(options) if kd else None
    train_images, held = (unlabelled_split(data, student.scale, options.holdout) if options.teacher_targets
                          else (None, None))
    context = context or distributed.setup()
    torch.manual_seed(settings.seed)  # the same initial student for the KD run and its ablation
    model = build_from_spec(model_spec(student))
    init = initial_weights(options.init, teacher, model, pruned)
    inherits = init["init"] == "inherit"
    kind = "distill" if kd else "distill-no-kd"
    used = teacher is not None and kd
    recorded_options = {**asdict(options), "teacher_cache": str(cache_folder) if cache_folder else CACHE_OFF}
    record = {"kd": kd, **recorded_options, "student": model_spec(model),
              "teacher": _describe(teacher) if used or inherits else None,
              "teacher_weights": teacher_fingerprint(teacher) if used or inherits else None,
              "pruned_weights": teacher_fingerprint(pruned) if inherits and pruned is not None else None}
    if held is not None:
        record.update(holdout=len(held), **_teacher_targets_record(held))
    given = {**(inputs or {}), "--student": spec if isinstance(spec, (str, Path)) else None}
    pairs, patches = open_stage(out_dir, kind, settings, record, scale=model.scale, data=data, val=val,
                                resume=resume, overwrite=overwrite, inputs=given, device=context.device,
                                pairs=train_images)
    on_main(mark_stage, out_dir, init=init)
    if context.is_main:
        tqdm.write(f"{kind}: the student starts from "
                   + (f"the teacher's weights ({init['reason']}; blocks {init['blocks']})" if inherits
                      else f"scratch ({init['reason']})"))
    teacher = frozen_teacher(teacher, context.device, settings) if used else None
    optimizer = torch.optim.Adamax(model.parameters(), lr=settings.lr, betas=(0.9, 0.99))
    cache = (teacher_targets(teacher, patches, cache_folder, settings, out_dir, context.device)
             if used and cache_folder else None)
    step_loss = _step_loss(teacher, cache, options)
    trainer, result = train_stage(model, step_loss, optimizer, patches, settings, out_dir,
                                  resume=resume, description="stage 3: distill" if kd else "stage 3: no-KD ablation",
                                  kind=kind, data=data, val=val, context=context,
                                  metadata={"student": model_spec(model), "kd": kd, **recorded_options},
                                  held_back=TeacherOutputs(held, teacher) if held is not None else None,
                                  note=TEACHER_TARGETS_NOTE if options.teacher_targets else None)
    return finish_stage(result, trainer, out_dir, extra_info={"kd": kd, "targets": options.targets,
                                                              "init": init["init"]})


def _teacher_targets_record(held) -> dict:
    """What ``stage.json`` says of a stage trained on the teacher's outputs: its loss and its validation."""
    names = TeacherOutputs(held, None).names()
    return {"loss": "L_dis alone (no alpha * L_stu term: there is no ground truth)",
            "validation_reference": (f"psnr_vs_teacher and ssim_vs_teacher: against the teacher's output on "
                                     f"the images held back from --data ({len(names)}), not against a ground truth"
                                     if names else None),
            "held_back": names}


def _step_loss(teacher: Optional[nn.Module], cache, options: DistillOptions) -> Callable:
    """``loss(student, batch)`` of one step: the distillation loss against the cached or the live teacher's
    output, or (no teacher: the ablation) the student loss against the ground truth alone; with teacher
    targets (the batch holds no HR patch) :func:`teacher_only_loss` alone."""
    from ...ops import charbonnier, distillation_loss, laplacian_loss
    from ...ops.distillation import PYRAMID_LEVELS

    def gt_loss(output, hr, reduction="mean"):
        if options.student_loss == "l1":
            return torch.nn.functional.l1_loss(output, hr, reduction=reduction)
        return charbonnier(output, hr, reduction=reduction)

    def target_of(lr, cached):
        if cache is not None:
            return cache.targets_for(cached, lr)
        with torch.no_grad():
            return teacher(lr).float()

    def step_loss(net, batch):
        if options.teacher_targets:
            lr = batch[0].float().div_(255.0)
            target = target_of(lr, batch[1] if cache is not None else None)
            return teacher_only_loss(net(lr).float(), target, options.reduction)
        lr, hr = to_unit(batch[:2])
        output = net(lr).float()
        if teacher is None:
            return gt_loss(output, hr)
        target = target_of(lr, batch[2] if cache is not None else None)
        if not options.high_pass:  # eq. (8) without its high-pass term, reduced as distillation_loss reduces
            return (options.alpha * gt_loss(output, hr, options.reduction)
                    + laplacian_loss(output, target, PYRAMID_LEVELS, options.reduction))
        return distillation_loss(output, target, hr, alpha=options.alpha, student_loss=options.student_loss,
                                 reduction=options.reduction)

    return step_loss
