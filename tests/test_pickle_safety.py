"""No pickled code runs: every torch.load reads tensors only, and crafted pickles are refused by every command.
"""
import ast
import json
from pathlib import Path

import pytest
import torch

import cdism_fast
from cdism_fast.cli import main

from helpers.runs import TINY_ARGS, copy_run, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    """Unpickling this creates ``marker``: proof that a file's code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_every_torch_load_in_the_package_uses_weights_only():
    offenders = []
    for path in Path(cdism_fast.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not safe:
                    offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize("shape", ["bare", "in_params", "in_real_checkpoint"])
def test_crafted_pickles_are_refused_by_every_command_and_never_run(tmp_path, noise_images, teacher_run, capsys, shape):
    train, val = noise_images
    marker = tmp_path / "payload_ran"
    if shape == "bare":
        content = Payload(marker)
    elif shape == "in_params":
        content = {"params": {"conv_first.weight": Payload(marker)}}
    else:
        content = torch.load(teacher_run / "checkpoint.pt", weights_only=True)
        content["extra"] = Payload(marker)
    crafted = tmp_path / "crafted.pt"
    torch.save(content, crafted)
    run = copy_run(teacher_run, tmp_path / "run")
    (run / "checkpoint.pt").write_bytes(crafted.read_bytes())
    (run / "model.pt").write_bytes(crafted.read_bytes())
    workflow = tmp_path / "workflow"
    (workflow / "teacher").mkdir(parents=True)
    (workflow / "stage.json").write_text(json.dumps({"stage": "run", "settings": {}, "status": "interrupted"}))
    (workflow / "teacher" / "stage.json").write_text(json.dumps({"stage": "train", "status": "interrupted"}))
    (workflow / "teacher" / "checkpoint.pt").write_bytes(crafted.read_bytes())
    data = ["--data", str(train), "--val", str(val), "--iterations", "2"]
    commands = [
        ("train", ["train", *TINY_ARGS, *data, "--out", str(run), "--resume"]),
        ("prune", ["prune", *TINY_ARGS[:2], "--teacher", str(crafted), *data, "--out", str(tmp_path / "p")]),
        ("distill", ["distill", *TINY_ARGS[:2], "--teacher", str(crafted), "--student", str(crafted), *data,
                     "--out", str(tmp_path / "d")]),
        ("compress", ["compress", "--teacher", str(crafted), "--density", "0.5", "--out", str(tmp_path / "c")]),
        ("eval", ["eval", "--model", str(crafted), "--data", str(val)]),
        ("upscale", ["upscale", "--model", str(crafted), str(val / "img0.png"), str(tmp_path / "up.png")]),
        ("export", ["export", str(crafted), str(tmp_path / "x.pth")]),
        ("run", ["run", *TINY_ARGS[:2], *TINY_ARGS[4:], "--teacher", str(crafted), *data,
                 "--out", str(tmp_path / "r")]),
        ("run", ["run", *TINY_ARGS[:2], *TINY_ARGS[4:], *data, "--out", str(workflow), "--resume"]),
    ]
    for command, argv in commands:
        assert main(argv) == 2, argv
        line = one_error_line(capsys, command)
        assert "was refused: it holds Python objects other than tensors" in line, line
        assert "allowlist" not in line
        assert not marker.exists(), command
