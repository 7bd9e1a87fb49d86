"""The stages of the workflow as Python functions (the ``cdism-fast`` commands call these).

* :func:`train_teacher` (stage 0): L1 loss and Adam, from scratch.
* :func:`prune` (stage 1): Charbonnier loss back-propagated, λ‖θ‖₁ applied by
  :class:`~cdism_fast.optim.OBProxSG`'s proximal and orthant steps (never added
  to the loss, so it is not counted twice); writes ``density.json``.
* :func:`compress` (stage 2): the compact structure from the density
  (:func:`~cdism_fast.compress.compress_config`) and a before/after table.
* :func:`distill` (stage 3): the compact student from random initialisation,
  :func:`~cdism_fast.ops.distillation_loss` against the frozen teacher (eval
  mode, ``no_grad``), AdaMax with betas (0.9, 0.99); ``kd=False`` trains the
  same student on the ground truth alone, with the same budget.

Every training stage writes into its own folder: ``stage.json`` (command,
settings, status), ``checkpoint.pt`` (resumable), ``log.jsonl`` and
``model.pt`` (the result, readable by :func:`load_model` and by
:func:`cdism_fast.models.load_pretrained`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .._checks import check_int
from ..ops import CHARBONNIER_EPS, STUDENT_LOSSES
from . import distributed
from .artifacts import (
    build_from_spec,
    data_source,
    mark_stage,
    model_spec,
    prepare_run_folder,
    records_failure,
    save_model,
    stage_inputs,
    write_json,
)
from .checkpoint import load_checkpoint
from .distributed import on_main
from .engine import (
    CHECKPOINT_NAME,
    LOG_NAME,
    LoopSettings,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    TrainResult,
    setting,
    uses_channels_last,
)

__all__ = ["StageSettings", "StageResult", "training_pairs", "validation_sets", "make_validator",
           "train_teacher", "prune", "compress", "distill", "density_report", "structure_table", "format_table",
           "MODEL_FILE", "DENSITY_FILE", "STUDENT_FILE", "FLOPS_SIZE"]

MODEL_FILE = "model.pt"
DENSITY_FILE = "density.json"
STUDENT_FILE = "student.json"
#: Output size (H, W) at which FLOPs (multiply-accumulates) are reported, as in the paper's Table I.
FLOPS_SIZE = (720, 1280)
#: Distinct random patches per epoch of the sample stream (see ``_patches``).
SAMPLES_PER_EPOCH = 2 ** 20
#: What a training stage writes in its folder (``--overwrite`` removes these and nothing else).
TRAINING_FILES = (CHECKPOINT_NAME, LOG_NAME, MODEL_FILE, "tensorboard/events.out.tfevents.*")


@dataclass
class StageSettings(LoopSettings):
    """Budget and optimiser settings of one training stage: the loop's (:class:`~.engine.LoopSettings`)
    and the data and learning-rate schedule's.

    ``batch_size`` is per process. ``patch_size`` is the LR patch side (HR is
    ``scale`` times larger). ``milestones`` (iterations) and ``gamma`` make a
    step learning-rate schedule. ``ema_decay`` keeps an EMA of the weights,
    which is then what is validated and saved (never for pruning: an average
    of sparse weights is not sparse).
    """
    patch_size: int = setting(48, help="LR patch side (the HR patch is scale times larger)", unit="LR pixels")
    lr: float = setting(1e-4, help="learning rate")
    milestones: Sequence[int] = setting((), help="iterations at which the lr is multiplied by gamma, separated by "
                                                 "commas (e.g. 200000,400000)", unit="iterations")
    gamma: float = setting(0.5, help="factor of the lr at each milestone, in (0, 1]")

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma!r}")
        self.milestones = tuple(self.milestones)
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.milestones):
            raise ValueError(f"milestones must be positive iteration counts, got {list(self.milestones)}")
        check_int("patch_size", self.patch_size, expected="a positive integer (LR pixels)")
        super().__post_init__()  # the loop's fields

    def train_config(self, description: str, ema: bool = True) -> TrainConfig:
        values = {f.name: getattr(self, f.name) for f in fields(LoopSettings)}
        values.update(description=description, ema_decay=self.ema_decay if ema else None)
        return TrainConfig(**values)

    def replace(self, **changes) -> StageSettings:
        return dataclasses.replace(self, **changes)


@dataclass
class StageResult:
    status: str
    folder: Path
    model: Optional[nn.Module] = None
    model_path: Optional[Path] = None
    validation: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ data
def training_pairs(data, scale: int):
    """The training images: a data folder (either layout) or a list of them, or the built-in photographs when
    ``data`` is None."""
    from ..data import builtin_dataset, folder_dataset

    return builtin_dataset("train", scale) if data is None else folder_dataset(data, scale)


def validation_sets(val, data, scale: int) -> list:
    """Held-out sets: the ``val`` folders, or the built-in held-out photographs when no data was given."""
    from ..data import builtin_dataset, folder_dataset

    if val:
        return [folder_dataset(path, scale) for path in ([val] if isinstance(val, (str, Path)) else val)]
    return [builtin_dataset("heldout", scale)] if data is None else []


def make_validator(sets: list, scale: int) -> Optional[Callable]:
    """``validate(model)`` → PSNR/SSIM (Y channel, border = scale) per set and their means, or None without sets."""
    if not sets:
        return None
    from ..evaluation import evaluate

    def validate(model: nn.Module) -> dict:
        results = {}
        for dataset in sets:
            scores = evaluate(model, dataset, scale, progress=False)
            results[f"{scores['name']}/psnr"] = scores["psnr"]
            results[f"{scores['name']}/ssim"] = scores["ssim"]
        results["psnr"] = math.fsum(v for k, v in results.items() if k.endswith("/psnr")) / len(sets)
        results["ssim"] = math.fsum(v for k, v in results.items() if k.endswith("/ssim")) / len(sets)
        return results

    return validate


def _patches(pairs, settings: StageSettings):
    """Random patch pairs whose crop depends on the sample index only (so runs resume exactly).

    The index space is ``SAMPLES_PER_EPOCH`` samples wide (each image repeated
    to fill it), so the sample stream sees about a million distinct crops
    before an epoch repeats, and the dataset's length does not depend on the
    number of iterations (which a resumed run may extend).
    """
    from ..data import TrainingPatches

    repeat = max(1, math.ceil(SAMPLES_PER_EPOCH / len(pairs)))
    return TrainingPatches(pairs, patch_size=settings.patch_size, augment=True, repeat=repeat, seed=settings.seed,
                           progress=settings.progress)


def _unit(batch):
    """uint8 patch pairs → float in [0, 1] (done on the training device: 4x less traffic)."""
    lr, hr = batch
    return lr.float().div_(255.0), hr.float().div_(255.0)


# ------------------------------------------------------------------------------------------- helpers
def _start(folder, stage: str, settings: dict, resume: bool, overwrite: bool, inputs: dict | None,
           files=TRAINING_FILES) -> None:
    on_main(prepare_run_folder, folder, stage, settings, resume=resume, overwrite=overwrite, files=files,
             inputs=inputs)


def _fit(trainer: Trainer, folder, resume: bool) -> TrainResult:
    """``trainer.fit``, recording in ``stage.json`` when a non-finite loss stopped it."""
    try:
        return trainer.fit(resume=resume)
    except NonFiniteLossError as error:
        on_main(mark_stage, folder, status="failed", error=str(error))
        raise


def _finish(result: TrainResult, trainer: Trainer, folder: Path, extra_info: dict | None = None,
            extra_outputs: dict | None = None) -> StageResult:
    model = trainer.eval_model
    path = Path(folder) / MODEL_FILE
    if result.status == "completed":
        on_main(save_model, path, model, iteration=result.iteration, validation=result.validation,
                 **(extra_info or {}))
    on_main(mark_stage, folder, status=result.status, iteration=result.iteration, validation=result.validation,
             outputs={"model": MODEL_FILE if result.status == "completed" else None, "checkpoint": CHECKPOINT_NAME,
                      **(extra_outputs or {})})
    return StageResult(result.status, Path(folder), model, path if result.status == "completed" else None,
                       result.validation)


def _scheduler(optimizer, settings: StageSettings):
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(settings.milestones), gamma=settings.gamma)


def _settings_record(settings: StageSettings, **more) -> dict:
    return {**asdict(settings), **more}


# -------------------------------------------------------------------------------------------- stage 0
@records_failure
def train_teacher(model: nn.Module, out_dir, settings: StageSettings, data=None, val=None, *, resume: bool = False,
                  overwrite: bool = False, context: distributed.DistributedContext | None = None,
                  inputs: dict | None = None) -> StageResult:
    """Stage 0: train ``model`` from its current weights with L1 loss and Adam (betas 0.9, 0.999)."""
    context = context or distributed.setup()
    scale = model.scale
    _start(out_dir, "train", _settings_record(settings, model=model_spec(model), data=data_source(data)), resume,
           overwrite, stage_inputs(data, val, inputs))
    patches = _patches(training_pairs(data, scale), settings)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(0.9, 0.999))

    def step_loss(net, batch):
        lr, hr = _unit(batch)
        return torch.nn.functional.l1_loss(net(lr).float(), hr)

    trainer = Trainer(model, step_loss, optimizer, patches, settings.train_config("stage 0: teacher"), out_dir,
                      scheduler=_scheduler(optimizer, settings), context=context, kind="train",
                      validate=make_validator(validation_sets(val, data, scale), scale),
                      metadata={"model": model_spec(model)})
    return _finish(_fit(trainer, out_dir, resume), trainer, out_dir)


# -------------------------------------------------------------------------------------------- stage 1
def density_report(model: nn.Module) -> dict:
    """d of the deep-feature module's weight tensors (the paper's d), of all weights, and per layer."""
    from ..optim import density

    deep = list(model.deep_feature_parameters())
    return {
        "density": density(deep, weights_only=True),
        "all_weights": density(model, weights_only=True),
        "layers": {name: density(p, weights_only=True) for name, p in model.named_parameters() if p.dim() >= 2},
        "model": model_spec(model),
    }


@records_failure
def prune(teacher: nn.Module, out_dir, settings: StageSettings, data=None, val=None, *, lam: float = 1e-4,
          n_p: Optional[int] = None, n_o: Optional[int] = None, steps_per_epoch: int = 1, eps: float = 0.0,
          penalty: str = "all", resume: bool = False, overwrite: bool = False,
          context: distributed.DistributedContext | None = None, inputs: dict | None = None) -> StageResult:
    """Stage 1: fine-tune a copy of ``teacher`` on charbonnier(eps=1e-3) with OBProx-SG's λ‖θ‖₁.

    ``n_p`` (phase epochs of Prox-SG; default: a tenth of the iterations, as
    the authors' EDSR schedule, 60 epochs of 160 iterations out of 100k),
    ``n_o`` (orthant epochs per cycle; None: orthant to the end) and
    ``steps_per_epoch`` (optimizer steps per phase epoch) set the phases.
    ``penalty``: ``"all"`` parameters (the paper) or only the ``"deep"``
    feature module (the rest gets plain SGD steps). Writes ``density.json``.
    """
    from ..ops import charbonnier
    from ..optim import OBProxSG

    if penalty not in ("all", "deep"):
        raise ValueError(f"penalty must be 'all' or 'deep', got {penalty!r}")
    if settings.ema_decay is not None:
        raise ValueError("ema_decay must be None for pruning: an average of sparse weights is not sparse")
    context = context or distributed.setup()
    if n_p is None:
        n_p = max(1, math.ceil(settings.iterations / (10 * steps_per_epoch)))
    schedule = dict(lam=lam, n_p=n_p, n_o=n_o, steps_per_epoch=steps_per_epoch, eps=eps, penalty=penalty)
    _start(out_dir, "prune",
           _settings_record(settings, **schedule, teacher=model_spec(teacher), data=data_source(data)),
           resume, overwrite, stage_inputs(data, val, inputs), files=(*TRAINING_FILES, DENSITY_FILE))
    model = copy.deepcopy(teacher).train().requires_grad_(True)
    if penalty == "all":
        groups = [{"params": list(model.parameters())}]
    else:
        deep = {id(p) for p in model.deep_feature_parameters()}
        groups = [{"params": [p for p in model.parameters() if id(p) in deep]},
                  {"params": [p for p in model.parameters() if id(p) not in deep], "l1": False}]
    optimizer = OBProxSG(groups, lr=settings.lr, lam=lam, n_p=n_p, n_o=n_o, steps_per_epoch=steps_per_epoch, eps=eps)
    patches = _patches(training_pairs(data, model.scale), settings)

    def step_loss(net, batch):
        lr, hr = _unit(batch)
        return charbonnier(net(lr).float(), hr, eps=CHARBONNIER_EPS)

    trainer = Trainer(model, step_loss, optimizer, patches, settings.train_config("stage 1: prune", ema=False),
                      out_dir, scheduler=_scheduler(optimizer, settings), context=context, kind="prune",
                      validate=make_validator(validation_sets(val, data, model.scale), model.scale),
                      metadata={"model": model_spec(model), **schedule})
    result = _fit(trainer, out_dir, resume)
    report = density_report(trainer.model)
    report.update(iteration=result.iteration, **schedule)
    if result.status == "completed":
        on_main(write_json, Path(out_dir) / DENSITY_FILE, report)
    stage = _finish(result, trainer, out_dir, extra_info={"density": report["density"]},
                    extra_outputs={"density": DENSITY_FILE if result.status == "completed" else None})
    stage.extra["density"] = report
    return stage


# -------------------------------------------------------------------------------------------- stage 2
def structure_table(models: dict[str, nn.Module]) -> list[dict]:
    """Rows of structure, parameters and FLOPs (MACs at 1280×720 output) for each named model."""
    from ..models import count_flops, count_params

    rows = []
    for name, model in models.items():
        structure = model.structure()
        flops = count_flops(model, out_hw=FLOPS_SIZE)
        rows.append({"model": name, "n_b": structure.n_b, "n_l": structure.n_l, "n_c": structure.n_c,
                     "params": count_params(model), "flops": flops["total"],
                     "flops_without_attention": flops["total_without_attention"]})
    return rows


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of :func:`structure_table` rows (params in K, FLOPs in G)."""
    lines = [f"{'model':<14} {'N_b':>4} {'N_l':>4} {'N_c':>5} {'params':>11} {'FLOPs@720p':>12}"]
    for row in rows:
        lines.append(f"{row['model']:<14} {row['n_b']:>4} {row['n_l']:>4} {row['n_c']:>5} "
                     f"{row['params'] / 1e3:>10.1f}K {row['flops'] / 1e9:>11.2f}G")
    return "\n".join(lines)


def _read_density(density, teacher: nn.Module) -> tuple[float, dict | None]:
    """The density as a number, from a number or a density.json of this very architecture."""
    if isinstance(density, (int, float)) and not isinstance(density, bool):
        return float(density), None
    import json

    path = Path(density)
    if not path.is_file():
        raise FileNotFoundError(f"density file {path} does not exist; pass the density.json that `cdism-fast "
                                "prune` wrote, or a number")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        value = record["density"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"'density' is {value!r}, not a number")
        value = float(value)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        raise ValueError(f"{path} is not a density file written by `cdism-fast prune` ({error!r}); pass that "
                         "file, unedited, or a number") from None
    if record.get("model") is not None and record["model"] != model_spec(teacher):
        raise ValueError(f"density file {path} was measured on another model ({record['model']['family']} "
                         f"{record['model']['config']}), not on this teacher ({model_spec(teacher)['config']}); "
                         "pass the density.json of this teacher's pruning run")
    return value, record


@records_failure
def compress(teacher: nn.Module, density, out_dir, *, resume: bool = False, overwrite: bool = False,
             inputs: dict | None = None, **overrides) -> StageResult:
    """Stage 2: the compact student's structure from ``density`` (a number or a density.json).

    ``overrides``: :func:`~cdism_fast.compress.compress_config`'s keywords
    (``n_b``, ``n_l``, ``n_c``, ``rounding``, ``channel_multiple``, ``channels``).
    Writes ``student.json`` (the student's architecture, usable by :func:`distill`)
    and returns the before/after table in ``extra["table"]`` and the deep-feature
    weight ratio the student realises in ``extra["achieved_density"]``.
    """
    from ..compress import achieved_density, compress_config

    value, record = _read_density(density, teacher)
    if value == 0 and record is not None:
        raise ValueError(f"the pruning run of {density} zeroed every deep-feature weight (d = 0), so no structure "
                         "follows from it; prune again with a smaller --lam (or fewer Prox-SG epochs --n-p)")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    structure = compress_config(teacher, value, **overrides)
    student = teacher.with_structure(*structure)
    rows = structure_table({"teacher": teacher, "student": student})
    spec = model_spec(student)
    result = {"density": value, "achieved_density": achieved_density(teacher, student), "overrides": overrides,
              "structure": structure._asdict(),
              "teacher_structure": teacher.structure()._asdict(), "student": spec, "teacher": model_spec(teacher),
              "table": rows, "density_source": str(density) if record is not None else None}

    def write():
        given = {**(inputs or {}), "--density": density if record is not None else None}
        prepare_run_folder(out_dir, "compress", {"density": value, **overrides}, resume=resume, overwrite=overwrite,
                           files=(STUDENT_FILE,), inputs=given)
        write_json(Path(out_dir) / STUDENT_FILE, result)
        mark_stage(out_dir, status="completed", outputs={"student": STUDENT_FILE}, structure=structure._asdict())

    on_main(write)
    return StageResult("completed", Path(out_dir), student, None, extra=result)


# -------------------------------------------------------------------------------------------- stage 3
#: ``family:n_b,n_l,n_c``, a student named by its structure (e.g. ``edsr:8,1,16``).
STRUCTURE_SPEC = re.compile(r"^([a-z_]+):(\d+),(\d+),(\d+)$")


def student_from(spec_or_file, scale: int = 2) -> nn.Module:
    """An untrained student from a model, a student.json (stage 2's output) or its dict, a preset
    name of :mod:`cdism_fast.models` or ``family:n_b,n_l,n_c`` (both at ×``scale``)."""
    if isinstance(spec_or_file, nn.Module):
        return spec_or_file
    source = "the student spec"
    if isinstance(spec_or_file, (str, Path)):
        from ..models import PRESETS, build, from_structure
        from .artifacts import read_json

        text = str(spec_or_file)
        path = Path(spec_or_file)
        if path.is_file():
            spec_or_file, source = read_json(path, "student file"), f"student file {path}"
        elif text in PRESETS:
            return build(text, scale=scale)
        elif match := STRUCTURE_SPEC.match(text):
            family, n_b, n_l, n_c = match.group(1), *map(int, match.groups()[1:])
            return from_structure(family, n_c=n_c, n_l=n_l, n_b=n_b, scale=scale)
        elif path.suffix or len(path.parts) > 1:
            raise FileNotFoundError(f"student file {path} does not exist; pass the student.json that "
                                    "`cdism-fast compress` wrote, a preset or family:n_b,n_l,n_c")
        else:
            raise ValueError(f"student must be a student.json, a preset ({', '.join(PRESETS)}) or "
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
    from ..evaluation import infer_scale

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
    from ..ops import charbonnier, distillation_loss

    if student_loss not in STUDENT_LOSSES:
        raise ValueError(f"student_loss must be one of {STUDENT_LOSSES}, got {student_loss!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
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
    _start(out_dir, kind, _settings_record(settings, kd=kd, alpha=alpha, student_loss=student_loss, reduction=reduction,
                                           student=model_spec(model),
                                           teacher=_describe(teacher) if teacher is not None else None,
                                           data=data_source(data)),
           resume, overwrite, stage_inputs(data, val, {**(inputs or {}), "--student": student
                                                  if isinstance(student, (str, Path)) else None}))
    if teacher is not None and kd:
        teacher = copy.deepcopy(teacher).to(context.device).eval().requires_grad_(False)
        if uses_channels_last(settings.channels_last, context.device, teacher):
            teacher = teacher.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adamax(model.parameters(), lr=settings.lr, betas=(0.9, 0.99))
    pairs = training_pairs(data, model.scale)
    patches = _patches(pairs, settings)
    cache = _teacher_cache(teacher, patches, pairs, teacher_cache, settings) if kd and teacher_cache else None

    def gt_loss(output, hr):
        if student_loss == "l1":
            return torch.nn.functional.l1_loss(output, hr)
        return charbonnier(output, hr)

    def step_loss(net, batch):
        lr, hr = _unit(batch[:2])
        output = net(lr).float()
        if not kd:
            return gt_loss(output, hr)
        if cache is not None:
            target = cache.targets_for(batch[2], lr)
        else:
            with torch.no_grad():
                target = teacher(lr).float()
        return distillation_loss(output, target, hr, alpha=alpha, student_loss=student_loss, reduction=reduction)

    trainer = Trainer(model, step_loss, optimizer, patches,
                      settings.train_config("stage 3: distill" if kd else "stage 3: no-KD ablation"), out_dir,
                      scheduler=_scheduler(optimizer, settings), context=context, kind=kind,
                      validate=make_validator(validation_sets(val, data, model.scale), model.scale),
                      metadata={"student": model_spec(model), "kd": kd, "alpha": alpha, "student_loss": student_loss,
                                "reduction": reduction, "teacher_cache": str(cache.folder) if cache else None})
    return _finish(_fit(trainer, out_dir, resume), trainer, out_dir, extra_info={"kd": kd})


def _teacher_cache(teacher: nn.Module, patches, pairs, folder, settings: StageSettings):
    """The teacher's outputs on every training image, checked and built before training (see distill)."""
    from .engine import AMP_DTYPES
    from .teacher_cache import TeacherCache, default_cache_folder

    cache = TeacherCache(default_cache_folder() if folder is True else folder, teacher, patches, pairs,
                         amp_dtype=AMP_DTYPES[settings.amp], progress=settings.progress)
    cache.prepare()
    patches.use_targets(cache)
    return cache


def load_stage_model(folder) -> nn.Module:
    """The model a completed stage folder holds (``model.pt``)."""
    from .artifacts import load_model

    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        state = load_checkpoint(Path(folder) / CHECKPOINT_NAME) if (Path(folder) / CHECKPOINT_NAME).is_file() else None
        hint = (f" (its checkpoint is at iteration {state['iteration']}: resume the stage to finish it)"
                if state else "")
        raise FileNotFoundError(f"{path} does not exist: that stage has not completed{hint}")
    return load_model(path)
