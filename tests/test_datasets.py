"""Folders in both layouts, bad input, training patches, and the built-in images."""
import importlib.util
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import cdism_fast.data.io as image_io
from cdism_fast.data import (
    BUILTIN_SPLITS,
    HRFolderDataset,
    PairedFolderDataset,
    TrainingPatches,
    builtin_dataset,
    builtin_image_paths,
    folder_dataset,
    imresize,
    read_image,
    resolve_layout,
    training_loader,
    write_image,
)

from helpers.images import nearest_pairs, random_image


def _write_set(root, stems_and_sizes, scale, layout):
    """A data set on disk; LR images are made with imresize from the mod-cropped HR."""
    if layout == "div2k":
        hr_dir, lr_dir = root / "DIV2K_valid_HR", root / "DIV2K_valid_LR_bicubic" / f"X{scale}"
    else:
        hr_dir, lr_dir = root / "HR", root / "LR_bicubic" / f"X{scale}"
    for seed, (stem, (height, width)) in enumerate(stems_and_sizes):
        hr = random_image(height, width, seed)
        write_image(hr_dir / f"{stem}.png", hr)
        lr = imresize(hr[:, : height - height % scale, : width - width % scale], 1 / scale)
        write_image(lr_dir / (f"{stem}x{scale}.png" if layout == "div2k" else f"{stem}.png"), lr)
    return hr_dir, lr_dir


@pytest.mark.parametrize("layout", ["div2k", "same-stem"])
def test_both_layouts_resolve_and_pair(tmp_path, layout):
    hr_dir, lr_dir = _write_set(tmp_path, [("0001", (50, 61)), ("0002", (64, 64))], 3, layout)
    for given in (tmp_path, hr_dir):
        assert resolve_layout(given, 3) == (hr_dir, lr_dir)
        dataset = folder_dataset(given, 3)
        assert isinstance(dataset, PairedFolderDataset) and len(dataset) == 2
    lr, hr, name = dataset[0]
    assert name == "0001" and lr.dtype == hr.dtype == torch.uint8
    assert lr.shape == (3, 16, 20) and hr.shape == (3, 48, 60)  # HR mod-cropped
    assert torch.equal(lr, imresize(hr, 1 / 3))
    # The parent of the X3 folder is accepted too.
    assert PairedFolderDataset(hr_dir, lr_dir.parent, 3).lr_dir == lr_dir
    # Without an LR folder for the scale, LR images are made with imresize.
    assert isinstance(folder_dataset(tmp_path, 2), HRFolderDataset)


def test_shared_benchmark_layout(shared_data):
    dataset = folder_dataset(shared_data / "benchmarks" / "Set14", 3)
    assert isinstance(dataset, PairedFolderDataset) and dataset.name == "Set14" and len(dataset) == 14
    names = [dataset.pairs[i][0].stem for i in range(len(dataset))]
    lr, hr, name = dataset[names.index("comic")]  # 250x361 HR, not divisible by 3
    assert hr.shape == (3, 360, 249) and lr.shape == (3, 120, 83)
    lr, hr, _ = dataset[names.index("bridge")]  # greyscale file, read as RGB
    assert torch.equal(hr[0], hr[1]) and torch.equal(hr[0], hr[2])


def test_hr_folder_makes_and_caches_lr(tmp_path):
    hr = random_image(41, 50)
    write_image(tmp_path / "hr" / "a.png", hr)
    dataset = HRFolderDataset(tmp_path / "hr", 2, cache_dir=tmp_path / "cache")
    lr, hr_cropped, name = dataset[0]
    assert name == "a" and hr_cropped.shape == (3, 40, 50)
    assert torch.equal(lr, imresize(hr[:, :40], 0.5))
    cached = list((tmp_path / "cache" / "X2").glob("a_*.png"))
    assert len(cached) == 1 and torch.equal(read_image(cached[0]), lr)
    # A new dataset reads the cached file instead of resizing again.
    write_image(cached[0], torch.zeros_like(lr))
    assert int(HRFolderDataset(tmp_path / "hr", 2, cache_dir=tmp_path / "cache")[0].lr.sum()) == 0
    # Without cache_dir the LR image is kept in memory.
    in_memory = HRFolderDataset(tmp_path / "hr", 2)
    assert in_memory[0].lr is in_memory[0].lr


def test_bad_folders_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        folder_dataset(tmp_path / "nowhere", 2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="holds no images"):
        folder_dataset(tmp_path / "empty", 2)
    hr_dir, lr_dir = _write_set(tmp_path / "set", [("a", (40, 40)), ("b", (40, 40))], 2, "same-stem")
    # A missing LR file names the HR file it belongs to.
    (lr_dir / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no LR image for HR file .*b\.png"):
        folder_dataset(tmp_path / "set", 2)
    # LR of the wrong size names both files.
    write_image(lr_dir / "b.png", random_image(10, 10))
    with pytest.raises(ValueError, match=r"LR image .*b\.png is 10x10 but HR image .*b\.png is 40x40"):
        folder_dataset(tmp_path / "set", 2)
    # A truncated file names the file when it is decoded.
    write_image(lr_dir / "b.png", imresize(random_image(40, 40, seed=1), 0.5))
    data = (hr_dir / "b.png").read_bytes()
    (hr_dir / "b.png").write_bytes(data[: len(data) // 2])
    dataset = folder_dataset(tmp_path / "set", 2)
    with pytest.raises(ValueError, match=r"cannot decode image .*b\.png"):
        dataset[1]
    # A file that is not an image at all.
    (hr_dir / "b.png").write_text("not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*b\.png"):
        folder_dataset(tmp_path / "set", 2)
    with pytest.raises(ValueError, match="scale must be an integer >= 1"):
        folder_dataset(tmp_path / "set", 0)
    (tmp_path / "two" / "A_HR").mkdir(parents=True)
    (tmp_path / "two" / "B_HR").mkdir()
    with pytest.raises(ValueError, match="several HR folders"):
        folder_dataset(tmp_path / "two", 2)


def test_sixteen_bit_and_alpha_are_converted_and_said_once(tmp_path, monkeypatch):
    monkeypatch.setattr(image_io, "_reported_conversions", set())
    values = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60
    for i in range(2):
        Image.fromarray(values).save(tmp_path / f"grey16_{i}.png")
        Image.fromarray(np.full((8, 8, 4), (10, 20, 30, 0), dtype=np.uint8), "RGBA").save(tmp_path / f"rgba_{i}.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grey = [read_image(tmp_path / f"grey16_{i}.png") for i in range(2)]
        rgba = [read_image(tmp_path / f"rgba_{i}.png") for i in range(2)]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert "16 bits" in messages[0] and "grey16_0.png" in messages[0] and "said once" in messages[0]
    assert "alpha" in messages[1] and "rgba_0.png" in messages[1]
    assert grey[0].shape == (3, 32, 32) and torch.equal(grey[0][0], torch.from_numpy((values >> 8).astype(np.uint8)))
    assert rgba[1].shape == (3, 8, 8) and rgba[1][:, 0, 0].tolist() == [10, 20, 30]


def test_patches_are_aligned_augmented_and_deterministic(tmp_path):
    pairs = nearest_pairs(tmp_path, [(40, 52), (30, 33), (12, 60)])
    with pytest.warns(UserWarning, match="1 of 3 images .* smaller than the 16x16 LR patch"):
        patches = TrainingPatches(pairs, patch_size=16, repeat=50, progress=False)
    assert len(patches) == 100 and patches.skipped == ["0002"]
    seen_flips = set()
    for index in range(len(patches)):
        lr, hr = patches[index]
        assert lr.shape == (3, 16, 16) and hr.shape == (3, 32, 32) and lr.dtype == torch.uint8
        assert torch.equal(hr[:, ::2, ::2], lr)
        # Which of the 8 orientations was drawn: find it in the source image.
        source = pairs[index % 2].lr
        seen_flips.add(_orientation(lr, source))
    assert seen_flips == set(range(8))
    with pytest.warns(UserWarning, match="skipped"):
        again = TrainingPatches(pairs, patch_size=16, repeat=50, progress=False)
    assert all(torch.equal(patches[i][0], again[i][0]) for i in range(10))
    again.set_epoch(1)
    assert not all(torch.equal(patches[i][0], again[i][0]) for i in range(10))
    with pytest.raises(ValueError, match="no image .* large enough"):
        TrainingPatches(pairs, patch_size=64, progress=False)


def _orientation(patch, source):
    """Which of the 8 flip/transpose combinations of a crop of ``source`` ``patch`` is."""
    for code in range(8):
        crop = patch.transpose(1, 2) if code & 4 else patch  # undo in reverse order of application
        crop = crop.flip(1) if code & 2 else crop
        crop = crop.flip(2) if code & 1 else crop
        size = crop.shape[-1]
        # Random images: few places share the crop's first pixel, check those.
        for top, left in (source == crop[:, :1, :1]).all(0).nonzero().tolist():
            if torch.equal(source[:, top: top + size, left: left + size], crop):
                return code
    raise AssertionError("patch not found in its source image")


def test_disk_cache_and_workers_give_the_same_batches(tmp_path):
    pairs = nearest_pairs(tmp_path, [(40, 52), (30, 33)])
    in_memory = TrainingPatches(pairs, patch_size=16, repeat=8, progress=False)
    on_disk = TrainingPatches(pairs, patch_size=16, repeat=8, cache_dir=tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").glob("*_hr.npy"))) == 2
    reused = TrainingPatches(pairs, patch_size=16, repeat=8, cache_dir=tmp_path / "cache", progress=False)
    assert reused.names == in_memory.names
    reference = [b for b in DataLoader(in_memory, batch_size=4, shuffle=True,
                                       generator=torch.Generator().manual_seed(3))]
    for dataset, workers in ((on_disk, 2), (reused, 0), (in_memory, 2)):
        loader = training_loader(dataset, batch_size=4, num_workers=workers, seed=3, drop_last=False)
        for epoch in range(2):
            dataset.set_epoch(epoch)
            batches = list(loader)
            if epoch == 0:
                assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, reference))
        # set_epoch reached the persistent workers: epoch 1 drew other patches.
        assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, reference))


@pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="scikit-image is not installed")
def test_builtin_images():
    paths = {split: builtin_image_paths(split) for split in BUILTIN_SPLITS}
    assert not set(paths["train"]) & set(paths["heldout"])
    heldout = builtin_dataset("heldout", 2)
    assert heldout.name == "builtin-heldout" and len(heldout) == 2
    for path in paths["train"] + paths["heldout"]:
        image = read_image(path)
        assert image.shape[0] == 3 and min(image.shape[1:]) >= 300, path
        assert not torch.equal(image[0], image[1]), f"{path} is not a colour photograph"
    patches = TrainingPatches(builtin_dataset("train", 2), patch_size=64, progress=False)
    assert len(patches.names) == len(BUILTIN_SPLITS["train"]) and not patches.skipped


def test_builtin_without_scikit_image(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage"
                        else real_find_spec(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install scikit-image"):
        builtin_dataset("train", 2)
    with pytest.raises(ValueError, match="unknown built-in split"):
        builtin_image_paths("test")


def test_an_image_smaller_than_the_scale_is_skipped_like_other_small_images(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    write_image(folder / "big.png", random_image(40, 40))
    write_image(folder / "dot.png", random_image(1, 1))
    with pytest.warns(UserWarning, match=r"1 of 2 images of train are smaller than the 8x8 LR patch and are "
                                         r"skipped: dot"):
        patches = TrainingPatches(folder_dataset(folder, 2), patch_size=8, progress=False)
    assert patches.names == ["big"] and patches.skipped == ["dot"]
    (folder / "big.png").unlink()
    with pytest.raises(ValueError, match=r"no image of train is large enough for a 8x8 LR patch"):
        TrainingPatches(folder_dataset(folder, 2), patch_size=8, progress=False)


def test_data_caches_are_written_atomically_and_lose_their_stale_temporaries(tmp_path, monkeypatch):
    import errno

    from cdism_fast.safe_io import WriteError

    folder = tmp_path / "train"
    folder.mkdir()
    write_image(folder / "a.png", random_image(40, 40))
    cache = tmp_path / "cache"
    cache.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    stale = [cache / ".0123_lr.npy.0123456789ab.partial", cache / ".0123_hr.npy.0123456789ab.partial"]
    stale[0].write_bytes(b"left by a killed run")
    stale[1].symlink_to(victim)
    real_write_array = np.lib.format.write_array

    def full(stream, *args, **kwargs):
        stream.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", full)
    with pytest.raises(WriteError, match=r"cannot write .*cache/\w+_name\.npy: No space left on device"):
        TrainingPatches(folder_dataset(folder, 2), patch_size=8, cache_dir=cache, progress=False)
    assert list(cache.iterdir()) == [] and victim.read_text() == "precious"
    monkeypatch.setattr(np.lib.format, "write_array", real_write_array)
    patches = TrainingPatches(folder_dataset(folder, 2), patch_size=8, cache_dir=cache, progress=False)
    assert sorted(p.name.split("_", 1)[1] for p in cache.iterdir()) == ["hr.npy", "lr.npy", "name.npy"]
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~_current_umask() for p in cache.iterdir())
    assert patches.names == ["a"]


def _current_umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_the_lr_cache_of_an_hr_folder_loses_its_stale_temporaries(tmp_path):
    write_image(tmp_path / "hr" / "a.png", random_image(40, 40))
    cache = tmp_path / "cache" / "X2"
    cache.mkdir(parents=True)
    stale = cache / ".a_0123456789abcdef.png.0123456789ab.partial"
    stale.write_bytes(b"left by a killed run")
    dataset = HRFolderDataset(tmp_path / "hr", 2, cache_dir=tmp_path / "cache")
    assert not stale.exists()
    dataset[0]
    assert [p.suffix for p in cache.iterdir()] == [".png"]
