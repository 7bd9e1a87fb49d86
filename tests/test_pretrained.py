"""The trained students shipped inside the package: they load by name, run, and score what is recorded beside them;
a broken registry file fails only what uses it, and a misspelt name lists the close ones."""
import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cdism_fast import models
from cdism_fast.cli import main
from cdism_fast.evaluation import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")

shipped = importlib.import_module("cdism_fast.models.pretrained")

SHIPPED = list(models.PRETRAINED)
#: The sets every shipped model records (the cpu-291 preset evaluates on all three).
RECORDED_SETS = ("Set5", "Set14", "B100")


def test_the_package_ships_the_students_of_the_291_image_run():
    assert {"edsr_mini_291", "imdn_mini_291", "pan_mini_291"} <= set(SHIPPED)
    for name in SHIPPED:
        info = models.pretrained_info(name)
        assert set(RECORDED_SETS) <= set(info["scores"]), name
        assert info["licence"] and "research" in info["licence"]


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_loads_and_runs(name):
    info = models.pretrained_info(name)
    model = models.pretrained(name)
    assert not model.training
    assert models.count_params(model) == info["params"]
    assert models.model_spec(model) == info["model"]
    x = torch.rand(1, 3, 11, 14)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, 11 * model.scale, 14 * model.scale) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_scores_what_is_recorded_on_set5(name, shared_data):
    info = models.pretrained_info(name)
    model = models.pretrained(name)
    scores = evaluate(model, shared_data / "benchmarks" / "Set5", model.scale, progress=False)
    recorded = info["scores"]["Set5"]
    # Recorded by the run that trained it: the same model, images and metric (summation order may differ).
    assert scores["psnr"] == pytest.approx(recorded["psnr"], abs=2e-3)
    assert scores["ssim"] == pytest.approx(recorded["ssim"], abs=2e-5)


def test_a_changed_weights_file_or_an_unknown_name_is_refused(monkeypatch):
    name = SHIPPED[0]
    records = shipped.read_registry()
    monkeypatch.setattr(shipped, "read_registry", lambda: {**records, name: {**records[name], "sha256": "0" * 64}})
    with pytest.raises(ValueError, match="does not match its recorded sha256"):
        models.pretrained(name)
    with pytest.raises(ValueError, match="the shipped models are: "):
        models.pretrained("edsr_mini_9000")


def test_a_misspelt_name_lists_the_close_shipped_names():
    with pytest.raises(ValueError, match="^no shipped model is named 'edsr_mini_29'; did you mean edsr_mini_291\\? "
                                         "the shipped models are: .*imdn_mini_291"):
        models.pretrained("edsr_mini_29")
    with pytest.raises(ValueError, match="^no shipped model is named 'srcnn'; the shipped models are: "):
        models.pretrained_info("srcnn")


#: Runs the command line with the shipped-model registry read from the folder argv[1].
REDIRECTED_REGISTRY = """
import importlib.resources, pathlib, sys
files = importlib.resources.files
importlib.resources.files = lambda package: (pathlib.Path(sys.argv[1]) if package == "cdism_fast.models.weights"
                                             else files(package))
from cdism_fast.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture
def broken_registry(tmp_path, monkeypatch):
    """A weights folder whose pretrained.json is not JSON, read instead of the package's."""
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "pretrained.json").write_text('{"edsr_mini_291": {"file": ', encoding="utf-8")
    files = importlib.resources.files
    monkeypatch.setattr(importlib.resources, "files",
                        lambda package: folder if package == shipped.WEIGHTS_PACKAGE else files(package))
    return folder


def test_a_broken_registry_fails_only_the_shipped_model_commands(broken_registry, tmp_path, capsys):
    # A fresh process: the package is imported with the broken file in place, as in a broken installation.
    help_run = subprocess.run([sys.executable, "-c", REDIRECTED_REGISTRY, str(broken_registry), "prune", "--help"],
                              capture_output=True, text=True, timeout=300)
    assert help_run.returncode == 0 and "--teacher" in help_run.stdout, help_run.stderr
    teacher = tmp_path / "teacher.pt"
    from cdism_fast.training.artifacts import save_model

    save_model(teacher, models.build("edsr_mini"))
    assert main(["compress", "--teacher", str(teacher), "--density", "0.5", "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    line = f"the shipped-model registry {broken_registry / 'pretrained.json'} cannot be read ("
    for command in (["models"], ["eval", "--model", "edsr_mini_291", "--data", str(tmp_path)]):
        assert main(command) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(f"cdism-fast {command[0]}: error: {line}"), captured.err
        assert captured.err.rstrip().endswith("reinstall cdism_fast") and captured.err.count("\n") == 1
        assert captured.out == ""
    with pytest.raises(ValueError, match="cannot be read"):
        models.pretrained("edsr_mini_291")


def test_a_registry_of_the_wrong_shape_is_refused_by_name(broken_registry):
    (broken_registry / "pretrained.json").write_text('{"edsr_mini_291": {"file": "x.safetensors"}}', encoding="utf-8")
    with pytest.raises(ValueError, match="pretrained.json must map names to records with file, sha256, model; "
                                         "reinstall cdism_fast$"):
        list(models.PRETRAINED)


def test_shipped_names_work_in_upscale_eval_and_models(tmp_path, capsys):
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(image)
    assert main(["upscale", str(image), str(tmp_path / "out.png"), "--model", "edsr_mini_291", "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "out.png").size == (48, 40)
    assert main(["eval", "--model", "edsr_mini_291", "--data", str(tmp_path), "--device", "cpu",
                 "--json", str(tmp_path / "scores.json")]) == 0
    assert json.loads((tmp_path / "scores.json").read_text())["scale"] == 2
    assert main(["eval", "--model", "edsr_mini_291", "--scale", "3", "--data", str(tmp_path)]) == 2
    assert "is a x2 model, not x3" in capsys.readouterr().err
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    for name in SHIPPED:
        assert name in listing
    set5 = models.pretrained_info("edsr_mini_291")["scores"]["Set5"]
    assert f"{set5['psnr']:.2f} / {set5['ssim']:.4f}" in listing


def test_a_misspelt_shipped_name_in_eval_lists_the_close_names(tmp_path, capsys):
    assert main(["eval", "--model", "edsr_mini_29", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("--model edsr_mini_29 is not a file, a shipped model or a preset; did you mean "
                                    "edsr_mini_291") in err
    with pytest.raises(ValueError, match="got 'edsr_mni'; did you mean edsr_mini\\?$"):
        models.build("edsr_mni")


def test_a_broken_registry_leaves_presets_and_paths_working(broken_registry, tmp_path, capsys):
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(image)
    assert main(["eval", "--model", "edsr_mini", "--data", str(tmp_path), "--device", "cpu"]) == 0
    assert main(["export", "edsr_mini", str(tmp_path / "e.safetensors")]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "none.pt"), "--data", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"cdism-fast eval: error: checkpoint {tmp_path / 'none.pt'} does not exist; "
                                       "pass a checkpoint file, a shipped model (`cdism-fast models` lists them) or "
                                       "a preset name\n")
    assert main(["eval", "--model", "edsr_mini_29", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cdism-fast eval: error: the shipped-model registry {broken_registry / 'pretrained.json'} "
                          "cannot be read (") and err.count("\n") == 1
