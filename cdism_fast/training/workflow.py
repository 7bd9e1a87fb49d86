"""All stages in one run: teacher → prune → compress → distill (and its no-KD ablation) → evaluation → report.

The run folder holds one sub-folder per stage (``teacher/``, ``prune/``,
``compress/``, ``student/``, ``student_no_kd/``), ``evaluation.json``,
``crops/`` (the Fig. 3-style crops) and the report. Resuming skips the stages
that completed and resumes the one that was interrupted.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from . import distributed
from .artifacts import mark_stage, prepare_run_folder, read_stage, records_failure, write_json
from .presets import PRESETS, WorkflowPreset
from .stages import (
    DENSITY_FILE,
    STUDENT_FILE,
    StageResult,
    StageSettings,
    _inputs,
    _on_main,
    _source,
    compress,
    distill,
    format_table,
    load_stage_model,
    prune,
    structure_table,
    train_teacher,
    training_pairs,
    validation_sets,
)

__all__ = ["run_workflow", "WorkflowResult", "evaluate_models", "stage_folders", "EVALUATION_FILE", "TIMINGS_FILE",
           "CROP_SIZE"]

EVALUATION_FILE = "evaluation.json"
#: Wall time of each stage in seconds, summed over the run and its resumes.
TIMINGS_FILE = "timings.json"
#: Side (HR pixels) of the Fig. 3-style crops.
CROP_SIZE = 96
#: The stage folders of a run (besides the students', see :func:`stage_folders`), and the files the run
#: writes beside them (``--overwrite`` removes only these).
STAGE_FOLDERS = ("teacher", "prune", "compress", "student", "student_no_kd")
RUN_FILES = (EVALUATION_FILE, TIMINGS_FILE, "report.json", "report.md", "psnr_vs_cost.png", "crops.png",
             "crops/*.png")
#: The folder of a student's no-KD twin.
NO_KD_SUFFIX = "_no_kd"


@dataclass
class WorkflowResult:
    status: str
    folder: Path
    evaluation: dict = field(default_factory=dict)
    report: Optional[dict] = None


def stage_folders(preset: WorkflowPreset) -> tuple[str, ...]:
    """Every sub-folder a run of ``preset`` may write."""
    students = [f"{name}{suffix}" for name in preset.students for suffix in ("", NO_KD_SUFFIX)]
    return tuple(dict.fromkeys((*STAGE_FOLDERS, *students)))


def _completed(folder: Path) -> bool:
    record = read_stage(folder)
    return record is not None and record.get("status") == "completed"


def _add_time(out_dir: Path, stage: str, seconds: float) -> None:
    from .artifacts import read_json

    timings = read_json(out_dir / TIMINGS_FILE, "timings file") or {}
    timings[stage] = round(float(timings.get(stage, 0.0)) + seconds, 1)
    write_json(out_dir / TIMINGS_FILE, timings)


def _timed(out_dir: Path, stage: str, run):
    """``run()``, its wall time added to the run's timings.json."""
    started = time.perf_counter()
    try:
        return run()
    finally:
        _on_main(_add_time, out_dir, stage, time.perf_counter() - started)


def _stage(out_dir: Path, name: str, run, *, loads=True):
    """Run stage ``name`` unless its folder says it completed; returns (status, model)."""
    folder = out_dir / name
    if _completed(folder):
        return "completed", load_stage_model(folder) if loads else None
    result: StageResult = _timed(out_dir, name, lambda: run(resume=folder.is_dir()))
    return result.status, result.model


def _settings(base: StageSettings, overrides: dict) -> StageSettings:
    return base.replace(**{k: v for k, v in overrides.items() if v is not None})


def _preset(preset: str | WorkflowPreset, data, teacher) -> WorkflowPreset:
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        preset = PRESETS[preset]
    if preset.needs_data and data is None:
        raise ValueError(f"preset {preset.name!r} needs training data: pass --data DIR (DIV2K: the folder holding "
                         "DIV2K_train_HR and DIV2K_train_LR_bicubic; cpu-291: --data T91 --data BSD200), and --val "
                         "for the evaluation sets")
    if preset.needs_teacher and teacher is None:
        raise ValueError(f"preset {preset.name!r} compresses a pretrained model: pass --teacher FILE (e.g. the "
                         "published IMDN_x2.pth)")
    return preset


def _teacher(preset: WorkflowPreset, teacher, out_dir: Path, overrides: dict, data, val, context):
    """Stage 0: the given teacher, or one trained by the preset's recipe; (status, model)."""
    if teacher is None:
        def train(resume):
            torch.manual_seed(_settings(preset.teacher, overrides).seed)
            from ..models import build

            model = build(preset.teacher_model, scale=preset.scale)
            if preset.teacher_structure is not None:
                model = model.with_structure(*preset.teacher_structure)
            return train_teacher(model, out_dir / "teacher", _settings(preset.teacher, overrides), data, val,
                                 resume=resume, context=context)

        return _stage(out_dir, "teacher", train)
    if isinstance(teacher, nn.Module):
        model = teacher
    else:
        from .artifacts import load_model

        model = load_model(teacher)
    if getattr(model, "scale", preset.scale) != preset.scale:
        raise ValueError(f"the teacher is a x{model.scale} model but preset {preset.name!r} is x{preset.scale}")
    return "completed", model


def _students(preset: WorkflowPreset, teacher_model, out_dir: Path, overrides: dict, data, val, context,
              no_kd_baseline: bool) -> tuple[str, dict]:
    """Stage 3: every student of the preset distilled, and its no-KD twin at the same budget."""
    trained = {}
    for name, spec in preset.students.items():
        student = out_dir / "compress" / STUDENT_FILE if spec is None else spec
        runs = {name: True, f"{name}{NO_KD_SUFFIX}": False} if no_kd_baseline else {name: True}
        for folder, kd in runs.items():
            status, trained[folder] = _stage(out_dir, folder, lambda resume, kd=kd, folder=folder, student=student:
                                             distill(teacher_model if kd else None, student, out_dir / folder,
                                                     _settings(preset.distill, overrides), data, val, kd=kd,
                                                     scale=preset.scale, resume=resume, context=context,
                                                     **preset.distill_options))
            if status != "completed":
                return folder, trained
    return "completed", trained


@records_failure
def run_workflow(preset: str | WorkflowPreset, out_dir, *, data=None, val=None, teacher=None,
                 no_kd_baseline: bool = True, resume: bool = False, overwrite: bool = False,
                 settings_overrides: dict | None = None, progress: bool = True,
                 context: distributed.DistributedContext | None = None) -> WorkflowResult:
    """Run every stage of ``preset`` into ``out_dir`` and write the report.

    ``data``: a training folder or a list of them (read as one set). ``teacher``:
    a model file (any format :func:`~cdism_fast.training.artifacts.load_model`
    reads) or model; None trains one (stage 0). ``settings_overrides`` replace
    fields of every stage's settings (e.g. ``num_workers``, ``amp``). Each
    stage's wall time is kept in ``timings.json``.
    """
    from ..report import build_report

    preset = _preset(preset, data, teacher)
    context = context or distributed.setup()
    out_dir = Path(out_dir)
    overrides = {**(settings_overrides or {}), "progress": progress}
    record = {"preset": preset.name, "data": _source(data) if data is not None else "built-in",
              "val": [str(v) for v in val] if val else None, "teacher": str(teacher) if teacher else None,
              "no_kd_baseline": no_kd_baseline, "overrides": {k: v for k, v in overrides.items() if v is not None}}
    # Fail on bad input now, before the run folder is made.
    if isinstance(teacher, (str, Path)) and not Path(teacher).is_file():
        raise FileNotFoundError(f"--teacher {teacher} does not exist; pass a model file (a run's model.pt or a "
                                "published checkpoint)")
    training_pairs(data, preset.scale)
    eval_sets = validation_sets(val, data, preset.scale)
    if not eval_sets:
        raise ValueError("no evaluation images: pass --val DIR (e.g. Set5) when training on your own --data")
    _on_main(prepare_run_folder, out_dir, "run", record, resume=resume, overwrite=overwrite, files=RUN_FILES,
             runs=stage_folders(preset),
             inputs=_inputs(data, val, {"--teacher": teacher if isinstance(teacher, (str, Path)) else None}))

    def interrupted(stage: str) -> WorkflowResult:
        _on_main(mark_stage, out_dir, status="interrupted", stopped_in=stage)
        return WorkflowResult("interrupted", out_dir)

    status, teacher_model = _teacher(preset, teacher, out_dir, overrides, data, val, context)
    if status != "completed":
        return interrupted("teacher")

    # Stage 1: prune.
    status, pruned = _stage(out_dir, "prune", lambda resume: prune(
        teacher_model, out_dir / "prune", _settings(preset.prune, overrides), data, val, resume=resume,
        context=context, **preset.prune_options))
    if status != "completed":
        return interrupted("prune")

    # Stage 2: compress.
    compressed = _timed(out_dir, "compress", lambda: compress(pruned, out_dir / "prune" / DENSITY_FILE,
                                                              out_dir / "compress", overwrite=True))
    if context.is_main:
        print(format_table(compressed.extra["table"]))

    stopped_in, trained = _students(preset, teacher_model, out_dir, overrides, data, val, context, no_kd_baseline)
    if stopped_in != "completed":
        return interrupted(stopped_in)

    models = {"teacher": teacher_model, "pruned": pruned, **trained}
    evaluation = _timed(out_dir, "evaluation",
                        lambda: _on_main(evaluate_models, models, eval_sets, preset.scale, out_dir, progress))
    report = _on_main(build_report, out_dir)
    _on_main(mark_stage, out_dir, status="completed")
    return WorkflowResult("completed", out_dir, evaluation, report)


def _pick_crop(hr: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left corner of the most detailed ``size``² window (largest luminance variance on a coarse grid)."""
    grey = hr.float().mean(0)
    height, width = grey.shape
    size = min(size, height, width)
    best, corner = -1.0, (0, 0)
    step = max(1, size // 2)
    for top in range(0, height - size + 1, step):
        for left in range(0, width - size + 1, step):
            variance = float(grey[top: top + size, left: left + size].var())
            if variance > best:
                best, corner = variance, (top, left)
    return corner


def evaluate_models(models: dict[str, nn.Module], eval_sets: list, scale: int, out_dir, progress: bool = True) -> dict:
    """PSNR/SSIM of each model (and bicubic) on every set, sizes and costs, and the crops of one image.

    Writes ``evaluation.json`` and ``crops/<model>.png`` (the same crop of the
    first image of the first set for HR, bicubic and every model).
    """
    from ..data import write_image
    from ..evaluation import Bicubic, evaluate, upscale
    from ..models import count_flops, count_params
    from .stages import FLOPS_SIZE, density_report

    out_dir = Path(out_dir)
    entries = {}
    lr, hr, image_name = eval_sets[0][0]
    top, left = _pick_crop(hr, CROP_SIZE)
    crop = (slice(top, top + CROP_SIZE), slice(left, left + CROP_SIZE))
    write_image(out_dir / "crops" / "hr.png", hr[:, crop[0], crop[1]])
    for name, model in {**models, "bicubic": Bicubic(scale)}.items():
        model = model.eval()
        per_set = {}
        for dataset in eval_sets:
            scores = evaluate(model, dataset, scale, progress=progress)
            per_set[scores["name"]] = {"psnr": scores["psnr"], "ssim": scores["ssim"], "images": scores["images"]}
        images = [image for scores in per_set.values() for image in scores["images"]]
        entry = {
            "psnr": math.fsum(i["psnr"] for i in images) / len(images),
            "ssim": math.fsum(i["ssim"] for i in images) / len(images),
            "sets": per_set,
        }
        if name != "bicubic":
            flops = count_flops(model, out_hw=FLOPS_SIZE)
            entry.update(params=count_params(model), flops=flops["total"],
                         flops_without_attention=flops["total_without_attention"],
                         structure=model.structure()._asdict(), density=density_report(model)["density"])
        else:
            entry.update(params=0, flops=0, structure=None, density=None)
        with torch.no_grad():
            sr = upscale(model, lr, scale)
        write_image(out_dir / "crops" / f"{name}.png", sr[:, crop[0], crop[1]])
        entries[name] = entry
    evaluation = {"scale": scale, "crop": {"image": image_name, "top": top, "left": left, "size": CROP_SIZE},
                  "models": entries, "table": structure_table(models)}
    write_json(out_dir / EVALUATION_FILE, evaluation)
    return evaluation
