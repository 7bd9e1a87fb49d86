"""The PAN family (Zhao et al. 2020): the published file and its numbers, every scale of the official
layout, the knobs and their bounds, the hand count."""
import pytest
import torch

from cdism_fast import models
from cdism_fast.models import CheckpointMismatch, load_pretrained

from model_references import (
    assert_hand_count,
    check_model_file_in_eval_upscale_and_export,
    conv_params,
    meta_preset,
    presets_of,
    published_size,
    randomize,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_published_file_loads_with_weights_only(shared_data):
    pan_file = shared_data / "weights" / "PANx2_DF2K.pth"
    pan = load_pretrained(pan_file, scale=2)
    assert type(pan) is models.PAN and models.preset_of("pan", pan.config()) == "pan"
    assert models.count_params(pan) == 261_403
    with pytest.raises(CheckpointMismatch, match="does not tell ×2 from ×3.*pass --scale 2 or 3"):
        load_pretrained(pan_file)
    with pytest.raises(CheckpointMismatch, match="upconv2"):  # a x2 file is not a x4 PAN
        load_pretrained(pan_file, scale=4)


def test_published_parameters_and_macs():
    """Zhao et al. 2020: 261K parameters (the published PANx2_DF2K.pth), 70.5G Multi-Adds at 1280x720 (x2)."""
    assert published_size("pan") == (261_403, 70.5)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_official_files_of_every_scale(tmp_path, scale):
    pan = randomize(models.build("pan", scale=scale))
    torch.save(pan.state_dict(), tmp_path / "pan.pth")
    loaded = load_pretrained(tmp_path / "pan.pth", scale=scale) if scale != 4 else load_pretrained(tmp_path / "pan.pth")
    assert loaded.config() == pan.config() and hasattr(loaded, "upconv2") == (scale == 4)
    x = torch.rand(1, 3, 6, 7)
    with torch.no_grad():
        assert torch.equal(loaded(x), pan.eval()(x))


def test_generalised_knobs():
    pan = models.from_structure("pan", n_c=12, n_l=3, n_b=2, scale=4, unf=8)
    assert len([m for m in pan.SCPA_trunk[0].k1 if isinstance(m, torch.nn.Conv2d)]) == 3
    assert pan(torch.rand(1, 3, 5, 4)).shape == (1, 3, 20, 16)
    deep = {id(p) for p in pan.deep_feature_parameters()}
    assert {n for n, p in pan.named_parameters() if id(p) in deep} == {
        n for n, _ in pan.named_parameters() if n.startswith(("SCPA_trunk.", "trunk_conv."))}
    assert pan.with_structure(1, 1, 8).structure() == (1, 1, 8)
    assert pan.with_structure(1, 1, 8).unf == 8


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_c=41), "n_c must be a multiple of 2 \\(an SC-PA block splits its channels in halves\\), got 41"),
    (dict(scale=5), "scale must be one of \\(2, 3, 4\\) for PAN's U-PA reconstruction, got 5"),
    (dict(unf=0), "unf must be an int >= 1"),
    (dict(n_b=-1), "n_b must be an int >= 1"),
])
def test_knobs_out_of_bounds(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.PAN(**kwargs)


def pan_params(n_c, n_b, n_l, unf, scale):
    half = n_c // 2
    block = 2 * n_c * half + n_l * 9 * half * half + conv_params(half, half, 1) + 2 * 9 * half * half + n_c * n_c
    steps = 2 if scale == 4 else 1
    reconstruction = conv_params(n_c, unf) + (steps - 1) * conv_params(unf, unf) \
        + steps * (conv_params(unf, unf, 1) + conv_params(unf, unf)) + conv_params(unf, 3)
    return conv_params(3, n_c) + n_b * block + conv_params(n_c, n_c) + reconstruction


@pytest.mark.parametrize("name", presets_of("pan"))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parameters_against_hand_count(name, scale):
    assert_hand_count(name, scale, pan_params)


def test_a_member_with_other_options_keeps_them_in_eval_upscale_and_export(tmp_path):
    model = randomize(models.from_structure("pan", 2, 2, 8, 4, unf=6)).eval()
    check_model_file_in_eval_upscale_and_export(model, tmp_path)


def test_preset_structure():
    assert meta_preset("pan").structure() == (16, 1, 40)
