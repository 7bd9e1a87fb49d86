"""The teacher-output cache of distillation: alignment, augmentation, invalidation, bad input, repair, resume."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from cdism_fast.cli import main
from cdism_fast.data import TrainingPatches, folder_dataset, training_loader, write_image
from cdism_fast.training import teacher_cache
from cdism_fast.training.artifacts import model_spec, save_model, write_json
from cdism_fast.training.checkpoint import load_checkpoint
from cdism_fast.training.stages import DistillOptions, StageSettings, distill
from cdism_fast.training.teacher_cache import TeacherCache, TeacherCacheError, teacher_fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_image(height, width, seed):
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def nearest_pairs(root, sizes, scale=2):
    """HR = nearest-neighbour upscale of LR (so a nearest-upsampling "teacher" outputs exactly HR)."""
    for i, (height, width) in enumerate(sizes):
        lr = _random_image(height, width, seed=i)
        write_image(root / "HR" / f"{i:04d}.png", lr.repeat_interleave(scale, 1).repeat_interleave(scale, 2))
        write_image(root / "LR_bicubic" / f"X{scale}" / f"{i:04d}.png", lr)
    return folder_dataset(root, scale)


class ConvTeacher(nn.Sequential):
    """Two 3x3 convolutions and a pixel shuffle: it looks 2 LR pixels away."""

    def __init__(self, seed=0, scale=2):
        torch.manual_seed(seed)
        super().__init__(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3 * scale ** 2, 3, padding=1),
                         nn.PixelShuffle(scale))
        self.scale = scale


def make_cache(folder, teacher, patches, pairs, **options):
    cache = TeacherCache(folder, teacher.eval(), patches, pairs, progress=False, **options)
    cache.prepare()
    patches.use_targets(cache)
    return cache


def test_cached_target_equals_the_per_patch_teacher_away_from_patch_borders(tmp_path):
    pairs = nearest_pairs(tmp_path / "data", [(40, 52), (33, 30)])
    patches = TrainingPatches(pairs, patch_size=16, augment=False, repeat=4, progress=False)
    teacher = ConvTeacher()
    # Tiles of 20 with overlap 8 (blending is exact for a reach of 8/4 = 2 pixels): the tiled pass is used.
    make_cache(tmp_path / "cache", teacher, patches, pairs, tile=20, overlap=8)
    border = 2 * 2 * pairs.scale  # the reach, in HR pixels, and a margin
    for index in range(len(patches)):
        lr, hr, target = patches[index]
        assert target.dtype == torch.float16 and target.shape == hr.shape
        with torch.no_grad():
            live = teacher(lr[None].float() / 255)[0]
        inner = (slice(None), slice(border, -border), slice(border, -border))
        difference = (target.float() - live)[inner].abs()
        # float16 rounding: half an ulp, 2^-11 relative (and fp32 summation order)
        assert (difference <= live[inner].abs() * 2 ** -11 + 1e-6).all(), float(difference.max())
        # ...and at the patch border the whole-image output differs: it saw the neighbouring pixels.
        assert not torch.allclose(target.float()[:, :1], live[:, :1], atol=1e-2)


def test_flips_and_transposes_are_applied_to_lr_hr_and_target_alike(tmp_path):
    pairs = nearest_pairs(tmp_path / "data", [(40, 52), (30, 33)])
    patches = TrainingPatches(pairs, patch_size=16, repeat=40, progress=False)
    plain = [patches[i] for i in range(len(patches))]
    make_cache(tmp_path / "cache", nn.Upsample(scale_factor=2, mode="nearest"), patches, pairs)
    orientations = set()
    for index in range(len(patches)):
        lr, hr, target = patches[index]
        assert torch.equal(lr, plain[index][0]) and torch.equal(hr, plain[index][1])  # the same draws as before
        assert torch.equal((target.float() * 255).round().to(torch.uint8), hr)
        orientations.add(tuple(int(v) for v in np.random.default_rng((0, 0, index)).integers(0, 2, size=3)))
    assert len(orientations) == 8
    batches = list(training_loader(patches, batch_size=8, num_workers=2, seed=1))  # workers map the entries
    assert all(len(batch) == 3 and torch.equal((batch[2].float() * 255).round().to(torch.uint8), batch[1])
               for batch in batches)


def test_entries_are_reused_and_invalidated_by_a_changed_teacher_or_image(tmp_path):
    pairs = nearest_pairs(tmp_path / "data", [(24, 24), (20, 28)])
    patches = TrainingPatches(pairs, patch_size=12, repeat=2, progress=False)
    first = make_cache(tmp_path / "cache", ConvTeacher(seed=0), patches, pairs)
    assert first.built == [0, 1] and all(p.is_file() for p in first.paths)
    again = make_cache(tmp_path / "cache", ConvTeacher(seed=0), patches, pairs)
    assert again.built == [] and again.paths == first.paths
    other = make_cache(tmp_path / "cache", ConvTeacher(seed=1), patches, pairs)
    assert other.built == [0, 1] and not set(other.paths) & set(first.paths)
    assert teacher_fingerprint(ConvTeacher(seed=0)) != teacher_fingerprint(ConvTeacher(seed=1))
    # A replaced image file (new content, new modification time) gets a new entry; the other is reused.
    image = pairs.pairs[1][1]
    write_image(image, _random_image(20, 28, seed=9))
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    pairs = folder_dataset(tmp_path / "data", 2)
    patches = TrainingPatches(pairs, patch_size=12, repeat=2, progress=False)
    changed = make_cache(tmp_path / "cache", ConvTeacher(seed=0), patches, pairs)
    assert changed.built == [1] and changed.paths[0] == first.paths[0] and changed.paths[1] != first.paths[1]
    with torch.no_grad():
        expected = ConvTeacher(seed=0)(torch.from_numpy(patches.lr_image(1).copy())[None].float() / 255)[0]
    assert torch.allclose(torch.from_numpy(np.load(changed.paths[1]).astype(np.float32)), expected, atol=2e-3)


def test_bad_folder_entry_or_disk_fail_before_training_with_the_path_and_the_fix(tmp_path, monkeypatch):
    pairs = nearest_pairs(tmp_path / "data", [(24, 24), (20, 28)])
    patches = TrainingPatches(pairs, patch_size=12, progress=False)
    teacher = ConvTeacher()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(TeacherCacheError, match=f"folder {blocker}/.* is not writable.*--teacher-cache"):
        make_cache(blocker / "cache", teacher, patches, pairs)
    with monkeypatch.context() as patch:
        patch.setattr(teacher_cache.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 1000))
        with pytest.raises(TeacherCacheError, match=r"needs 0\.0\d* MiB in .* but only 0\.0 MiB are free"):
            make_cache(tmp_path / "cache", teacher, patches, pairs)
    cache = make_cache(tmp_path / "cache", teacher, patches, pairs)
    truncated, other = cache.paths
    content = truncated.read_bytes()
    truncated.write_bytes(content[: len(content) // 2])
    with pytest.raises(TeacherCacheError, match=f"entry {truncated} is truncated.*delete {truncated}"):
        make_cache(tmp_path / "cache", teacher, patches, pairs)
    truncated.write_bytes(content)
    record = json.loads(cache.record_path(other).read_text())
    cache.record_path(other).write_text(json.dumps({**record, "teacher": teacher_fingerprint(ConvTeacher(seed=5))}))
    with pytest.raises(TeacherCacheError, match=f"entry {other} is an entry of another teacher"):
        make_cache(tmp_path / "cache", teacher, patches, pairs)


def test_an_entry_damaged_during_training_is_never_used_and_is_rebuilt(tmp_path):
    pairs = nearest_pairs(tmp_path / "data", [(24, 24)])
    patches = TrainingPatches(pairs, patch_size=12, repeat=4, progress=False)
    teacher = ConvTeacher()
    cache = make_cache(tmp_path / "cache", teacher, patches, pairs)
    good = [patches[i] for i in range(4)]
    path = cache.paths[0]
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[-100:] = b"\x00" * 100  # same size, other values: only the checksum tells
    path.write_bytes(bytes(damaged))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    lr, hr, target = (torch.stack(parts) for parts in zip(*(patches[i] for i in range(4))))
    assert target.isnan().all()  # the damaged entry is not read
    with pytest.warns(UserWarning, match="1 damaged entry found during training"):
        used = cache.targets_for(target, lr.float() / 255)
    with torch.no_grad():
        assert torch.equal(used, teacher(lr.float() / 255))  # the live teacher stood in
    assert path.read_bytes() == original  # rebuilt, bit for bit
    assert all(torch.equal(patches[i][2], good[i][2]) for i in range(4))


def _tiny_run(tmp_path):
    from cdism_fast.models import build

    torch.manual_seed(0)
    teacher = build("edsr_baseline", scale=2).with_structure(2, 1, 16)
    student = build("edsr_baseline", scale=2).with_structure(1, 1, 8)
    settings = StageSettings(iterations=4, batch_size=2, patch_size=12, lr=1e-3, checkpoint_every=0, log_every=1,
                             progress=False)
    return teacher, student, settings


def test_distill_uses_the_cache_by_default_and_resumes_bit_identically(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real default folder (tests/conftest.py points it at pytest's temporary folder)
    monkeypatch.setenv("CDISM_CACHE", str(tmp_path / "home-cache"))
    data = tmp_path / "data"
    nearest_pairs(data, [(30, 36), (28, 28)])
    teacher, student, settings = _tiny_run(tmp_path)
    straight = distill(teacher, student, tmp_path / "straight", settings, data=data)
    (entry_folder,) = (tmp_path / "home-cache" / "teacher-outputs").iterdir()
    entries = sorted(entry_folder.glob("*.npy"))
    assert len(entries) == 2
    built_at = [p.stat().st_mtime_ns for p in entries]
    distill(teacher, student, tmp_path / "resumed", settings.replace(iterations=2), data=data)
    resumed = distill(teacher, student, tmp_path / "resumed", settings, data=data, resume=True)
    assert [p.stat().st_mtime_ns for p in entries] == built_at  # reused, not rebuilt
    for got, want in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(got, want)
    live = distill(teacher, student, tmp_path / "live", settings, DistillOptions(teacher_cache="off"), data=data)
    assert any(not torch.equal(a, b) for a, b in zip(live.model.state_dict().values(),
                                                     straight.model.state_dict().values()))
    checkpoint = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    assert checkpoint["metadata"]["teacher_cache"] == str(tmp_path / "home-cache" / "teacher-outputs")


def test_distill_command_reports_a_bad_cache_folder_in_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    nearest_pairs(data, [(30, 36)])
    teacher, student, _ = _tiny_run(tmp_path)
    save_model(tmp_path / "teacher.pt", teacher)
    write_json(tmp_path / "student.json", {"student": model_spec(student)})
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = main(["distill", "--preset", "demo", "--teacher", str(tmp_path / "teacher.pt"), "--student",
                 str(tmp_path / "student.json"), "--data", str(data), "--iterations", "1", "--batch-size", "2",
                 "--patch-size", "12", "--no-progress", "--teacher-cache", str(blocker / "cache"),
                 "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert f"teacher cache folder {blocker}/cache" in error and "--teacher-cache off" in error
