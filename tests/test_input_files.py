"""Bad input files: damaged, empty and foreign model files, a training checkpoint given as a model, a
decompression bomb; each is one line naming the file, exit code 2.
"""
import json

import pytest
import torch
from PIL import Image

from cdism_fast.cli import main

from helpers.images import write_noise_images
from helpers.runs import TINY_ARGS, copy_run, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")


def test_damaged_empty_and_foreign_files_give_one_line(tmp_path, noise_images, teacher_run, capsys):
    train, val = noise_images
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((teacher_run / "model.pt").read_bytes()[:200])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"\x80\x02}q\x00K\x65K\x01s.")  # a plain pickle of {101: 1}, not a torch file
    for path, expected in ((truncated, "cannot read"), (empty, "is empty (0 bytes)"), (foreign, "cannot read")):
        for command, argv in (("eval", ["eval", "--model", str(path), "--data", str(val)]),
                              ("prune", ["prune", "--teacher", str(path), "--out", str(tmp_path / "p")])):
            assert main(argv) == 2
            line = one_error_line(capsys, command)
            assert expected in line and str(path) in line, line
        run = copy_run(teacher_run, tmp_path / f"run_{path.stem}")
        (run / "checkpoint.pt").write_bytes(path.read_bytes())
        argv = ["train", *TINY_ARGS, "--data", str(train), "--iterations", "2", "--out", str(run), "--resume"]
        assert main(argv) == 2
        assert str(run / "checkpoint.pt") in one_error_line(capsys, "train")
        assert json.loads((run / "stage.json").read_text())["status"] == "failed"
    state_dict = tmp_path / "state_dict.pth"
    torch.save({"params": {"encoder.weight": torch.zeros(3, 3)}}, state_dict)
    for command in ("prune", "compress", "distill"):
        argv = [command, "--teacher", str(state_dict), "--out", str(tmp_path / command)]
        extra = {"compress": ["--density", "0.5"], "distill": ["--no-kd", "--student", str(state_dict)]}
        argv += extra.get(command, [])
        assert main(argv) == 2
        line = one_error_line(capsys, command)
        assert str(state_dict) in line and "the given state dict" not in line, line
    assert main(["eval", "--model", str(teacher_run / "checkpoint.pt"), "--data", str(val)]) == 2
    assert "is a training checkpoint (resumable state), not a model file" in one_error_line(capsys, "eval")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch, capsys):
    folder = write_noise_images(tmp_path / "in", 1, seed=4)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 40x48 image is then a "bomb" (> 2x the limit)
    assert main(["upscale", "--model", "bicubic", "--scale", "2", str(folder / "img0.png"),
                 str(tmp_path / "o.png")]) == 2
    assert "likely a decompression bomb" in one_error_line(capsys, "upscale")
