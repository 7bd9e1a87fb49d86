"""Training patch pairs per second through the DataLoader (target: at least 2,000 on 2 CPU cores).

    python -m pytest benchmarks/test_data_loading.py -s

The images are the built-in training photographs (scikit-image's wheel; six
images from 512x512 to 1411x1411), or synthetic images of the same sizes when
scikit-image is absent. Decoding and LR making happen before timing: they are
done once per run. One pair is an x2 LR patch (48 or 64 pixels a side) and its
HR patch, with random flips and transpose, collated into batches of 16.
"""
import pytest
import torch

from cdism_fast.data import (
    BUILTIN_SPLITS,
    HRFolderDataset,
    TrainingPatches,
    builtin_dataset,
    training_loader,
    write_image,
)

TARGET_PAIRS_PER_SECOND = 2000
BATCH_SIZE = 16
BATCHES_PER_ROUND = 150


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    try:
        return builtin_dataset("train", 2)
    except FileNotFoundError:
        folder = tmp_path_factory.mktemp("synthetic")
        sizes = [(512, 512), (872, 1000), (500, 741), (500, 741), (1411, 1411), (427, 640)]
        for i, (height, width) in enumerate(sizes[: len(BUILTIN_SPLITS["train"])]):
            write_image(folder / f"{i}.png", torch.randint(0, 256, (3, height, width), dtype=torch.uint8))
        return HRFolderDataset(folder, 2)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("patch_size", [48, 64])
def test_training_patch_pairs_per_second(benchmark, pairs, patch_size, num_workers):
    patches = TrainingPatches(pairs, patch_size=patch_size, repeat=20000, progress=False)
    loader = training_loader(patches, batch_size=BATCH_SIZE, num_workers=num_workers)
    batches = iter(loader)
    next(batches)  # workers started and their queues filled before timing

    def take_batches():
        for _ in range(BATCHES_PER_ROUND):
            lr, hr = next(batches)
        assert lr.shape == (BATCH_SIZE, 3, patch_size, patch_size) and hr.shape[-1] == 2 * patch_size

    benchmark.pedantic(take_batches, rounds=5, warmup_rounds=1, iterations=1)
    rate = BATCHES_PER_ROUND * BATCH_SIZE / benchmark.stats.stats.median
    benchmark.extra_info["pairs_per_second"] = round(rate)
    print(f"\npatch {patch_size}, {num_workers} workers: {rate:,.0f} training patch pairs/s")
    if num_workers > 0:
        assert rate >= TARGET_PAIRS_PER_SECOND
