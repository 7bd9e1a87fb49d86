"""Stage 1: OBProx-SG pruning of the teacher and the density of its deep-feature weights."""
from __future__ import annotations

import copy
import functools
import math
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ...models import model_record
from ...models.external import ALL_WEIGHTS
from ...ops import CHARBONNIER_EPS
from .. import distributed
from ..artifacts import records_failure, write_json
from ..distributed import on_main
from .common import (
    CACHE_OFF,
    DENSITY_FILE,
    TRAINING_FILES,
    StageResult,
    StageSettings,
    TargetOptions,
    TeacherOutputs,
    check_cache_folder,
    finish_stage,
    frozen_teacher,
    open_stage,
    patch_loss,
    setting,
    teacher_targets,
    train_stage,
    unlabelled_split,
)

#: Whose parameters the l1 penalty covers.
PENALTIES = ("all", "deep")


@dataclass(frozen=True)
class PruneOptions(TargetOptions):
    """The pruning schedule of stage 1 (OBProx-SG): λ and the phases, and the targets.

    ``n_p`` is the Prox-SG phase in phase epochs (None: a tenth of the
    iterations, as the authors' EDSR schedule, 60 epochs of 160 iterations out
    of 100k), ``n_o`` the orthant phase per cycle (None: orthant to the end),
    ``steps_per_epoch`` the optimizer steps of a phase epoch. ``penalty``:
    ``"all"`` parameters (the paper) or only the ``"deep"`` feature module
    (the rest gets plain SGD steps). ``targets``, ``holdout`` and
    ``teacher_cache`` are :class:`TargetOptions`' (shared with distillation):
    with ``targets="teacher"`` the teacher is fine-tuned against its own
    (pre-pruning) outputs on the images of ``--data``.
    """
    lam: float = setting(1e-4, help="l1 weight lambda (paper presets: 1e-4)")
    n_p: Optional[int] = setting(None, help="Prox-SG phase length (unset: a tenth of the iterations)",
                                 unit="phase epochs")
    n_o: Optional[int] = setting(None, help="orthant phase length per cycle (unset: orthant to the end)",
                                 unit="phase epochs")
    steps_per_epoch: int = setting(1, help="optimizer steps per phase epoch")
    eps: float = setting(0.0, help="orthant projection threshold")
    penalty: str = setting("all", help="penalise all parameters (the paper) or only the deep-feature module",
                           choices=PENALTIES)

    def __post_init__(self):
        super().__post_init__()
        if self.penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {self.penalty!r}")

    def schedule(self, iterations: int) -> dict:
        """The optimizer's keywords, ``n_p`` resolved for ``iterations`` (the targets' fields left out)."""
        n_p = self.n_p if self.n_p is not None else max(1, math.ceil(iterations / (10 * self.steps_per_epoch)))
        shared = {field.name for field in fields(TargetOptions)}
        return {**{key: value for key, value in asdict(self).items() if key not in shared}, "n_p": n_p}


def density_report(model: nn.Module) -> dict:
    """d of the deep-feature module's weight tensors (the paper's d), of all weights, and per layer; for a model
    of no family (an external teacher) the deep-feature module is all its weights."""
    from ...models import SRModel
    from ...optim import density

    deep = list(model.deep_feature_parameters())
    return {
        "density": density(deep, weights_only=True),
        "all_weights": density(model, weights_only=True),
        "layers": {name: density(p, weights_only=True) for name, p in model.named_parameters() if p.dim() >= 2},
        "model": model_record(model),
        "deep_feature_module": (list(model.deep_feature_modules) if isinstance(model, SRModel) else ALL_WEIGHTS),
    }


def _name(model: nn.Module) -> str:
    arch = model_record(model).get("architecture") or {}
    return arch.get("name") or type(model).__name__


@records_failure
def prune(teacher: nn.Module, out_dir, settings: StageSettings, options: PruneOptions = PruneOptions(), data=None,
          val=None, *, resume: bool = False, overwrite: bool = False,
          context: distributed.DistributedContext | None = None, inputs: dict | None = None) -> StageResult:
    """Stage 1: fine-tune a copy of ``teacher`` on charbonnier(eps=1e-3) with OBProx-SG's λ‖θ‖₁ under the
    schedule of ``options``. Writes ``density.json``. ``teacher`` may be of no family (an
    :class:`~cdism_fast.models.ExternalModel`, e.g. a spandrel file): its deep-feature module is then all its
    weights (said on stderr and recorded in ``stage.json`` and ``density.json``).

    With ``options.targets == "teacher"`` the images of ``data`` are LR inputs as they are and the Charbonnier
    target is the original (pre-pruning) teacher's output on them, cached once per image or live (``teacher_cache``
    off); ``options.holdout`` images are held back and the pruned model is validated against the teacher on them."""
    from ...models import SRModel
    from ...ops import charbonnier
    from ...optim import OBProxSG
    from ..teacher_cache import teacher_fingerprint

    if settings.ema_decay is not None:
        raise ValueError("ema_decay must be None for pruning: an average of sparse weights is not sparse")
    cache_folder = check_cache_folder(options) if options.teacher_targets else None
    train_images, held = (unlabelled_split(data, teacher.scale, options.holdout) if options.teacher_targets
                          else (None, None))
    context = context or distributed.setup()
    schedule = options.schedule(settings.iterations)
    model = copy.deepcopy(teacher).train().requires_grad_(True)
    if options.penalty == "all":
        groups = [{"params": list(model.parameters())}]
    else:
        deep = {id(p) for p in model.deep_feature_parameters()}
        groups = [{"params": [p for p in model.parameters() if id(p) in deep]},
                  {"params": [p for p in model.parameters() if id(p) not in deep], "l1": False}]
    optimizer = OBProxSG(groups, lr=settings.lr, **{k: v for k, v in schedule.items() if k != "penalty"})
    depends = {"teacher": model_record(teacher), "teacher_weights": teacher_fingerprint(teacher),
               "targets": options.targets}
    if not isinstance(teacher, SRModel):
        weights = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
        depends["deep_feature_module"] = ALL_WEIGHTS
        on_main(print, f"stage 1: the teacher is of no cdism_fast family ({_name(teacher)}): OBProx-SG prunes all its "
                       f"parameters and d is measured over all its {weights:,} weights", file=sys.stderr)
    if held is not None:
        depends.update(holdout=len(held), teacher_cache=str(cache_folder) if cache_folder else CACHE_OFF,
                       **_teacher_targets_record(held))
    _, patches = open_stage(out_dir, "prune", settings, {**schedule, **depends}, scale=model.scale, data=data,
                            val=val, resume=resume, overwrite=overwrite, inputs=inputs, device=context.device,
                            files=(*TRAINING_FILES, DENSITY_FILE), pairs=train_images)
    loss = functools.partial(charbonnier, eps=CHARBONNIER_EPS)
    reference = frozen_teacher(teacher, context.device, settings) if options.teacher_targets else None
    if reference is not None:
        cache = (teacher_targets(reference, patches, cache_folder, settings, out_dir, context.device)
                 if cache_folder else None)
        step_loss = _teacher_step_loss(loss, reference, cache)
    else:
        step_loss = patch_loss(loss)
    trainer, result = train_stage(model, step_loss, optimizer, patches, settings, out_dir, resume=resume,
                                  description="stage 1: prune", kind="prune", data=data, val=val, context=context,
                                  metadata={"model": model_record(model), **schedule}, ema=False,
                                  held_back=TeacherOutputs(held, reference) if held is not None else None,
                                  note=PRUNE_TEACHER_NOTE if reference is not None else None)
    report = density_report(trainer.model)
    report.update(iteration=result.iteration, **schedule)
    if result.status == "completed":
        on_main(write_json, Path(out_dir) / DENSITY_FILE, report)
    stage = finish_stage(result, trainer, out_dir, extra_info={"density": report["density"]},
                         extra_outputs={"density": DENSITY_FILE if result.status == "completed" else None})
    stage.extra["density"] = report
    return stage


#: What pruning says once, in the log and on the terminal, when the targets are the teacher's outputs.
PRUNE_TEACHER_NOTE = ("targets: the original teacher's outputs on the images of --data, each an LR input as it is "
                      "(no ground truth): the teacher is fine-tuned against its own pre-pruning output")


def _teacher_targets_record(held) -> dict:
    """What ``stage.json`` says of pruning on the teacher's outputs: its validation."""
    names = TeacherOutputs(held, None).names()
    return {"validation_reference": (f"psnr_vs_teacher and ssim_vs_teacher: against the original teacher's output "
                                     f"on the images held back from --data ({len(names)}), not against a ground truth"
                                     if names else None),
            "held_back": names}


def _teacher_step_loss(loss, reference: nn.Module, cache):
    """``loss(net(lr), target)`` with the target the original teacher's output on the LR patch: cached (the
    batch's second part) or live."""

    def step_loss(net, batch):
        lr = batch[0].float().div_(255.0)
        if cache is not None:
            target = cache.targets_for(batch[1], lr)
        else:
            with torch.no_grad():
                target = reference(lr).float()
        return loss(net(lr).float(), target)

    return step_loss
