"""The stages and the whole workflow end to end, on a few tiny images (seconds, not minutes)."""
import json
import os
import re
import signal

import numpy as np
import pytest
import torch

from cdism_fast.cli import exit_code, main
from cdism_fast.compress import compress_config
from cdism_fast.models import build, count_params
from cdism_fast.training import read_log
from cdism_fast.training.artifacts import model_spec, read_model_file, save_model
from cdism_fast.training.presets import WORKFLOWS, WorkflowPreset
from cdism_fast.training.stages import DistillOptions, PruneOptions, StageSettings, compress, distill, prune
from cdism_fast.workflow import run_workflow

from helpers.images import write_smooth_images as write_images

# Tiny tensors: one thread avoids OpenMP synchronisation, which dominates (and explodes on a busy machine).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return write_images(root / "train", 3, seed=1), write_images(root / "val", 2, seed=2)


def tiny(iterations=3, **changes):
    values = dict(iterations=iterations, batch_size=2, patch_size=12, lr=1e-3, checkpoint_every=0, log_every=1,
                  progress=False)
    return StageSettings(**{**values, **changes})


def tiny_teacher():
    torch.manual_seed(0)
    return build("edsr_baseline", scale=2).with_structure(2, 1, 16)


TINY = WorkflowPreset(
    name="tiny", description="test", teacher_model="edsr_baseline", teacher_structure=(2, 1, 16), scale=2,
    teacher=tiny(4), prune=tiny(3, lr=1e-2), distill=tiny(3),
    prune_options=PruneOptions(lam=0.5, n_p=2))


def test_workflow_interrupted_resumed_end_to_end_writes_the_report(tmp_path, images, monkeypatch):
    train, val = images
    import cdism_fast.ops

    charbonnier, calls = cdism_fast.ops.charbonnier, {"n": 0}

    def charbonnier_then_ctrl_c(*args, **kwargs):  # Ctrl-C during the second pruning iteration
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return charbonnier(*args, **kwargs)

    monkeypatch.setattr(cdism_fast.ops, "charbonnier", charbonnier_then_ctrl_c)
    first = run_workflow(TINY, tmp_path / "run", data=train, val=[val], progress=False)
    assert first.status == "interrupted"
    stage = json.loads((tmp_path / "run" / "stage.json").read_text())
    assert stage["status"] == "interrupted" and stage["stopped_in"] == "prune"
    with pytest.raises(FileExistsError, match="pass --resume to continue it"):
        run_workflow(TINY, tmp_path / "run", data=train, val=[val], progress=False)
    result = run_workflow(TINY, tmp_path / "run", data=train, val=[val], progress=False, resume=True)
    assert result.status == "completed"
    assert [r["iteration"] for r in read_log(tmp_path / "run" / "teacher" / "log.jsonl", "start")] == [0]
    assert [r["iteration"] for r in read_log(tmp_path / "run" / "prune" / "log.jsonl", "start")] == [0, 2]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    for name in ("teacher", "pruned", "student", "student_no_kd", "bicubic"):
        entry = report[name]
        assert {"params", "flops", "psnr", "ssim", "density", "structure"} <= set(entry)
        assert np.isfinite(entry["psnr"]) and 0 < entry["ssim"] <= 1
    assert report["bicubic"]["params"] == 0
    density = json.loads((tmp_path / "run" / "prune" / "density.json").read_text())
    assert 0 < density["density"] < 1  # lam = 0.5 zeroes weights within 3 steps
    expected = compress_config(tiny_teacher(), density["density"])
    assert report["student"]["structure"] == expected._asdict()
    assert report["student"]["params"] == count_params(tiny_teacher().with_structure(*expected))
    assert report["density"]["density"] == density["density"]
    assert report["command"] and report["preset"] == "tiny"
    assert {"student_params_fraction", "student_minus_bicubic_psnr", "kd_minus_no_kd_psnr"} <= set(report["checks"])
    for name in ("report.md", "psnr_vs_cost.png", "crops.png", "crops/hr.png", "crops/student.png"):
        assert (tmp_path / "run" / name).is_file(), name
    assert "| student (KD) |" in (tmp_path / "run" / "report.md").read_text()
    # the figures and tables can be rebuilt from the files alone
    (tmp_path / "run" / "report.json").unlink()
    assert main(["report", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "report.json").read_text())["student"] == report["student"]


def test_output_folder_guard_resume_and_overwrite(tmp_path, images, capsys):
    train, val = images
    out = tmp_path / "teacher"

    def train_command(iterations="2", folder=out):
        return ["train", "--preset", "demo", "--structure", "1,1,8", "--data", str(train), "--val", str(val),
                "--batch-size", "2", "--patch-size", "12", "--no-progress", "--iterations", iterations,
                "--out", str(folder)]

    arguments = train_command()
    assert main(arguments) == 0
    assert main(arguments) == 2
    assert "holds a 'train' run (completed); pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert main(train_command("4") + ["--resume"]) == 0  # extend 2 → 4 iterations
    assert [r["iteration"] for r in read_log(out / "log.jsonl", "start")] == [0, 2]
    assert main(arguments + ["--overwrite"]) == 0
    assert [r["iteration"] for r in read_log(out / "log.jsonl", "start")] == [0]
    assert main(["prune", "--teacher", str(out / "model.pt"), "--out", str(out), "--resume", "--iterations", "1",
                 "--data", str(train), "--no-progress"]) == 2
    assert "holds a 'train' run, not a 'prune' run" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(train_command(folder=foreign) + ["--overwrite"]) == 2
    assert "holds files that are not a cdism-fast run" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine"


def test_stage_commands_chain(tmp_path, images, capsys):
    train, val = images
    common = ["--preset", "demo", "--data", str(train), "--val", str(val), "--iterations", "2", "--batch-size", "2",
              "--patch-size", "12", "--no-progress", "--threads", "1"]
    assert main(["train", "--structure", "2,1,16", "--out", str(tmp_path / "t"), *common]) == 0
    teacher = str(tmp_path / "t" / "model.pt")
    assert main(["prune", "--teacher", teacher, "--lam", "0.5", "--lr", "0.01", "--out", str(tmp_path / "p"),
                 *common]) == 0
    assert "density d (deep-feature weights) =" in capsys.readouterr().out
    assert main(["compress", "--teacher", str(tmp_path / "p" / "model.pt"), "--density",
                 str(tmp_path / "p" / "density.json"), "--n-b", "1", "--out", str(tmp_path / "c")]) == 0
    table = capsys.readouterr().out
    assert "teacher" in table and "student" in table and "FLOPs@720p" in table
    student = json.loads((tmp_path / "c" / "student.json").read_text())
    assert student["structure"]["n_b"] == 1
    for extra, folder in ((["--kd-reduction", "sum"], "s"), (["--no-kd"], "n")):
        assert main(["distill", "--teacher", teacher, "--student", str(tmp_path / "c" / "student.json"), *extra,
                     "--out", str(tmp_path / folder), *common]) == 0
    assert json.loads((tmp_path / "s" / "stage.json").read_text())["settings"]["reduction"] == "sum"
    kd, no_kd = read_model_file(tmp_path / "s" / "model.pt"), read_model_file(tmp_path / "n" / "model.pt")
    assert kd.structure() == no_kd.structure() == (1, student["structure"]["n_l"], student["structure"]["n_c"])
    assert not all(torch.equal(a, b) for a, b in zip(kd.parameters(), no_kd.parameters()))


def test_prune_penalty_is_the_optimizers_and_can_spare_the_shallow_modules(tmp_path, images):
    train, _ = images
    teacher = tiny_teacher()
    result = prune(teacher, tmp_path / "deep", tiny(3, lr=1e-2), PruneOptions(lam=2.0, n_p=5, penalty="deep"),
                   data=train)
    report = result.extra["density"]
    assert report["density"] < 0.5
    assert report["layers"]["conv_first.weight"] == 1.0 and report["layers"]["conv_last.weight"] == 1.0
    assert set(report["layers"]) == {n for n, p in teacher.named_parameters() if p.dim() >= 2}
    # the loss that was back-propagated is the Charbonnier term alone: its logged values are those of the outputs
    losses = [r["loss"] for r in read_log(tmp_path / "deep" / "log.jsonl", "train")]
    assert all(0 < loss < 1 for loss in losses)
    assert all(torch.equal(a, b) for a, b in zip(tiny_teacher().parameters(), teacher.parameters()))  # untouched


def test_distill_teacher_is_frozen_in_eval_mode_without_grad(tmp_path, images):
    train, _ = images
    teacher = tiny_teacher()
    student = compress(teacher, 0.3, tmp_path / "c").model
    seen = []
    teacher.register_forward_hook(lambda module, inputs, output: seen.append(
        (module.training, torch.is_grad_enabled(), output.requires_grad)))
    before = [p.clone() for p in teacher.parameters()]
    result = distill(teacher, student, tmp_path / "s", tiny(2), DistillOptions(teacher_cache="off"), data=train)
    assert result.status == "completed"
    assert seen == [(False, False, False)] * 2  # per patch: once per iteration
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    seen.clear()
    cached = DistillOptions(teacher_cache=str(tmp_path / "cache"))
    result = distill(teacher, student, tmp_path / "cached", tiny(2), cached, data=train)
    assert result.status == "completed"
    assert seen == [(False, False, False)] * 3  # cached: once per training image, before training
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))


def test_bad_inputs_give_clear_errors(tmp_path, images, capsys):
    train, val = images
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--data", str(empty), "--out", str(tmp_path / "o1"), "--iterations", "1"]) == 2
    assert "holds no images" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    unknown = tmp_path / "unknown.pth"
    torch.save({"params": {"encoder.weight": torch.zeros(3, 3)}}, unknown)
    assert main(["prune", "--teacher", str(unknown), "--out", str(tmp_path / "o3")]) == 2
    assert re.search("is neither .*EDSR-PyTorch", capsys.readouterr().err)
    assert main(["train", "--out", str(tmp_path / "o4"), "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip() == "cdism-fast train: error: --threads must be >= 1, got 0"
    # a density file measured on another model
    other = tmp_path / "other"
    other.mkdir()
    (other / "density.json").write_text(json.dumps({"density": 0.1, "model": {"family": "edsr", "config": {}}}))
    with pytest.raises(ValueError, match="was measured on another model"):
        compress(tiny_teacher(), other / "density.json", tmp_path / "o4")
    (other / "density.json").write_text(json.dumps({"density": 0.0, "model": model_spec(tiny_teacher())}))
    with pytest.raises(ValueError, match=r"zeroed every deep-feature weight \(d = 0\)"):
        compress(tiny_teacher(), other / "density.json", tmp_path / "o4b")
    with pytest.raises(ValueError, match="preset 'paper-edsr' needs training data"):
        run_workflow("paper-edsr", tmp_path / "o5")
    with pytest.raises(ValueError, match="teacher is required for distillation"):
        distill(None, tiny_teacher(), tmp_path / "o6", tiny(1), data=train)
    with pytest.raises(ValueError, match="ema_decay must be None for pruning"):
        prune(tiny_teacher(), tmp_path / "o7", tiny(1, ema_decay=0.9), data=train)


def test_model_files_round_trip_exactly(tmp_path):
    model = build("edsr_baseline", scale=3, res_scale=0.5).with_structure(2, 2, 8)
    save_model(tmp_path / "m.pt", model, note="x")
    loaded = read_model_file(tmp_path / "m.pt")
    assert loaded.config() == model.config()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_presets_are_consistent():
    for preset in WORKFLOWS.values():
        assert preset.prune.ema_decay is None
        assert preset.distill_options.alpha == 0.1 and preset.distill_options.student_loss == "l1"
    for name in ("paper-edsr", "paper-swinir"):  # the authors' forms
        assert WORKFLOWS[name].distill_options.reduction == "mean"
        assert WORKFLOWS[name].prune_options.penalty == "all"
    assert WORKFLOWS["paper-edsr"].prune_options.lam == WORKFLOWS["paper-swinir"].prune_options.lam == 1e-4


def test_exit_codes_of_stopped_runs():
    from cdism_fast.training.checkpoint import CheckpointError
    from cdism_fast.training.engine import NonFiniteLossError

    assert exit_code(CheckpointError("disk full")) == 2 and exit_code(FileExistsError("out")) == 2
    assert exit_code(NonFiniteLossError("loss is nan at iteration 7")) == 2
    assert exit_code(RuntimeError("a bug")) is None  # exit 1, the traceback under --debug


TWO_STUDENTS = WorkflowPreset(
    name="two-students", description="test", teacher_model="edsr_baseline", scale=2, needs_data=True,
    needs_teacher=True, teacher=tiny(4), prune=tiny(3, lr=1e-2), distill=tiny(2),
    prune_options=PruneOptions(lam=0.5, n_p=2),
    students={"student": None, "mini": "edsr:1,1,8"})


def test_workflow_of_a_given_teacher_on_two_folders_distils_every_student_and_times_every_stage(tmp_path, images):
    train, val = images
    second = write_images(tmp_path / "more", 2, seed=3)
    with pytest.raises(ValueError, match="pass --teacher FILE"):
        run_workflow(TWO_STUDENTS, tmp_path / "refused", data=[train, second], val=[val], progress=False)
    assert not (tmp_path / "refused").exists()
    teacher = tiny_teacher()
    result = run_workflow(TWO_STUDENTS, tmp_path / "run", data=[train, second], val=[val], teacher=teacher,
                          progress=False)
    assert result.status == "completed"
    run = tmp_path / "run"
    for folder in ("student", "student_no_kd", "mini", "mini_no_kd"):
        assert json.loads((run / folder / "stage.json").read_text())["status"] == "completed", folder
    assert json.loads((run / "mini" / "stage.json").read_text())["settings"]["student"]["config"]["n_c"] == 8
    stage = json.loads((run / "prune" / "stage.json").read_text())
    assert stage["settings"]["data"] == [str(train.resolve()), str(second.resolve())]
    timings = json.loads((run / "timings.json").read_text())
    assert set(timings) == {"prune", "compress", "student", "student_no_kd", "mini", "mini_no_kd", "evaluation"}
    assert all(seconds >= 0 for seconds in timings.values())
    report = json.loads((run / "report.json").read_text())
    assert report["models"] == ["teacher", "pruned", "student", "student_no_kd", "mini", "mini_no_kd", "bicubic"]
    differences = report["checks"]["kd_minus_no_kd"]
    for name in ("student", "mini"):
        expected = report[name]["sets"]["val"]["psnr"] - report[f"{name}_no_kd"]["sets"]["val"]["psnr"]
        assert differences[name]["sets"]["val"] == pytest.approx(expected)
        assert differences[name]["mean_of_sets"] == pytest.approx(expected)
    markdown = (run / "report.md").read_text()
    assert "## Benchmarks (style of the paper's Table I)" in markdown and "| mini |" in markdown
    assert "## Wall time" in markdown and "| mini_no_kd |" in markdown


def test_combined_folders_read_as_one_set_and_a_repeated_folder_is_refused(tmp_path, images):
    from cdism_fast.data import CombinedPairs, folder_dataset

    train, _ = images
    second = write_images(tmp_path / "more", 2, seed=3)
    combined = folder_dataset([train, second], 2)
    assert isinstance(combined, CombinedPairs) and len(combined) == 5 and combined.name == "train+more"
    singles = [folder_dataset(train, 2), folder_dataset(second, 2)]
    expected = [pair for dataset in singles for pair in (dataset[i] for i in range(len(dataset)))]
    for index, pair in enumerate(expected):
        assert torch.equal(combined[index].hr, pair.hr) and torch.equal(combined[index].lr, pair.lr)
    assert combined.cache_key(4) == singles[1].cache_key(1)
    with pytest.raises(IndexError):
        combined[5]
    with pytest.raises(ValueError, match="is given twice"):
        folder_dataset([train, tmp_path / ".." / tmp_path.name / "more", second], 2)
    assert not isinstance(folder_dataset([train], 2), CombinedPairs)


def test_the_291_image_preset_names_what_it_needs_in_one_line_before_making_the_folder(tmp_path, images, capsys):
    train, val = images
    out = tmp_path / "run"
    given = ["run", "--preset", "cpu-291", "--val", str(val), "--out", str(out)]
    teacher = tmp_path / "teacher.pt"
    save_model(teacher, tiny_teacher())
    for extra, message in (([], "needs training data: pass --data DIR"),
                           (["--data", str(train)], "pass --teacher FILE"),
                           (["--data", str(train), "--teacher", str(tmp_path / "missing.pth")],
                            "missing.pth does not exist"),
                           (["--data", str(train), "--data", str(train), "--teacher", str(teacher)],
                            "is given twice")):
        assert main(given + extra) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


def _ctrl_c_on_call(monkeypatch, module, name, call):
    """``module.name`` sends this process SIGINT on its ``call``-th call, before doing its work."""
    original, calls = getattr(module, name), {"n": 0}

    def with_ctrl_c(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, with_ctrl_c)


@pytest.mark.parametrize("where, stopped_in", [("last pruning iteration", "prune"), ("compress", "compress")])
def test_ctrl_c_at_the_end_of_a_stage_or_between_stages_stops_the_run_and_resume_goes_on(tmp_path, images,
                                                                                       monkeypatch, where,
                                                                                       stopped_in):
    import cdism_fast.ops
    import cdism_fast.workflow

    train, val = images
    if where == "compress":
        _ctrl_c_on_call(monkeypatch, cdism_fast.workflow, "compress", 1)
    else:
        _ctrl_c_on_call(monkeypatch, cdism_fast.ops, "charbonnier", TINY.prune.iterations)
    first = run_workflow(TINY, tmp_path / "run", data=train, val=[val], teacher=tiny_teacher(), progress=False,
                         no_kd_baseline=False)
    assert first.status == "interrupted"
    stage = json.loads((tmp_path / "run" / "stage.json").read_text())
    assert stage["status"] == "interrupted" and stage["stopped_in"] == stopped_in
    assert json.loads((tmp_path / "run" / "prune" / "stage.json").read_text())["status"] == "completed"
    assert not (tmp_path / "run" / "student").exists()
    monkeypatch.undo()
    result = run_workflow(TINY, tmp_path / "run", data=train, val=[val], teacher=tiny_teacher(), progress=False,
                          no_kd_baseline=False, resume=True)
    assert result.status == "completed"
    assert json.loads((tmp_path / "run" / "student" / "stage.json").read_text())["status"] == "completed"
