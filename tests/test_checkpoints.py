"""Official checkpoint formats written by the test, loaded back: architecture and scale inference,
outputs against the independent formulations, and files that do not fit."""
import pytest
import torch

from cdism_fast import models
from cdism_fast.models import CheckpointMismatch, load_pretrained
from cdism_fast.models.checkpoints import checkpoint_formats

from model_references import edsr_pytorch_forward, swinir_official_forward, to_edsr_pytorch, with_official_buffers
from tolerances import assert_close


def randomized(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


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


# --- EDSR-PyTorch ------------------------------------------------------------------------------------------------

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


# --- BasicSR -----------------------------------------------------------------------------------------------------

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


# --- SwinIR / KAIR -----------------------------------------------------------------------------------------------

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


# --- files that do not fit ---------------------------------------------------------------------------------------

def test_another_architecture_by_name(tmp_path):
    path = save(tmp_path, {"params": models.build("swinir_mini").state_dict()})
    with pytest.raises(CheckpointMismatch, match=r"does not fit edsr_mini ×2: missing keys \(first 8 of \d+\): "
                                                 r"body.0.conv1.weight.*unexpected keys.*patch_embed.norm.weight.*"
                                                 r"mis-shaped keys: conv_first.weight: file \(24, 3, 3, 3\)"):
        load_pretrained(path, name="edsr_mini")


def test_wrong_scale_and_size(tmp_path):
    path = save(tmp_path, models.build("edsr_mini").state_dict())
    with pytest.raises(CheckpointMismatch, match=r"edsr_mini ×3: mis-shaped keys.*upsample.0.weight: "
                                                 r"file \(64, 16, 3, 3\), model \(144, 16, 3, 3\)"):
        load_pretrained(path, scale=3)
    with pytest.raises(CheckpointMismatch, match=r"edsr_baseline ×2: missing keys \(first 8 of 32\): "
                                                 r"body.8.conv1.weight.*; mis-shaped keys \(first 8 of 39\)"):
        load_pretrained(path, name="edsr_baseline")


def test_missing_and_unexpected_keys(tmp_path):
    state = models.build("edsr_mini").state_dict()
    state.pop("conv_last.weight")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatch, match="missing keys: conv_last.weight; unexpected keys: extra.weight"):
        load_pretrained(save(tmp_path, state))
    file = to_edsr_pytorch(models.build("edsr_mini").state_dict(), n_b=8)
    file["body.3.body.1.weight"] = torch.zeros(16)  # a batch norm EDSR has not: named as in the file
    file.pop("tail.1.bias")
    with pytest.raises(CheckpointMismatch, match=r"missing \(EDSR names\) keys: conv_last.bias; "
                                                 r"unexpected keys: body.3.body.1.weight"):
        load_pretrained(save(tmp_path, file))


def test_nothing_is_loaded_on_mismatch(tmp_path, monkeypatch):
    loads = []
    original_load = torch.nn.Module.load_state_dict
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", lambda self, *a, **k: loads.append(self)
                        or original_load(self, *a, **k))
    state = models.build("edsr_mini").state_dict()
    state["body.0.conv1.weight"] = state["body.0.conv1.weight"][:8]
    with pytest.raises(CheckpointMismatch, match="body.0.conv1.weight: file \\(8, 16, 3, 3\\)"):
        load_pretrained(save(tmp_path, state))
    assert loads == []


def test_unrecognised_files(tmp_path):
    with pytest.raises(CheckpointMismatch, match="neither EDSR-PyTorch.*first keys are \\['conv1.weight'\\]"):
        load_pretrained(save(tmp_path, {"conv1.weight": torch.zeros(1)}))
    with pytest.raises(ValueError, match="must hold a state dict.*Tensor"):
        load_pretrained(save(tmp_path, torch.zeros(3)))
    with pytest.raises(ValueError, match="must map names to tensors; \\['epoch'\\] are not tensors"):
        load_pretrained(save(tmp_path, {"epoch": 3, "conv_first.weight": torch.zeros(1)}))
    with pytest.raises(ValueError, match="params_key must name a state dict.*'params_emma'"):
        load_pretrained(save(tmp_path, {"params": {}}), params_key="params_emma")
    gray = models.build("edsr_mini").state_dict()
    gray["conv_first.weight"] = gray["conv_first.weight"][:, :1]
    with pytest.raises(CheckpointMismatch, match="1 input channels"):
        load_pretrained(save(tmp_path, gray))
    denoiser = models.build("swinir_mini").state_dict()
    denoiser["conv_last.weight"] = torch.zeros(3, 24, 3, 3)
    with pytest.raises(CheckpointMismatch, match="denoising"):
        load_pretrained(save(tmp_path, denoiser))


def test_other_architectures_in_the_shared_weights(shared_data):
    # PAN and IMDN are families now (tests/test_families.py); CARN-M is not, and the error names every
    # format it was compared against.
    described = [fmt.describe() for _, fmt in checkpoint_formats()]
    expected = (f"is neither {', '.join(described[:-1])} nor {described[-1]}; its first keys are "
                "['sub_mean.shifter.weight'")
    with pytest.raises(CheckpointMismatch) as refused:
        load_pretrained(shared_data / "weights" / "carn_m.pth")
    assert expected in str(refused.value)
    assert "IMDN (fea_conv.weight, IMDB<i>.c1.weight)" in described
