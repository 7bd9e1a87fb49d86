"""Files of the architectures spandrel detects are teachers: read after this package's own formats, run as spandrel
runs them (size requirements padded and cropped back), live and through the teacher-output cache, pruned over all
their weights, compressed into a family by size, and refused in one line when they cannot be teachers.

No weights of those architectures are on these machines: each test builds spandrel's own architecture class with
random weights (small configurations) and saves its state dict. Every test that needs spandrel is in a file
``tests/test_spandrel_*.py``; ``make spandrel-check`` runs them in a venv where spandrel imports (torch 2.14.1 +
torchvision 0.29.1 + spandrel 0.4.2), and elsewhere they skip with the reason.
"""
import json
import shutil

import numpy as np
import pytest
import torch

try:
    import spandrel
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.SPAN import SPAN
    from spandrel.architectures.SwinIR import SwinIR
except Exception as error:  # not installed, or torchvision built for another torch (it fails at import)
    pytest.skip(f"spandrel cannot be imported here ({type(error).__name__}: {error}); `make spandrel-check` runs "
                "these tests with torch 2.14.1 + torchvision 0.29.1 + spandrel 0.4.2", allow_module_level=True)

from cdism_fast.cli import main
from cdism_fast.compress import closest_structure
from cdism_fast.data import TrainingPatches
from cdism_fast.evaluation import load_model
from cdism_fast.models import Compact as OurCompact
from cdism_fast.models import ExternalModel, format_names, load_pretrained
from cdism_fast.models import SwinIR as OurSwinIR
from cdism_fast.training.teacher_cache import TeacherCache

from helpers.images import nearest_pairs, write_noise_images
from helpers.runs import one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")

#: Every spandrel architecture tested, as (name, builder of a small network at a scale).
ARCHITECTURES = {
    "ESRGAN": lambda scale: ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale),
    "Compact": lambda scale: Compact(num_feat=8, num_conv=2, upscale=scale),
    # Real-world SwinIR (nearest+conv upsampler): no layout of this package's SwinIR, so spandrel reads it.
    "SwinIR-real": lambda scale: SwinIR(embed_dim=12, depths=[1, 1], num_heads=[2, 2], window_size=4, mlp_ratio=2,
                                        upscale=scale, upsampler="nearest+conv", img_size=16),
    # Classical SwinIR: the official layout, which this package's SwinIR family reads first.
    "SwinIR-classical": lambda scale: SwinIR(embed_dim=12, depths=[1, 1], num_heads=[2, 2], window_size=4,
                                             mlp_ratio=2, upscale=scale, upsampler="pixelshuffle", img_size=16),
    "SPAN": lambda scale: SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=scale),
}
CASES = [(name, scale) for name in ARCHITECTURES for scale in (2, 4)]
#: An odd size that meets every tested architecture's size requirements (SwinIR: at least 16), and one below.
ODD_SIZE, SMALL_SIZE = (19, 17), (9, 7)
#: The fp32 comparison bound of the issue.
FP32_BOUND = 1e-5


def _network(name: str, scale: int, seed: int = 0) -> torch.nn.Module:
    """spandrel's own class with random weights, its last convolution scaled and its bias set so that the
    outputs lie around 0.5 (a teacher's range: the cache refuses others; and the comparisons are not of clamped
    values)."""
    torch.manual_seed(seed)
    net = ARCHITECTURES[name](scale).eval()
    last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    probe = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        last.bias.zero_()
        last.weight.mul_(0.1 / net(probe).std())  # a spread of about 0.1 (the input's own, for Compact, adds)
        last.bias.fill_(0.5 - net(probe).mean())  # every output pixel moves by the bias (also through a shuffle)
    return net


def _teacher_file(tmp_path, name: str, scale: int, net=None):
    net = net if net is not None else _network(name, scale)
    path = tmp_path / f"{name.lower()}_x{scale}.pth"
    torch.save(net.state_dict(), path)
    return path, spandrel.ModelLoader().load_from_file(path).eval()  # its network in eval mode (no drop path)


@pytest.mark.parametrize("name, scale", CASES)
def test_the_teacher_output_equals_spandrels(tmp_path, name, scale, capsys):
    path, descriptor = _teacher_file(tmp_path, name, scale)
    teacher = load_model(str(path), option="--teacher")
    ours = {"SwinIR-classical": OurSwinIR, "Compact": OurCompact}.get(name)  # families that read the file first
    ours_first = ours is not None
    assert isinstance(teacher, ours or ExternalModel) and teacher.scale == scale
    printed = capsys.readouterr().err
    if not ours_first:
        assert printed.count(f"spandrel {spandrel.__version__} detected {descriptor.architecture.name}") == 1
    x = torch.rand(1, 3, *ODD_SIZE)
    assert descriptor.size_requirements.check(ODD_SIZE[1], ODD_SIZE[0])
    with torch.no_grad():
        ours = teacher(x)
        network = descriptor.model(x)  # the network itself: no padding needed at this size, no clamp
    assert tuple(ours.shape) == (1, 3, ODD_SIZE[0] * scale, ODD_SIZE[1] * scale)
    assert (ours - network).abs().max().item() <= FP32_BOUND
    assert ((network > 0) & (network < 1)).float().mean() > 0.5  # not a comparison of clamped values
    assert (ours.clamp(0, 1) - descriptor(x)).abs().max().item() <= FP32_BOUND  # spandrel's call API
    if not ours_first:  # below SwinIR's minimum spandrel pads to 16 first; this package's SwinIR to its window
        small = torch.rand(1, 3, *SMALL_SIZE)
        with torch.no_grad():
            assert (teacher(small).clamp(0, 1) - descriptor(small)).abs().max().item() <= FP32_BOUND


@pytest.mark.parametrize("name, scale", CASES)
def test_the_teacher_cache_holds_spandrels_output_of_each_whole_image(tmp_path, name, scale):
    path, descriptor = _teacher_file(tmp_path, name, scale)
    pairs = nearest_pairs(tmp_path / "data", [ODD_SIZE, (17, 21)], scale=scale)
    patches = TrainingPatches(pairs, patch_size=8, augment=False, progress=False)
    cache = TeacherCache(tmp_path / "cache", load_pretrained(path), patches, progress=False)
    cache.prepare()
    for image in range(len(patches.names)):
        lr = torch.from_numpy(patches.lr_image(image)).float()[None] / 255
        with torch.no_grad():
            reference = descriptor.model(lr)[0].numpy()
        target = cache.target(image).astype(np.float32)
        # float16 storage: half an ulp of the value (2^-11 relative), beside the fp32 bound
        bound = FP32_BOUND + np.abs(reference) * 2.0 ** -11 + 2.0 ** -24
        assert target.shape == reference.shape and (np.abs(target - reference) <= bound).all(), (name, image)


def _t91_subset(shared_data, tmp_path, count=4):
    folder = tmp_path / "t91" / "HR"
    folder.mkdir(parents=True)
    for image in sorted((shared_data / "train" / "T91" / "HR").glob("*.png"))[:count]:
        shutil.copy(image, folder / image.name)
    return folder.parent


TINY = ["--batch-size", "2", "--patch-size", "16", "--no-progress", "--threads", "1", "--num-workers", "0"]


def test_distill_from_a_spandrel_teacher_on_t91_records_what_was_detected(shared_data, tmp_path, capsys):
    path, descriptor = _teacher_file(tmp_path, "ESRGAN", 2)
    data = _t91_subset(shared_data, tmp_path)
    out = tmp_path / "student"
    assert main(["distill", "--teacher", str(path), "--student", "edsr:2,1,8", "--data", str(data),
                 "--iterations", "20", *TINY, "--out", str(out)]) == 0
    assert capsys.readouterr().err.count("detected ESRGAN ×2") == 1
    stage = json.loads((out / "stage.json").read_text())
    assert stage["status"] == "completed" and stage["iteration"] == 20
    teacher = stage["settings"]["teacher"]
    assert teacher["external"] == "spandrel" and teacher["architecture"] == {"id": "ESRGAN", "name": "ESRGAN"}
    assert teacher["scale"] == 2 and teacher["tags"] == descriptor.tags
    assert teacher["params"] == sum(p.numel() for p in descriptor.model.parameters())
    assert teacher["size_requirements"] == {"minimum": descriptor.size_requirements.minimum,
                                            "multiple_of": descriptor.size_requirements.multiple_of,
                                            "square": descriptor.size_requirements.square}
    assert load_pretrained(out / "model.pt").structure() == (2, 1, 8)


def test_prune_of_a_spandrel_teacher_measures_its_density_over_all_weights(tmp_path, capsys):
    path, _ = _teacher_file(tmp_path, "SPAN", 4)
    nearest_pairs(tmp_path / "data", [(24, 24), (20, 28)], scale=4)
    out = tmp_path / "prune"
    assert main(["prune", "--teacher", str(path), "--data", str(tmp_path / "data"), "--iterations", "4", "--lr", "0.05",
                 "--lam", "0.5", *TINY, "--patch-size", "8", "--out", str(out)]) == 0
    assert "d is measured over all its" in capsys.readouterr().err
    report = json.loads((out / "density.json").read_text())
    pruned = load_pretrained(out / "model.pt")  # a model.pt of an external model: spandrel detects it again
    assert isinstance(pruned, ExternalModel) and pruned.record()["architecture"]["id"] == "SPAN"
    weights = [p for p in pruned.model.parameters() if p.dim() >= 2]
    measured = sum(int((p != 0).sum()) for p in weights) / sum(p.numel() for p in weights)
    assert report["density"] == pytest.approx(measured) and 0 < report["density"] < 1
    assert report["deep_feature_module"].startswith("all weights") and report["model"]["scale"] == 4
    # stage 2 from that density: the EDSR structure whose weights are closest to d times the teacher's
    assert main(["compress", "--teacher", str(out / "model.pt"), "--density", str(out / "density.json"),
                 "--student-family", "edsr", "--out", str(tmp_path / "c")]) == 0
    student = json.loads((tmp_path / "c" / "student.json").read_text())
    target = report["density"] * sum(p.numel() for p in weights)
    assert tuple(student["structure"].values()) == closest_structure("edsr", target, "weights", scale=4)


def test_compress_params_picks_the_closest_structure_for_a_spandrel_teacher(tmp_path, capsys):
    path, _ = _teacher_file(tmp_path, "SPAN", 2)
    assert main(["compress", "--teacher", str(path), "--params", "30000", "--student-family", "imdn",
                 "--out", str(tmp_path / "c")]) == 0
    student = json.loads((tmp_path / "c" / "student.json").read_text())
    assert student["student"]["family"] == "imdn" and student["teacher"]["architecture"]["id"] == "SPAN"
    assert tuple(student["structure"].values()) == closest_structure("imdn", 30_000, "params", scale=2)
    assert student["size_rule"]["target"] == 30_000 and "target 30,000" in capsys.readouterr().out


def _refused(capsys, command: str, argv: list, out) -> str:
    """The one line of a command refused before it wrote anything (its --out is not made)."""
    if "--data" not in argv:
        argv = [*argv, "--data", str(write_noise_images(out.parent / "images", 2))]
    assert main([command, *argv, "--out", str(out)]) == 2
    assert not out.exists()
    return one_error_line(capsys, command)


def test_a_model_that_is_not_rgb_is_refused_naming_the_file(tmp_path, capsys):
    net = ESRGAN(in_nc=1, out_nc=1, num_filters=8, num_blocks=1, scale=2)
    path, _ = _teacher_file(tmp_path, "ESRGAN", 2, net)
    line = _refused(capsys, "distill", ["--teacher", str(path), "--student", "edsr_mini"], tmp_path / "s")
    assert f"checkpoint {path} (spandrel: ESRGAN) maps 1 input channels to 1" in line
    assert "pass an RGB model" in line


def test_a_restoration_model_given_to_an_sr_student_is_refused(tmp_path, capsys):
    path, _ = _teacher_file(tmp_path, "Compact", 1, Compact(num_feat=8, num_conv=2, upscale=1))
    line = _refused(capsys, "distill", ["--teacher", str(path), "--student", "edsr_mini"], tmp_path / "s")
    assert f"checkpoint {path} (spandrel: RealESRGAN Compact) is a ×1 restoration model: it does not upscale" in line
    assert "pass a super-resolution model" in line


def test_a_teacher_of_another_scale_than_asked_is_refused(tmp_path, capsys):
    path, _ = _teacher_file(tmp_path, "SPAN", 4)
    line = _refused(capsys, "prune", ["--teacher", str(path), "--scale", "2"], tmp_path / "p")
    assert "is a ×4 model, not ×2: pass --scale 4 or drop --scale" in line


def test_run_with_a_spandrel_teacher_needs_the_students_family_before_anything_is_written(tmp_path, capsys):
    path, _ = _teacher_file(tmp_path, "ESRGAN", 2)
    nearest_pairs(tmp_path / "data", [(24, 24)], scale=2)
    data = str(tmp_path / "data")
    line = _refused(capsys, "run", ["--teacher", str(path), "--data", data, "--val", data],
                    tmp_path / "run")
    assert "is of no cdism_fast family" in line and "pass --student-family with one of carn, compact, edsr" in line


def test_a_file_neither_reads_lists_our_formats_and_what_spandrel_said(tmp_path, capsys):
    path = tmp_path / "restormer_like.pth"
    torch.save({"patch_embed.proj.weight": torch.zeros(48, 3, 3, 3),
                "encoder_level1.0.attn.qkv.weight": torch.zeros(144, 48, 1, 1)}, path)
    line = _refused(capsys, "distill", ["--teacher", str(path), "--student", "edsr_mini"], tmp_path / "s")
    assert all(name in line for name in format_names().split(", "))
    assert f"spandrel {spandrel.__version__} did not detect it either" in line
    assert "spandrel_extra_arches" in line
