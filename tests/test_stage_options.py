"""Each stage's options are declared once (PruneOptions, CompressOptions, DistillOptions; the fields of
TargetOptions, which pruning and distillation share, once for both) and every field reaches its stage from the
stage's own command and from `run` (a shared field reaches every stage that has it).

The stage functions are replaced by recorders, so nothing trains.
"""
import dataclasses
import typing
from dataclasses import fields

import pytest

import cdism_fast.evaluation
import cdism_fast.training.stages as stages
import cdism_fast.workflow as workflow
from cdism_fast.cli import build_parser, main
from cdism_fast.cli.options import STAGE_COMMAND_PRESET, option_name, settings_from_args
from cdism_fast.cli.run import RUN_PRESET
from cdism_fast.models import build
from cdism_fast.training.artifacts import save_model
from cdism_fast.training.presets import WORKFLOWS
from cdism_fast.training.stages import STAGE_OPTIONS, StageResult, StageSettings, TargetOptions

FIELDS = [(stage, f.name) for stage, cls in STAGE_OPTIONS.items() for f in fields(cls)]
SHARED = {f.name for f in fields(TargetOptions)}


class Reached(BaseException):
    """Raised by a recorder: the stage was called (a BaseException, so no command turns it into an exit code)."""


def _other_value(stage, name, base):
    """A command-line text for option ``name`` of ``stage`` and the value it must give, never the one of ``base``."""
    cls = STAGE_OPTIONS[stage]
    field = next(f for f in fields(cls) if f.name == name)
    current = getattr(base, name)
    annotation = typing.get_type_hints(cls)[field.name]
    if field.metadata.get("choices"):
        value = next(c for c in field.metadata["choices"] if c != current)
    elif annotation is bool:
        return [option_name(field.name) if not current else "--no-" + option_name(field.name)[2:]], not current
    elif annotation in (int, typing.Optional[int]):
        value = 5 if current is None else current + 3
    elif annotation in (float, typing.Optional[float]):
        value = 0.25 if current != 0.25 else 0.125
    else:
        value = "off" if current != "off" else "elsewhere"
    return [option_name(field.name), str(value)], value


def _preset_options(preset: str, stage: str):
    return getattr(WORKFLOWS[preset], f"{stage}_options") if stage != "compress" or preset == RUN_PRESET \
        else STAGE_OPTIONS["compress"]()


@pytest.fixture
def teacher(tmp_path, monkeypatch):
    """A tiny teacher that every --teacher names (the file only has to exist)."""
    model = build("edsr_baseline", scale=2).with_structure(1, 1, 8)
    monkeypatch.setattr(cdism_fast.evaluation, "load_model", lambda *args, **kwargs: model)
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"")
    return path


def _recorder(seen: dict, stage: str, stop: bool):
    def record(*args, **kwargs):
        options = next(a for a in (*args, *kwargs.values()) if isinstance(a, STAGE_OPTIONS[stage]))
        seen[stage] = options
        if stop:
            raise Reached
        teacher = args[0]
        return StageResult("completed", args[2] if stage == "compress" else args[1], model=teacher,
                           extra={"table": []})
    return record


@pytest.mark.parametrize("stage, name", FIELDS)
def test_every_option_reaches_its_stage_from_the_stage_command(tmp_path, teacher, monkeypatch, stage, name):
    base = _preset_options(STAGE_COMMAND_PRESET, stage)
    words, expected = _other_value(stage, name, base)
    seen = {}
    monkeypatch.setattr(stages, stage, _recorder(seen, stage, stop=True))
    required = {"prune": ["--teacher", str(teacher)],
                "compress": ["--teacher", str(teacher), "--density", "0.5"],
                "distill": ["--teacher", str(teacher), "--student", "edsr_mini"]}[stage]
    with pytest.raises(Reached):
        main([stage, *required, "--out", str(tmp_path / "out"), *words])
    assert seen[stage] == dataclasses.replace(base, **{name: expected}) != base


@pytest.mark.parametrize("stage, name", FIELDS)
def test_every_option_of_every_stage_reaches_it_from_run(tmp_path, teacher, monkeypatch, stage, name):
    base = _preset_options(RUN_PRESET, stage)
    words, expected = _other_value(stage, name, base)
    seen = {}
    for each in STAGE_OPTIONS:  # the workflow calls prune, compress, then distill: the last one stops the run
        monkeypatch.setattr(workflow, each, _recorder(seen, each, stop=each == "distill"))
    with pytest.raises(Reached):
        main(["run", "--teacher", str(teacher), "--out", str(tmp_path / "run"), "--no-progress", *words])
    assert set(seen) == set(STAGE_OPTIONS)
    assert seen[stage] == dataclasses.replace(base, **{name: expected}) != base
    for other in set(STAGE_OPTIONS) - {stage}:  # a shared field is one option of every stage that has it
        own = _preset_options(RUN_PRESET, other)
        shares = name in SHARED and issubclass(STAGE_OPTIONS[other], TargetOptions)
        assert seen[other] == (dataclasses.replace(own, **{name: expected}) if shares else own)


def test_the_options_do_not_collide_with_the_settings_or_each_other():
    names = [f.name for cls in STAGE_OPTIONS.values() for f in fields(cls)]
    repeated = {name for name in names if names.count(name) > 1}
    assert repeated == SHARED  # only TargetOptions' fields, declared once and inherited by prune and distill
    assert [cls for cls in STAGE_OPTIONS.values() if issubclass(cls, TargetOptions)] == [
        STAGE_OPTIONS["prune"], STAGE_OPTIONS["distill"]]
    assert not set(names) & {f.name for f in fields(StageSettings)}
    for cls in STAGE_OPTIONS.values():
        for f in fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


def test_run_help_lists_every_option_of_every_stage(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = capsys.readouterr().out
    for cls in (*STAGE_OPTIONS.values(), StageSettings):
        for f in fields(cls):
            assert option_name(f.name) in text
    assert "--scale" in text and "--teacher-cache DIR|off" in text


def test_the_presets_hold_options_instances():
    for preset in WORKFLOWS.values():
        for stage, cls in STAGE_OPTIONS.items():
            assert isinstance(getattr(preset, f"{stage}_options"), cls)
    with pytest.warns(DeprecationWarning, match="use WORKFLOWS"):
        from cdism_fast.training.presets import PRESETS
    assert PRESETS is WORKFLOWS


@pytest.mark.parametrize("text, message", [
    ("0.5x", "--density '0.5x' is neither a number in (0, 1] nor an existing file"),
    ("1.5", "density must be a number in (0, 1], got 1.5"),
    ("density.jsn", "--density 'density.jsn' is neither a number in (0, 1] nor an existing file"),
])
def test_compress_density_is_a_number_in_range_or_an_existing_file(tmp_path, teacher, capsys, text, message):
    assert main(["compress", "--teacher", str(teacher), "--density", text, "--out", str(tmp_path / "c")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"cdism-fast compress: error: {message}")
    assert not (tmp_path / "c").exists()


def test_a_presets_loader_workers_are_capped_by_the_cpus_but_a_given_count_is_kept(monkeypatch):
    monkeypatch.setattr(stages.common.os, "sched_getaffinity", lambda pid: {0, 1})
    parser = build_parser()
    base = WORKFLOWS["paper-edsr"].distill
    assert base.num_workers == 4
    args = parser.parse_args(["distill", "--student", "edsr_mini", "--out", "o"])
    assert settings_from_args(args, base).num_workers == 2
    args = parser.parse_args(["distill", "--student", "edsr_mini", "--out", "o", "--num-workers", "3"])
    assert settings_from_args(args, base).num_workers == 3
    assert stages.with_overrides(base, {}).num_workers == 2


def test_an_options_value_is_checked_where_it_is_declared():
    with pytest.raises(ValueError, match="penalty must be one of"):
        STAGE_OPTIONS["prune"](penalty="some")
    with pytest.raises(ValueError, match="reduction must be one of"):
        STAGE_OPTIONS["distill"](reduction="max")
    assert STAGE_OPTIONS["prune"]().schedule(1000)["n_p"] == 100


@pytest.mark.parametrize("command", ["distill", "run"])
def test_kd_reduction_is_another_spelling_of_reduction(command):
    required = ["--student", "edsr_mini", "--out", "o"] if command == "distill" else []
    parser = build_parser()
    by_alias = parser.parse_args([command, *required, "--kd-reduction", "sum"])
    assert by_alias.reduction == "sum" == parser.parse_args([command, *required, "--reduction", "sum"]).reduction


def test_stage_json_records_every_distill_option_with_the_cache_folder_resolved(tmp_path):
    from cdism_fast.training.artifacts import read_stage
    from cdism_fast.training.stages import DistillOptions, distill

    settings = StageSettings(iterations=1, batch_size=2, patch_size=12, progress=False)
    distill(None, "edsr:1,1,4", tmp_path / "s", settings, DistillOptions(alpha=0.5), kd=False)
    recorded = read_stage(tmp_path / "s")["settings"]
    assert {f.name: recorded[f.name] for f in fields(DistillOptions)} == {
        "alpha": 0.5, "student_loss": "l1", "reduction": "mean", "high_pass": True, "init": "scratch",
        "teacher_cache": "off",
        "targets": "hr", "holdout": None}


def test_an_option_no_stage_has_is_refused_by_the_workflow_before_its_folder(tmp_path):
    with pytest.raises(ValueError, match=r"no stage has the option\(s\) \['lamda'\]"):
        workflow.run_workflow("demo", tmp_path / "run", option_overrides={"lamda": 0.1})
    assert not (tmp_path / "run").exists()


def test_an_empty_teacher_cache_names_no_folder_and_is_refused(tmp_path, capsys):
    teacher = tmp_path / "teacher.pt"
    save_model(teacher, build("edsr_baseline", scale=2).with_structure(1, 1, 8))
    assert main(["distill", "--teacher", str(teacher), "--student", "edsr_mini", "--teacher-cache", "", "--out",
                 str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        "cdism-fast distill: error: --teacher-cache '' names no folder; pass --teacher-cache DIR, or "
        "--teacher-cache off for the per-patch teacher")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("student_loss", ["l1", "charbonnier"])
def test_no_high_pass_drops_only_the_high_pass_term_of_the_distillation_loss(reduction, student_loss):
    import numpy as np
    import torch

    from cdism_fast.training.stages import DistillOptions
    from cdism_fast.training.stages.stage3_distill import _step_loss

    from float64_references import as_float64, distillation_loss, highpass, laplacian_loss

    generator = torch.Generator().manual_seed(0)
    lr, hr, target = (torch.rand(2, 3, *size, generator=generator) for size in ((10, 11), (20, 22), (20, 22)))
    student = torch.nn.Upsample(scale_factor=2, mode="nearest")

    class Targets:  # the teacher cache's interface: the target patches of a batch
        def targets_for(self, key, lr_batch):
            return target

    def loss(high_pass):
        options = DistillOptions(alpha=0.3, student_loss=student_loss, reduction=reduction, high_pass=high_pass)
        batch = (lr * 255, hr * 255, None)  # to_unit divides by 255, in place
        return _step_loss(torch.nn.Identity(), Targets(), options)(student, batch).item()

    out, t = as_float64(student(lr)), as_float64(target)
    full = distillation_loss(out, t, as_float64(hr), 0.3, student_loss, 5, reduction)
    high_freq = laplacian_loss(highpass(out), highpass(t), 5, reduction)
    assert high_freq > 0.01 * full
    np.testing.assert_allclose([loss(True), loss(False)], [full, full - high_freq], rtol=1e-5)
