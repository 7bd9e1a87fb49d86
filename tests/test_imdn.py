"""The IMDN family (Hui et al. 2019): the published file and its numbers, every scale of the official
layout, the knobs and their bounds, compile and gradients, the hand count."""

import pytest
import torch

from cdism_fast import models
from cdism_fast.evaluation import evaluate
from cdism_fast.models import load_pretrained

from model_references import (
    assert_hand_count,
    check_model_file_in_eval_upscale_and_export,
    conv_params,
    meta_preset,
    presets_of,
    published_size,
    randomize,
)

# Table 4 of Hui et al. 2019 (IMDN x2): PSNR / SSIM on the Y channel.
IMDN_X2_PUBLISHED = {"Set5": (38.00, 0.9605), "Set14": (33.63, 0.9177)}

pytestmark = pytest.mark.usefixtures("one_thread")


def test_imdn_reproduces_its_published_set5_and_set14_numbers(shared_data):
    model = load_pretrained(shared_data / "weights" / "IMDN_x2.pth")
    results = evaluate(model, [shared_data / "benchmarks" / name for name in IMDN_X2_PUBLISHED], 2, progress=False)
    for name, (psnr, ssim) in IMDN_X2_PUBLISHED.items():
        print(f"\nIMDN x2 {name}: PSNR_Y {results[name]['psnr']:.4f} (paper {psnr}), "
              f"SSIM_Y {results[name]['ssim']:.5f} (paper {ssim})")
        assert results[name]["psnr"] == pytest.approx(psnr, abs=0.01)
        assert results[name]["ssim"] == pytest.approx(ssim, abs=5e-4)


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


def imdn_params(n_c, n_b, n_l, scale):
    distilled = n_c // 4
    steps = conv_params(n_c, n_c) + (n_l - 2) * conv_params(n_c - distilled, n_c) \
        + conv_params(n_c - distilled, distilled)
    attention_channels = distilled * n_l
    hidden = max(1, attention_channels // 16)
    block = steps + conv_params(attention_channels, hidden, 1) + conv_params(hidden, attention_channels, 1) \
        + conv_params(attention_channels, n_c, 1)
    return (conv_params(3, n_c) + n_b * block + conv_params(n_b * n_c, n_c, 1) + conv_params(n_c, n_c)
            + conv_params(n_c, 3 * scale * scale))


@pytest.mark.parametrize("name", presets_of("imdn"))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parameters_against_hand_count(name, scale):
    assert_hand_count(name, scale, imdn_params)


def test_published_file_loads_with_weights_only(shared_data):
    imdn_file = shared_data / "weights" / "IMDN_x2.pth"
    raw = torch.load(imdn_file, map_location="cpu", weights_only=True)  # a legacy non-zip pickle
    assert len(raw) == 92 and all(key.startswith("module.") for key in raw)
    imdn = load_pretrained(imdn_file)
    assert type(imdn) is models.IMDN and imdn.config() == dict(scale=2, n_c=64, n_b=6, n_l=4)
    assert models.preset_of("imdn", imdn.config()) == "imdn" and models.count_params(imdn) == 694_404
    assert torch.equal(imdn.IMDB6.cca.conv_du[2].weight, raw["module.IMDB6.cca.conv_du.2.weight"])


def test_published_parameters_and_macs():
    """Hui et al. 2019: 694K parameters (the published IMDN_x2.pth), 158.8G Multi-Adds at 1280x720 (x2)."""
    assert published_size("imdn") == (694_404, 158.8)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_official_files_of_every_scale(tmp_path, scale):
    imdn = randomize(models.build("imdn", scale=scale))
    torch.save({f"module.{k}": v for k, v in imdn.state_dict().items()}, tmp_path / "imdn.pth")
    loaded = load_pretrained(tmp_path / "imdn.pth")
    assert loaded.config() == imdn.config() and loaded.upsampler[0].out_channels == 3 * scale * scale


def test_generalised_knobs():
    imdn = models.from_structure("imdn", n_c=16, n_l=2, n_b=3, scale=3)
    assert [name for name, _ in imdn.IMDB1.named_children()] == ["c1", "c2", "cca", "c3"]
    assert (imdn.IMDB1.c2.in_channels, imdn.IMDB1.c2.out_channels, imdn.IMDB1.c3.in_channels) == (12, 4, 8)
    assert imdn.c[0].in_channels == 3 * 16 and imdn(torch.rand(1, 3, 5, 4)).shape == (1, 3, 15, 12)
    assert models.from_structure("imdn", 1, 1, 8, 2)(torch.rand(2, 3, 4, 4)).shape == (2, 3, 8, 8)
    deep = {id(p) for p in imdn.deep_feature_parameters()}
    assert {n for n, p in imdn.named_parameters() if id(p) in deep} == {
        n for n, _ in imdn.named_parameters() if n.startswith(("IMDB", "c.", "LR_conv."))}
    assert imdn.with_structure(1, 1, 8).structure() == (1, 1, 8)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_c=30), "n_c must be a multiple of 4 \\(an IMDB distils a quarter of its channels\\), got 30"),
    (dict(n_b=0), "n_b must be an int >= 1, got 0"),
    (dict(n_l=0), "n_l must be an int >= 1"),
    (dict(scale=1), "scale must be an int >= 2"),
])
def test_knobs_out_of_bounds(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.IMDN(**kwargs)


def test_a_member_with_other_options_keeps_them_in_eval_upscale_and_export(tmp_path):
    model = randomize(models.from_structure("imdn", 2, 2, 8, 3)).eval()
    check_model_file_in_eval_upscale_and_export(model, tmp_path)


def test_preset_structure():
    assert meta_preset("imdn").structure() == (6, 4, 64)
