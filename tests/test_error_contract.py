"""The error contract of the commands: a user error is one line and exit code 2, a bug exit code 1 (its
traceback under --debug).
"""
import json

import pytest
import torch

from cdism_fast.cli import main

from helpers.runs import TINY_ARGS, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA is unavailable")
def test_device_cuda_without_cuda_is_a_clear_error(tmp_path, noise_images, capsys):
    train, val = noise_images
    for command, argv in (("train", ["train", *TINY_ARGS, "--data", str(train), "--out", str(tmp_path / "t"),
                                     "--device", "cuda"]),
                          ("eval", ["eval", "--model", "bicubic", "--scale", "2", "--data", str(val),
                                    "--device", "cuda"]),
                          ("upscale", ["upscale", "--model", "bicubic", "--scale", "2", str(val / "img0.png"),
                                       str(tmp_path / "u.png"), "--device", "cuda"])):
        assert main(argv) == 2
        assert "--device cuda: " in one_error_line(capsys, command)
    assert not (tmp_path / "t").exists()


def test_unknown_key_in_student_json_and_string_density(tmp_path, noise_images, teacher_run, capsys):
    train, _ = noise_images
    student = tmp_path / "student.json"
    student.write_text(json.dumps({"student": {"family": "edsr", "config": {"n_feats": 8, "no_such_option": 1}}}))
    assert main(["distill", "--no-kd", "--student", str(student), "--data", str(train), "--out",
                 str(tmp_path / "d")]) == 2
    line = one_error_line(capsys, "distill")
    assert f"student file {student}: the edsr model record got options ['n_feats', 'no_such_option']" in line
    assert "it cannot take; EDSR accepts" in line
    density = tmp_path / "density.json"
    density.write_text(json.dumps({"density": "0.5"}))
    assert main(["compress", "--teacher", str(teacher_run / "model.pt"), "--density", str(density), "--out",
                 str(tmp_path / "c")]) == 2
    assert "'density' is '0.5', not a number" in one_error_line(capsys, "compress")


def test_scale_zero_is_one_line(tmp_path, noise_images, capsys):
    train, _ = noise_images
    assert main(["train", *TINY_ARGS, "--data", str(train), "--scale", "0", "--out", str(tmp_path / "t")]) == 2
    assert "--scale must be a positive upscaling factor" in one_error_line(capsys, "train")
    assert not (tmp_path / "t").exists()


def test_bugs_exit_1_in_one_line_and_show_the_traceback_under_debug(monkeypatch, capsys):
    from cdism_fast.cli import info

    monkeypatch.setattr(info, "run", lambda args: {}["bug"])
    assert main(["info"]) == 1
    assert "internal error (a bug): KeyError: 'bug'; rerun with --debug" in capsys.readouterr().err
    with pytest.raises(KeyError):
        main(["--debug", "info"])


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly():
    import subprocess
    import sys

    command = subprocess.Popen([sys.executable, "-m", "cdism_fast", "models"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    command.stdout.close()  # as `cdism-fast models | head -1` does after its line (here before any)
    stderr = command.stderr.read().decode()
    assert command.wait(timeout=120) == 141 and stderr == ""


def test_warnings_of_the_console_script_are_one_line_each(noise_images):
    import subprocess
    import sys

    _, val = noise_images
    result = subprocess.run([sys.executable, "-m", "cdism_fast", "eval", "--model", "edsr_mini", "--scale", "2",
                             "--data", str(val)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["cdism-fast eval: warning: --model edsr_mini is a preset name: its "
                                          "weights are random, not trained"]


def test_an_option_the_parser_refuses_is_one_line_not_the_whole_usage(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["distill", "--student", "edsr_mini", "--milestones", "abc"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "cdism-fast distill: error: argument --milestones: expected iteration counts separated by commas (e.g. "
        "200000,400000), got 'abc'; `cdism-fast distill --help` lists the options"]


def test_an_empty_device_is_refused_by_every_command_that_takes_one(tmp_path, noise_images, capsys):
    train, val = noise_images
    for command, argv in (("distill", ["distill", "--preset", "demo", "--no-kd", "--student", "edsr:1,1,8", "--data",
                                       str(train), "--no-progress", "--out", str(tmp_path / "d")]),
                          ("eval", ["eval", "--model", "bicubic", "--scale", "2", "--data", str(val)]),
                          ("upscale", ["upscale", "--model", "bicubic", "--scale", "2", str(val / "img0.png"),
                                       str(tmp_path / "u.png")])):
        assert main([*argv, "--device", ""]) == 2
        assert "--device '' is not a device; use cpu, cuda or cuda:N" in one_error_line(capsys, command)
    assert not (tmp_path / "d").exists() and not (tmp_path / "u.png").exists()
