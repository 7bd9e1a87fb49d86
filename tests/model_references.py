"""Independent float64 formulations of EDSR and SwinIR, written from the papers and the facts of the
official code (names, mean, range, window partition, shifted-window mask by region labels), working
directly on state dicts in the official formats; writers of those formats; and what the model tests share
(random weights, meta-device presets, checkpoint files, model comparison)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cdism_fast import models
from cdism_fast.cli import main
from cdism_fast.data import read_image
from cdism_fast.evaluation import evaluate, upscale
from cdism_fast.training.artifacts import save_model
from cdism_fast.training.stages import StageSettings

from tolerances import assert_close

DIV2K_MEAN = torch.tensor([0.4488, 0.4371, 0.4040], dtype=torch.float64).view(1, 3, 1, 1)


def _conv(sd, prefix, x):
    w = sd[prefix + ".weight"].double()
    return F.conv2d(x, w, sd[prefix + ".bias"].double(), padding=w.shape[-1] // 2)


def _upsample(sd, prefix, x, scale, indices):
    """Convs at ``prefix.{i}`` followed by a pixel shuffle of 3 (one conv) or 2 (each conv)."""
    factor = 3 if scale == 3 else 2
    for i in indices:
        x = F.pixel_shuffle(_conv(sd, f"{prefix}.{i}", x), factor)
    return x


def _shuffle_indices(scale):
    return [0] if scale == 3 else [2 * i for i in range(int(math.log2(scale)))]


# --- EDSR --------------------------------------------------------------------------------------------------------

def edsr_pytorch_forward(sd, x255, n_b, scale, res_scale=1.0):
    """EDSR-PyTorch's forward on a 0-255 image, from its own state dict (sub_mean/add_mean 1x1 convs)."""
    x = _conv(sd, "sub_mean", x255.double())
    x = _conv(sd, "head.0", x)
    res = x
    for i in range(n_b):
        convs = sorted(int(k.split(".")[3]) for k in sd if k.startswith(f"body.{i}.body.") and k.endswith("weight"))
        y = res
        for j, index in enumerate(convs):
            y = _conv(sd, f"body.{i}.body.{index}", y if j == 0 else torch.relu(y))
        res = res + y * res_scale
    res = _conv(sd, f"body.{n_b}", res) + x
    return _conv(sd, "add_mean", _conv(sd, "tail.1", _upsample(sd, "tail.0", res, scale, _shuffle_indices(scale))))


def to_edsr_pytorch(sd, n_b, rgb_range=255.0):
    """Our (BasicSR-named) EDSR state dict in EDSR-PyTorch's names, with its mean shifts."""
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if key.startswith("conv_first."):
            new = "head.0." + parts[-1]
        elif key.startswith("conv_after_body."):
            new = f"body.{n_b}.{parts[-1]}"
        elif key.startswith("body."):
            new = f"body.{parts[1]}.body.{2 * (int(parts[2][4:]) - 1)}.{parts[-1]}"
        elif key.startswith("upsample."):
            new = f"tail.0.{parts[1]}.{parts[-1]}"
        elif key.startswith("conv_last."):
            new = "tail.1." + parts[-1]
        else:
            raise KeyError(key)
        out[new] = value.clone()
    dtype = next(iter(sd.values())).dtype
    eye = torch.eye(3, dtype=dtype).view(3, 3, 1, 1)
    mean = DIV2K_MEAN.view(3).to(dtype)
    out.update({"sub_mean.weight": eye.clone(), "sub_mean.bias": -rgb_range * mean,
                "add_mean.weight": eye.clone(), "add_mean.bias": rgb_range * mean})
    return out


# --- SwinIR ------------------------------------------------------------------------------------------------------

def official_relative_index(ws):
    """Coordinates stacked per window, differences shifted to start at 0, rows scaled by 2·ws − 1."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += ws - 1
    rel[:, :, 1] += ws - 1
    rel[:, :, 0] *= 2 * ws - 1
    return rel.sum(-1)


def window_partition(x, ws):
    b, h, w, c = x.shape
    return x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws * ws, c)


def window_reverse(windows, ws, b, h, w):
    return windows.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def official_mask(h, w, ws, shift):
    """Label the three row and column slices of the grid, then −100 where two tokens' labels differ."""
    labels = torch.zeros(1, h, w, 1)
    count = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            labels[:, hs, wsl, :] = count
            count += 1
    windows = window_partition(labels, ws).squeeze(-1)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def _layer_norm(sd, prefix, x):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"].double(), sd[prefix + ".bias"].double())


def _linear(sd, prefix, x):
    bias = sd.get(prefix + ".bias")
    return F.linear(x, sd[prefix + ".weight"].double(), None if bias is None else bias.double())


def _swin_block(sd, p, x, h, w, heads, ws, shift):
    b, length, c = x.shape
    shortcut = x
    x = _layer_norm(sd, p + ".norm1", x).view(b, h, w, c)
    if shift:
        x = torch.roll(x, (-shift, -shift), (1, 2))
    windows = window_partition(x, ws)
    n = ws * ws
    qkv = _linear(sd, p + ".attn.qkv", windows).reshape(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (c // heads) ** -0.5, qkv[1], qkv[2]
    attn = q @ k.transpose(-2, -1)
    table = sd[p + ".attn.relative_position_bias_table"].double()
    attn = attn + table[official_relative_index(ws).view(-1)].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
    if shift:
        mask = official_mask(h, w, ws, shift).double()
        attn = (attn.view(-1, mask.shape[0], heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, heads, n, n)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c)
    x = window_reverse(_linear(sd, p + ".attn.proj", out).view(-1, ws, ws, c), ws, b, h, w)
    if shift:
        x = torch.roll(x, (shift, shift), (1, 2))
    x = shortcut + x.reshape(b, length, c)
    y = _linear(sd, p + ".mlp.fc2", F.gelu(_linear(sd, p + ".mlp.fc1", _layer_norm(sd, p + ".norm2", x))))
    return x + y


def swinir_official_forward(sd, x, scale, depths, heads, ws, upsampler, img_range=1.0):
    """SwinIR on RGB in [0, 1] from an official-format state dict, reflect-padded to the window size."""
    h_old, w_old = x.shape[-2:]
    x = F.pad(x.double(), (0, -w_old % ws, 0, -h_old % ws), mode="reflect")
    h, w = x.shape[-2:]
    x = (x - DIV2K_MEAN) * img_range
    first = _conv(sd, "conv_first", x)
    tokens = first.flatten(2).transpose(1, 2)
    if "patch_embed.norm.weight" in sd:
        tokens = _layer_norm(sd, "patch_embed.norm", tokens)
    for i, (depth, head) in enumerate(zip(depths, heads)):
        y = tokens
        for j in range(depth):
            y = _swin_block(sd, f"layers.{i}.residual_group.blocks.{j}", y, h, w, head, ws, ws // 2 if j % 2 else 0)
        image = y.transpose(1, 2).reshape(y.shape[0], -1, h, w)
        tokens = _conv(sd, f"layers.{i}.conv", image).flatten(2).transpose(1, 2) + tokens
    tokens = _layer_norm(sd, "norm", tokens)
    features = _conv(sd, "conv_after_body", tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)) + first
    if upsampler == "pixelshuffle":
        y = F.leaky_relu(_conv(sd, "conv_before_upsample.0", features), 0.01)
        y = _conv(sd, "conv_last", _upsample(sd, "upsample", y, scale, _shuffle_indices(scale)))
    else:
        y = F.pixel_shuffle(_conv(sd, "upsample.0", features), scale)
    return (y / img_range + DIV2K_MEAN)[..., :h_old * scale, :w_old * scale]


def with_official_buffers(sd, depths, ws, hw=(64, 64), fill=None):
    """Our SwinIR state dict plus the official file's relative_position_index (every block) and
    attn_mask (shifted blocks, for a ``hw`` training patch) buffers; ``fill`` replaces their values
    (to show that they are not trusted)."""
    out = {k: v.clone() for k, v in sd.items()}
    for i, depth in enumerate(depths):
        for j in range(depth):
            p = f"layers.{i}.residual_group.blocks.{j}"
            index = official_relative_index(ws)
            out[p + ".attn.relative_position_index"] = index if fill is None else torch.full_like(index, fill)
            if j % 2:
                mask = official_mask(*hw, ws, ws // 2)
                out[p + ".attn_mask"] = mask if fill is None else torch.full_like(mask, float(fill))
    return out


# --- shared by the model tests -------------------------------------------------------------------------------------


def randomize(model):
    """Non-trivial values everywhere (zero biases and unit norms would hide mistakes)."""
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                unit = isinstance(module, torch.nn.LayerNorm) and name == "weight"
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if unit else 0.0))
    return model


def randomized(model):
    """The model's own initialisation with noise added, in eval mode."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def meta_preset(name, scale=2, **overrides):
    """Preset ``name`` on the meta device: structure and counts, no memory."""
    with torch.device("meta"):
        return models.build(name, scale=scale, **overrides)


def published_size(name):
    """(parameters, GMACs at 1280x720 rounded to 0.1) of preset ``name`` at ×2: the figures papers give."""
    model = meta_preset(name)
    return models.count_params(model), round(models.count_flops(model, (720, 1280))["total"] / 1e9, 1)


def assert_hand_count(name, scale, hand_count):
    """count_params of preset ``name`` at ``scale`` equals ``hand_count(**config)``, its config() being the
    keywords."""
    model = meta_preset(name, scale)
    assert models.count_params(model) == hand_count(**model.config())


def presets_of(family):
    """The names of the presets of ``family``, from the registry."""
    return [name for name, preset in models.ARCHITECTURES.items() if preset.family == family]


def save(tmp_path, content, name="weights.pth"):
    path = tmp_path / name
    torch.save(content, path)
    return path


def assert_same_model(loaded, original, x):
    assert type(loaded) is type(original) and loaded.config() == original.config()
    assert not loaded.training
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        assert_close(loaded(x), original(x))


def conv_params(c_in, c_out, k=3):
    return c_in * c_out * k * k + c_out


def shuffle_steps(scale):
    return [3] if scale == 3 else [2] * (scale.bit_length() - 1)


def tiny_settings(**changes):
    values = dict(iterations=2, batch_size=2, patch_size=12, checkpoint_every=0, log_every=1, progress=False)
    return StageSettings(**{**values, **changes})


def check_model_file_in_eval_upscale_and_export(model, tmp_path):
    """``model`` saved as a model.pt gives the model's own numbers in ``eval``, its pixels in ``upscale`` and its
    outputs in the ONNX graph of ``export`` (skipped without onnxruntime)."""
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
