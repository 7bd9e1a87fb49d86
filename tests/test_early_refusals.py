"""Refusals that come before anything is written and name the option to change: a patch too small for the
distillation loss, a PAN teacher without --scale, a teacher file of another scale than --scale, `report` on a
stage folder."""
import json

import pytest
import torch

from cdism_fast.cli import build_parser, main
from cdism_fast.models import build

from helpers.images import write_noise_images

pytestmark = pytest.mark.usefixtures("one_thread")


def _state_dict_file(path, family, scale):
    torch.save(build(family, scale=scale).state_dict(), path)
    return path


def _refused(capsys, argv, tmp_path) -> str:
    """The one line of a refusal (exit 2) that left ``tmp_path`` as it was."""
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    return line


@pytest.fixture
def folders(tmp_path):
    return {"data": write_noise_images(tmp_path / "train", 2), "val": write_noise_images(tmp_path / "val", 1),
            "teacher": _state_dict_file(tmp_path / "imdn_x2.pth", "imdn", 2)}


TOO_SMALL = ("--patch-size {size} is too small to distil at ×2: the distillation loss needs output patches of at "
             "least 17 pixels, so pass --patch-size 9 or more (nothing was written)")


def test_distill_refuses_a_patch_too_small_for_the_loss_before_the_cache_and_the_folder(folders, tmp_path, capsys):
    line = _refused(capsys, ["distill", "--preset", "demo", "--teacher", str(folders["teacher"]), "--student",
                             "edsr_mini", "--data", str(folders["data"]), "--iterations", "2", "--patch-size", "1",
                             "--num-workers", "0", "--teacher-cache", str(tmp_path / "cache"), "--out",
                             str(tmp_path / "rz")], tmp_path)
    assert line == "cdism-fast distill: error: " + TOO_SMALL.format(size=1)


def test_run_refuses_a_patch_too_small_for_the_loss_before_stage_1(folders, tmp_path, capsys):
    line = _refused(capsys, ["run", "--teacher", str(folders["teacher"]), "--data", str(folders["data"]), "--val",
                             str(folders["val"]), "--patch-size", "8", "--teacher-cache", "off", "--out",
                             str(tmp_path / "run")], tmp_path)
    assert line == "cdism-fast run: error: " + TOO_SMALL.format(size=8)


def test_a_pan_teacher_without_scale_is_refused_naming_scale_as_run_help_says(folders, tmp_path, capsys):
    pan = _state_dict_file(tmp_path / "pan.pth", "pan", 2)
    line = _refused(capsys, ["run", "--teacher", str(pan), "--data", str(folders["data"]), "--val",
                             str(folders["val"]), "--out", str(tmp_path / "run")], tmp_path)
    assert line.endswith("does not tell ×2 from ×3 (the files have the same tensors): pass --scale 2 or 3 "
                         "(scale= in Python)")
    (sub,) = [a for a in build_parser()._actions if getattr(a, "choices", None) and "run" in a.choices]
    (scale,) = [a for a in sub.choices["run"]._actions if "--scale" in a.option_strings]
    assert "a PAN x2/x3 teacher needs it" in scale.help


def test_a_teacher_file_of_another_scale_than_scale_names_its_scale(folders, tmp_path, capsys):
    x3 = _state_dict_file(tmp_path / "imdn_x3.pth", "imdn", 3)
    line = _refused(capsys, ["distill", "--preset", "demo", "--teacher", str(x3), "--scale", "2", "--student",
                             "edsr_mini", "--data", str(folders["data"]), "--out", str(tmp_path / "out")], tmp_path)
    assert line.startswith(f"cdism-fast distill: error: checkpoint {x3} does not fit imdn ×2: mis-shaped keys")
    assert line.endswith("; its tensors are those of a ×3 model: pass --scale 3 or drop --scale")


def test_report_on_a_stage_folder_says_it_needs_a_run_folder(tmp_path, capsys):
    stage = tmp_path / "student"
    stage.mkdir()
    (stage / "stage.json").write_text(json.dumps({"stage": "distill", "status": "completed"}))
    line = _refused(capsys, ["report", str(stage)], tmp_path)
    assert line == (f"cdism-fast report: error: {stage} holds a 'distill' stage, not a `cdism-fast run`: report "
                    "needs the --out folder of a `run` (its evaluation.json)")
