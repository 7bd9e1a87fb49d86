"""The teacher-output cache of distillation: alignment, augmentation, invalidation, bad input, repair, resume."""
import errno
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

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

from helpers.images import nearest_pairs, random_image

pytestmark = pytest.mark.usefixtures("one_thread")


class ConvTeacher(nn.Sequential):
    """Two 3x3 convolutions and a pixel shuffle: it looks 2 LR pixels away."""

    def __init__(self, seed=0, scale=2):
        torch.manual_seed(seed)
        super().__init__(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3 * scale ** 2, 3, padding=1),
                         nn.PixelShuffle(scale))
        self.scale = scale


def make_cache(folder, teacher, patches, **options):
    cache = TeacherCache(folder, teacher.eval(), patches, progress=False, **options)
    cache.prepare()
    patches.use_targets(cache)
    return cache


def test_cached_target_equals_the_per_patch_teacher_away_from_patch_borders(tmp_path):
    pairs = nearest_pairs(tmp_path / "data", [(40, 52), (33, 30)])
    patches = TrainingPatches(pairs, patch_size=16, augment=False, repeat=4, progress=False)
    teacher = ConvTeacher()
    # Tiles of 20 with overlap 8 (blending is exact for a reach of 8/4 = 2 pixels): the tiled pass is used.
    make_cache(tmp_path / "cache", teacher, patches, tile=20, overlap=8)
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
    make_cache(tmp_path / "cache", nn.Upsample(scale_factor=2, mode="nearest"), patches)
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
    first = make_cache(tmp_path / "cache", ConvTeacher(seed=0), patches)
    assert first.built == [0, 1] and all(p.is_file() for p in first.paths)
    again = make_cache(tmp_path / "cache", ConvTeacher(seed=0), patches)
    assert again.built == [] and again.paths == first.paths
    other = make_cache(tmp_path / "cache", ConvTeacher(seed=1), patches)
    assert other.built == [0, 1] and not set(other.paths) & set(first.paths)
    assert teacher_fingerprint(ConvTeacher(seed=0)) != teacher_fingerprint(ConvTeacher(seed=1))
    # A replaced image file (new content, new modification time) gets a new entry; the other is reused.
    image = pairs.pairs[1][1]
    write_image(image, random_image(20, 28, seed=9))
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    pairs = folder_dataset(tmp_path / "data", 2)
    patches = TrainingPatches(pairs, patch_size=12, repeat=2, progress=False)
    changed = make_cache(tmp_path / "cache", ConvTeacher(seed=0), patches)
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
        make_cache(blocker / "cache", teacher, patches)
    with monkeypatch.context() as patch:
        patch.setattr(teacher_cache.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 1000))
        with pytest.raises(TeacherCacheError, match=r"needs 0\.0\d* MiB in .* but only 0\.0 MiB are free"):
            make_cache(tmp_path / "cache", teacher, patches)
    cache = make_cache(tmp_path / "cache", teacher, patches)
    truncated, other = cache.paths
    content = truncated.read_bytes()
    truncated.write_bytes(content[: len(content) // 2])
    with pytest.raises(TeacherCacheError, match=f"entry {truncated} is truncated.*delete {truncated}"):
        make_cache(tmp_path / "cache", teacher, patches)
    truncated.write_bytes(content)
    record = json.loads(cache.record_path(other).read_text())
    cache.record_path(other).write_text(json.dumps({**record, "teacher": teacher_fingerprint(ConvTeacher(seed=5))}))
    with pytest.raises(TeacherCacheError, match=f"entry {other} is an entry of another teacher"):
        make_cache(tmp_path / "cache", teacher, patches)


def test_an_entry_damaged_during_training_is_never_used_and_is_rebuilt(tmp_path):
    pairs = nearest_pairs(tmp_path / "data", [(24, 24)])
    patches = TrainingPatches(pairs, patch_size=12, repeat=4, progress=False)
    teacher = ConvTeacher()
    cache = make_cache(tmp_path / "cache", teacher, patches)
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


# ------------------------------------------------------------------ safety under attack, concurrency and change
def _digests(paths):
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}


def _regular(path):
    return stat.S_ISREG(os.lstat(path).st_mode)


@pytest.mark.parametrize("planted", ["temporary names", "final names"])
def test_links_planted_at_every_predictable_name_are_never_written_through(tmp_path, planted):
    pairs = nearest_pairs(tmp_path / "data", [(24, 24), (20, 28)])
    patches = TrainingPatches(pairs, patch_size=12, progress=False)
    cache = TeacherCache(tmp_path / "cache", ConvTeacher().eval(), patches, progress=False)
    outside = tmp_path / "outside"
    outside.mkdir()
    cache.paths[0].parent.mkdir(parents=True)
    for path in cache.paths:
        names = ((cache.lock_path(path).name, f"{path.stem}.partial0.npy", f"{path.stem}.partial0.json")
                 if planted == "temporary names" else (path.name, cache.record_path(path).name))
        for name in names:
            victim = outside / name
            victim.write_bytes(b"not the cache's " + name.encode())
            (path.parent / name).symlink_to(victim)
    before = _digests(outside.iterdir())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache.prepare()
    assert _digests(outside.iterdir()) == before
    assert [str(w.message) for w in caught if "teacher cache" in str(w.message)] == (
        [] if planted == "temporary names" else
        [f"teacher cache: 2 unusable entries rebuilt (first {cache.paths[0]}: has "
         f"{cache.record_path(cache.paths[0]).name} as a symbolic link, not a file the cache wrote)"])
    assert cache.built == [0, 1]
    for image, path in enumerate(cache.paths):
        assert _regular(path) and _regular(cache.record_path(path)) and not os.path.lexists(cache.lock_path(path))
        assert cache.target(image) is not None


def test_a_link_planted_at_the_teacher_folder_of_the_cache_is_refused_and_never_followed(tmp_path):
    pairs = nearest_pairs(tmp_path / "data", [(24, 24), (20, 28)])
    patches = TrainingPatches(pairs, patch_size=12, progress=False)
    cache = TeacherCache(tmp_path / "cache", ConvTeacher().eval(), patches, progress=False)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / cache.record_path(cache.paths[0]).name).write_text("precious")
    cache.folder.mkdir()
    cache.paths[0].parent.symlink_to(outside)  # <cache>/<teacher key> -> a folder outside the cache
    before = _digests(outside.iterdir())
    with pytest.raises(TeacherCacheError, match="is a symbolic link, not a folder the cache made"):
        cache.prepare()
    assert _digests(outside.iterdir()) == before and cache.paths[0].parent.is_symlink()


def _build_in_rounds(root, rounds, barrier):
    patches = TrainingPatches(folder_dataset(root / "data", 2), patch_size=12, progress=False)
    for round_ in range(rounds):
        barrier.wait(timeout=120)  # the other process failed: fail too instead of waiting forever
        TeacherCache(root / "cache", ConvTeacher(seed=round_).eval(), patches, progress=False).prepare()


def test_two_processes_building_the_same_entries_in_one_folder_both_succeed(tmp_path):
    nearest_pairs(tmp_path / "data", [(40, 40), (36, 44), (44, 36), (40, 32)])
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    rounds = 4
    processes = [context.Process(target=_build_in_rounds, args=(tmp_path, rounds, barrier), daemon=True)
                 for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
        process.kill()
    assert [process.exitcode for process in processes] == [0, 0]
    patches = TrainingPatches(folder_dataset(tmp_path / "data", 2), patch_size=12, progress=False)
    for round_ in range(rounds):
        cache = make_cache(tmp_path / "cache", ConvTeacher(seed=round_), patches)
        assert cache.built == [] and all(cache.target(image) is not None for image in range(4))
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix not in (".npy", ".json")]


def test_an_image_replaced_with_its_size_and_modification_time_gets_a_new_entry(tmp_path):
    root = tmp_path / "data"
    lr = random_image(20, 24, seed=3)
    write_image(root / "HR" / "0000.bmp", lr.repeat_interleave(2, 1).repeat_interleave(2, 2))
    original = root / "LR_bicubic" / "X2" / "0000.bmp"
    write_image(original, lr)
    patches = TrainingPatches(folder_dataset(root, 2), patch_size=12, progress=False)
    assert make_cache(tmp_path / "cache", ConvTeacher(), patches).built == [0]
    # The colours inverted, the size and modification time kept, moved over the original (a new inode).
    old = original.stat()
    inverted = root / "inverted.bmp"
    write_image(inverted, 255 - lr)
    os.utime(inverted, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(inverted, original)
    new = original.stat()
    assert (new.st_size, new.st_mtime_ns) == (old.st_size, old.st_mtime_ns) and new.st_ino != old.st_ino
    patches = TrainingPatches(folder_dataset(root, 2), patch_size=12, progress=False)
    cache = make_cache(tmp_path / "cache", ConvTeacher(), patches)
    assert cache.built == [0]
    with torch.no_grad():
        expected = ConvTeacher()((255 - lr)[None].float() / 255)[0]
    assert torch.allclose(torch.from_numpy(np.asarray(cache.target(0), np.float32)), expected, atol=2e-3)


def _forge(cache, image, array):
    """Replace entry ``image``'s array, with a record whose checksum matches it."""
    path = cache.paths[image]
    np.save(path, array)
    record = json.loads(cache.record_path(path).read_text())
    cache.record_path(path).write_text(json.dumps({**record, "crc32": teacher_cache._checksum(array)}))


def test_entries_with_absurd_values_or_a_record_of_another_shape_are_rebuilt_with_one_warning(tmp_path):
    pairs = nearest_pairs(tmp_path / "data", [(24, 24), (20, 28), (28, 20)])
    patches = TrainingPatches(pairs, patch_size=12, progress=False)
    cache = make_cache(tmp_path / "cache", ConvTeacher(), patches)
    good = [np.load(path) for path in cache.paths]
    _forge(cache, 0, np.full_like(good[0], np.nan))
    _forge(cache, 1, np.full_like(good[1], -30000))
    cache.record_path(cache.paths[2]).write_text("[1, 2]")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = make_cache(tmp_path / "cache", ConvTeacher(), patches)
    assert [str(w.message) for w in caught if "teacher cache" in str(w.message)] == [
        f"teacher cache: 3 unusable entries rebuilt (first {cache.paths[0]}: holds values from nan to nan, "
        "outside [-1, 2])"]
    assert again.built == [0, 1, 2]
    assert all(np.array_equal(np.load(path), want) for path, want in zip(cache.paths, good))


def test_a_record_linked_to_dev_zero_and_a_fifo_entry_are_neither_read_nor_waited_for(tmp_path):
    pairs = nearest_pairs(tmp_path / "data", [(24, 24), (20, 28)])
    patches = TrainingPatches(pairs, patch_size=12, progress=False)
    cache = make_cache(tmp_path / "cache", ConvTeacher(), patches)
    record = cache.record_path(cache.paths[0])
    record.unlink()
    record.symlink_to("/dev/zero")
    cache.paths[1].unlink()
    os.mkfifo(cache.paths[1])

    def give_up(*_):
        raise TimeoutError("the cache blocked on a FIFO or kept reading /dev/zero")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(60)
    try:
        with pytest.warns(UserWarning, match="2 unusable entries rebuilt .* as a symbolic link"):
            again = make_cache(tmp_path / "cache", ConvTeacher(), patches)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert again.built == [0, 1]
    assert all(_regular(p) for path in cache.paths for p in (path, cache.record_path(path)))


@pytest.mark.parametrize("failure", ["numpy", "fsync"])
def test_a_full_disk_during_the_build_is_one_line_naming_the_folder_and_leaves_no_partial_files(
        tmp_path, capsys, monkeypatch, failure):
    data = tmp_path / "data"
    nearest_pairs(data, [(30, 36), (28, 28)])
    teacher, student, _ = _tiny_run(tmp_path)
    save_model(tmp_path / "teacher.pt", teacher)
    write_json(tmp_path / "student.json", {"student": model_spec(student)})
    folder = tmp_path / "cache"
    if failure == "numpy":
        def write_array(stream, array, **_):  # what ndarray.tofile raises on a full disk
            stream.write(b"\x93NUMPY" + bytes(100))
            raise OSError("problem writing element 18432")

        monkeypatch.setattr(np.lib.format, "write_array", write_array)
    else:
        real_fsync = os.fsync

        def fsync(descriptor):  # the disk fills up under the cache's files only
            if os.readlink(f"/proc/self/fd/{descriptor}").startswith(str(folder)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(descriptor)

        monkeypatch.setattr(os, "fsync", fsync)
    code = main(["distill", "--preset", "demo", "--teacher", str(tmp_path / "teacher.pt"), "--student",
                 str(tmp_path / "student.json"), "--data", str(data), "--iterations", "1", "--batch-size", "2",
                 "--patch-size", "12", "--no-progress", "--teacher-cache", str(folder), "--out",
                 str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1, error
    (entry_folder,) = folder.iterdir()
    reason = "problem writing element 18432" if failure == "numpy" else "No space left on device"
    assert f"writing the teacher cache in {entry_folder} failed ({reason}); the 2 missing entries need " in error
    assert "--teacher-cache DIR on another disk, or --teacher-cache off" in error
    assert list(entry_folder.iterdir()) == []


def test_cache_folder_turns_the_option_value_into_the_cache_setting(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real default folder (tests/conftest.py points it at pytest's temporary folder)
    monkeypatch.setenv("CDISM_CACHE", str(tmp_path / "home"))
    assert teacher_cache.cache_folder(None) == tmp_path / "home" / "teacher-outputs"
    assert teacher_cache.cache_folder("off") is None
    assert teacher_cache.cache_folder("OFF") is None and teacher_cache.cache_folder("Off ") is None
    with pytest.raises(TeacherCacheError, match=r"^--teacher-cache none: pass --teacher-cache off to run the "
                                                  r"teacher on every patch, or --teacher-cache \./none"):
        teacher_cache.cache_folder("none")
    assert teacher_cache.cache_folder("./none") == Path("none")
    assert teacher_cache.cache_folder(str(tmp_path / "elsewhere")) == tmp_path / "elsewhere"
    with pytest.raises(TeacherCacheError, match=r"^--teacher-cache '' names no folder; pass --teacher-cache DIR, "
                                                  r"or --teacher-cache off for the per-patch teacher$"):
        teacher_cache.cache_folder("")
    monkeypatch.setenv("CDISM_CACHE", "")
    with pytest.raises(TeacherCacheError, match="^the environment variable CDISM_CACHE is set but empty: set it to"):
        teacher_cache.cache_folder(None)


def test_the_lock_and_temporary_files_of_a_process_that_died_are_taken_over(tmp_path):
    pairs = nearest_pairs(tmp_path / "data", [(24, 24), (20, 28)])
    patches = TrainingPatches(pairs, patch_size=12, progress=False)
    cache = TeacherCache(tmp_path / "cache", ConvTeacher().eval(), patches, progress=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cache.paths[0].parent.mkdir(parents=True)
    cache.lock_path(cache.paths[0]).write_text(f"{dead.pid} {socket.gethostname()}")
    cache.lock_path(cache.paths[1]).write_text("")  # its owner died between creating and writing it
    os.utime(cache.lock_path(cache.paths[1]), (time.time() - 60, time.time() - 60))
    left_behind = cache.paths[0].parent / f".{cache.paths[0].name}.0123456789ab.partial"  # the dead build's
    left_behind.write_bytes(b"half an array")
    cache.prepare()
    assert cache.built == [0, 1] and not list(cache.paths[0].parent.glob("*.lock"))
    assert not os.path.lexists(left_behind)


def test_a_teacher_whose_output_leaves_the_sane_range_is_refused_naming_the_image(tmp_path):
    class Overshooting(nn.Module):
        def forward(self, x):
            return nn.functional.interpolate(x, scale_factor=2) * 10

    pairs = nearest_pairs(tmp_path / "data", [(24, 24)])
    patches = TrainingPatches(pairs, patch_size=12, progress=False)
    with pytest.raises(TeacherCacheError, match=r"^the teacher's output for 0000 holds values from 0\.0 to [\d.]+, "
                                                r"outside \[-1, 2\] in float16; check the teacher"):
        make_cache(tmp_path / "cache", Overshooting(), patches)
    assert list((tmp_path / "cache").rglob("*")) == [next((tmp_path / "cache").iterdir())]


def test_an_entry_locked_by_a_live_process_is_waited_for_and_the_wait_is_said(tmp_path, monkeypatch):
    pairs = nearest_pairs(tmp_path / "data", [(24, 24)])
    patches = TrainingPatches(pairs, patch_size=12, progress=False)
    cache = TeacherCache(tmp_path / "cache", ConvTeacher().eval(), patches, progress=False)
    lock = cache.lock_path(cache.paths[0])
    lock.parent.mkdir(parents=True)
    lock.write_text("1 another-host")  # a process of another machine: only it can release the lock
    monkeypatch.setattr(teacher_cache, "_LOCK_PATIENCE", 0.2)
    release = threading.Timer(1.0, lock.unlink)
    release.start()
    with pytest.warns(UserWarning, match=f"waiting for another process to build {cache.paths[0]} .*delete the lock"):
        cache.prepare()
    release.join()
    assert cache.built == [0] and cache.target(0) is not None


def test_a_folder_at_an_entry_name_is_refused_in_one_line_and_left_alone(tmp_path):
    pairs = nearest_pairs(tmp_path / "data", [(24, 24)])
    patches = TrainingPatches(pairs, patch_size=12, progress=False)
    cache = make_cache(tmp_path / "cache", ConvTeacher(), patches)
    path = cache.paths[0]
    path.unlink()
    (path / "kept").mkdir(parents=True)
    with pytest.raises(TeacherCacheError, match=f"^teacher cache entry {path} has {path.name} as a folder, not a file "
                                                f"the cache wrote; delete {path} and .*--teacher-cache off$"):
        make_cache(tmp_path / "cache", ConvTeacher(), patches)
    assert (path / "kept").is_dir()
