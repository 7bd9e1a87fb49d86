"""EDSR and SwinIR families: presets, forward against independent float64 formulations, any input
size, layouts, compile, the compression protocol and bad input."""
import pytest
import torch
import torch.nn.functional as F

from cdism_fast import models
from cdism_fast.compress import Compressible, Structure
from cdism_fast.models.common import reflect_pad_to_multiple
from cdism_fast.ops import available_backends

from float64_references import layouts
from model_references import edsr_pytorch_forward, swinir_official_forward, to_edsr_pytorch
from tolerances import assert_close

TINY_SWINIR = dict(embed_dim=12, depths=(2, 2), num_heads=(3, 3), window_size=4)


def tiny_swinir(scale=2, upsampler="pixelshuffledirect", **options):
    return models.SwinIR(scale=scale, upsampler=upsampler, **{**TINY_SWINIR, **options}).eval()


def randomize(model):
    """Non-trivial values everywhere (zero biases and unit norms would hide mistakes)."""
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                unit = isinstance(module, torch.nn.LayerNorm) and name == "weight"
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if unit else 0.0))
    return model


# --- presets -----------------------------------------------------------------------------------------------------

EXPECTED_STRUCTURES = {
    "edsr": Structure(32, 1, 256), "edsr_baseline": Structure(16, 1, 64), "edsr_mini": Structure(8, 1, 16),
    "swinir_classical": Structure(6, 6, 180), "swinir_lightweight": Structure(4, 6, 60),
    "swinir_mini": Structure(3, 4, 24), "imdn": Structure(6, 4, 64), "pan": Structure(16, 1, 40),
}


@pytest.mark.parametrize("name", list(models.ARCHITECTURES))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_presets_structure_and_scale(name, scale):
    with torch.device("meta"):
        model = models.build(name, scale=scale)
    assert isinstance(model, Compressible)
    assert model.structure() == EXPECTED_STRUCTURES[name]
    assert model.scale == scale
    assert models.preset_of(model.family, model.config()) == name
    out = model(torch.empty(1, 3, 5, 7, device="meta"))
    assert out.shape == (1, 3, 5 * scale, 7 * scale)


def test_preset_options():
    with torch.device("meta"):
        edsr, baseline = models.build("edsr"), models.build("edsr_baseline")
        classical, light = models.build("swinir_classical"), models.build("swinir_lightweight")
    assert (edsr.res_scale, baseline.res_scale, edsr.rgb_range) == (0.1, 1.0, 255.0)
    assert (classical.upsampler, light.upsampler) == ("pixelshuffle", "pixelshuffledirect")
    assert (light.window_size, light.mlp_ratio, light.img_range, light.num_heads) == (8, 2.0, 1.0, (6,) * 4)


def test_build_overrides_and_from_structure():
    model = models.build("edsr_mini", scale=3, res_scale=0.5, rgb_range=1.0)
    assert (model.res_scale, model.rgb_range, model.scale) == (0.5, 1.0, 3)
    same = models.from_structure("edsr", n_c=16, n_l=1, n_b=8, scale=3, res_scale=0.5, rgb_range=1.0)
    assert same.config() == model.config()
    swin = models.from_structure("swinir", 3, 4, 24, 2)
    assert swin.config() == models.build("swinir_mini").config()
    assert models.from_structure("swinir", 5, 2, 12, 4, num_heads=4, upsampler="pixelshuffle").num_heads == (4,) * 5


# --- forward against the independent formulations ----------------------------------------------------------------

@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_matches_edsr_pytorch_formulation(scale):
    model = randomize(models.from_structure("edsr", 3, 2, 8, scale, res_scale=0.5)).double().eval()
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    file = to_edsr_pytorch(model.state_dict(), n_b=3)
    expected = edsr_pytorch_forward(file, x * 255, n_b=3, scale=scale, res_scale=0.5) / 255
    with torch.no_grad():
        assert_close(model(x), expected)


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


# --- sizes, padding, layouts -------------------------------------------------------------------------------------

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


@pytest.mark.parametrize("family", list(models.FAMILIES))
def test_layouts_and_batch(family):
    # float64: batched and single-image matmuls round differently in fp32 through a deep
    # network; in float64 any real mix-up between images or layouts stands far above rounding.
    model = randomize(models.from_structure(family, 2, 2, 12, 2, **({"num_heads": 3, "window_size": 4}
                                                                     if family == "swinir" else {}))).double().eval()
    x = torch.rand(3, 3, 7, 5, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        for name, variant in layouts(x).items():
            assert_close(model(variant), expected, msg=name)
        for i in range(3):
            assert_close(model(x[i:i + 1]), expected[i:i + 1], msg=f"image {i} alone")


@pytest.mark.parametrize("family", list(models.FAMILIES))
def test_nan_propagates(family):
    model = models.from_structure(family, 1, 1, 12, 2, **({"num_heads": 3, "window_size": 4}
                                                          if family == "swinir" else {})).eval()
    x = torch.rand(1, 3, 8, 8)
    x[0, 1, 3, 3] = float("nan")
    with torch.no_grad():
        assert model(x).isnan().any()


@pytest.mark.parametrize("family", ["edsr", "swinir", "pan"])  # IMDN: tests/test_families.py
def test_compile_fullgraph_and_gradients(family):
    swinir_options = {"num_heads": 3, "window_size": 4, "attention_backend": "reference", "drop_path_rate": 0.0}
    model = randomize(models.from_structure(family, 1, 2, 12, 2, **(swinir_options if family == "swinir" else {})))
    x = torch.rand(2, 3, 6, 5)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss = compiled(x).square().mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected_loss = model(x).square().mean()
    expected_grads = torch.autograd.grad(expected_loss, list(model.parameters()))
    assert_close(loss, expected_loss)
    for got, want in zip(grads, expected_grads):
        assert_close(got, want)
    assert all(g.abs().sum() > 0 for g in grads)


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


# --- compression protocol ----------------------------------------------------------------------------------------

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


# --- bad input ---------------------------------------------------------------------------------------------------

def test_unknown_preset_lists_known():
    with pytest.raises(ValueError, match="name must be a preset.*edsr_baseline.*swinir_mini.*'srcnn'"):
        models.build("srcnn")
    with pytest.raises(ValueError, match="family must be one of.*'vdsr'"):
        models.from_structure("vdsr", 2, 1, 16)
    with pytest.raises(ValueError, match="unknown_option"):
        models.build("edsr_mini", unknown_option=1)
    with pytest.raises(ValueError, match=r"\['depths'\]"):
        models.from_structure("swinir", 2, 2, 12, depths=(1, 1))


@pytest.mark.parametrize("name,scale", [("edsr_mini", 5), ("edsr_baseline", 6), ("swinir_classical", 5),
                                        ("swinir_mini", 1), ("edsr_mini", 1), ("edsr_mini", 2.0),
                                        ("swinir_lightweight", "2")])
def test_impossible_scale(name, scale):
    with pytest.raises(ValueError, match="scale"):
        models.build(name, scale=scale)


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


@pytest.mark.parametrize("kwargs,match", [(dict(n_c=0), "n_c"), (dict(n_b=-1), "n_b"), (dict(n_l=0), "n_l"),
                                          (dict(res_scale=float("nan")), "res_scale"),
                                          (dict(rgb_mean=(0.5, 0.5)), "rgb_mean")])
def test_edsr_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.EDSR(**kwargs)


@pytest.mark.parametrize("x,match", [(torch.rand(3, 8, 8), "4 dimensions"), (torch.rand(1, 1, 8, 8), "RGB"),
                                     (torch.randint(0, 255, (1, 3, 8, 8)), "floating-point")])
def test_bad_input_images(x, match):
    for model in (models.build("edsr_mini"), tiny_swinir()):
        with pytest.raises(ValueError, match=match):
            model(x)
