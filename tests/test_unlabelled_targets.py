"""Training on unlabelled images (--targets teacher): the LR-only data set and its patches, the held-back images,
the loss without a ground-truth term, targets equal to the teacher's output (cached and live), resume, validation
against the teacher, the run and its report, and the refusals (one line, exit 2, nothing written)."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import cdism_fast.ops
import cdism_fast.training.engine as engine
import cdism_fast.training.stages.stage3_distill as stage3
from cdism_fast.cli import build_parser, main
from cdism_fast.data import (
    LRFolderDataset,
    TrainingPatches,
    hold_back,
    read_image,
    training_loader,
    unlabelled_dataset,
)
from cdism_fast.evaluation import upscale
from cdism_fast.metrics import psnr
from cdism_fast.models import build
from cdism_fast.ops import distillation_loss
from cdism_fast.training import read_log
from cdism_fast.training.artifacts import read_stage, save_model
from cdism_fast.training.stages import (
    DistillOptions,
    PruneOptions,
    StageSettings,
    distill,
    prune,
    teacher_only_loss,
    unlabelled_split,
)
from cdism_fast.workflow import run_workflow

from helpers.images import write_smooth_images
from helpers.runs import one_error_line
from tolerances import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(iterations=3, **changes):
    values = dict(iterations=iterations, batch_size=2, patch_size=12, lr=1e-3, checkpoint_every=0, log_every=1,
                  progress=False)
    return StageSettings(**{**values, **changes})


def nearest():
    """A ×2 teacher that repeats each pixel: its output on a patch is exactly the patch of its output on the image
    (no border effects, flip-equivariant), so every target can be checked exactly."""
    return nn.Upsample(scale_factor=2, mode="nearest")


def tiny_teacher(scale=2):
    torch.manual_seed(0)
    return build("edsr_baseline", scale=scale).with_structure(1, 1, 8)


@pytest.fixture
def images(tmp_path):
    """Four 40x48 unlabelled images img0..img3."""
    return write_smooth_images(tmp_path / "photos", 4, seed=3)


# ------------------------------------------------------------------------------------------------ the data set
def test_unlabelled_images_are_lr_inputs_as_they_are_greyscale_read_as_rgb(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (18, 22), dtype=np.uint8)
    Image.fromarray(colour).save(folder / "a.png")
    Image.fromarray(grey, mode="L").save(folder / "b.png")  # one channel, as Set14's bridge.png
    dataset = unlabelled_dataset(folder, 3)
    assert isinstance(dataset, LRFolderDataset) and dataset.lr_only and dataset.scale == 3 and len(dataset) == 2
    first, second = dataset[0], dataset[1]
    assert first.hr is None and second.hr is None and (first.name, second.name) == ("a", "b")
    assert torch.equal(first.lr, torch.from_numpy(colour).permute(2, 0, 1))  # no degradation, no crop
    assert second.lr.shape == (3, 18, 22) and all(torch.equal(second.lr[c], torch.from_numpy(grey)) for c in range(3))
    # a dataset root: its HR folder's images, as --data reads it with --targets hr
    root = write_smooth_images(tmp_path / "T" / "HR", 2, seed=1).parent
    assert [p.name for p in unlabelled_dataset(root, 2).paths] == ["img0.png", "img1.png"]
    combined = unlabelled_dataset([folder, root], 3)
    assert combined.lr_only and len(combined) == 4 and combined.cache_key(2) != combined.cache_key(0)


def test_held_back_images_are_spread_over_the_sorted_list_and_never_trained_on(images):
    dataset = unlabelled_dataset(images, 2)
    train, held = hold_back(dataset, 1)
    assert [dataset[i].name for i in held.indices] == ["img2"] and held.name == "photos held back"
    assert [train[i].name for i in range(len(train))] == ["img0", "img1", "img3"] and train.lr_only
    many = LRFolderDataset([images / f"img{i % 4}.png" for i in range(20)], 2)
    assert hold_back(many, 4)[1].indices == [2, 7, 12, 17]
    assert len(hold_back(dataset, 0)[1]) == 0
    train, held = unlabelled_split(images, 2)  # unset: a tenth, at least one
    assert len(held) == 1 and len(train) == 3
    with pytest.raises(ValueError, match=r"are 4, too few to hold back 4 .* \(at most 3; --holdout 0 holds none"):
        hold_back(dataset, 4)


def test_patches_of_unlabelled_images_carry_the_lr_patch_and_the_target_cut_alike(images):
    class Targets:  # the nearest-upscaled image, as a teacher cache would hold it
        def target(self, image):
            lr = torch.from_numpy(np.ascontiguousarray(patches.lr_image(image))).float() / 255
            return nearest()(lr[None])[0].numpy().astype(np.float16)

    patches = TrainingPatches(unlabelled_dataset(images, 2), patch_size=12, repeat=30, progress=False)
    plain = [patches[i] for i in range(len(patches))]
    assert all(len(sample) == 1 and sample[0].shape == (3, 12, 12) and sample[0].dtype == torch.uint8
               for sample in plain)
    patches.use_targets(Targets())
    for index in range(len(patches)):
        lr, target = patches[index]
        assert torch.equal(lr, plain[index][0])  # the same draws as without targets
        assert target.shape == (3, 24, 24) and target.dtype == torch.float16
        assert torch.equal((target[:, ::2, ::2].float() * 255).round().to(torch.uint8), lr)  # same place, flips
    (batch,) = list(training_loader(patches, batch_size=8, num_workers=0, seed=1))[:1]
    assert len(batch) == 2 and batch[0].shape == (8, 3, 12, 12) and batch[1].shape == (8, 3, 24, 24)


def test_images_smaller_than_the_lr_patch_are_skipped_with_one_warning(images, tmp_path, recwarn):
    Image.fromarray(np.zeros((8, 30, 3), np.uint8)).save(images / "tiny.png")
    teacher = tmp_path / "teacher.pt"
    save_model(teacher, tiny_teacher())
    assert main(["distill", "--preset", "demo", "--teacher", str(teacher), "--student", "edsr:1,1,4", "--data",
                 str(images), "--targets", "teacher", "--iterations", "1", "--batch-size", "2", "--patch-size", "12",
                 "--teacher-cache", "off", "--no-progress", "--out", str(tmp_path / "s")]) == 0
    # img2 is held back; img0, img1, img3 and tiny are the training images
    assert [str(w.message) for w in recwarn if "skipped" in str(w.message)] == [
        "1 of 4 images of photos are smaller than the 12x12 LR patch and are skipped: tiny"]


# ------------------------------------------------------------------------------------------------ distillation
def test_the_loss_has_no_ground_truth_term():
    student, target = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)
    for anything in (torch.zeros_like(target), torch.rand_like(target)):
        assert_close(teacher_only_loss(student, target, "sum"),
                     distillation_loss(student, target, anything, alpha=0.0, reduction="sum"))
    assert float(teacher_only_loss(target, target)) == 0.0


def test_distillation_on_teacher_targets_never_uses_alpha_or_the_ground_truth_loss(images, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("distillation_loss (with its alpha * L_stu term) was called")

    monkeypatch.setattr(cdism_fast.ops, "distillation_loss", refuse)
    results = [distill(nearest(), "edsr:1,1,4", tmp_path / f"a{alpha}", tiny(3),
                       DistillOptions(targets="teacher", alpha=alpha, teacher_cache="off"), data=images)
               for alpha in (0.1, 5.0)]
    for first, second in zip(*(r.model.state_dict().values() for r in results)):
        assert torch.equal(first, second)  # alpha changes nothing: there is no alpha term
    record = read_stage(tmp_path / "a0.1")
    assert record["settings"]["loss"].startswith("L_dis alone")
    (start,) = read_log(tmp_path / "a0.1" / "log.jsonl", "start")
    assert "the alpha * L_stu term is dropped" in start["note"]


@pytest.mark.parametrize("cache", ["cache", "off"])
def test_each_target_is_the_teachers_output_on_the_lr_patch(images, tmp_path, monkeypatch, cache):
    batches, targets = [], []
    forward = engine.Trainer._forward_loss

    def record_batch(self, batch):
        batches.append([part.clone() for part in batch])
        return forward(self, batch)

    def record_target(student, target, reduction="mean"):
        targets.append(target.detach().clone())
        return teacher_only_loss(student, target, reduction)

    monkeypatch.setattr(engine.Trainer, "_forward_loss", record_batch)
    monkeypatch.setattr(stage3, "teacher_only_loss", record_target)
    options = DistillOptions(targets="teacher", teacher_cache=str(tmp_path / "c") if cache == "cache" else "off")
    distill(nearest(), "edsr:1,1,4", tmp_path / "s", tiny(4), options, data=images)
    assert len(batches) == len(targets) == 4
    for batch, target in zip(batches, targets):
        assert len(batch) == (2 if cache == "cache" else 1)  # no HR patch: (lr, cached target) or lr alone
        expected = nearest()(batch[0].float() / 255)
        if cache == "cache":
            assert torch.equal(target, batch[1].float())
            assert_close(target, expected, dtype=torch.float16)  # float16 entries
        else:
            assert torch.equal(target, expected)
    if cache == "cache":  # entries of the three training images only: the held-back one is never trained on
        assert len(list((tmp_path / "c").rglob("*.npy"))) == 3


def test_a_resumed_run_on_teacher_targets_is_bit_identical(images, tmp_path):
    options = DistillOptions(targets="teacher", teacher_cache=str(tmp_path / "c"))
    straight = distill(tiny_teacher(), "edsr:1,1,4", tmp_path / "straight", tiny(4), options, data=images)
    distill(tiny_teacher(), "edsr:1,1,4", tmp_path / "resumed", tiny(2), options, data=images)
    resumed = distill(tiny_teacher(), "edsr:1,1,4", tmp_path / "resumed", tiny(4), options, data=images, resume=True)
    for got, want in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(got, want)
    assert [r["iteration"] for r in read_log(tmp_path / "resumed" / "log.jsonl", "start")] == [0, 2]


def test_validation_is_psnr_against_the_teachers_output_on_the_held_back_images(images, tmp_path):
    teacher = tiny_teacher()
    result = distill(teacher, "edsr:1,1,4", tmp_path / "s", tiny(2),
                     DistillOptions(targets="teacher", teacher_cache="off"), data=images)
    record = read_stage(tmp_path / "s")
    assert record["settings"]["held_back"] == ["img2"] and record["settings"]["holdout"] == 1
    assert "not against a ground truth" in record["settings"]["validation_reference"]
    validation = record["validation"]
    assert set(validation) == {"iteration", "psnr_vs_teacher", "ssim_vs_teacher"}  # no ground-truth score
    lr = read_image(images / "img2.png")
    expected = psnr(upscale(result.model, lr, 2), upscale(teacher, lr, 2, tile=256), 2, True)
    assert validation["psnr_vs_teacher"] == pytest.approx(expected, abs=1e-9)
    (logged,) = read_log(tmp_path / "s" / "log.jsonl", "validation")
    assert logged["psnr_vs_teacher"] == validation["psnr_vs_teacher"]


@pytest.mark.parametrize("scale", [3, 4])
def test_teacher_targets_at_every_scale_of_the_teacher(images, tmp_path, scale):
    options = DistillOptions(targets="teacher", teacher_cache=str(tmp_path / "c"))
    result = distill(tiny_teacher(scale), "edsr:1,1,4", tmp_path / "s", tiny(2), options, data=images)
    assert result.status == "completed" and result.model.scale == scale
    assert np.isfinite(result.validation["psnr_vs_teacher"])
    entries = sorted((tmp_path / "c").rglob("*.npy"))  # the teacher's whole-image outputs, at its scale
    assert len(entries) == 3 and all(np.load(p).shape == (3, 40 * scale, 48 * scale) for p in entries)


# ------------------------------------------------------------------------------------------------ pruning
def test_pruning_on_teacher_targets_fine_tunes_the_teacher_against_its_own_output(images, tmp_path):
    teacher = tiny_teacher()
    # At λ = 0 the live target is the pruned copy's own output, so every Charbonnier gradient is zero.
    unchanged = prune(teacher, tmp_path / "p0", tiny(2, lr=1e-2),
                      PruneOptions(targets="teacher", teacher_cache="off", lam=0.0, n_p=2), data=images)
    for got, want in zip(unchanged.model.state_dict().values(), teacher.state_dict().values()):
        assert torch.equal(got, want)
    pruned = prune(teacher, tmp_path / "p1", tiny(3, lr=1e-2),
                   PruneOptions(targets="teacher", teacher_cache=str(tmp_path / "c"), lam=0.5, n_p=2), data=images)
    assert pruned.extra["density"]["density"] < 1.0  # the l1 penalty zeroes weights
    record = read_stage(tmp_path / "p1")
    assert record["settings"]["targets"] == "teacher" and record["settings"]["held_back"] == ["img2"]
    assert {"psnr_vs_teacher", "ssim_vs_teacher"} <= set(record["validation"])
    assert len(list((tmp_path / "c").rglob("*.npy"))) == 3


# ------------------------------------------------------------------------------------------------ the run
def test_run_on_teacher_targets_reports_psnr_against_the_teacher_and_trains_no_twin(images, tmp_path, capsys):
    teacher = tmp_path / "teacher.pt"
    save_model(teacher, tiny_teacher())
    cache = tmp_path / "cache"
    assert main(["run", "--preset", "demo", "--teacher", str(teacher), "--data", str(images), "--targets", "teacher",
                 "--iterations", "2", "--batch-size", "2", "--patch-size", "12", "--teacher-cache", str(cache),
                 "--no-progress", "--threads", "1", "--out", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    assert not (run / "student_no_kd").exists()
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["vs_teacher"]["images"] == ["img2"]
    assert "vs_teacher" not in evaluation["models"]["teacher"]  # the reference itself
    for name in ("pruned", "student", "bicubic"):
        entry = evaluation["models"][name]
        assert entry["psnr"] is None and entry["sets"] == {} and np.isfinite(entry["vs_teacher"]["psnr"])
    markdown = (run / "report.md").read_text()
    assert "## Against the teacher's output (held-back images, no ground truth)" in markdown
    assert "PSNR against the teacher is not PSNR against a ground truth" in markdown
    out = capsys.readouterr().out
    assert "PSNR vs teacher" in out and "(reference)" in out
    entries = sorted(cache.rglob("*.npy"))
    assert len(entries) == 3  # built once by pruning, reused by distillation (the same teacher and images)
    assert len(read_log(run / "student" / "log.jsonl", "start")) == 1


def test_run_with_a_ground_truth_set_scores_both(images, tmp_path):
    val = write_smooth_images(tmp_path / "val", 1, seed=9)
    result = run_workflow("demo", tmp_path / "run", data=images, val=[val], teacher=tiny_teacher(), progress=False,
                          settings_overrides=dict(iterations=1, batch_size=2, patch_size=12),
                          option_overrides=dict(targets="teacher", teacher_cache="off"))
    student = result.evaluation["models"]["student"]
    assert np.isfinite(student["psnr"]) and list(student["sets"]) == ["val"]
    assert np.isfinite(student["vs_teacher"]["psnr"])


# ------------------------------------------------------------------------------------------------ refusals
def _options_of(command) -> set:
    (sub,) = [a for a in build_parser()._actions if getattr(a, "choices", None) and command in a.choices]
    return {s for action in sub.choices[command]._actions for s in action.option_strings}


def _refused(capsys, argv, tmp_path) -> str:
    """The one line of a refusal (exit 2) that left ``tmp_path`` as it was, every option it names one of the
    command's."""
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    line = one_error_line(capsys, argv[0])  # beside it, run may note that matplotlib is missing
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", line)) <= _options_of(argv[0])
    return line


TINY = ["--preset", "demo", "--iterations", "1", "--batch-size", "2", "--patch-size", "12", "--no-progress"]


@pytest.fixture
def teacher_file(tmp_path):
    path = tmp_path / "teacher.pt"
    save_model(path, tiny_teacher())
    return path


@pytest.mark.parametrize("command, extra, message", [
    ("distill", ["--student", "edsr_mini", "--no-kd"],
     "--targets teacher trains on the teacher's outputs, so there is no ground truth to train the --no-kd ablation "
     "on; drop --no-kd, or pass --targets hr with HR images in --data (nothing was written)"),
    ("run", ["--teacher", "{teacher}", "--no-kd-baseline"],
     "--no-kd-baseline trains the student on the ground truth, which --targets teacher has none of; drop "
     "--no-kd-baseline, or pass --targets hr with HR images in --data (nothing was written)"),
    ("run", [],
     "--targets teacher trains on the teacher's outputs: pass --teacher FILE (without it stage 0 trains a teacher "
     "on HR images, which --targets teacher has none of)"),
    ("run", ["--teacher", "{teacher}", "--holdout", "0"],
     "no evaluation images: pass --val DIR (e.g. Set5) when training on your own --data, or keep --holdout above 0 "
     "to evaluate against the teacher"),
])
def test_what_has_no_ground_truth_is_refused_in_one_line(images, teacher_file, tmp_path, capsys, command, extra,
                                                         message):
    extra = [word.format(teacher=teacher_file) for word in extra]
    line = _refused(capsys, [command, *TINY, *extra, "--data", str(images), "--targets", "teacher", "--teacher-cache",
                             str(tmp_path / "cache"), "--out", str(tmp_path / "out")], tmp_path)
    assert line == f"cdism-fast {command}: error: {message}"


@pytest.mark.parametrize("command", ["prune", "distill", "run"])
def test_too_few_images_to_hold_back_is_refused_naming_holdout(images, teacher_file, tmp_path, capsys, command):
    student = ["--student", "edsr_mini"] if command == "distill" else []
    line = _refused(capsys, [command, *TINY, "--teacher", str(teacher_file), *student, "--data", str(images),
                             "--targets", "teacher", "--holdout", "4", "--teacher-cache", str(tmp_path / "cache"),
                             "--out", str(tmp_path / "out")], tmp_path)
    assert line == (f"cdism-fast {command}: error: the training images (photos) are 4, too few to hold back 4 for "
                    "validation and train on the rest; add images, or pass a smaller --holdout (at most 3; "
                    "--holdout 0 holds none back)")


@pytest.mark.parametrize("command", ["prune", "distill", "run"])
def test_a_teacher_of_another_scale_than_scale_is_refused_naming_scale(images, teacher_file, tmp_path, capsys,
                                                                        command):
    student = ["--student", "edsr_mini"] if command == "distill" else []
    line = _refused(capsys, [command, *TINY, "--teacher", str(teacher_file), "--scale", "3", *student, "--data",
                             str(images), "--targets", "teacher", "--out", str(tmp_path / "out")], tmp_path)
    assert line == (f"cdism-fast {command}: error: {teacher_file} holds a ×2 model, not ×3; pass --scale 2 or drop "
                    "--scale")
