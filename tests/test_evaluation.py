"""evaluate / upscale / the eval and upscale commands, and the published-number check with PAN.

PAN (Zhao et al., "Efficient Image Super-Resolution Using Pixel Attention",
ECCV-W 2020; the ``pan`` family of :mod:`cdism_fast.models`) with its released
weights checks the whole evaluation path against published numbers: LR files,
model input range, quantisation, Y channel, border crop, SSIM.
"""
import argparse
import importlib.util
import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cdism_fast.cli import add_command
from cdism_fast.cli import eval as eval_command
from cdism_fast.cli import upscale as upscale_command
from cdism_fast.data import HRFolderDataset, folder_dataset, read_image, write_image
from cdism_fast.evaluation import Bicubic, evaluate, infer_scale, upscale
from cdism_fast.metrics import psnr

HAS_MODELS = importlib.util.find_spec("cdism_fast.models") is not None

# PSNR_Y / SSIM_Y per image from the PAN x2 test log (results/PANx2_DF2K/
# test_PANx2_DF2Ktrain_200912-232704.log in the authors' repository).
PAN_X2_LOG = {
    "Set5": {"mean": (38.000670, 0.960488), "images": {
        "baby": (38.929762, 0.967945), "bird": (43.289374, 0.990550), "butterfly": (35.312806, 0.978093),
        "head": (36.018401, 0.891087), "woman": (36.453009, 0.974763)}},
    "Set14": {"mean": (33.592740, 0.918051), "images": {
        "baboon": (26.350408, 0.795623), "barbara": (28.737984, 0.889047), "bridge": (29.526849, 0.869193),
        "coastguard": (31.347244, 0.858749), "comic": (30.067360, 0.942756), "face": (35.996358, 0.891170),
        "flowers": (34.965251, 0.950973), "foreman": (38.010460, 0.974426), "lenna": (37.365570, 0.935015),
        "man": (31.583055, 0.898573), "monarch": (40.100103, 0.982461), "pepper": (37.582952, 0.925489),
        "ppt3": (34.041196, 0.991061), "zebra": (34.623576, 0.948175)}},
    "B100": {"mean": (32.181226, 0.899731), "images": {}},
}


class LocalSR(nn.Module):
    """A small SR net whose receptive field reaches ``layers`` LR pixels."""

    def __init__(self, scale, layers=4, channels=12):
        super().__init__()
        convs = [nn.Conv2d(3, channels, 3, padding=1)]
        convs += [nn.Conv2d(channels, channels, 3, padding=1) for _ in range(layers - 2)]
        self.body = nn.Sequential(*(m for conv in convs for m in (conv, nn.ReLU())))
        self.tail = nn.Sequential(nn.Conv2d(channels, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))
        self.scale = scale

    def forward(self, x):
        skip = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return skip + 0.2 * self.tail(self.body(x))


@pytest.fixture(scope="module")
def pan(shared_data):
    from cdism_fast.models import PAN, load_pretrained

    model = load_pretrained(shared_data / "weights" / "PANx2_DF2K.pth", scale=2)
    assert type(model) is PAN and model.config() == dict(scale=2, n_c=40, n_b=16, n_l=1, unf=24)
    return model


def _check_against_log(result, name):
    expected = PAN_X2_LOG[name]
    print(f"\n{name}: PSNR_Y {result['psnr']:.4f} (log {expected['mean'][0]:.4f}), "
          f"SSIM_Y {result['ssim']:.5f} (log {expected['mean'][1]:.5f})")
    assert result["psnr"] == pytest.approx(expected["mean"][0], abs=0.01)
    assert result["ssim"] == pytest.approx(expected["mean"][1], abs=1e-4)
    for image in result["images"]:
        if image["name"] in expected["images"]:
            assert (image["psnr"], image["ssim"]) == pytest.approx(expected["images"][image["name"]],
                                                                   abs=1e-3), image["name"]


def test_pan_reproduces_its_published_set5_and_set14_numbers(shared_data, pan):
    results = evaluate(pan, [shared_data / "benchmarks" / "Set5", shared_data / "benchmarks" / "Set14"], 2)
    assert list(results) == ["Set5", "Set14"]
    assert [len(r["images"]) for r in results.values()] == [5, 14]
    for name, result in results.items():
        _check_against_log(result, name)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CDISM_SLOW"), reason="slow (B100, about a minute); set CDISM_SLOW=1")
def test_pan_reproduces_its_published_b100_numbers(shared_data, pan):
    _check_against_log(evaluate(pan, shared_data / "benchmarks" / "B100", 2), "B100")


def test_made_lr_images_equal_the_lr_files(shared_data):
    # MATLAB-exact imresize makes the same LR images as the benchmark files,
    # so evaluating from HR alone gives exactly the same numbers.
    model = LocalSR(3)
    from_files = evaluate(model, shared_data / "benchmarks" / "Set5", 3, progress=False)
    from_hr = evaluate(model, HRFolderDataset(shared_data / "benchmarks" / "Set5" / "HR", 3), 3, progress=False)
    assert from_files["images"] == from_hr["images"]
    assert from_files["crop_border"] == 3 and from_files["y_channel"] is True


def test_tiled_equals_untiled_for_a_local_model():
    model = LocalSR(2, layers=4)  # reaches 4 pixels: overlap/4 with overlap 16
    image = torch.rand(2, 3, 77, 101)
    full = upscale(model, image, 2)
    assert full.shape == (2, 3, 154, 202)
    for tile, overlap in ((32, 16), (40, 16), (101, 16), (200, 16), (24, 16), (37, 21)):
        tiled = upscale(model, image, 2, tile=tile, overlap=overlap)
        torch.testing.assert_close(tiled, full, rtol=0, atol=2e-6, msg=f"tile {tile}, overlap {overlap}")
    single = upscale(model, (image[0] * 255).round().to(torch.uint8), 2, tile=32)
    assert single.dtype == torch.uint8 and single.shape == (3, 154, 202)


def test_tiling_changes_set14_psnr_by_less_than_0_05_db(shared_data):
    model = LocalSR(2, layers=12)  # reaches 12 pixels, beyond overlap/4
    dataset = folder_dataset(shared_data / "benchmarks" / "Set14", 2)
    for index in range(len(dataset)):
        lr, hr, name = dataset[index]
        full = upscale(model, lr, 2)
        tiled = upscale(model, lr, 2, tile=64, overlap=16)
        assert abs(psnr(tiled, hr, 2) - psnr(full, hr, 2)) < 0.05, name
        # Much closer to untiled than stitching without overlap (about 48 dB here).
        assert psnr(tiled, full, 0, y_channel=False) > 60, name
        if index == 0:
            assert psnr(upscale(model, lr, 2, tile=64, overlap=0), full, 0, y_channel=False) < 55


# SwinIR on CPU is slow: all of Set14 with CDISM_SLOW=1, three images otherwise.
PRESET_IMAGES = {"edsr_mini": None,
                 "swinir_mini": None if os.environ.get("CDISM_SLOW") else ("baboon", "comic", "face")}


@pytest.mark.skipif(not HAS_MODELS, reason="cdism_fast.models is not available yet")
@pytest.mark.parametrize("preset", list(PRESET_IMAGES))
def test_tiling_with_presets_on_set14(shared_data, preset):
    from cdism_fast.models import build

    model = build(preset, scale=2)
    dataset = folder_dataset(shared_data / "benchmarks" / "Set14", 2)
    names = PRESET_IMAGES[preset]
    checked = 0
    for index in range(len(dataset)):
        if names is not None and dataset.pairs[index][0].stem not in names:
            continue
        lr, hr, name = dataset[index]
        full, tiled = upscale(model, lr, 2), upscale(model, lr, 2, tile=96, overlap=16)
        assert abs(psnr(tiled, hr, 2) - psnr(full, hr, 2)) < 0.05, (preset, name)
        checked += 1
    assert checked == (len(dataset) if names is None else len(names))


def test_evaluate_api(tmp_path):
    for name in ("one", "two"):
        for i in range(2):
            write_image(tmp_path / name / f"{i}.png", torch.randint(0, 256, (3, 40, 36), dtype=torch.uint8))
    model = LocalSR(2).train()
    results = evaluate(model, [tmp_path / "one", tmp_path / "two"], 2, crop_border=0, y_channel=False,
                       progress=False)
    assert list(results) == ["one", "two"] and model.training  # mode restored
    result = results["one"]
    assert len(result["images"]) == 2 and set(result["images"][0]) == {"name", "psnr", "ssim"}
    assert result["psnr"] == pytest.approx(sum(i["psnr"] for i in result["images"]) / 2)
    # Same folder name twice: the second is keyed by its path.
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "one").symlink_to(tmp_path / "one")
    both = evaluate(model, [tmp_path / "one", tmp_path / "again" / "one"], 2, progress=False)
    assert list(both) == ["one", str(tmp_path / "again" / "one")]
    with pytest.raises(ValueError, match="model is built for this scale"):
        evaluate(LocalSR(3), tmp_path / "one", 2, progress=False)


def test_upscale_input_checks_and_autocast():
    model = LocalSR(2)
    image = torch.rand(3, 20, 24)
    with pytest.raises(ValueError, match="overlap"):
        upscale(model, image, 2, tile=16, overlap=16)
    with pytest.raises(ValueError, match=r"\(3, h, w\)"):
        upscale(model, image[0], 2)
    with pytest.raises(ValueError, match="uint8 or float"):
        upscale(model, image.int(), 2)
    low_precision = upscale(model, image, 2, amp_dtype=torch.bfloat16)
    assert low_precision.dtype == torch.float32
    assert (low_precision - upscale(model, image, 2)).abs().max() < 0.05
    assert infer_scale(model) == 2 and infer_scale(Bicubic(3)) == 3


def _parse(module, argv):
    parser = argparse.ArgumentParser(prog="cdism-fast")
    add_command(parser.add_subparsers(dest="command"), module.__name__.rsplit(".", 1)[1])
    return parser.parse_args(argv)


def test_eval_command_with_bicubic(shared_data, tmp_path, capsys):
    out = tmp_path / "results.json"
    args = _parse(eval_command, ["eval", "--model", "bicubic", "--data", str(shared_data / "benchmarks" / "Set5"),
                                 "--scale", "2", "--json", str(out), "--device", "cpu"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["scale"] == 2 and written["sets"]["Set5"]["psnr"] == pytest.approx(33.6734, abs=1e-3)
    assert "PSNR_Y" in printed and "Set5" in printed and f"{written['sets']['Set5']['psnr']:.4f}" in printed


@pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="scikit-image is not installed")
def test_eval_command_on_builtin_images(capsys):
    args = _parse(eval_command, ["eval", "--model", "bicubic", "--data", "builtin:heldout", "--scale", "4",
                                 "--device", "cpu"])
    assert args.func(args) == 0
    assert "builtin-heldout" in capsys.readouterr().out


@pytest.mark.skipif(not HAS_MODELS, reason="cdism_fast.models is not available yet")
def test_eval_command_with_a_preset(tmp_path, capsys):
    write_image(tmp_path / "photos" / "a.png", torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8))
    args = _parse(eval_command, ["eval", "--model", "edsr_mini", "--data", str(tmp_path / "photos"),
                                 "--device", "cpu"])
    with pytest.warns(UserWarning, match="random"):
        assert args.func(args) == 0
    assert "edsr_mini x2" in capsys.readouterr().out  # scale read from the model


def test_upscale_command_file_and_folder(tmp_path):
    for i in range(2):
        write_image(tmp_path / "in" / f"{i}.png", torch.randint(0, 256, (3, 30, 26), dtype=torch.uint8))
    args = _parse(upscale_command, ["upscale", str(tmp_path / "in"), str(tmp_path / "out"), "--model", "bicubic",
                                    "--scale", "3", "--tile", "16", "--overlap", "4", "--device", "cpu"])
    assert args.func(args) == 0
    outputs = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in outputs] == ["0.png", "1.png"]
    assert read_image(outputs[0]).shape == (3, 90, 78)
    single = tmp_path / "single.png"
    args = _parse(upscale_command, ["upscale", str(tmp_path / "in" / "1.png"), str(single), "--model", "bicubic",
                                    "--scale", "2", "--half", "--device", "cpu"])
    assert args.func(args) == 0 and read_image(single).shape == (3, 60, 52)
    args = _parse(upscale_command, ["upscale", str(tmp_path / "missing.png"), str(single), "--model", "bicubic",
                                    "--scale", "2"])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        args.func(args)
