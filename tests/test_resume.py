"""A resume compares what the run depends on: the teacher's weights, the teacher cache, the data's files.

A change is refused in one line naming it (exit 2, nothing changed); an interrupted stage is left
``interrupted`` with its lock released.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import cdism_fast.training.teacher_cache as teacher_cache
from cdism_fast.cli import main
from cdism_fast.models import build
from cdism_fast.training.artifacts import LOCK_FILE, save_model
from cdism_fast.training.stages import DistillOptions, StageSettings, distill

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--preset", "demo", "--iterations", "2", "--batch-size", "2", "--patch-size", "12", "--checkpoint-every",
        "1", "--log-every", "1", "--no-progress", "--threads", "1"]


def _images(folder, count, seed=0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        coarse = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((48, 40), Image.BICUBIC).save(folder / f"img{i}.png")
    return folder


def _teacher():
    torch.manual_seed(0)
    return build("edsr_baseline", scale=2).with_structure(1, 1, 8)


@pytest.fixture
def run(tmp_path):
    """A distill run stopped after one of its two iterations, its teacher file and data."""
    data, val = _images(tmp_path / "train", 2), _images(tmp_path / "val", 1, seed=1)
    teacher = tmp_path / "teacher.pt"
    save_model(teacher, _teacher())
    common = ["--teacher", str(teacher), "--student", "edsr:1,1,4", "--data", str(data), "--val", str(val), *TINY]
    out = tmp_path / "out"
    assert main(["distill", *common, "--teacher-cache", "off", "--iterations", "1", "--out", str(out)]) == 0
    return {"out": out, "teacher": teacher, "data": data, "common": common}


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(capsys, argv, folder) -> str:
    before = _files(folder)
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert _files(folder) == before
    return line


def test_a_teacher_with_other_weights_is_refused_on_resume(run, capsys):
    halved = _teacher()
    with torch.no_grad():
        for parameter in halved.parameters():
            parameter.mul_(0.5)
    save_model(run["teacher"], halved)
    line = _refused(capsys, ["distill", *run["common"], "--teacher-cache", "off", "--out", str(run["out"]),
                             "--resume"], run["out"])
    assert line.startswith(f"cdism-fast distill: error: cannot resume the run in {run['out']} with other settings "
                           "(teacher_weights changed: another --teacher, or its weights changed)")
    assert "pass --overwrite to start over" in line


def test_another_teacher_cache_setting_is_refused_on_resume(run, tmp_path, capsys):
    line = _refused(capsys, ["distill", *run["common"], "--teacher-cache", str(tmp_path / "cache"), "--out",
                             str(run["out"]), "--resume"], run["out"])
    assert f"teacher_cache was 'off', now '{tmp_path / 'cache'}'" in line
    assert not (tmp_path / "cache").exists()


def test_other_data_files_are_refused_on_resume(run, capsys):
    Image.new("RGB", (48, 40)).save(run["data"] / "added.png")
    line = _refused(capsys, ["distill", *run["common"], "--teacher-cache", "off", "--out", str(run["out"]),
                             "--resume"], run["out"])
    assert "data_fingerprint changed: images added to, removed from or replaced in the --data folders" in line


def test_the_same_inputs_resume_and_a_resumable_setting_is_recorded(run):
    assert main(["distill", *run["common"], "--teacher-cache", "off", "--lr", "0.0005", "--out", str(run["out"]),
                 "--resume"]) == 0
    record = json.loads((run["out"] / "stage.json").read_text())
    assert record["status"] == "completed" and record["resumes"][-1]["changed"]["lr"][1] == 0.0005


def test_ctrl_c_during_the_cache_build_leaves_the_stage_interrupted_and_unlocked(tmp_path, monkeypatch):
    data = _images(tmp_path / "train", 2)

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(teacher_cache.TeacherCache, "prepare", interrupted)
    settings = StageSettings(iterations=2, batch_size=2, patch_size=12, progress=False)
    with pytest.raises(KeyboardInterrupt):
        distill(_teacher(), "edsr:1,1,4", tmp_path / "out", settings, DistillOptions(teacher_cache=str(tmp_path / "c")),
                data=data)
    record = json.loads((tmp_path / "out" / "stage.json").read_text())
    assert record["status"] == "interrupted"
    assert not (tmp_path / "out" / LOCK_FILE).exists()


@pytest.fixture
def completed_run(run, tmp_path):
    """A completed `run` of the same teacher and data, with alpha given at the preset's 0.1 and --lam left to the
    preset."""
    out = tmp_path / "run"
    argv = ["run", *run["common"][:2], *run["common"][4:], "--teacher-cache", "off", "--alpha", "0.1",
            "--skip-no-kd-baseline", "--out", str(out)]
    assert main(argv) == 0
    return {"out": out, "argv": argv}


@pytest.mark.parametrize("change, shown", [(["--alpha", "0.5"], "alpha was the preset's, now 0.5"),
                                           (["--lam", "0.5"], "lam was the preset's, now 0.5"),
                                           (["--teacher-cache", "cache"], "teacher_cache was 'off', now 'cache'")])
def test_run_resume_refuses_other_options_in_one_line_and_keeps_the_record(completed_run, capsys, change, shown):
    out = completed_run["out"]
    line = _refused(capsys, [*completed_run["argv"], *change, "--resume"], out)
    assert line == (f"cdism-fast run: error: cannot resume the run in {out} with other settings ({shown}): that "
                    "would change what it trains; resume with the original values, or pass --overwrite to start "
                    "over")


def test_run_resume_records_a_new_lr_under_resumes_and_keeps_the_run_settings(completed_run):
    out = completed_run["out"]
    before = json.loads((out / "stage.json").read_text())["settings"]
    assert main([*completed_run["argv"], "--lr", "0.0005", "--resume"]) == 0
    record = json.loads((out / "stage.json").read_text())
    assert record["settings"] == before
    assert record["resumes"][-1]["changed"] == {"lr": [None, 0.0005]}


def test_run_resume_takes_an_option_given_or_left_out_at_the_preset_value_as_the_same_run(completed_run):
    argv = [arg for arg in completed_run["argv"] if arg not in ("--alpha", "0.1")]  # alpha now left out
    assert main([*argv, "--lam", "0.04", "--resume"]) == 0  # the demo preset's own lambda, now given
    record = json.loads((completed_run["out"] / "stage.json").read_text())
    assert "alpha" not in record["settings"]["overrides"] and "lam" not in record["settings"]["overrides"]
