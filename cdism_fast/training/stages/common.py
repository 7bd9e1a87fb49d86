"""What every stage shares: its settings and result, the training data and validation, the stage folder's
life cycle (open, train, finish) and reading a completed stage's model."""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..._checks import check_int
from ..artifacts import data_source, mark_stage, prepare_run_folder, read_stage, save_model, stage_inputs
from ..checkpoint import load_checkpoint
from ..distributed import on_main
from ..engine import (
    CHECKPOINT_NAME,
    LOG_NAME,
    LoopSettings,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    TrainResult,
    setting,
)
from ..precision import Precision, check_amp, workload_of

__all__ = ["StageSettings", "StageResult", "training_pairs", "validation_sets", "make_validator", "stage_patches",
           "to_unit", "with_overrides", "available_cpus", "open_stage", "train_stage", "patch_loss",
           "finish_stage", "data_fingerprint", "load_stage_model", "setting", "record_precision", "MODEL_FILE",
           "DENSITY_FILE", "STUDENT_FILE", "FLOPS_SIZE", "SAMPLES_PER_EPOCH", "TRAINING_FILES"]

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


def available_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def with_overrides(base: StageSettings, overrides: dict) -> StageSettings:
    """``base`` (a preset's) with the ``overrides`` that are not None. A ``num_workers`` that is not overridden
    is capped by :func:`available_cpus`: more loader processes than CPUs only wait for each other."""
    given = {key: value for key, value in overrides.items() if value is not None}
    if "num_workers" not in given:
        given["num_workers"] = min(base.num_workers, available_cpus())
    return base.replace(**given)


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
    from ...data import builtin_dataset, folder_dataset

    return builtin_dataset("train", scale) if data is None else folder_dataset(data, scale)


def validation_sets(val, data, scale: int) -> list:
    """Held-out sets: the ``val`` folders, or the built-in held-out photographs when no data was given."""
    from ...data import builtin_dataset, folder_dataset

    if val:
        return [folder_dataset(path, scale) for path in ([val] if isinstance(val, (str, Path)) else val)]
    return [builtin_dataset("heldout", scale)] if data is None else []


def make_validator(sets: list, scale: int) -> Optional[Callable]:
    """``validate(model)`` → PSNR/SSIM (Y channel, border = scale) per set and their means, or None without sets."""
    if not sets:
        return None
    from ...evaluation import evaluate

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


def stage_patches(pairs, settings: StageSettings):
    """Random patch pairs whose crop depends on the sample index only (so runs resume exactly).

    The index space is ``SAMPLES_PER_EPOCH`` samples wide (each image repeated
    to fill it), so the sample stream sees about a million distinct crops
    before an epoch repeats, and the dataset's length does not depend on the
    number of iterations (which a resumed run may extend).
    """
    from ...data import TrainingPatches

    repeat = max(1, math.ceil(SAMPLES_PER_EPOCH / len(pairs)))
    return TrainingPatches(pairs, patch_size=settings.patch_size, augment=True, repeat=repeat, seed=settings.seed,
                           progress=settings.progress)


def to_unit(batch):
    """uint8 patch pairs → float in [0, 1] (done on the training device: 4x less traffic)."""
    lr, hr = batch
    return lr.float().div_(255.0), hr.float().div_(255.0)


def patch_loss(loss: Callable) -> Callable:
    """The ``step_loss(net, batch)`` of a stage trained on the patch pairs alone: ``loss(net(lr), hr)`` in float."""

    def step_loss(net, batch):
        lr, hr = to_unit(batch)
        return loss(net(lr).float(), hr)

    return step_loss


# ----------------------------------------------------------------------------------- the stage folder
def data_fingerprint(data) -> Optional[str]:
    """SHA-256 of the names and sizes of every file under the data folder(s) (None for the built-in
    photographs): cheap, and it changes when an image is added, removed or replaced by one of another size."""
    if data is None:
        return None
    digest = hashlib.sha256()
    for folder in (data if isinstance(data, (list, tuple)) else [data]):
        root = Path(folder).resolve()
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            digest.update(f"{path.relative_to(root).as_posix()}|{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def open_stage(folder, stage: str, settings: StageSettings, record: dict, *, scale: int, data, val, resume: bool,
               overwrite: bool, inputs: dict | None, device, files=TRAINING_FILES):
    """(pairs, patches): the training pairs of ``data`` at ``scale`` and ``settings.amp`` on ``device`` (checked
    first: a refusal leaves no folder) and their patch stream (:func:`stage_patches`), once the stage folder is
    prepared (rank 0): ``stage.json`` records ``settings``, ``record`` (the stage's options and what it depends on)
    and the data with its fingerprint, so that a resume with other inputs is refused."""
    check_amp(settings.amp, device)
    pairs = training_pairs(data, scale)
    record = {**asdict(settings), **record, "data": data_source(data),
              "data_fingerprint": data_fingerprint(data)}
    on_main(prepare_run_folder, folder, stage, record, resume=resume, overwrite=overwrite, files=files,
            inputs=stage_inputs(data, val, inputs))
    return pairs, stage_patches(pairs, settings)


def train_stage(model: nn.Module, step_loss: Callable, optimizer, patches, settings: StageSettings, folder, *,
                resume: bool, description: str, kind: str, data, val, context, metadata: dict,
                ema: bool = True) -> tuple[Trainer, TrainResult]:
    """(trainer, result): the :class:`~.engine.Trainer` of a training stage (the step schedule of ``settings``,
    validation on the held-out sets of ``val`` or the built-in ones) and its ``fit``, recorded in
    ``stage.json`` when a non-finite loss stopped it."""
    scale = model.scale
    trainer = Trainer(model, step_loss, optimizer, patches, settings.train_config(description, ema=ema), folder,
                      scheduler=torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(settings.milestones),
                                                                     gamma=settings.gamma),
                      context=context, kind=kind, validate=make_validator(validation_sets(val, data, scale), scale),
                      metadata=metadata)
    on_main(record_precision, folder, workload_of(kind), trainer.precision)
    try:
        return trainer, trainer.fit(resume=resume)
    except NonFiniteLossError as error:
        on_main(mark_stage, folder, status="failed", error=str(error))
        raise


def record_precision(folder, workload: str, precision: Precision) -> None:
    """Add to ``stage.json``'s ``precision`` what ``workload`` runs in (``amp``), as requested, and why (what
    ``--amp auto`` resolved to on this machine); a resume records its own."""
    record = read_stage(folder) or {}
    mark_stage(folder, precision={**(record.get("precision") or {}), workload: precision.as_record()})


def finish_stage(result: TrainResult, trainer: Trainer, folder: Path, extra_info: dict | None = None,
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


def load_stage_model(folder) -> nn.Module:
    """The model a completed stage folder holds (``model.pt``)."""
    from ..artifacts import read_model_file

    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        state = load_checkpoint(Path(folder) / CHECKPOINT_NAME) if (Path(folder) / CHECKPOINT_NAME).is_file() else None
        hint = (f" (its checkpoint is at iteration {state['iteration']}: resume the stage to finish it)"
                if state else "")
        raise FileNotFoundError(f"{path} does not exist: that stage has not completed{hint}")
    return read_model_file(path)
