"""The compact family (Real-ESRGAN's SRVGGNetCompact): the network against a float64 formulation written
here, Real-ESRGAN's files at every scale (also through ``eval --model FILE``), N_l and the deep-feature split,
the knobs and their bounds, the hand count, the presets, and the .pth export in Real-ESRGAN's layout."""
import json

import pytest
import torch
import torch.nn.functional as F

from cdism_fast import models
from cdism_fast.cli import main
from cdism_fast.compress import compress_config
from cdism_fast.evaluation import evaluate
from cdism_fast.export import export, spandrel_note, written_by_export
from cdism_fast.models import CheckpointMismatch, load_pretrained
from cdism_fast.training.artifacts import save_model

from helpers.images import write_noise_images
from model_references import (
    assert_hand_count,
    check_model_file_in_eval_upscale_and_export,
    conv_params,
    meta_preset,
    presets_of,
    randomize,
    save,
)
from tolerances import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")


def compact_forward(sd, x, scale):
    """SRVGGNetCompact in float64 from a state dict in Real-ESRGAN's names: conv, PReLU, ..., conv, pixel
    shuffle, plus each input pixel repeated scale×scale times."""
    last = max(int(key.split(".")[1]) for key in sd)
    y = x.double()
    for i in range(0, last, 2):
        weight = sd[f"body.{i}.weight"].double()
        y = F.conv2d(y, weight, sd[f"body.{i}.bias"].double(), padding=1)
        slope = sd[f"body.{i + 1}.weight"].double().view(1, -1, 1, 1)
        y = torch.where(y >= 0, y, slope * y)
    y = F.conv2d(y, sd[f"body.{last}.weight"].double(), sd[f"body.{last}.bias"].double(), padding=1)
    n, c, h, w = y.shape
    channels = c // (scale * scale)
    y = y.view(n, channels, scale, scale, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, channels, h * scale, w * scale)
    return y + x.double().repeat_interleave(scale, 2).repeat_interleave(scale, 3)


def member(scale, n_c=8, n_b=3, n_l=1):
    """Random weights everywhere, PReLU slopes of both signs included."""
    return randomize(models.Compact(scale=scale, n_c=n_c, n_b=n_b, n_l=n_l)).eval()


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_forward_against_float64(scale):
    model = member(scale).double()
    x = torch.rand(2, 3, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        assert_close(model(x), compact_forward(model.state_dict(), x, scale))


def test_the_prelu_slopes_are_per_channel_and_matter():
    model = member(2)
    with torch.no_grad():
        model.body[1].weight[0] = -3.0  # a slope that differs from the default 0.25 on channel 0 only
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        assert_close(model(x), compact_forward(model.state_dict(), x, 2).float())
    assert model.body[1].weight.shape == (8,)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("wrapper", [None, "params", "params_ema"])
def test_real_esrgan_files_of_every_scale(tmp_path, scale, wrapper):
    """Real-ESRGAN writes {"params": state dict} (and params_ema during training); the scale is read from
    the last conv's 3·scale² channels, the preset from the shapes."""
    model = member(scale, n_c=16, n_b=18)
    state = model.state_dict()
    content = state if wrapper is None else {wrapper: state}
    if wrapper == "params_ema":  # a training file holds both; the EMA weights are the ones to use
        content["params"] = {k: torch.zeros_like(v) for k, v in state.items()}
    loaded = load_pretrained(save(tmp_path, content))
    assert type(loaded) is models.Compact and loaded.config() == model.config() and loaded.scale == scale
    assert models.preset_of("compact", loaded.config()) == "compact_mini"
    x = torch.rand(1, 3, 5, 7)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_real_esrgan_file_is_a_teacher_in_eval_with_the_scale_from_its_tensors(tmp_path, capsys):
    model = member(4)
    path = save(tmp_path, {"params": model.state_dict()}, "realesr-compact-x4.pth")
    data = tmp_path / "set"
    write_noise_images(data / "HR", 2, size=(24, 32))
    assert main(["eval", "--model", str(path), "--data", str(data), "--device", "cpu",
                 "--json", str(tmp_path / "eval.json")]) == 0
    reported = json.loads((tmp_path / "eval.json").read_text())["sets"]["set"]
    expected = evaluate(model, data, 4, progress=False)
    assert (reported["psnr"], reported["ssim"]) == (expected["psnr"], expected["ssim"])
    with pytest.raises(CheckpointMismatch, match="its tensors are those of a ×4 model: pass --scale 4"):
        load_pretrained(path, scale=2)


def _without_the_last_conv(state):
    del state["body.8.weight"], state["body.8.bias"]


def _last_conv_of_5_channels(state):
    state.update({"body.8.weight": torch.zeros(5, 8, 3, 3), "body.8.bias": torch.zeros(5)})


def _grey_input(state):
    state["body.0.weight"] = state["body.0.weight"][:, :1]


@pytest.mark.parametrize("change,match", [
    (_without_the_last_conv, "ends with body.7: a compact network ends with its last conv at an even index"),
    (_last_conv_of_5_channels, "its last conv body.8 gives 5 channels, not 3·scale²"),
    (_grey_input, "1 input channels"),
])
def test_files_that_are_no_compact_network_are_refused(tmp_path, change, match):
    state = member(2).state_dict()  # body.0 .. body.8: 3 pairs
    change(state)
    with pytest.raises(CheckpointMismatch, match=match):
        load_pretrained(save(tmp_path, {"params": state}))


def test_a_block_of_several_pairs_is_the_same_plain_stack():
    grouped = member(2, n_b=2, n_l=3)
    assert grouped.structure() == (2, 3, 8) and len(grouped.body) == 2 + 2 * 6 + 1
    # a file does not tell the grouping: it loads as 6 blocks of one pair, the same network
    loaded = load_pretrained(grouped.state_dict())
    assert loaded.structure() == (6, 1, 8)
    x = torch.rand(1, 3, 5, 6)
    with torch.no_grad():
        assert torch.equal(loaded(x), grouped(x))
    assert grouped.with_structure(1, 1, 16).structure() == (1, 1, 16)


def test_the_deep_feature_module_is_the_pairs_between_the_first_and_the_last_conv():
    model = member(3, n_b=4)
    deep = {id(p) for p in model.deep_feature_parameters()}
    names = {n for n, p in model.named_parameters() if id(p) in deep}
    assert names == {f"body.{i}.{kind}" for i in range(2, 10, 2) for kind in ("weight", "bias")} | {
        f"body.{i}.weight" for i in range(3, 10, 2)}
    # the weights the density is measured on: the pairs' convs, N_b·N_c²·9
    assert sum(p.numel() for p in model.deep_feature_parameters() if p.dim() >= 2) == 4 * 8 * 8 * 9


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_c=0), "n_c must be an int >= 1, got 0"),
    (dict(n_b=0), "n_b must be an int >= 1, got 0"),
    (dict(n_l=0), "n_l must be an int >= 1, got 0"),
    (dict(scale=1), "scale must be an int >= 2, got 1"),
    (dict(scale=2.0), "scale must be an int >= 2, got 2.0"),
])
def test_knobs_out_of_bounds(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.Compact(**kwargs)


def compact_params(n_c, n_b, n_l, scale):
    return conv_params(3, n_c) + n_c + n_b * n_l * (conv_params(n_c, n_c) + n_c) + conv_params(n_c, 3 * scale ** 2)


@pytest.mark.parametrize("name", presets_of("compact"))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parameters_against_hand_count(name, scale):
    assert_hand_count(name, scale, compact_params)


def test_presets_and_the_models_command(capsys):
    assert meta_preset("compact").structure() == (32, 1, 64)
    assert models.count_params(meta_preset("compact", 4)) == 1_213_296
    # compact_mini is the compression rule's student of compact at d = 0.03
    assert compress_config(meta_preset("compact", 4), 0.03) == meta_preset("compact_mini").structure() == (18, 1, 16)
    assert main(["models", "--scale", "4"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[3:] if line.strip()}
    assert rows["compact"][1:6] == ["compact", "32", "1", "64", "1,213,296"]
    assert rows["compact_mini"][1:6] == ["compact", "18", "1", "16", "49,472"]


def test_a_member_keeps_its_structure_in_eval_upscale_and_export(tmp_path):
    check_model_file_in_eval_upscale_and_export(member(3, n_b=2, n_l=2), tmp_path)


def test_pth_export_is_real_esrgans_layout_with_the_mark(tmp_path, capsys):
    model = member(4)
    path = export(model, tmp_path / "student.pth")
    content = torch.load(path, weights_only=True)
    assert set(content) == {"params", "written_by"} and written_by_export(path)
    assert list(content["params"]) == list(model.state_dict())
    assert all(torch.equal(content["params"][k], v) for k, v in model.state_dict().items())
    assert spandrel_note(model, "pth") == "spandrel (chaiNNer, ComfyUI) opens it as Compact ×4"
    # the command says so
    model_file = save_model(tmp_path / "model.pt", model)
    assert main(["export", str(model_file), str(tmp_path / "out.pth")]) == 0
    assert capsys.readouterr().out.strip() == (f"wrote {tmp_path / 'out.pth'}; spandrel (chaiNNer, ComfyUI) opens "
                                               "it as Compact ×4")
