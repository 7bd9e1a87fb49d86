"""The EDSR family (Lim et al. 2017): forward against EDSR-PyTorch's formulation, the EDSR-PyTorch and
BasicSR files, the compression protocol, bad options, hand counts of parameters and MACs."""

import pytest
import torch

from cdism_fast import models
from cdism_fast.compress import Structure
from cdism_fast.models import CheckpointMismatch, load_pretrained

from model_references import (
    assert_hand_count,
    assert_same_model,
    check_model_file_in_eval_upscale_and_export,
    conv_params,
    edsr_pytorch_forward,
    meta_preset,
    presets_of,
    randomize,
    randomized,
    save,
    shuffle_steps,
    to_edsr_pytorch,
)
from tolerances import assert_close


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_matches_edsr_pytorch_formulation(scale):
    model = randomize(models.from_structure("edsr", 3, 2, 8, scale, res_scale=0.5)).double().eval()
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    file = to_edsr_pytorch(model.state_dict(), n_b=3)
    expected = edsr_pytorch_forward(file, x * 255, n_b=3, scale=scale, res_scale=0.5) / 255
    with torch.no_grad():
        assert_close(model(x), expected)


def test_edsr_protocol():
    model = models.build("edsr_baseline", scale=3, res_scale=0.5)
    small = model.with_structure(4, 2, 24)
    assert small.structure() == Structure(4, 2, 24) and small is not model
    assert (small.scale, small.res_scale) == (3, 0.5)
    assert small.conv_first.out_channels == 24 and small.upsample[0].weight.shape == (9 * 24, 24, 3, 3)
    assert len(small.body) == 4 and hasattr(small.body[0], "conv3") and not hasattr(small.body[0], "conv4")
    assert model.channel_multiple() == 8
    deep = {id(p) for p in model.deep_feature_parameters()}
    names = {n for n, p in model.named_parameters() if id(p) in deep}
    assert names == {n for n, _ in model.named_parameters() if n.startswith(("body.", "conv_after_body."))}


@pytest.mark.parametrize("kwargs,match", [(dict(n_c=0), "n_c"), (dict(n_b=-1), "n_b"), (dict(n_l=0), "n_l"),
                                          (dict(res_scale=float("nan")), "res_scale"),
                                          (dict(rgb_mean=(0.5, 0.5)), "rgb_mean")])
def test_edsr_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.EDSR(**kwargs)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_pytorch_round_trip(tmp_path, scale):
    original = randomized(models.build("edsr_mini", scale=scale))
    path = save(tmp_path, to_edsr_pytorch(original.state_dict(), n_b=8), "edsr_mini.pt")
    loaded = load_pretrained(path)
    x = torch.rand(1, 3, 6, 5)
    assert_same_model(loaded, original, x)
    # the official computation on 0-255 values, in float64 (so the mean shifts are exact too)
    file64 = to_edsr_pytorch({k: v.double() for k, v in original.state_dict().items()}, n_b=8)
    with torch.no_grad():
        expected = edsr_pytorch_forward(file64, x.double() * 255, n_b=8, scale=scale)
        assert_close(loaded.double()(x.double()) * 255, expected)


def test_edsr_pytorch_options_from_the_file(tmp_path):
    original = randomized(models.from_structure("edsr", 3, 2, 8, 2, rgb_range=1.0))
    loaded = load_pretrained(save(tmp_path, to_edsr_pytorch(original.state_dict(), n_b=3, rgb_range=1.0)))
    assert (loaded.rgb_range, loaded.structure()) == (1.0, (3, 2, 8))
    assert_same_model(loaded, original, torch.rand(2, 3, 4, 7))
    assert models.preset_of("edsr", dict(n_c=256, n_b=32, n_l=1)) == "edsr"  # whose res_scale 0.1 is then used
    with_res_scale = load_pretrained(save(tmp_path, to_edsr_pytorch(original.state_dict(), n_b=3)), res_scale=0.1)
    assert (with_res_scale.res_scale, with_res_scale.rgb_range) == (0.1, 255.0)


def test_edsr_pytorch_bad_mean_shift(tmp_path):
    file = to_edsr_pytorch(models.build("edsr_mini").state_dict(), n_b=8)
    file["sub_mean.weight"] = file["sub_mean.weight"] / 0.5  # a std of 0.5
    with pytest.raises(CheckpointMismatch, match="mean shifts"):
        load_pretrained(save(tmp_path, file))


def test_basicsr_wrappers(tmp_path):
    ema, plain = randomized(models.build("edsr_mini", scale=4)), randomized(models.build("edsr_mini", scale=4))
    path = save(tmp_path, {"params": plain.state_dict(), "params_ema": ema.state_dict()})
    x = torch.rand(1, 3, 5, 5)
    assert_same_model(load_pretrained(path), ema, x)
    assert_same_model(load_pretrained(path, params_key="params"), plain, x)
    parallel = {"params": {"module." + k: v.half() for k, v in plain.state_dict().items()}}
    loaded = load_pretrained(save(tmp_path, parallel, "dp.pth"), name="edsr_mini")
    assert loaded.scale == 4 and next(loaded.parameters()).dtype == torch.float32
    assert torch.equal(loaded.conv_last.weight, plain.conv_last.weight.half().float())
    assert_same_model(load_pretrained(dict(params=plain.state_dict())), plain, x)


def test_basicsr_edsr_baseline_preset(tmp_path):
    original = randomized(models.build("edsr_baseline"))
    loaded = load_pretrained(save(tmp_path, {"params": original.state_dict()}))
    assert models.preset_of(loaded.family, loaded.config()) == "edsr_baseline"
    assert_same_model(loaded, original, torch.rand(1, 3, 4, 4))


def edsr_params(n_c, n_b, n_l, scale, **options):
    """``options`` (res_scale, rgb_range, rgb_mean) add no parameters."""
    body = n_b * (n_l + 1) * conv_params(n_c, n_c) + conv_params(n_c, n_c)
    upsample = sum(conv_params(n_c, r * r * n_c) for r in shuffle_steps(scale))
    return conv_params(3, n_c) + body + upsample + conv_params(n_c, 3)


def edsr_macs(c, n_b, n_l, scale, out_hw):
    lr = (out_hw[0] // scale) * (out_hw[1] // scale)
    per_pixel = 27 * c + (n_b * (n_l + 1) + 1) * 9 * c * c
    pixels, upsample = lr, 0
    for r in shuffle_steps(scale):
        upsample += pixels * 9 * c * r * r * c
        pixels *= r * r
    return lr * per_pixel + upsample + pixels * 27 * c


def test_edsr_macs_match_the_paper():
    baseline = models.count_flops(meta_preset("edsr_baseline"))
    mini = models.count_flops(meta_preset("edsr_mini"))
    assert abs(baseline["total"] / 316.3e9 - 1) < 0.01
    assert abs(mini["total"] / 11.7e9 - 1) < 0.01
    assert baseline["linear"] == baseline["attention"] == mini["attention"] == 0


@pytest.mark.parametrize("name", ["edsr_baseline", "edsr_mini", "edsr"])
@pytest.mark.parametrize("scale,out_hw", [(2, (720, 1280)), (3, (720, 1281)), (4, (36, 44))])
def test_edsr_macs_against_hand_count(name, scale, out_hw):
    config = meta_preset(name).config()
    macs = models.count_flops(meta_preset(name, scale), out_hw)
    assert macs["conv"] == macs["total"] == macs["total_without_attention"] == edsr_macs(
        config["n_c"], config["n_b"], config["n_l"], scale, out_hw)


def test_required_parameter_counts():
    assert models.count_params(meta_preset("edsr_baseline")) == 1_369_859
    assert models.count_params(meta_preset("edsr_mini")) == 49_603


@pytest.mark.parametrize("name", presets_of("edsr"))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parameters_against_hand_count(name, scale):
    assert_hand_count(name, scale, edsr_params)


def test_a_member_with_other_options_keeps_them_in_eval_upscale_and_export(tmp_path):
    model = randomize(models.from_structure("edsr", 2, 2, 8, 2, res_scale=0.5, rgb_range=1.0)).eval()
    check_model_file_in_eval_upscale_and_export(model, tmp_path)


def test_preset_structures_and_options():
    assert meta_preset("edsr").structure() == Structure(32, 1, 256)
    assert meta_preset("edsr_baseline").structure() == Structure(16, 1, 64)
    assert meta_preset("edsr_mini").structure() == Structure(8, 1, 16)
    edsr, baseline = meta_preset("edsr"), meta_preset("edsr_baseline")
    assert (edsr.res_scale, baseline.res_scale, edsr.rgb_range) == (0.1, 1.0, 255.0)
