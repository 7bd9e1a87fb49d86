"""All stages in one run: teacher → prune → compress → distill (and its no-KD ablation) → evaluation → report.

The run folder holds one sub-folder per stage (``teacher/``, ``prune/``,
``compress/``, ``student/``, ``student_no_kd/``), ``evaluation.json``,
``crops/`` (the Fig. 3-style crops) and the report. Resuming skips the stages
that completed and resumes the one that was interrupted.

This module sits above :mod:`cdism_fast.training` (the stages),
:mod:`cdism_fast.run_evaluation` (the evaluation stage) and
:mod:`cdism_fast.report`, and below the ``cdism-fast run`` command.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .models import model_record
from .report import NO_KD_SUFFIX, TIMINGS_FILE, build_report
from .run_evaluation import EVALUATION_FILE, evaluate_models
from .training import distributed
from .training.artifacts import (
    data_source,
    mark_stage,
    prepare_run_folder,
    read_json,
    read_stage,
    records_failure,
    stage_inputs,
    write_json,
)
from .training.distributed import on_main
from .training.engine import StopRequest
from .training.precision import check_amp
from .training.presets import WORKFLOWS, WorkflowPreset
from .training.stages import (
    DENSITY_FILE,
    STAGE_OPTIONS,
    STUDENT_FILE,
    StageResult,
    TargetOptions,
    TeacherOutputs,
    check_cache_folder,
    check_patch_size,
    check_student_family,
    compress,
    distill,
    format_table,
    init_problem,
    load_stage_model,
    prune,
    student_from,
    train_teacher,
    training_pairs,
    unlabelled_split,
    validation_sets,
    with_overrides,
)

__all__ = ["run_workflow", "WorkflowResult", "stage_folders"]

#: The stage folders of a run (besides the students', see :func:`stage_folders`), and the files the run
#: writes beside them (``--overwrite`` removes only these).
STAGE_FOLDERS = ("teacher", "prune", "compress", "student", "student_no_kd")
RUN_FILES = (EVALUATION_FILE, TIMINGS_FILE, "report.json", "report.md", "psnr_vs_cost.png", "crops.png",
             "crops/*.png")


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
    timings = read_json(out_dir / TIMINGS_FILE, "timings file") or {}
    timings[stage] = round(float(timings.get(stage, 0.0)) + seconds, 1)
    write_json(out_dir / TIMINGS_FILE, timings)


def _timed(out_dir: Path, stage: str, run):
    """``run()``, its wall time added to the run's timings.json."""
    started = time.perf_counter()
    try:
        return run()
    finally:
        on_main(_add_time, out_dir, stage, time.perf_counter() - started)


def _stop_requested(stop: StopRequest) -> bool:
    """Whether any rank was asked to stop, so that every rank stops before the same stage."""
    return any(distributed.gather_objects(stop.requested))


def _stage(out_dir: Path, name: str, run, *, loads=True):
    """Run stage ``name`` unless its folder says it completed; returns (status, model), the status "interrupted"
    also when the stop request came as the stage finished (its folder then says "completed" and a resume goes on
    with the next stage)."""
    folder = out_dir / name
    if _completed(folder):
        return "completed", load_stage_model(folder) if loads else None
    with StopRequest() as stop:
        result: StageResult = _timed(out_dir, name, lambda: run(resume=folder.is_dir()))
    return "interrupted" if _stop_requested(stop) else result.status, result.model


def _preset(preset: str | WorkflowPreset, option_overrides: dict | None = None,
                    scale: int | None = None) -> WorkflowPreset:
    """``preset`` (a name of :data:`~cdism_fast.training.presets.WORKFLOWS` or a preset) with ``option_overrides``
    (fields of any stage's options dataclass, by name; None values ignored) and another ``scale``."""
    if isinstance(preset, str):
        if preset not in WORKFLOWS:
            raise ValueError(f"preset must be one of {sorted(WORKFLOWS)}, got {preset!r}")
        preset = WORKFLOWS[preset]
    given = {key: value for key, value in (option_overrides or {}).items() if value is not None}
    changes, used = {}, set()
    for stage, cls in STAGE_OPTIONS.items():  # a shared field (TargetOptions') goes to every stage that has it
        names = {f.name for f in dataclasses.fields(cls)}
        mine = {key: value for key, value in given.items() if key in names}
        used |= set(mine)
        if mine:
            changes[f"{stage}_options"] = dataclasses.replace(getattr(preset, f"{stage}_options"), **mine)
    if set(given) - used:
        raise ValueError(f"no stage has the option(s) {sorted(set(given) - used)}")
    if scale is not None:
        changes["scale"] = scale
    return dataclasses.replace(preset, **changes) if changes else preset


def _changed_options(preset: WorkflowPreset, option_overrides: dict | None) -> dict:
    """The given stage options whose value is not ``preset``'s own: an option given at the preset's value changes
    nothing, so the run records it as not given (a resume that names it, or leaves it out, is the same run)."""
    own = {field.name: getattr(getattr(preset, f"{stage}_options"), field.name)
           for stage, cls in STAGE_OPTIONS.items() for field in dataclasses.fields(cls)}
    return {key: value for key, value in (option_overrides or {}).items()
            if value is not None and (key not in own or own[key] != value)}


def _check_preset(preset: WorkflowPreset, data, teacher) -> WorkflowPreset:
    if preset.needs_data and data is None:
        raise ValueError(f"preset {preset.name!r} needs training data: pass --data DIR (DIV2K: the folder holding "
                         "DIV2K_train_HR and DIV2K_train_LR_bicubic; cpu-291: --data T91 --data BSD200), and --val "
                         "for the evaluation sets")
    if preset.needs_teacher and teacher is None:
        raise ValueError(f"preset {preset.name!r} compresses a pretrained model: pass --teacher FILE (e.g. the "
                         "published IMDN_x2.pth)")
    return preset


def _targets(preset: WorkflowPreset, teacher, no_kd_baseline: bool | None) -> tuple[bool, bool]:
    """(whether the run trains on the teacher's outputs, whether it trains the no-KD twins): one kind of target
    for the whole run, and no twin without a ground truth."""
    kinds = {stage: getattr(preset, f"{stage}_options").targets for stage, cls in STAGE_OPTIONS.items()
             if issubclass(cls, TargetOptions)}
    if len(set(kinds.values())) != 1:
        raise ValueError(f"the stages of a run train toward one kind of target, got {kinds}; give them one --targets")
    teacher_targets = next(iter(kinds.values())) == "teacher"
    if not teacher_targets:
        return False, no_kd_baseline is not False
    if teacher is None:
        raise ValueError("--targets teacher trains on the teacher's outputs: pass --teacher FILE (without it stage 0 "
                         "trains a teacher on HR images, which --targets teacher has none of)")
    if no_kd_baseline:
        raise ValueError("--no-kd-baseline trains the student on the ground truth, which --targets teacher has none "
                         "of; drop --no-kd-baseline, or pass --targets hr with HR images in --data (nothing was "
                         "written)")
    return True, False


def _given_teacher(preset: WorkflowPreset, teacher, scale: int | None) -> nn.Module:
    """The model of ``--teacher``, at the run's scale."""
    from .evaluation import load_model

    if isinstance(teacher, nn.Module):
        model = teacher
    elif not Path(teacher).is_file():
        raise FileNotFoundError(f"--teacher {teacher} does not exist; pass a model file (a run's model.pt or a "
                                "published checkpoint)")
    else:
        model = load_model(str(teacher), scale, "--teacher")
    if getattr(model, "scale", preset.scale) != preset.scale:
        raise ValueError(f"the teacher is a x{model.scale} model but preset {preset.name!r} is x{preset.scale}; "
                         f"pass --scale {model.scale} to run the workflow at x{model.scale} (nothing was written)")
    return model


def _teacher(preset: WorkflowPreset, teacher: nn.Module | None, out_dir: Path, overrides: dict, data, val,
             context):
    """Stage 0: the given teacher, or one trained by the preset's recipe; (status, model)."""
    if teacher is not None:
        return "completed", teacher

    def train(resume):
        torch.manual_seed(with_overrides(preset.teacher, overrides).seed)
        from .models import build

        model = build(preset.teacher_model, scale=preset.scale)
        if preset.teacher_structure is not None:
            model = model.with_structure(*preset.teacher_structure)
        return train_teacher(model, out_dir / "teacher", with_overrides(preset.teacher, overrides), data, val,
                             resume=resume, context=context)

    return _stage(out_dir, "teacher", train)


def _check_init(preset: WorkflowPreset, teacher: nn.Module | None) -> None:
    """Refuse ``--init inherit`` now, before the run folder is made, when a student of the preset cannot inherit
    from the teacher (another family, or a family that declares no inheritance)."""
    if preset.distill_options.init != "inherit":
        return
    if teacher is None:
        from .models import build

        teacher = build(preset.teacher_model, scale=preset.scale)
        if preset.teacher_structure is not None:
            teacher = teacher.with_structure(*preset.teacher_structure)
    for spec in preset.students.values():
        # Stage 2's student is the teacher's family, with its options: the teacher stands for it here.
        init_problem("inherit", teacher, teacher if spec is None else student_from(spec, scale=preset.scale))


def _students(preset: WorkflowPreset, teacher_model, pruned, out_dir: Path, overrides: dict, data, val, context,
              no_kd_baseline: bool) -> tuple[str, dict]:
    """Stage 3: every student of the preset distilled, and its no-KD twin at the same budget (and the same initial
    weights: an inheriting student's twin inherits too, the blocks and channels chosen by the pruned teacher)."""
    trained = {}
    for name, spec in preset.students.items():
        student = out_dir / "compress" / STUDENT_FILE if spec is None else spec
        runs = {name: True, f"{name}{NO_KD_SUFFIX}": False} if no_kd_baseline else {name: True}
        for folder, kd in runs.items():
            status, trained[folder] = _stage(out_dir, folder, lambda resume, kd=kd, folder=folder, student=student:
                                             distill(teacher_model, student, out_dir / folder,
                                                     with_overrides(preset.distill, overrides),
                                                     preset.distill_options, data, val, kd=kd, scale=preset.scale,
                                                     resume=resume, context=context, pruned=pruned))
            if status != "completed":
                return folder, trained
    return "completed", trained


@records_failure
def run_workflow(preset: str | WorkflowPreset, out_dir, *, data=None, val=None, teacher=None, scale: int | None = None,
                 no_kd_baseline: bool | None = None, resume: bool = False, overwrite: bool = False,
                 settings_overrides: dict | None = None, option_overrides: dict | None = None,
                 progress: bool = True, context: distributed.DistributedContext | None = None) -> WorkflowResult:
    """Run every stage of ``preset`` into ``out_dir`` and write the report.

    ``data``: a training folder or a list of them (read as one set). ``teacher``:
    a model file (any format :func:`~cdism_fast.evaluation.load_model` reads)
    or model; None trains one (stage 0). ``scale`` replaces the preset's (and
    tells the scale of a teacher file that does not record it).
    ``settings_overrides`` replace fields of every stage's settings (e.g.
    ``num_workers``, ``amp``), ``option_overrides`` fields of the stages'
    options (any field of :data:`~cdism_fast.training.stages.STAGE_OPTIONS`' dataclasses, e.g. ``lam``,
    ``alpha``, ``teacher_cache``, ``targets``). Each stage's wall time is kept in ``timings.json``.

    ``no_kd_baseline``: also train each student's no-KD twin (None: yes, unless the targets are the teacher's).
    With ``targets="teacher"`` (:class:`~cdism_fast.training.stages.TargetOptions`, one value for pruning and
    distillation) the images of ``data`` are LR inputs as they are, ``teacher`` is required, no twin is trained
    (there is no ground truth), and every model is also evaluated against the teacher's output on the images held
    back from ``data`` (``vs_teacher`` in ``evaluation.json``, a table of its own in the report).
    """
    base = _preset(preset)
    option_overrides = _changed_options(base, option_overrides)
    preset = _check_preset(_preset(base, option_overrides, scale), data, teacher)
    teacher_targets, no_kd_baseline = _targets(preset, teacher, no_kd_baseline)
    context = context or distributed.setup()
    out_dir = Path(out_dir)
    overrides = {**(settings_overrides or {}), "progress": progress}
    given = {k: v for k, v in {**overrides, **option_overrides}.items() if v is not None}
    record = {"preset": preset.name, "scale": preset.scale,
              "data": data_source(data) if data is not None else "built-in",
              "val": [str(v) for v in val] if val else None, "teacher": str(teacher) if teacher else None,
              "no_kd_baseline": no_kd_baseline, "overrides": given}
    # Fail on bad input now, before the run folder is made.
    if teacher_targets:
        _, held = unlabelled_split(data, preset.scale, preset.distill_options.holdout)
    else:
        training_pairs(data, preset.scale)
        held = None
    eval_sets = validation_sets(val, data, preset.scale)
    if not eval_sets and not held:
        raise ValueError("no evaluation images: pass --val DIR (e.g. Set5) when training on your own --data"
                         + (", or keep --holdout above 0 to evaluate against the teacher" if teacher_targets else ""))
    given_teacher = _given_teacher(preset, teacher, scale) if teacher is not None else None
    if given_teacher is not None:
        check_student_family(given_teacher, preset.compress_options)
        record["teacher_model"] = model_record(given_teacher)
    check_amp(with_overrides(preset.distill, overrides).amp, context.device)
    _check_init(preset, given_teacher)
    check_cache_folder(preset.distill_options)
    check_patch_size(with_overrides(preset.distill, overrides).patch_size, preset.scale)
    on_main(prepare_run_folder, out_dir, "run", record, resume=resume, overwrite=overwrite, files=RUN_FILES,
            runs=stage_folders(preset),
            inputs=stage_inputs(data, val, {"--teacher": teacher if isinstance(teacher, (str, Path)) else None}))

    def interrupted(stage: str) -> WorkflowResult:
        on_main(mark_stage, out_dir, status="interrupted", stopped_in=stage)
        return WorkflowResult("interrupted", out_dir)

    if teacher_targets and context.is_main:
        print("targets: the teacher's outputs on the images of --data (no ground truth): distillation's loss is "
              "L_dis alone, no no-KD twin is trained, and every model is also scored against the teacher's output "
              f"on the images held back from --data ({len(held) if held else 0}; PSNR against the teacher, not "
              "against a ground truth)", file=sys.stderr)

    # One stop request for the whole run: Ctrl-C between or at the end of stages stops before the next.
    with StopRequest() as stop:
        status, teacher_model = _teacher(preset, given_teacher, out_dir, overrides, data, val, context)
        if status != "completed":
            return interrupted("teacher")

        # Stage 1: prune.
        status, pruned = _stage(out_dir, "prune", lambda resume: prune(
            teacher_model, out_dir / "prune", with_overrides(preset.prune, overrides), preset.prune_options, data, val,
            resume=resume, context=context))
        if status != "completed":
            return interrupted("prune")

        # Stage 2: compress.
        compressed = _timed(out_dir, "compress", lambda: compress(pruned, out_dir / "prune" / DENSITY_FILE,
                                                                  out_dir / "compress", preset.compress_options,
                                                                  overwrite=True))
        if context.is_main:
            print(format_table(compressed.extra["table"]))
        if _stop_requested(stop):
            return interrupted("compress")

        stopped_in, trained = _students(preset, teacher_model, pruned, out_dir, overrides, data, val, context,
                                        no_kd_baseline)
        if stopped_in != "completed":
            return interrupted(stopped_in)

        models = {"teacher": teacher_model, "pruned": pruned, **trained}
        reference = TeacherOutputs(held, teacher_model) if held else None
        evaluation = _timed(out_dir, "evaluation",
                            lambda: on_main(evaluate_models, models, eval_sets, preset.scale, out_dir, progress,
                                            reference=reference))
        if _stop_requested(stop):
            return interrupted("evaluation")
        report = on_main(build_report, out_dir)
        on_main(mark_stage, out_dir, status="completed")
        return WorkflowResult("completed", out_dir, evaluation, report)
