"""`run` and the stage commands refuse bad input in one line, exit 2, before any folder is made, and every
option a refusal names is an option of that command."""
import re

import pytest
import torch

import cdism_fast.workflow as workflow
from cdism_fast.cli import build_parser, main
from cdism_fast.models import build
from cdism_fast.training.artifacts import save_model

from helpers.images import write_noise_images

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--iterations", "1", "--batch-size", "2", "--patch-size", "12", "--no-progress"]


class Reached(BaseException):
    """Raised in place of the first stage: every check before it passed."""


@pytest.fixture
def pan(tmp_path):
    """A PAN file: its tensors are the same at x2 and x3."""
    path = tmp_path / "pan.pth"
    torch.save(build("pan", scale=2).state_dict(), path)
    return path


@pytest.fixture
def x3_teacher(tmp_path):
    path = tmp_path / "x3.pt"
    save_model(path, build("edsr_baseline", scale=3).with_structure(1, 1, 8))
    return path


def _one_line(capsys, command) -> str:
    (line,) = capsys.readouterr().err.strip().splitlines()
    prefix = f"cdism-fast {command}: error: "
    assert line.startswith(prefix)
    return line[len(prefix):]


def _options_of(command) -> set:
    (sub,) = [a for a in build_parser()._actions if getattr(a, "choices", None) and command in a.choices]
    return {s for action in sub.choices[command]._actions for s in action.option_strings}


def _refusals(tmp_path, pan, x3_teacher, monkeypatch, capsys) -> dict:
    """{command: [line, ...]} of the refusals below, each checked to leave no output folder."""
    monkeypatch.undo()  # the real default cache folder (tests/conftest.py points it at pytest's temporary folder)
    monkeypatch.setenv("CDISM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    data = write_noise_images(tmp_path / "small" / "HR", 1)
    cases = {
        "run": [["--teacher", str(pan)], ["--teacher", str(x3_teacher)], ["--device", "mps"],
                ["--data", str(tmp_path / "small"), "--data", str(data), "--val", str(data)],
                ["--teacher-cache", ""]],
        "distill": [["--teacher", str(pan), "--student", "edsr_mini"], ["--teacher", "edsr_mini_29",
                                                                        "--student", "edsr_mini"],
                    ["--no-kd", "--student", "edsr_mini", "--device", "xpu"],
                    ["--no-kd", "--student", "edsr_mini", "--data", str(data), "--data", str(tmp_path / "small")]],
        "prune": [["--teacher", str(pan)], ["--teacher", str(x3_teacher), "--device", "mps"]],
    }
    lines = {}
    for command, argvs in cases.items():
        for argv in argvs:
            assert main([command, *argv, *TINY, "--out", str(out)]) == 2, argv
            lines.setdefault(command, []).append(_one_line(capsys, command))
            assert not out.exists(), argv
    monkeypatch.setenv("CDISM_CACHE", "/dev/null")
    assert main(["run", *TINY, "--out", str(out)]) == 2
    lines["run"].append(_one_line(capsys, "run"))
    assert not out.exists()
    return lines


def test_every_option_a_refusal_names_is_an_option_of_that_command(tmp_path, pan, x3_teacher, monkeypatch, capsys):
    for command, lines in _refusals(tmp_path, pan, x3_teacher, monkeypatch, capsys).items():
        named = {option for line in lines for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", line)}
        assert named, command
        assert named <= _options_of(command), (command, named - _options_of(command), lines)


def test_a_teacher_of_another_scale_is_refused_before_the_run_folder_and_run_scale_takes_it(
        tmp_path, x3_teacher, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["run", "--teacher", str(x3_teacher), *TINY, "--out", str(out)]) == 2
    assert _one_line(capsys, "run") == ("the teacher is a x3 model but preset 'demo' is x2; pass --scale 3 to run "
                                        "the workflow at x3 (nothing was written)")
    assert not out.exists()

    def prune(teacher, folder, settings, options, data, val, **kwargs):
        raise Reached(teacher.scale, settings.iterations)

    monkeypatch.setattr(workflow, "prune", prune)
    with pytest.raises(Reached) as reached:
        main(["run", "--teacher", str(x3_teacher), "--scale", "3", *TINY, "--out", str(out)])
    assert reached.value.args == (3, 1)


def test_a_pan_teacher_is_read_at_the_scale_run_is_given(tmp_path, pan, monkeypatch):
    def prune(teacher, *args, **kwargs):
        raise Reached(teacher.scale)

    monkeypatch.setattr(workflow, "prune", prune)
    with pytest.raises(Reached) as reached:
        main(["run", "--teacher", str(pan), "--scale", "2", *TINY, "--out", str(tmp_path / "run")])
    assert reached.value.args == (2,)


def test_an_unusable_teacher_cache_is_refused_before_stage_1(tmp_path, monkeypatch, capsys):
    monkeypatch.undo()  # the real default cache folder (tests/conftest.py points it at pytest's temporary folder)
    monkeypatch.setenv("CDISM_CACHE", "/dev/null")
    assert main(["run", *TINY, "--out", str(tmp_path / "run")]) == 2
    assert _one_line(capsys, "run") == (
        "teacher cache folder /dev/null/teacher-outputs cannot be used (/dev/null is not a folder); pass "
        "--teacher-cache DIR with a writable folder (or set CDISM_CACHE), or --teacher-cache off for the "
        "per-patch teacher")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device", ["mps", "xpu"])
def test_a_device_this_torch_lacks_is_one_line(tmp_path, capsys, device):
    assert main(["distill", "--no-kd", "--student", "edsr_mini", "--device", device, *TINY,
                 "--out", str(tmp_path / "o")]) == 2
    line = _one_line(capsys, "distill")
    assert line.startswith(f"--device {device}: this torch build") and line.endswith(
        "pass --device cpu (or cuda on a machine with an NVIDIA GPU)")
    assert not (tmp_path / "o").exists()


def test_overlapping_data_folders_are_refused(tmp_path, capsys):
    inner = write_noise_images(tmp_path / "small" / "HR", 2)
    for data in ([tmp_path / "small", inner], [inner, tmp_path / "small"]):
        argv = [f"--data={d}" for d in data]
        assert main(["distill", "--no-kd", "--student", "edsr_mini", *argv, "--val", str(inner), *TINY,
                     "--out", str(tmp_path / "o")]) == 2
        assert _one_line(capsys, "distill") == (
            f"data folder {inner} lies inside data folder {tmp_path / 'small'}, so its images would be read "
            "twice; pass only one of the two --data folders")
        assert not (tmp_path / "o").exists()
