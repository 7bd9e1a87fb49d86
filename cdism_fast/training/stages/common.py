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
from ..precision import Precision, check_amp, resolve_amp, workload_of

__all__ = ["StageSettings", "StageResult", "TargetOptions", "TARGETS", "CACHE_OFF", "HOLDOUT_MAX",
           "training_pairs", "unlabelled_split", "default_holdout", "validation_sets", "make_validator",
           "TeacherOutputs", "stage_patches", "to_unit", "with_overrides", "available_cpus", "open_stage",
           "train_stage", "patch_loss", "finish_stage", "data_fingerprint", "load_stage_model", "setting",
           "check_cache_folder", "record_precision", "teacher_targets", "frozen_teacher", "MODEL_FILE",
           "DENSITY_FILE", "STUDENT_FILE", "FLOPS_SIZE", "flops_size", "SAMPLES_PER_EPOCH", "TRAINING_FILES"]

MODEL_FILE = "model.pt"
DENSITY_FILE = "density.json"
STUDENT_FILE = "student.json"
#: Output size (H, W) at which FLOPs (multiply-accumulates) are reported, as in the paper's Table I.
FLOPS_SIZE = (720, 1280)


def flops_size(scale: int) -> tuple[int, int]:
    """The output size (H, W) FLOPs are counted at for a ×``scale`` model: :data:`FLOPS_SIZE`, each side rounded
    up to a multiple of the scale (×3: 720×1281, from a 240×427 input, as the published ×3 Multi-Adds are counted:
    IMDN ×3's 71.5G is this)."""
    return tuple(-(-side // scale) * scale for side in FLOPS_SIZE)
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


#: What a stage with a teacher trains toward: the HR images of --data, or the teacher's outputs on them.
TARGETS = ("hr", "teacher")
#: The ``teacher_cache`` value that runs the teacher on every patch instead.
CACHE_OFF = "off"
#: The most images :func:`default_holdout` holds back.
HOLDOUT_MAX = 8


@dataclass(frozen=True)
class TargetOptions:
    """The training targets of the stages that have a teacher (pruning and distillation), declared once.

    ``targets="hr"``: the images of ``--data`` are HR images and the LR inputs
    are made from them (MATLAB-exact bicubic, or the folder's own LR images).
    ``targets="teacher"``: each image of ``--data`` is an LR input as it is (no
    degradation, no HR), and the target is the teacher's output on it: a
    student then imitates the teacher, artefacts included, and PSNR against the
    teacher is not PSNR against a ground truth. ``holdout`` images of ``--data``
    are then held back (never trained on) and the model is validated against
    the teacher's output on them (unset: :func:`default_holdout`; 0: none).
    ``teacher_cache``: unset runs the teacher once per whole training image
    before training and trains on its stored outputs (see
    :mod:`~cdism_fast.training.teacher_cache`: the teacher sees the whole image,
    and flips are applied to its output instead of its input), in
    :func:`~cdism_fast.training.teacher_cache.default_cache_folder`; a folder
    puts the cache there; ``"off"`` runs the teacher on every patch.
    """
    targets: str = setting("hr", help="training targets: hr (--data holds HR images, the LR inputs are made from "
                                      "them) or teacher (each image of --data is an LR input as it is, and the "
                                      "target is the teacher's output on it: no ground truth needed)",
                           choices=TARGETS)
    holdout: Optional[int] = setting(None, help="with --targets teacher: images of --data held back from training "
                                                "and validated against the teacher's output (unset: a tenth of the "
                                                f"images, 1 to {HOLDOUT_MAX}; 0: none)", unit="images")
    teacher_cache: Optional[str] = setting(
        None, metavar="DIR|off", help="folder of the teacher-output cache (unset: $CDISM_CACHE/teacher-outputs, "
                                      "i.e. ~/.cache/cdism-fast/teacher-outputs), or 'off' for the per-patch teacher")

    def __post_init__(self):
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, got {self.targets!r}")
        if self.holdout is not None:
            check_int("holdout", self.holdout, 0, expected="a number of images >= 0")

    @property
    def teacher_targets(self) -> bool:
        """Whether the targets are the teacher's outputs."""
        return self.targets == "teacher"

    def cache_folder(self) -> Optional[Path]:
        """The teacher cache's folder (absolute), or None when it is off."""
        from ..teacher_cache import cache_folder

        folder = cache_folder(self.teacher_cache)
        return None if folder is None else folder.expanduser().absolute()


def check_cache_folder(options: TargetOptions) -> Optional[Path]:
    """The cache folder of ``options`` when it is (or can be made) a writable folder, before any work: a
    one-line ValueError naming it and the options otherwise."""
    folder = options.cache_folder()
    if folder is None:
        return None
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        problem = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        return folder
    raise ValueError(f"teacher cache folder {folder} cannot be used ({problem}); pass --teacher-cache DIR with a "
                     "writable folder (or set CDISM_CACHE), or --teacher-cache off for the per-patch teacher")


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


def default_holdout(count: int) -> int:
    """Images held back for validation against the teacher out of ``count``: a tenth, at least 1 and at most
    :data:`HOLDOUT_MAX`."""
    return min(HOLDOUT_MAX, max(1, count // 10))


def unlabelled_split(data, scale: int, holdout: Optional[int] = None):
    """(training images, held-back images) of the unlabelled images of ``data`` (``--targets teacher``; the
    built-in training photographs when ``data`` is None) for a teacher of ×``scale``: ``holdout`` images (unset:
    :func:`default_holdout`) spread over the sorted list are held back; refused when none would be left to train."""
    from ...data import LRFolderDataset, builtin_image_paths, hold_back, unlabelled_dataset

    images = (LRFolderDataset(builtin_image_paths("train"), scale, name="builtin-train") if data is None
              else unlabelled_dataset(data, scale))
    count = default_holdout(len(images)) if holdout is None else holdout
    return hold_back(images, count)


class TeacherOutputs:
    """Held-back unlabelled images paired with the teacher's output on each (uint8, as a saved image would be):
    a dataset of :class:`~cdism_fast.data.ImagePair` to validate a model against the teacher, not against a
    ground truth (``reference = "teacher"``). The outputs are computed on first use, tiled as the teacher
    cache tiles, and kept."""

    reference = "teacher"

    def __init__(self, images, teacher: nn.Module):
        self.images, self.teacher = images, teacher
        self.scale = images.scale
        self.name = images.name
        self._items: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.images)

    def names(self) -> list[str]:
        """The held-back images' names (decoded, the teacher not run)."""
        return [self.images[index].name for index in range(len(self))]

    def __getitem__(self, index: int):
        if index not in self._items:
            from ...data import ImagePair
            from ...evaluation import upscale
            from ..teacher_cache import CACHE_OVERLAP, CACHE_TILE

            lr, _, name = self.images[index]
            output = upscale(self.teacher, lr, self.scale, tile=CACHE_TILE, overlap=CACHE_OVERLAP)
            self._items[index] = ImagePair(lr, output.cpu(), name)
        return self._items[index]


def validation_sets(val, data, scale: int) -> list:
    """Held-out sets: the ``val`` folders, or the built-in held-out photographs when no data was given."""
    from ...data import builtin_dataset, folder_dataset

    if val:
        return [folder_dataset(path, scale) for path in ([val] if isinstance(val, (str, Path)) else val)]
    return [builtin_dataset("heldout", scale)] if data is None else []


def make_validator(sets: list, scale: int) -> Optional[Callable]:
    """``validate(model)`` → PSNR/SSIM (Y channel, border = scale) per set and their means, or None without sets.

    A set of :class:`TeacherOutputs` (held-back images and the teacher's outputs) is scored against the teacher,
    not against a ground truth, and labelled so: ``psnr_vs_teacher`` and ``ssim_vs_teacher``, apart from the
    ``psnr`` and ``ssim`` means of the ground-truth sets."""
    if not sets:
        return None
    from ...evaluation import evaluate

    def validate(model: nn.Module) -> dict:
        results, truth = {}, [s for s in sets if getattr(s, "reference", None) != "teacher"]
        for dataset in sets:
            scores = evaluate(model, dataset, scale, progress=False)
            if dataset in truth:
                results[f"{scores['name']}/psnr"] = scores["psnr"]
                results[f"{scores['name']}/ssim"] = scores["ssim"]
            else:
                results.update(psnr_vs_teacher=scores["psnr"], ssim_vs_teacher=scores["ssim"])
        if truth:
            results["psnr"] = math.fsum(v for k, v in results.items() if k.endswith("/psnr")) / len(truth)
            results["ssim"] = math.fsum(v for k, v in results.items() if k.endswith("/ssim")) / len(truth)
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


def frozen_teacher(teacher: nn.Module, device, settings: StageSettings) -> nn.Module:
    """A copy of the teacher on the training device, in eval mode, without gradients, in the faster layout."""
    import copy

    from ..engine import uses_channels_last

    teacher = copy.deepcopy(teacher).to(device).eval().requires_grad_(False)
    if uses_channels_last(settings.channels_last, device, teacher):
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher


def teacher_targets(teacher: nn.Module, patches, folder: Path, settings: StageSettings, out_dir, device):
    """The teacher's outputs on every training image of ``patches``, checked and built before training in the
    cache ``folder`` (:class:`~cdism_fast.training.teacher_cache.TeacherCache`), in the precision ``settings.amp``
    resolves to for the ``cache`` workload on ``device`` (recorded in ``out_dir``'s ``stage.json``), and attached
    to the patches."""
    from ..teacher_cache import TeacherCache

    precision = resolve_amp(settings.amp, device, "cache")
    on_main(record_precision, out_dir, "cache", precision)
    cache = TeacherCache(folder, teacher, patches, amp_dtype=precision.dtype, progress=settings.progress)
    cache.prepare()
    patches.use_targets(cache)
    return cache


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
               overwrite: bool, inputs: dict | None, device, files=TRAINING_FILES, pairs=None):
    """(pairs, patches): the training pairs of ``data`` at ``scale`` (``pairs`` given: those) and ``settings.amp``
    on ``device`` (checked first: a refusal leaves no folder) and their patch stream (:func:`stage_patches`), once
    the stage folder is prepared (rank 0): ``stage.json`` records ``settings``, ``record`` (the stage's options and
    what it depends on) and the data with its fingerprint, so that a resume with other inputs is refused."""
    check_amp(settings.amp, device)
    pairs = training_pairs(data, scale) if pairs is None else pairs
    record = {**asdict(settings), **record, "data": data_source(data),
              "data_fingerprint": data_fingerprint(data)}
    on_main(prepare_run_folder, folder, stage, record, resume=resume, overwrite=overwrite, files=files,
            inputs=stage_inputs(data, val, inputs))
    return pairs, stage_patches(pairs, settings)


def train_stage(model: nn.Module, step_loss: Callable, optimizer, patches, settings: StageSettings, folder, *,
                resume: bool, description: str, kind: str, data, val, context, metadata: dict,
                ema: bool = True, held_back: Optional[TeacherOutputs] = None,
                note: Optional[str] = None) -> tuple[Trainer, TrainResult]:
    """(trainer, result): the :class:`~.engine.Trainer` of a training stage (the step schedule of ``settings``,
    validation on the held-out sets of ``val`` or the built-in ones, and against the teacher on ``held_back``)
    and its ``fit``, recorded in ``stage.json`` when a non-finite loss stopped it. ``note``: one line said once
    as training starts (printed, and in the log's start record)."""
    scale = model.scale
    sets = validation_sets(val, data, scale) + ([held_back] if held_back is not None and len(held_back) else [])
    trainer = Trainer(model, step_loss, optimizer, patches, settings.train_config(description, ema=ema), folder,
                      scheduler=torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(settings.milestones),
                                                                     gamma=settings.gamma),
                      context=context, kind=kind, validate=make_validator(sets, scale),
                      metadata=metadata, note=note)
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
