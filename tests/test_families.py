"""The IMDN and PAN families (published weights and numbers, knobs, official formats), the
workflow's model.pt through eval/upscale/export for every family, and distillation across families."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cdism_fast import models
from cdism_fast.cli import main
from cdism_fast.evaluation import evaluate, upscale
from cdism_fast.models import CheckpointMismatch, load_pretrained
from cdism_fast.training.artifacts import save_model
from cdism_fast.training.stages import StageSettings, distill

pytestmark = pytest.mark.usefixtures("one_thread")

# Table 4 of Hui et al. 2019 (IMDN x2): PSNR / SSIM on the Y channel.
IMDN_X2_PUBLISHED = {"Set5": (38.00, 0.9605), "Set14": (33.63, 0.9177)}


def randomize(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model


def tiny_settings(**changes):
    values = dict(iterations=2, batch_size=2, patch_size=12, checkpoint_every=0, log_every=1, progress=False)
    return StageSettings(**{**values, **changes})


# --- the published files -----------------------------------------------------------------------------------------

def test_published_files_load_with_weights_only(shared_data):
    imdn_file, pan_file = shared_data / "weights" / "IMDN_x2.pth", shared_data / "weights" / "PANx2_DF2K.pth"
    raw = torch.load(imdn_file, map_location="cpu", weights_only=True)  # a legacy non-zip pickle
    assert len(raw) == 92 and all(key.startswith("module.") for key in raw)
    imdn = load_pretrained(imdn_file)
    assert type(imdn) is models.IMDN and imdn.config() == dict(scale=2, n_c=64, n_b=6, n_l=4)
    assert models.preset_of("imdn", imdn.config()) == "imdn" and models.count_params(imdn) == 694_404
    assert torch.equal(imdn.IMDB6.cca.conv_du[2].weight, raw["module.IMDB6.cca.conv_du.2.weight"])
    pan = load_pretrained(pan_file, scale=2)
    assert type(pan) is models.PAN and models.preset_of("pan", pan.config()) == "pan"
    assert models.count_params(pan) == 261_403
    with pytest.raises(CheckpointMismatch, match="does not tell ×2 from ×3.*pass scale=2 or 3"):
        load_pretrained(pan_file)
    with pytest.raises(CheckpointMismatch, match="upconv2"):  # a x2 file is not a x4 PAN
        load_pretrained(pan_file, scale=4)


def test_imdn_reproduces_its_published_set5_and_set14_numbers(shared_data):
    model = load_pretrained(shared_data / "weights" / "IMDN_x2.pth")
    results = evaluate(model, [shared_data / "benchmarks" / name for name in IMDN_X2_PUBLISHED], 2, progress=False)
    for name, (psnr, ssim) in IMDN_X2_PUBLISHED.items():
        print(f"\nIMDN x2 {name}: PSNR_Y {results[name]['psnr']:.4f} (paper {psnr}), "
              f"SSIM_Y {results[name]['ssim']:.5f} (paper {ssim})")
        assert results[name]["psnr"] == pytest.approx(psnr, abs=0.01)
        assert results[name]["ssim"] == pytest.approx(ssim, abs=5e-4)


# --- presets, knobs, official formats ----------------------------------------------------------------------------

def test_published_parameters_and_macs():
    """Hui et al. 2019: 694K parameters, 158.8G Multi-Adds at 1280x720 (x2); Zhao et al. 2020: 261K, 70.5G."""
    for name, params, gmacs in (("imdn", 694_404, 158.8), ("pan", 261_403, 70.5)):
        with torch.device("meta"):
            model = models.build(name, scale=2)
        assert models.count_params(model) == params
        assert round(models.count_flops(model, (720, 1280))["total"] / 1e9, 1) == gmacs


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_official_files_of_every_scale(tmp_path, scale):
    imdn = randomize(models.build("imdn", scale=scale))
    torch.save({f"module.{k}": v for k, v in imdn.state_dict().items()}, tmp_path / "imdn.pth")
    loaded = load_pretrained(tmp_path / "imdn.pth")
    assert loaded.config() == imdn.config() and loaded.upsampler[0].out_channels == 3 * scale * scale
    pan = randomize(models.build("pan", scale=scale))
    torch.save(pan.state_dict(), tmp_path / "pan.pth")
    loaded = load_pretrained(tmp_path / "pan.pth", scale=scale) if scale != 4 else load_pretrained(tmp_path / "pan.pth")
    assert loaded.config() == pan.config() and hasattr(loaded, "upconv2") == (scale == 4)
    x = torch.rand(1, 3, 6, 7)
    with torch.no_grad():
        assert torch.equal(loaded(x), pan.eval()(x))


def test_generalised_knobs():
    imdn = models.from_structure("imdn", n_c=16, n_l=2, n_b=3, scale=3)
    assert [name for name, _ in imdn.IMDB1.named_children()] == ["c1", "c2", "cca", "c3"]
    assert (imdn.IMDB1.c2.in_channels, imdn.IMDB1.c2.out_channels, imdn.IMDB1.c3.in_channels) == (12, 4, 8)
    assert imdn.c[0].in_channels == 3 * 16 and imdn(torch.rand(1, 3, 5, 4)).shape == (1, 3, 15, 12)
    assert models.from_structure("imdn", 1, 1, 8, 2)(torch.rand(2, 3, 4, 4)).shape == (2, 3, 8, 8)
    pan = models.from_structure("pan", n_c=12, n_l=3, n_b=2, scale=4, unf=8)
    assert len([m for m in pan.SCPA_trunk[0].k1 if isinstance(m, torch.nn.Conv2d)]) == 3
    assert pan(torch.rand(1, 3, 5, 4)).shape == (1, 3, 20, 16)
    for model, prefixes in ((imdn, ("IMDB", "c.", "LR_conv.")), (pan, ("SCPA_trunk.", "trunk_conv."))):
        deep = {id(p) for p in model.deep_feature_parameters()}
        assert {n for n, p in model.named_parameters() if id(p) in deep} == {
            n for n, _ in model.named_parameters() if n.startswith(prefixes)}
        assert model.with_structure(1, 1, 8).structure() == (1, 1, 8)
    assert pan.with_structure(1, 1, 8).unf == 8


@pytest.mark.parametrize("family,kwargs,match", [
    ("imdn", dict(n_c=30), "n_c must be a multiple of 4 \\(an IMDB distils a quarter of its channels\\), got 30"),
    ("imdn", dict(n_b=0), "n_b must be an int >= 1, got 0"),
    ("imdn", dict(n_l=0), "n_l must be an int >= 1"),
    ("imdn", dict(scale=1), "scale must be an int >= 2"),
    ("pan", dict(n_c=41), "n_c must be a multiple of 2 \\(an SC-PA block splits its channels in halves\\), got 41"),
    ("pan", dict(scale=5), "scale must be one of \\(2, 3, 4\\) for PAN's U-PA reconstruction, got 5"),
    ("pan", dict(unf=0), "unf must be an int >= 1"),
    ("pan", dict(n_b=-1), "n_b must be an int >= 1"),
])
def test_knobs_out_of_bounds(family, kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.FAMILIES[family](**kwargs)


def test_imdn_compiles_fullgraph_with_the_same_gradients():
    model = randomize(models.from_structure("imdn", 1, 2, 12, 2))
    with torch.no_grad():  # a one-channel attention bottleneck after a ReLU: keep it live, so no gradient is 0
        model.IMDB1.cca.conv_du[0].bias.fill_(1.0)
    x = torch.rand(2, 3, 6, 5)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(x).square().mean(), list(model.parameters()))
    expected = torch.autograd.grad(model(x).square().mean(), list(model.parameters()))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
    assert all(g.abs().sum() > 0 for g in grads)


def test_imdn_gradients_stay_finite_when_pruning_zeroes_a_filter():
    # A zeroed filter gives a constant channel, whose population std is sqrt(0): its gradient must not be NaN
    # (OBProx-SG zeroes whole filters while pruning, which stopped a pruning run on the published IMDN).
    model = randomize(models.from_structure("imdn", 1, 2, 12, 2))
    with torch.no_grad():
        model.IMDB1.c1.weight[0].zero_()
        model.IMDB1.c1.bias[0] = 0.5
    x = torch.rand(2, 3, 6, 5)
    grads = torch.autograd.grad(model(x).square().mean(), list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    attention = model.IMDB1.cca
    channels = torch.rand(1, attention.conv_du[0].in_channels, 4, 4)
    channels[:, 3] = 0.25
    expected_std = channels.std(dim=(2, 3), unbiased=False, keepdim=True)  # an independent formulation
    mean = channels.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(attention(channels), channels * attention.conv_du(expected_std + mean))


def test_unknown_options_are_named():
    with pytest.raises(ValueError, match="got options \\['res_scale'\\].*IMDN accepts"):
        models.from_structure("imdn", 2, 1, 16, res_scale=0.1)


# --- model.pt through eval, upscale and export ---------------------------------------------------------------------

NON_DEFAULT = {
    "edsr": lambda: models.from_structure("edsr", 2, 2, 8, 2, res_scale=0.5, rgb_range=1.0),
    "swinir": lambda: models.from_structure("swinir", 2, 2, 12, 2, num_heads=3, window_size=4, mlp_ratio=1.5,
                                            img_range=255.0, qkv_bias=False, patch_norm=False, drop_path_rate=0.3,
                                            attention_backend="reference"),
    "imdn": lambda: models.from_structure("imdn", 2, 2, 8, 3),
    "pan": lambda: models.from_structure("pan", 2, 2, 8, 4, unf=6),
}


@pytest.mark.parametrize("family", list(NON_DEFAULT))
def test_model_files_round_trip_in_eval_upscale_and_export(tmp_path, family, capsys):
    model = randomize(NON_DEFAULT[family]()).eval()
    assert model.family == family
    scale = model.scale
    path = save_model(tmp_path / "model.pt", model)
    hr = tmp_path / "set" / "HR"
    hr.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8 * scale, 12 * scale, 3), dtype=np.uint8)).save(hr / "a.png")
    # eval: the same numbers as the model itself
    assert main(["eval", "--model", str(path), "--data", str(tmp_path / "set"), "--device", "cpu",
                 "--json", str(tmp_path / "eval.json")]) == 0
    reported = json.loads((tmp_path / "eval.json").read_text())["sets"]["set"]
    expected = evaluate(model, tmp_path / "set", scale, progress=False)
    assert (reported["psnr"], reported["ssim"]) == (expected["psnr"], expected["ssim"])
    # upscale: the same pixels
    lr = tmp_path / "lr.png"
    Image.fromarray(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)).save(lr)
    assert main(["upscale", str(lr), str(tmp_path / "sr.png"), "--model", str(path), "--device", "cpu"]) == 0
    from cdism_fast.data import read_image

    assert torch.equal(read_image(tmp_path / "sr.png"), upscale(model, read_image(lr), scale))
    # export: the loaded model is the saved one (ONNX graph against the model)
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime

    assert main(["export", str(path), str(tmp_path / "model.onnx"), "--input-size", "8", "12"]) == 0
    x = torch.rand(1, 3, 8, 12)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(session.run(None, {"lr": x.numpy()})[0] - want).max() < 1e-4
    capsys.readouterr()


def test_model_file_records_are_kept_and_checked(tmp_path):
    model = NON_DEFAULT["edsr"]()
    save_model(tmp_path / "m.pt", model)
    assert load_pretrained(tmp_path / "m.pt").config() == model.config()
    with pytest.raises(ValueError, match="holds a ×2 model, not ×3"):
        load_pretrained(tmp_path / "m.pt", scale=3)
    swin = NON_DEFAULT["swinir"]()
    save_model(tmp_path / "s.pt", swin)
    assert load_pretrained(tmp_path / "s.pt", attention_backend="auto").attention_backend == "auto"


# --- distillation across families ---------------------------------------------------------------------------------

def test_edsr_student_from_an_imdn_teacher(tmp_path):
    teacher = randomize(models.from_structure("imdn", 1, 2, 8, 2))
    result = distill(teacher, "edsr:2,1,8", tmp_path / "kd", tiny_settings())
    assert result.status == "completed" and result.model.config() == models.from_structure("edsr", 2, 1, 8).config()
    record = json.loads((tmp_path / "kd" / "stage.json").read_text())
    assert record["settings"]["teacher"]["family"] == "imdn" and record["settings"]["student"]["family"] == "edsr"
    # any module mapping RGB to RGB at the student's scale, a preset student
    bilinear = torch.nn.Upsample(scale_factor=2, mode="bilinear")
    assert distill(bilinear, "edsr_mini", tmp_path / "any", tiny_settings()).model.scale == 2


def test_a_teacher_of_another_scale_is_refused_before_anything_is_written(tmp_path):
    teacher = models.from_structure("pan", 1, 1, 8, 3)
    with pytest.raises(ValueError, match="the teacher upscales ×3 but the student ×2"):
        distill(teacher, models.build("edsr_mini", scale=2), tmp_path / "out", tiny_settings())
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="student must be a student.json, a preset .* or family:n_b,n_l,n_c"):
        distill(teacher, "edsr-8-1-16", tmp_path / "out", tiny_settings())


def test_distill_command_takes_a_structure_student_and_a_file_teacher(tmp_path, capsys):
    teacher = randomize(models.from_structure("imdn", 1, 1, 8, 2))
    save_model(tmp_path / "teacher.pt", teacher)
    common = ["--iterations", "1", "--batch-size", "2", "--patch-size", "12", "--workers", "0", "--no-progress",
              "--threads", "1"]
    assert main(["distill", "--teacher", str(tmp_path / "teacher.pt"), "--student", "edsr:1,1,8",
                 "--out", str(tmp_path / "s"), *common]) == 0
    assert load_pretrained(tmp_path / "s" / "model.pt").structure() == (1, 1, 8)
    assert main(["distill", "--teacher", str(tmp_path / "teacher.pt"), "--student", "edsr_mini", "--scale", "3",
                 "--out", str(tmp_path / "t"), *common]) == 2
    assert "holds a ×2 model, not ×3" in capsys.readouterr().err and not (tmp_path / "t").exists()


# --- the compress command ------------------------------------------------------------------------------------------

def test_compress_command_prints_the_achieved_ratio_and_refuses_bad_densities(tmp_path, capsys):
    teacher = models.build("imdn", scale=2)
    save_model(tmp_path / "imdn.pt", teacher)
    assert main(["compress", "--teacher", str(tmp_path / "imdn.pt"), "--density", "0.1",
                 "--out", str(tmp_path / "c")]) == 0
    record = json.loads((tmp_path / "c" / "student.json").read_text())
    from cdism_fast.compress import compress_config

    assert record["student"]["family"] == "imdn" and record["structure"] == compress_config(teacher, 0.1)._asdict()
    assert f"density d = 0.1; achieved (the student's deep-feature weights over the teacher's) = " \
           f"{record['achieved_density']:.4g}" in capsys.readouterr().out
    assert abs(record["achieved_density"] - 0.1) < 0.01
    for bad in ("nan", "1.5", "0", "-0.2"):
        assert main(["compress", "--teacher", str(tmp_path / "imdn.pt"), "--density", bad,
                     "--out", str(tmp_path / "refused")]) == 2
        assert f"density must be a number in (0, 1], got {float(bad)}" in capsys.readouterr().err
        assert not (tmp_path / "refused").exists()
