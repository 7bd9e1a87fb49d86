"""Parameter and multiply-accumulate counts against hand counts of the architectures and the paper."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cdism_fast import models
from cdism_fast.models.counting import _window_attention_flops
from cdism_fast.ops import available_backends
from cdism_fast.ops.window_attention import window_attention_reference


def meta_preset(name, scale=2, **overrides):
    with torch.device("meta"):
        return models.build(name, scale=scale, **overrides)


def conv_params(c_in, c_out, k=3):
    return c_in * c_out * k * k + c_out


def shuffle_steps(scale):
    return [3] if scale == 3 else [2] * (scale.bit_length() - 1)


# --- hand counts -------------------------------------------------------------------------------------------------

def edsr_params(c, n_b, n_l, scale):
    body = n_b * (n_l + 1) * conv_params(c, c) + conv_params(c, c)
    upsample = sum(conv_params(c, r * r * c) for r in shuffle_steps(scale))
    return conv_params(3, c) + body + upsample + conv_params(c, 3)


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


def imdn_params(c, n_b, n_l, scale):
    distilled = c // 4
    steps = conv_params(c, c) + (n_l - 2) * conv_params(c - distilled, c) + conv_params(c - distilled, distilled)
    attention_channels = distilled * n_l
    hidden = max(1, attention_channels // 16)
    block = steps + conv_params(attention_channels, hidden, 1) + conv_params(hidden, attention_channels, 1) \
        + conv_params(attention_channels, c, 1)
    return (conv_params(3, c) + n_b * block + conv_params(n_b * c, c, 1) + conv_params(c, c)
            + conv_params(c, 3 * scale * scale))


def pan_params(c, n_b, n_l, unf, scale):
    half = c // 2
    block = 2 * c * half + n_l * 9 * half * half + conv_params(half, half, 1) + 2 * 9 * half * half + c * c
    steps = 2 if scale == 4 else 1
    reconstruction = conv_params(c, unf) + (steps - 1) * conv_params(unf, unf) \
        + steps * (conv_params(unf, unf, 1) + conv_params(unf, unf)) + conv_params(unf, 3)
    return conv_params(3, c) + n_b * block + conv_params(c, c) + reconstruction


def edsr_macs(c, n_b, n_l, scale, out_hw):
    lr = (out_hw[0] // scale) * (out_hw[1] // scale)
    per_pixel = 27 * c + (n_b * (n_l + 1) + 1) * 9 * c * c
    pixels, upsample = lr, 0
    for r in shuffle_steps(scale):
        upsample += pixels * 9 * c * r * r * c
        pixels *= r * r
    return lr * per_pixel + upsample + pixels * 27 * c


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


# --- parameters --------------------------------------------------------------------------------------------------

def test_required_parameter_counts():
    bias_tables = ("relative_position_bias_table",)
    assert models.count_params(meta_preset("edsr_baseline")) == 1_369_859
    assert models.count_params(meta_preset("edsr_mini")) == 49_603
    assert models.count_params(meta_preset("swinir_lightweight")) == 910_152
    assert models.count_params(meta_preset("swinir_lightweight"), exclude=bias_tables) == 877_752
    assert models.count_params(meta_preset("swinir_mini")) == 98_868
    assert models.count_params(meta_preset("imdn")) == 694_404  # the published IMDN_x2.pth
    assert models.count_params(meta_preset("pan")) == 261_403  # the published PANx2_DF2K.pth


@pytest.mark.parametrize("name", list(models.ARCHITECTURES))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parameters_against_hand_count(name, scale):
    model = meta_preset(name, scale)
    config = model.config()
    if model.family == "edsr":
        assert models.count_params(model) == edsr_params(config["n_c"], config["n_b"], config["n_l"], scale)
        return
    if model.family == "imdn":
        assert models.count_params(model) == imdn_params(config["n_c"], config["n_b"], config["n_l"], scale)
        return
    if model.family == "pan":
        assert models.count_params(model) == pan_params(config["n_c"], config["n_b"], config["n_l"], config["unf"],
                                                        scale)
        return
    args = (config["embed_dim"], config["depths"], config["num_heads"][0], config["window_size"],
            config["mlp_ratio"], config["upsampler"], scale)
    assert models.count_params(model) == swinir_params(*args)
    assert models.count_params(model, exclude=("relative_position_bias_table",)) == swinir_params(*args, tables=False)
    assert models.count_params(model, exclude="relative_position_bias_table") == swinir_params(*args, tables=False)


def test_mean_shift_is_a_buffer():
    model = models.build("edsr_mini")
    assert "mean_shift.mean" in dict(model.named_buffers())
    assert not any("mean" in name for name, _ in model.named_parameters())
    assert not any("mean" in name for name in model.state_dict())


# --- multiply-accumulates ----------------------------------------------------------------------------------------

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


def test_counting_a_real_model_leaves_it_unchanged():
    model = models.build("swinir_mini", scale=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    macs = models.count_flops(model, (96, 96))
    assert macs == models.count_flops(meta_preset("swinir_mini", 3), (96, 96))
    assert all(torch.equal(before[k], v) and v.device.type == "cpu" for k, v in model.state_dict().items())
    model(torch.rand(1, 3, 8, 8))


def test_window_attention_formula_matches_the_counted_reference():
    q, k, v = (torch.rand(6, 3, 16, 5) for _ in range(3))
    table = torch.rand(49, 3)
    with FlopCounterMode(display=False) as counter:
        window_attention_reference(q, k, v, table, 4, 2, (8, 12), 5 ** -0.5)
    expected = 2 * 2 * 6 * 3 * 16 * 16 * 5  # FLOPs (2 per MAC) of q·kᵀ and attn·v
    assert counter.get_total_flops() == _window_attention_flops(q.shape, k.shape, v.shape) == expected


@pytest.mark.skipif("cpp" not in available_backends("window_attention"), reason="no compiled window_attention")
def test_compiled_attention_is_counted_by_torch():
    model = models.build("swinir_mini", attention_backend="cpp").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, 16, 16))
    expected = models.count_flops(model, (32, 32))
    assert counter.get_total_flops() == 2 * expected["total"]


# --- bad input ---------------------------------------------------------------------------------------------------

def test_bad_counting_arguments():
    model = meta_preset("edsr_mini")
    with pytest.raises(ValueError, match="divisible by the scale 2"):
        models.count_flops(model, (721, 1280))
    with pytest.raises(ValueError, match="out_hw"):
        models.count_flops(model, (720,))
    with pytest.raises(ValueError, match="out_hw"):
        models.count_flops(model, (0, 1280))
    with pytest.raises(ValueError, match="scale 3 does not match"):
        models.count_flops(model, (720, 1281), scale=3)
    with pytest.raises(ValueError, match="scale must be a positive int"):
        models.count_flops(torch.nn.Conv2d(3, 3, 3), (8, 8))
    assert models.count_flops(torch.nn.Conv2d(3, 3, 3, padding=1), (8, 8), scale=1)["conv"] == 64 * 27 * 3


def test_cli_table(capsys):
    from cdism_fast.cli import main

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()[3:]
    presets = lines[: lines.index("")] if "" in lines else lines  # the shipped trained models follow a blank line
    rows = {line.split()[0]: line.split() for line in presets}
    assert list(rows) == list(models.ARCHITECTURES)
    assert rows["swinir_lightweight"][2:] == ["4", "6", "60", "910,152", "877,752", "240.9", "198.4"]
    assert rows["edsr_mini"][2:] == ["8", "1", "16", "49,603", "49,603", "11.6", "11.6"]
    assert main(["models", "--scale", "4", "--size", "64x48"]) == 0
    assert "swinir_mini" in capsys.readouterr().out
    assert main(["models", "--scale", "3", "--size", "64x48"]) == 2
    assert "divisible by --scale 3" in capsys.readouterr().err
