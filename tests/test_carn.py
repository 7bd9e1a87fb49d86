"""The CARN family (Ahn et al. 2018): the released multi-scale CARN-M file (one scale's model out of it, the
scales it holds, its numbers), the cascade, group convolutions and sharing against an independent float64
formulation on the official layout, the knobs and their bounds, the hand count, a teacher and student in the
commands."""
import json

import pytest
import torch
import torch.nn.functional as F

from cdism_fast import models
from cdism_fast.cli import main
from cdism_fast.data import folder_dataset
from cdism_fast.evaluation import evaluate, upscale
from cdism_fast.metrics import psnr
from cdism_fast.models import CheckpointMismatch, load_pretrained
from cdism_fast.report import PUBLISHED

from helpers.images import write_noise_images
from helpers.runs import one_error_line
from model_references import (
    assert_hand_count,
    check_model_file_in_eval_upscale_and_export,
    conv_params,
    meta_preset,
    presets_of,
    published_size,
    randomize,
)
from tolerances import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)
#: ``cdism-fast eval --model carn_m.pth --scale 2 --data .../Set5`` on the released file (Y, border 2).
CARN_M_SET5_X2_MEASURED = (37.6784, 0.95948)


# --- an independent formulation on the official layout -------------------------------------------------------------

def official_forward(sd, x, scale):
    """CARN / CARN-M from the paper, on a state dict in the official (multi-scale) names, in float64: mean-shift
    1x1 convs, entry, the cascade of cascading blocks (each a cascade of (efficient) residual blocks, one shared
    block where the file has only ``b<i>.b1``), the ×``scale`` upsampler ``upsample.up<scale>``, exit."""
    def conv(prefix, y):
        w = sd[prefix + ".weight"].double()
        return F.conv2d(y, w, sd[prefix + ".bias"].double(), padding=w.shape[-1] // 2, groups=y.shape[1] // w.shape[1])

    def residual(prefix, y):
        inner = torch.relu(conv(prefix + ".body.0", y))
        if prefix + ".body.4.weight" in sd:  # efficient: gconv3, ReLU, gconv3, ReLU, conv1
            inner = conv(prefix + ".body.4", torch.relu(conv(prefix + ".body.2", inner)))
        else:
            inner = conv(prefix + ".body.2", inner)
        return torch.relu(y + inner)

    def cascading(prefix, y, unit, count):
        concatenated = output = y
        for j in range(1, count + 1):
            concatenated = torch.cat([concatenated, unit(j, output)], dim=1)
            output = torch.relu(conv(f"{prefix}c{j}.body.0", concatenated))
        return output

    n_b = sum(1 for k in sd if k.endswith(".c1.body.0.weight") and k.startswith("b"))
    n_l = sum(1 for k in sd if k.startswith("b1.c") and k.endswith(".body.0.weight"))

    def block(i, y):
        shared = f"b{i}.b2.body.0.weight" not in sd
        return cascading(f"b{i}.", y, lambda j, z: residual(f"b{i}.b{1 if shared else j}", z), n_l)

    y = conv("entry", conv("sub_mean.shifter", x.double()))
    y = cascading("", y, block, n_b)
    steps = [(0, 3)] if scale == 3 else [(3 * k, 2) for k in range(scale.bit_length() - 1)]
    for index, factor in steps:
        y = F.pixel_shuffle(torch.relu(conv(f"upsample.up{scale}.body.{index}", y)), factor)
    return conv("add_mean.shifter", conv("exit", y))


def mean_shifts(dtype=torch.float32):
    """The official mean-shift convs; in float64 for the formulation (a file's float32 bias is the mean, 0.4488 ...,
    rounded to float32, and the model keeps the mean itself in float64)."""
    eye = torch.eye(3, dtype=dtype).view(3, 3, 1, 1)
    mean = torch.tensor(DIV2K_MEAN, dtype=dtype)
    return {"sub_mean.shifter.weight": eye.clone(), "sub_mean.shifter.bias": -mean,
            "add_mean.shifter.weight": eye.clone(), "add_mean.shifter.bias": mean.clone()}


def multi_scale_file(path, scales=(2, 3, 4), **structure):
    """A file in the released layout: one random body, an upsampler per scale, the mean shifts."""
    config = dict(n_c=8, n_b=2, n_l=2, **structure)
    body = randomize(models.CARN(scale=scales[0], **config)).state_dict()
    state = {k: v for k, v in body.items() if not k.startswith("upsample.")}
    for scale in scales:
        upsampler = randomize(models.CARN(scale=scale, **config)).state_dict()
        state.update({k.replace("upsample.up.", f"upsample.up{scale}.", 1): v
                      for k, v in upsampler.items() if k.startswith("upsample.")})
    torch.save({**mean_shifts(), **state}, path)
    return path


# --- the released file ------------------------------------------------------------------------------------------

def test_the_released_file_gives_one_model_per_scale_with_its_upsampler(shared_data):
    carn_file = shared_data / "weights" / "carn_m.pth"
    raw = torch.load(carn_file, map_location="cpu", weights_only=True)  # a legacy pickle of CUDA tensors
    assert len(raw) == 58 and sum(v.numel() for v in raw.values()) == 414_811  # 24 of them the mean shifts
    x = torch.rand(1, 3, 9, 11, dtype=torch.float64)
    for scale in (2, 3, 4):
        model = load_pretrained(carn_file, scale=scale)
        assert type(model) is models.CARN and models.preset_of("carn", model.config()) == "carn_m"
        assert model.config() == dict(scale=scale, **models.ARCHITECTURES["carn_m"].config, rgb_mean=DIV2K_MEAN)
        kept = {k for k in model.state_dict() if k.startswith("upsample.")}
        assert kept == {k.replace(f"upsample.up{scale}.", "upsample.up.", 1) for k in raw
                        if k.startswith(f"upsample.up{scale}.")}
        assert torch.equal(model.upsample.up.body[0].weight, raw[f"upsample.up{scale}.body.0.weight"])
        assert models.count_params(model) == carn_params(scale=scale, **models.ARCHITECTURES["carn_m"].config)
        with torch.no_grad():
            assert_close(model.double()(x), official_forward({**raw, **mean_shifts(torch.float64)}, x, scale))


def test_the_released_file_scores_as_measured_on_set5_x2_and_its_published_numbers_truncate(shared_data):
    """The package's protocol (outputs rounded to uint8, as BasicSR) measures 37.6784 dB; the published 37.53 is that
    of the official test script's saved images, which truncate (``mul(255).clamp(0, 255).byte()``)."""
    model = load_pretrained(shared_data / "weights" / "carn_m.pth", scale=2)
    result = evaluate(model, shared_data / "benchmarks" / "Set5", 2, progress=False)
    print(f"\nCARN-M x2 Set5: PSNR_Y {result['psnr']:.4f}, SSIM_Y {result['ssim']:.5f}")
    assert (result["psnr"], result["ssim"]) == pytest.approx(CARN_M_SET5_X2_MEASURED, abs=5e-5)
    truncated = []
    for lr, hr, _ in folder_dataset(shared_data / "benchmarks" / "Set5", 2):
        output = upscale(model, lr.float() / 255, 2)  # float, unclamped
        truncated.append(psnr(output.mul(255).clamp(0, 255).to(torch.uint8), hr, 2))
    published_psnr = PUBLISHED["CARN-M"]["sets"]["Set5"][0]
    print(f"truncated outputs: PSNR_Y {sum(truncated) / len(truncated):.4f} (published {published_psnr})")
    assert sum(truncated) / len(truncated) == pytest.approx(published_psnr, abs=0.05)
    assert result["psnr"] - published_psnr > 0.1  # rounding instead of truncating: the gap the docs explain


def test_published_parameters_and_macs():
    """Ahn et al. 2018: 91.2G (CARN-M) and 222.8G (CARN) Mult-Adds at x2, 1280x720; their 412K and 1,592K are the
    multi-scale files (three upsamplers); a x2 model keeps one."""
    assert published_size("carn_m") == (257_027, 91.2)
    assert published_size("carn") == (964_163, 222.8)
    with torch.device("meta"):
        upsamplers = {s: models.count_params(models.build("carn", scale=s).upsample) for s in (2, 3, 4)}
    assert 964_163 - upsamplers[2] + sum(upsamplers.values()) == 1_591_939  # + 24 mean-shift values: 1,591,963


# --- multi-scale files, their scales, the commands ---------------------------------------------------------------

@pytest.mark.parametrize("structure", [dict(), dict(group=2, efficient=False, shared=False)], ids=["carn_m", "carn"])
def test_a_multi_scale_file_at_each_of_its_scales_against_the_formulation(tmp_path, structure):
    path = multi_scale_file(tmp_path / "multi.pth", **structure)
    raw = torch.load(path, weights_only=True)
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    for scale in (2, 3, 4):
        model = load_pretrained(path, scale=scale)
        assert model.config() == {**models.CARN().config(), **structure, "scale": scale, "n_c": 8, "n_b": 2, "n_l": 2}
        with torch.no_grad():
            assert_close(model.double()(x), official_forward({**raw, **mean_shifts(torch.float64)}, x, scale))


def test_a_multi_scale_file_without_a_scale_or_with_one_it_lacks_is_refused_in_one_line(tmp_path, capsys):
    path = multi_scale_file(tmp_path / "multi.pth", scales=(2, 4))
    with pytest.raises(CheckpointMismatch) as refused:
        load_pretrained(path)
    assert str(refused.value) == (f"checkpoint {path} (CARN) is one model for ×2, ×4 (an upsampler per scale): "
                                  "pass --scale 2 or 4 (scale= in Python)")
    with pytest.raises(CheckpointMismatch, match=r"has upsamplers for ×2, ×4 only, not ×3: pass --scale 2 or 4$"):
        load_pretrained(path, scale=3)
    with pytest.raises(CheckpointMismatch, match="not ×3"):
        load_pretrained(path, name="carn_m", scale=3)
    data = write_noise_images(tmp_path / "set" / "HR", 1, size=(24, 24)).parent
    assert main(["eval", "--model", str(path), "--data", str(data), "--device", "cpu"]) == 2
    assert one_error_line(capsys, "eval").endswith("is one model for ×2, ×4 (an upsampler per scale): pass --scale 2 "
                                                   "or 4 (scale= in Python)")
    assert main(["eval", "--model", str(path), "--data", str(data), "--device", "cpu", "--scale", "3"]) == 2
    assert one_error_line(capsys, "eval").endswith("has upsamplers for ×2, ×4 only, not ×3: pass --scale 2 or 4")
    assert main(["eval", "--model", str(path), "--data", str(data), "--device", "cpu", "--scale", "4"]) == 0


def test_a_multi_scale_teacher_at_x3_and_a_carn_student_in_distill(tmp_path, noise_images):
    teacher = multi_scale_file(tmp_path / "teacher.pth")
    train, val = noise_images
    assert main(["distill", "--teacher", str(teacher), "--scale", "3", "--student", "carn:1,2,4", "--data", str(train),
                 "--val", str(val), "--out", str(tmp_path / "s"), "--iterations", "1", "--batch-size", "2",
                 "--patch-size", "12", "--workers", "0", "--no-progress", "--threads", "1"]) == 0
    student = load_pretrained(tmp_path / "s" / "model.pt")
    assert type(student) is models.CARN and student.config() == models.from_structure("carn", 1, 2, 4, 3).config()
    record = json.loads((tmp_path / "s" / "stage.json").read_text())
    assert record["settings"]["teacher"]["family"] == "carn" and record["settings"]["teacher"]["config"]["scale"] == 3


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_single_scale_official_files_tell_their_scale(tmp_path, scale):
    carn = randomize(models.build("carn", scale=scale, n_c=8, n_b=2))
    torch.save({**mean_shifts(), **carn.state_dict()}, tmp_path / "carn.pth")
    loaded = load_pretrained(tmp_path / "carn.pth")
    assert loaded.config() == carn.config()
    x = torch.rand(1, 3, 4, 5)
    with torch.no_grad():
        assert torch.equal(loaded(x), carn.eval()(x))


def test_inconsistent_mean_shifts_are_refused(tmp_path):
    state = {**mean_shifts(), **models.build("carn_m").state_dict()}
    state["add_mean.shifter.bias"] = torch.tensor([0.5, 0.4, 0.4])
    with pytest.raises(CheckpointMismatch, match="the mean shifts must subtract and add one mean"):
        load_pretrained(state)
    other = {**mean_shifts(), **models.build("carn_m").state_dict()}
    other["sub_mean.shifter.bias"] = -torch.tensor([0.5, 0.4, 0.3])
    other["add_mean.shifter.bias"] = torch.tensor([0.5, 0.4, 0.3])
    assert load_pretrained(other).rgb_mean == (0.5, 0.4, 0.3)


# --- structure ----------------------------------------------------------------------------------------------------

def calls_per_forward(model, x):
    counts = {}
    blocks = (models.carn.ResidualBlock, models.carn.EfficientResidualBlock)

    def count(name):
        return lambda module, inputs, output: counts.__setitem__(name, counts.get(name, 0) + 1)

    handles = [module.register_forward_hook(count(name)) for name, module in model.named_modules()
               if isinstance(module, blocks)]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return counts


def test_carn_m_has_group_convolutions_and_one_shared_block_per_cascading_block():
    model = models.CARN(n_c=16, n_b=2, n_l=3).eval()
    assert [name for name, _ in model.b1.named_children()] == ["b1", "c1", "c2", "c3"]
    groups = {name: m.groups for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert {name for name, g in groups.items() if g == 4} == {
        "b1.b1.body.0", "b1.b1.body.2", "b2.b1.body.0", "b2.b1.body.2", "upsample.up.body.0"}
    assert calls_per_forward(model, torch.rand(1, 3, 4, 4)) == {"b1.b1": 3, "b2.b1": 3}
    # the cascade: unit j's fusion takes j + 1 maps of N_c channels
    assert [model.b1.get_submodule(f"c{j}").body[0].in_channels for j in (1, 2, 3)] == [32, 48, 64]
    assert [model.get_submodule(f"c{i}").body[0].in_channels for i in (1, 2)] == [32, 48]


def test_carn_has_plain_residual_blocks_each_once():
    model = models.build("carn", n_c=8, n_l=2).eval()
    assert [name for name, _ in model.b1.named_children()] == ["b1", "b2", "c1", "c2"]
    assert all(m.groups == 1 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert calls_per_forward(model, torch.rand(1, 3, 4, 4)) == {f"b{i}.b{j}": 1 for i in (1, 2, 3) for j in (1, 2)}


def test_the_deep_feature_module_is_the_cascade():
    model = models.CARN(n_c=8, n_b=2, n_l=2)
    deep = {id(p) for p in model.deep_feature_parameters()}
    assert {n for n, p in model.named_parameters() if id(p) in deep} == {
        n for n, _ in model.named_parameters() if n.startswith(("b1.", "b2.", "c1.", "c2."))}
    student = model.with_structure(1, 1, 12)
    assert (student.structure(), student.group, student.shared, student.efficient) == ((1, 1, 12), 4, True, True)
    assert models.from_structure("carn", 3, 3, 64).config() == models.build("carn_m").config()


def carn_params(n_c, n_b, n_l, group, efficient, shared, scale, rgb_mean=None):
    grouped = 9 * n_c * (n_c // group) + n_c
    residual = 2 * grouped + conv_params(n_c, n_c, 1) if efficient else 2 * conv_params(n_c, n_c)
    fusions = sum(conv_params((j + 1) * n_c, n_c, 1) for j in range(1, n_l + 1))
    block = (1 if shared else n_l) * residual + fusions
    factors = [3] if scale == 3 else [2] * (scale.bit_length() - 1)
    upsampler = sum(9 * n_c // group * r * r * n_c + r * r * n_c for r in factors)
    return (conv_params(3, n_c) + n_b * block + sum(conv_params((i + 1) * n_c, n_c, 1) for i in range(1, n_b + 1))
            + upsampler + conv_params(n_c, 3))


@pytest.mark.parametrize("name", presets_of("carn"))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parameters_against_hand_count(name, scale):
    assert_hand_count(name, scale, carn_params)


def test_preset_structure():
    assert meta_preset("carn_m").structure() == meta_preset("carn").structure() == (3, 3, 64)
    assert meta_preset("carn_m").channel_multiple() == 4 and meta_preset("carn").channel_multiple() == 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_c=30), "n_c must be a multiple of 4 \\(the group convolutions split the channels into group = 4 groups\\)"
                   ", got 30"),
    (dict(group=0), "group must be an int >= 1, got 0"),
    (dict(n_l=0), "n_l must be an int >= 1"),
    (dict(n_b=-1), "n_b must be an int >= 1"),
    (dict(scale=5), "scale must be a power of 2 or 3 for the CARN upsampler, got 5"),
    (dict(shared="yes"), "shared must be True or False, got 'yes'"),
    (dict(efficient=1), "efficient must be True or False, got 1"),
])
def test_knobs_out_of_bounds(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.CARN(**kwargs)


def test_a_member_with_other_options_keeps_them_in_eval_upscale_and_export(tmp_path):
    model = randomize(models.from_structure("carn", 2, 2, 6, 3, group=2, efficient=False, shared=False)).eval()
    check_model_file_in_eval_upscale_and_export(model, tmp_path)
