"""The SwinIR family (Liang et al. 2021): forward against the official formulation, attention backends,
padding, stochastic depth, the official files, the compression protocol, bad options, hand counts."""

import math

import pytest
import torch
import torch.nn.functional as F

from cdism_fast import models
from cdism_fast.compress import Structure
from cdism_fast.models import load_pretrained
from cdism_fast.models.common import reflect_pad_to_multiple
from cdism_fast.ops import available_backends

from model_references import (
    assert_same_model,
    check_model_file_in_eval_upscale_and_export,
    conv_params,
    meta_preset,
    presets_of,
    randomize,
    randomized,
    save,
    shuffle_steps,
    swinir_official_forward,
    with_official_buffers,
)
from tolerances import assert_close

TINY_SWINIR = dict(embed_dim=12, depths=(2, 2), num_heads=(3, 3), window_size=4)


def tiny_swinir(scale=2, upsampler="pixelshuffledirect", **options):
    return models.SwinIR(scale=scale, upsampler=upsampler, **{**TINY_SWINIR, **options}).eval()


@pytest.mark.parametrize("upsampler,scale", [("pixelshuffledirect", 2), ("pixelshuffledirect", 3),
                                             ("pixelshuffle", 4), ("pixelshuffle", 3)])
def test_swinir_matches_official_formulation(upsampler, scale):
    model = randomize(tiny_swinir(scale, upsampler)).double()
    x = torch.rand(2, 3, 7, 10, dtype=torch.float64)  # padded to 8x12 (ws 4): shifted masks with 2x3 windows
    expected = swinir_official_forward(model.state_dict(), x, scale, TINY_SWINIR["depths"],
                                       TINY_SWINIR["num_heads"], 4, upsampler)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3, 7 * scale, 10 * scale)
    assert_close(out, expected)


def test_swinir_mini_preset_matches_official_formulation():
    model = randomize(models.build("swinir_mini")).double().eval()
    x = torch.rand(1, 3, 9, 17, dtype=torch.float64)  # padded to 16x24 (ws 8)
    expected = swinir_official_forward(model.state_dict(), x, 2, (4, 4, 4), (6, 6, 6), 8, "pixelshuffledirect")
    with torch.no_grad():
        assert_close(model(x), expected)


@pytest.mark.parametrize("backend", available_backends("window_attention"))
def test_swinir_attention_backends_agree(backend):
    model = randomize(tiny_swinir())
    x = torch.rand(2, 3, 9, 6)
    with torch.no_grad():
        expected = model(x)
        model.attention_backend = backend
        assert model.attention_backend == backend
        assert all(m.backend == backend for m in model.modules() if hasattr(m, "heads"))
        assert_close(model(x), expected)


def test_swinir_backend_option_and_bad_backend():
    assert tiny_swinir(attention_backend="reference").attention_backend == "reference"
    with pytest.raises(ValueError, match="attention_backend"):
        tiny_swinir().attention_backend = "fast"
    with pytest.raises(ValueError, match="attention_backend"):
        tiny_swinir(attention_backend="gpu")


def test_reflect_padding():
    x = torch.arange(2 * 3 * 5 * 3, dtype=torch.float32).view(2, 3, 5, 3)
    assert_close(reflect_pad_to_multiple(x, 4), F.pad(x, (0, 1, 0, 3), mode="reflect"))
    assert reflect_pad_to_multiple(x, 1) is x
    # a pad longer than the image keeps reflecting: rows 0 1 2 1 0 1 2 1
    small = torch.arange(3.0).view(1, 1, 3, 1).expand(1, 1, 3, 8)
    assert reflect_pad_to_multiple(small, 8)[0, 0, :, 5].tolist() == [0, 1, 2, 1, 0, 1, 2, 1]
    assert reflect_pad_to_multiple(torch.ones(1, 1, 1, 1), 4).shape == (1, 1, 4, 4)


def test_swinir_pads_and_crops():
    model = randomize(tiny_swinir())
    x = torch.rand(1, 3, 6, 9)
    with torch.no_grad():
        padded = model(F.pad(x, (0, 3, 0, 2), mode="reflect"))
        assert_close(model(x), padded[..., :12, :18])
        assert model(torch.rand(1, 3, 1, 2)).shape == (1, 3, 2, 4)


def test_stochastic_depth_compiles_fullgraph():
    model = models.from_structure("swinir", 2, 2, 12, 2, num_heads=3, window_size=4, attention_backend="reference",
                                  drop_path_rate=0.5)
    x = torch.rand(4, 3, 6, 5)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    got = compiled(x)
    torch.manual_seed(3)
    expected = model(x)
    assert_close(got, expected)  # the same draws from the same generator
    torch.manual_seed(4)
    assert not torch.allclose(model(x), expected)  # other draws drop other branches


def test_swinir_stochastic_depth():
    assert tiny_swinir().drop_path_rate == 0.1  # the official default
    model = randomize(tiny_swinir(depths=(3, 2), num_heads=(3, 3), drop_path_rate=0.4))
    layers = [block for rstb in model.layers for block in rstb.residual_group.blocks]
    assert [layer.drop_path.rate for layer in layers] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert models.build("swinir_lightweight", attention_backend="reference").drop_path_rate == 0.1
    assert model.with_structure(2, 2, 12).drop_path_rate == 0.4
    x = torch.rand(64, 3, 8, 8)
    plain = tiny_swinir(depths=(3, 2), num_heads=(3, 3), drop_path_rate=0.0)
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))  # eval: the identity
        drop = layers[-1].drop_path.train()
        branch = torch.randn(64, 5, 4)
        kept = drop(branch)
    zero = (kept == 0).flatten(1)
    assert torch.all(zero.all(1) | (~zero).all(1))  # whole samples are dropped
    assert_close(kept[~zero.all(1)], branch[~zero.all(1)] / 0.6)
    assert 10 <= zero.all(1).sum().item() <= 42  # Binomial(64, 0.4): mean 25.6, sd 3.9


def test_swinir_protocol():
    model = models.build("swinir_lightweight", scale=4, attention_backend="reference")
    small = model.with_structure(3, 4, 24)
    assert small.config() == models.build("swinir_mini", scale=4, attention_backend="reference").config()
    assert small.upsample[0].in_channels == 24 and small.conv_first.out_channels == 24
    assert model.channel_multiple() == 6
    deep = {id(p) for p in model.deep_feature_parameters()}
    names = {n for n, p in model.named_parameters() if id(p) in deep}
    assert names == {n for n, _ in model.named_parameters()
                     if n.startswith(("patch_embed.", "layers.", "norm.", "conv_after_body."))}
    uneven = models.SwinIR(embed_dim=12, depths=(2, 4), num_heads=(3, 4), window_size=4)
    assert uneven.channel_multiple() == 12
    with pytest.raises(ValueError, match="depths"):
        uneven.structure()
    with pytest.raises(ValueError, match="num_heads"):
        uneven.with_structure(2, 2, 12)


def test_swinir_direct_upsampler_takes_any_scale():
    assert tiny_swinir(scale=5)(torch.rand(1, 3, 4, 4)).shape == (1, 3, 20, 20)


@pytest.mark.parametrize("kwargs,match", [
    (dict(embed_dim=20, num_heads=(6, 6)), "embed_dim must be divisible.*embed_dim=20.*num_heads\\[0\\]=6"),
    (dict(num_heads=(3,)), "num_heads must be a list of 2"),
    (dict(depths=()), "depths"),
    (dict(depths=(2, 0)), "depths\\[1\\]"),
    (dict(window_size=0), "window_size"),
    (dict(mlp_ratio=-1), "mlp_ratio"),
    (dict(upsampler="nearest+conv"), "upsampler must be one of"),
    (dict(img_range=0), "value_range"),
    (dict(drop_path_rate=1.0), "drop_path_rate must be a number in \\[0, 1\\), got 1.0"),
    (dict(drop_path_rate=-0.1), "drop_path_rate"),
])
def test_swinir_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.SwinIR(**{**TINY_SWINIR, **kwargs})


def test_swinir_official_round_trip(tmp_path):
    original = randomized(models.build("swinir_mini"))
    # the file's index and mask buffers are garbage (and for a 64x64 patch): they must be ignored
    file = with_official_buffers(original.state_dict(), (4, 4, 4), ws=8, fill=7)
    loaded = load_pretrained(save(tmp_path, {"params": file}))
    x = torch.rand(1, 3, 5, 7)
    assert_same_model(loaded, original, x)
    with torch.no_grad():
        assert_close(loaded.double()(x.double()), swinir_official_forward(
            with_official_buffers(original.double().state_dict(), (4, 4, 4), ws=8), x.double(), 2, (4, 4, 4),
            (6, 6, 6), 8, "pixelshuffledirect"))


@pytest.mark.parametrize("window_size,patch", [(8, 64), (4, 64), (3, 66), (40, 80)])
def test_official_state_dict_holds_the_official_buffers(window_size, patch):
    """The buffers of the official files, from the formulation in model_references: every block's index, every
    shifted block's mask for a 64x64 patch (rounded up to a multiple of the window, at least two windows)."""
    model = models.SwinIR(embed_dim=12, depths=(3, 2), num_heads=(3, 3), window_size=window_size)
    official = model.official_state_dict()
    expected = with_official_buffers(model.state_dict(), (3, 2), ws=window_size, hw=(patch, patch))
    assert list(official) != list(model.state_dict()) and set(official) == set(expected)
    for key, value in expected.items():
        assert official[key].dtype == value.dtype and torch.equal(official[key], value), key
    # one tensor for every index and one for every mask: torch.save stores each once
    assert len({official[k].data_ptr() for k in official if k.endswith("attn_mask")}) == 1
    # and the official layout loads back as the same model
    assert_same_model(load_pretrained(official), model.eval(), torch.rand(1, 3, 5, 7))


@pytest.mark.parametrize("options,reason", [
    ({}, None),
    (dict(window_size=7), "img_range 1 (spandrel takes 255 for window_size 7)"),
    (dict(window_size=7, img_range=255.0), None),
    (dict(img_range=255.0), "img_range 255 (spandrel takes 1 for window_size 4)"),
    (dict(rgb_mean=(0.5, 0.5, 0.5)), "rgb_mean (0.5, 0.5, 0.5) (spandrel subtracts the DIV2K mean"),
    (dict(qkv_bias=False, patch_norm=False), "qkv_bias False (spandrel builds the qkv bias); patch_norm False"),
    # 51 hidden channels of 42 need a ratio just above 51/42 (as a file's is read): spandrel's 51/42 gives 50
    (dict(embed_dim=42, mlp_ratio=math.nextafter(51 / 42, math.inf)), "51 MLP channels (spandrel's ratio 51/42"),
])
def test_spandrel_mismatch_names_what_spandrel_would_build_otherwise(options, reason):
    mismatch = tiny_swinir(**options).spandrel_mismatch()
    assert mismatch == reason if reason is None else mismatch.startswith(reason)


def test_swinir_lightweight_preset_and_backend(tmp_path):
    original = randomized(models.build("swinir_lightweight", scale=3))
    path = save(tmp_path, {"params": with_official_buffers(original.state_dict(), (6,) * 4, ws=8)})
    loaded = load_pretrained(path, attention_backend="reference")
    assert loaded.attention_backend == "reference" and loaded.scale == 3
    assert models.preset_of(loaded.family, loaded.config()) == "swinir_lightweight"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in original.state_dict().items())


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_swinir_architecture_inference(tmp_path, scale):
    original = randomized(models.SwinIR(scale=scale, embed_dim=12, depths=(2, 3), num_heads=(3, 4), window_size=4,
                                        mlp_ratio=1.5, upsampler="pixelshuffle", qkv_bias=False, patch_norm=False))
    file = {"params_ema": with_official_buffers(original.state_dict(), (2, 3), ws=4)}
    loaded = load_pretrained(save(tmp_path, file))
    assert models.preset_of(loaded.family, loaded.config()) is None
    assert_same_model(loaded, original, torch.rand(2, 3, 5, 6))


def swinir_params(c, depths, heads, ws, mlp_ratio, upsampler, scale, tables=True):
    hidden = int(c * mlp_ratio)
    layer = (4 * c + ((2 * ws - 1) ** 2 * heads if tables else 0) + 3 * c * c + 3 * c + c * c + c
             + c * hidden + hidden + hidden * c + c)
    total = conv_params(3, c) + 2 * c + sum(depths) * layer + len(depths) * conv_params(c, c) + 2 * c
    total += conv_params(c, c)
    if upsampler == "pixelshuffledirect":
        return total + conv_params(c, 3 * scale * scale)
    return (total + conv_params(c, 64) + sum(conv_params(64, r * r * 64) for r in shuffle_steps(scale))
            + conv_params(64, 3))


def swinir_macs(c, depths, ws, mlp_ratio, upsampler, scale, out_hw):
    """(conv, linear, attention) on the LR grid padded to multiples of the window."""
    h, w = out_hw[0] // scale, out_hw[1] // scale
    lr = (h + -h % ws) * (w + -w % ws)
    hidden = int(c * mlp_ratio)
    layers = sum(depths)
    linear = lr * layers * (3 * c * c + c * c + 2 * c * hidden)
    attention = lr * layers * 2 * ws * ws * c  # q·kᵀ and attn·v: N·D per head per token, N = ws²
    conv = lr * (27 * c + (len(depths) + 1) * 9 * c * c)
    if upsampler == "pixelshuffledirect":
        conv += lr * 9 * c * 3 * scale * scale
    else:
        conv += lr * 9 * c * 64
        pixels = lr
        for r in shuffle_steps(scale):
            conv += pixels * 9 * 64 * r * r * 64
            pixels *= r * r
        conv += pixels * 27 * 64
    return conv, linear, attention


@pytest.mark.parametrize("name", ["swinir_lightweight", "swinir_mini", "swinir_classical"])
@pytest.mark.parametrize("scale,out_hw", [(2, (720, 1280)), (2, (722, 1282)), (3, (96, 75)), (4, (36, 44))])
def test_swinir_macs_against_hand_count(name, scale, out_hw):
    config = meta_preset(name).config()
    macs = models.count_flops(meta_preset(name, scale), out_hw)
    conv, linear, attention = swinir_macs(config["embed_dim"], config["depths"], config["window_size"],
                                          config["mlp_ratio"], config["upsampler"], scale, out_hw)
    assert (macs["conv"], macs["linear"], macs["attention"]) == (conv, linear, attention)
    assert macs["total"] == conv + linear + attention
    assert macs["total_without_attention"] == conv + linear


def test_swinir_macs_against_the_papers_figures():
    """The paper's 195.6G (SwinIR_LW) and 22.0G (SwinIRmini) follow no single convention: ours are
    198.4G / 18.3G without and 240.9G / 26.8G with the attention products."""
    light = models.count_flops(meta_preset("swinir_lightweight"))
    mini = models.count_flops(meta_preset("swinir_mini"))
    assert round(light["total_without_attention"] / 1e8) == 1984 and round(light["total"] / 1e8) == 2409
    assert round(mini["total_without_attention"] / 1e8) == 183 and round(mini["total"] / 1e8) == 268


def test_required_parameter_counts():
    bias_tables = ("relative_position_bias_table",)
    assert models.count_params(meta_preset("swinir_lightweight")) == 910_152
    assert models.count_params(meta_preset("swinir_lightweight"), exclude=bias_tables) == 877_752
    assert models.count_params(meta_preset("swinir_mini")) == 98_868


@pytest.mark.parametrize("name", presets_of("swinir"))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parameters_against_hand_count(name, scale):
    model = meta_preset(name, scale)
    config = model.config()
    args = (config["embed_dim"], config["depths"], config["num_heads"][0], config["window_size"],
            config["mlp_ratio"], config["upsampler"], scale)
    assert models.count_params(model) == swinir_params(*args)
    assert models.count_params(model, exclude=("relative_position_bias_table",)) == swinir_params(*args, tables=False)
    assert models.count_params(model, exclude="relative_position_bias_table") == swinir_params(*args, tables=False)


def test_a_member_with_other_options_keeps_them_in_eval_upscale_and_export(tmp_path):
    model = models.from_structure("swinir", 2, 2, 12, 2, num_heads=3, window_size=4, mlp_ratio=1.5, img_range=255.0,
                                  qkv_bias=False, patch_norm=False, drop_path_rate=0.3, attention_backend="reference")
    check_model_file_in_eval_upscale_and_export(randomize(model).eval(), tmp_path)


def test_preset_structures_and_options():
    assert meta_preset("swinir_classical").structure() == Structure(6, 6, 180)
    assert meta_preset("swinir_lightweight").structure() == Structure(4, 6, 60)
    assert meta_preset("swinir_mini").structure() == Structure(3, 4, 24)
    classical, light = meta_preset("swinir_classical"), meta_preset("swinir_lightweight")
    assert (classical.upsampler, light.upsampler) == ("pixelshuffle", "pixelshuffledirect")
    assert (light.window_size, light.mlp_ratio, light.img_range, light.num_heads) == (8, 2.0, 1.0, (6,) * 4)
