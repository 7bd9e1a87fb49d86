"""Models of no family (cdism_fast.models.external) without spandrel: the size-requirement padding and cropping,
the teacher-output cache over such a model, pruning one, and the refusals when spandrel is absent or broken.

What needs spandrel itself (its architectures' files as teachers) is in tests/test_spandrel_teachers.py.
"""
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from cdism_fast.cli import main
from cdism_fast.data import TrainingPatches
from cdism_fast.models import ExternalModel, SizeRequirements, build, format_names, load_pretrained, pad_to_size
from cdism_fast.models import external as external_module
from cdism_fast.training.stages import CompressOptions, StageSettings, compress, prune
from cdism_fast.training.teacher_cache import TeacherCache

from helpers.images import nearest_pairs, write_noise_images
from helpers.runs import one_error_line
from tolerances import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")


class SizeCheckingNet(nn.Module):
    """Two convolutions and a pixel shuffle that refuse inputs outside their size requirements (as a windowed
    architecture fails on them) and remember the sizes they saw."""

    def __init__(self, needs: SizeRequirements, scale: int = 2):
        super().__init__()
        self.needs, self.seen = needs, []
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3 * scale ** 2, 3, padding=1),
                                  nn.PixelShuffle(scale))
        with torch.no_grad():  # outputs near the input's range
            self.body[2].weight.mul_(0.1)

    def forward(self, x):
        height, width = x.shape[-2:]
        self.seen.append((height, width))
        assert min(height, width) >= self.needs.minimum and height % self.needs.multiple_of == 0
        assert width % self.needs.multiple_of == 0 and (height == width or not self.needs.square)
        return self.body(x)


def _independent_pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bottom/right padding by index: mirrored over the first n - 1 new rows (columns), then the last padded row
    repeated (reflect, then replicate of the reflected image)."""
    def index(i: int, n: int) -> int:
        if i < n:
            return i
        return 2 * (n - 1) - i if i <= 2 * (n - 1) else 0

    rows = [index(i, x.shape[-2]) for i in range(height)]
    cols = [index(j, x.shape[-1]) for j in range(width)]
    return x[..., rows, :][..., cols]


@pytest.mark.parametrize("size", [(1, 1), (1, 6), (5, 3), (4, 4), (7, 2)])
@pytest.mark.parametrize("target", [(8, 8), (9, 12), (16, 7)])
def test_pad_to_size_reflects_as_far_as_the_image_allows_then_replicates(size, target):
    x = torch.rand(2, 3, *size)
    assert torch.equal(pad_to_size(x, *target), _independent_pad(x, *target))


@pytest.mark.parametrize("needs", [SizeRequirements(), SizeRequirements(minimum=16), SizeRequirements(multiple_of=4),
                                   SizeRequirements(minimum=12, multiple_of=8), SizeRequirements(multiple_of=2,
                                                                                                 square=True)])
@pytest.mark.parametrize("scale", [2, 4])
def test_the_input_is_padded_to_the_requirements_and_the_output_cropped_back(needs, scale):
    net = SizeCheckingNet(needs, scale)
    model = ExternalModel(net, scale, size_requirements=needs).eval()
    x = torch.rand(2, 3, 13, 7)
    with torch.no_grad():
        out = model(x)
        height, width = needs.padded_size(13, 7)
        expected = net.body(_independent_pad(x, height, width))[..., : 13 * scale, : 7 * scale]
    assert net.seen[-1] == (height, width) and tuple(out.shape) == (2, 3, 13 * scale, 7 * scale)
    assert_close(out, expected)
    if needs.none:
        assert net.seen[-1] == (13, 7)


def test_the_teacher_cache_of_an_external_model_equals_the_model_run_on_each_whole_image(tmp_path):
    """The cache runs the teacher through upscale's tiling: the wrapper's padding applies to every tile, and a
    whole image within one tile gives the model's own output (to float16)."""
    pairs = nearest_pairs(tmp_path / "data", [(13, 11), (9, 17)])
    patches = TrainingPatches(pairs, patch_size=8, augment=False, progress=False)
    needs = SizeRequirements(minimum=16, multiple_of=4)
    teacher = ExternalModel(SizeCheckingNet(needs), 2, size_requirements=needs).eval()
    cache = TeacherCache(tmp_path / "cache", teacher, patches, progress=False)
    cache.prepare()
    for image in range(len(patches.names)):
        lr = torch.from_numpy(patches.lr_image(image)).float()[None] / 255
        with torch.no_grad():
            direct = teacher(lr)[0]
        assert_close(torch.from_numpy(cache.target(image).copy()).float(), direct.half().float(), torch.float16)


def test_prune_of_an_external_model_measures_the_density_over_all_its_weights(tmp_path, capsys):
    data = write_noise_images(tmp_path / "train", 2, size=(24, 24))
    teacher = ExternalModel(SizeCheckingNet(SizeRequirements()), 2, info={"architecture": {"id": "t", "name": "T"}})
    settings = StageSettings(iterations=3, batch_size=2, patch_size=8, lr=0.05, progress=False, num_workers=0)
    result = prune(teacher, tmp_path / "prune", settings, data=str(data), val=[str(data)])
    report = json.loads((tmp_path / "prune" / "density.json").read_text())
    weights = [p for p in result.model.parameters() if p.dim() >= 2]
    nonzero = sum(int((p != 0).sum()) for p in weights) / sum(p.numel() for p in weights)
    assert report["density"] == pytest.approx(nonzero) and report["density"] == report["all_weights"]
    assert report["deep_feature_module"].startswith("all weights")
    stage = json.loads((tmp_path / "prune" / "stage.json").read_text())
    assert stage["settings"]["teacher"]["architecture"] == {"id": "t", "name": "T"}
    assert "measured over all its 1,080 weights" in capsys.readouterr().err


def test_compress_of_a_teacher_of_no_family_needs_the_students_family(tmp_path):
    teacher = ExternalModel(SizeCheckingNet(SizeRequirements()), 2)
    with pytest.raises(ValueError, match="pass --student-family with one of carn, compact, edsr"):
        compress(teacher, 0.5, tmp_path / "c")
    assert not (tmp_path / "c").exists()
    result = compress(teacher, None, tmp_path / "c", CompressOptions(student_family="pan", params=3000))
    assert result.model.family == "pan" and result.extra["size_rule"]["measure"] == "params"
    assert result.extra["teacher_structure"] is None and result.extra["table"][0]["n_b"] is None


def _unknown_file(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"some_net.conv.weight": torch.zeros(4, 3, 3, 3)}, path)
    return path


def test_a_file_of_no_format_names_ours_and_that_spandrel_is_not_installed(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "spandrel", None)  # as if absent, also where it is installed
    path = _unknown_file(tmp_path)
    with pytest.raises(ValueError) as error:
        load_pretrained(path)
    message = str(error.value)
    assert all(name in message for name in format_names().split(", "))
    assert "spandrel" in message and "is not installed: pip install 'cdism_fast[spandrel]'" in message
    data = write_noise_images(tmp_path / "data", 1)
    assert main(["eval", "--model", str(path), "--data", str(data)]) == 2
    assert "is not installed: pip install 'cdism_fast[spandrel]'" in one_error_line(capsys, "eval")


def test_a_broken_spandrel_install_is_named_with_a_torch_and_torchvision_pair(tmp_path, monkeypatch):
    class BrokenImports:
        @staticmethod
        def import_module(name):
            raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(external_module, "importlib", BrokenImports)
    monkeypatch.setattr("cdism_fast.optional.available", lambda module: True)
    with pytest.raises(ValueError, match="spandrel is installed but cannot be imported .*RuntimeError: operator "
                                         "torchvision::nms does not exist.*torch 2.14.1 with torchvision 0.29.1"):
        load_pretrained(_unknown_file(tmp_path))


def test_a_file_of_ours_never_imports_spandrel(tmp_path):
    path = tmp_path / "edsr.pth"
    torch.save(build("edsr_mini").state_dict(), path)
    code = ("import sys, cdism_fast, cdism_fast.cli, cdism_fast.workflow; from cdism_fast.evaluation import "
            f"load_model; load_model({str(path)!r}); print('spandrel' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
