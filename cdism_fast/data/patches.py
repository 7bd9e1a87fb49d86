"""Random training patch pairs, fast enough that data never limits training.

Every image pair is decoded once, when the :class:`TrainingPatches` is made,
and kept as uint8 tensors in shared memory (so DataLoader workers read it
without copies), or, with ``cache_dir``, as ``.npy`` files that are
memory-mapped (for sets larger than memory; the page cache then does the
caching, and the files are reused by later runs). Drawing a patch is a few
array views and one copy.

The random choices for sample ``index`` come from ``(seed, epoch, index)``
alone, so the patches do not depend on the number of workers, and a resumed
run sees the same patches as an uninterrupted one.

With :meth:`TrainingPatches.use_targets` (the distillation teacher's cached
outputs, :mod:`cdism_fast.training.teacher_cache`), each sample also carries
the target patch cut from the same place, with the same flips, as the HR patch.

A dataset of unlabelled images (``lr_only``, e.g.
:class:`~cdism_fast.data.LRFolderDataset`) has no HR image: its samples are
the LR patch alone, or (LR patch, target patch) with targets.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .._checks import check_int
from ..safe_io import atomic_open, remove_stale_temporaries
from .datasets import ImageTooSmall

__all__ = ["TrainingPatches", "collate_patch_pairs", "training_loader"]


class TrainingPatches(Dataset):
    """Random (LR patch, HR patch) pairs drawn from a dataset of :class:`~cdism_fast.data.ImagePair`.

    Each item is ``(lr, hr)``: uint8 tensors of shape (3, p, p) and
    (3, p·scale, p·scale) cut at the same place (HR offset = scale × LR offset),
    or ``(lr,)`` for a dataset of unlabelled images (``pairs.lr_only``),
    with random horizontal flip, vertical flip and transpose when ``augment``.
    Convert a batch with ``x.float().div_(255)`` on the training device (uint8
    keeps worker-to-trainer traffic four times smaller). Sample ``index`` uses
    image ``index % len(images)``; ``repeat`` sets how many patches one epoch
    takes from each image. Images whose LR side is shorter than ``patch_size``
    are skipped with one warning that counts them.

    ``sources[i]`` is the index in ``pairs`` of kept image ``i``.
    """

    def __init__(self, pairs: Dataset, patch_size: int = 48, augment: bool = True, repeat: int = 1,
                 seed: int = 0, cache_dir=None, progress: bool = True):
        if not isinstance(getattr(pairs, "scale", None), int):
            raise ValueError(f"pairs must be a dataset of image pairs with a scale attribute (PairedFolderDataset, "
                             f"HRFolderDataset), got {type(pairs).__name__}")
        self.scale = pairs.scale
        self.patch_size = check_int("patch_size (LR pixels)", patch_size)
        self.repeat = check_int("repeat", repeat)
        self.augment, self.seed = augment, seed
        self.name = getattr(pairs, "name", "training set")
        #: The images have no HR: a sample is its LR patch (and its target patch, with targets).
        self.lr_only = bool(getattr(pairs, "lr_only", False))
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None and not hasattr(pairs, "cache_key"):
            raise ValueError(f"cache_dir needs a dataset with cache_key(index) (PairedFolderDataset, "
                             f"HRFolderDataset); {type(pairs).__name__} has none: drop cache_dir")
        # Shared memory, so set_epoch reaches persistent DataLoader workers.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._images: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._cache_files: list[tuple[Path, Path]] = []
        self._mapped: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.skipped: list[str] = []
        self.names: list[str] = []
        self.sources: list[int] = []
        self._targets = None
        if self.cache_dir is not None:
            remove_stale_temporaries(self.cache_dir, shared=True)  # a killed run's, never another run's
        for index in tqdm(range(len(pairs)), desc=f"decoding {self.name}", unit="image",
                          disable=None if progress else True, leave=False):
            self._add(pairs, index)
        if not self.names:
            least = (f"the images are the LR inputs, at least {patch_size} pixels a side" if self.lr_only
                     else f"x{self.scale}: HR at least {patch_size * self.scale} pixels a side")
            raise ValueError(f"no image of {self.name} is large enough for a {patch_size}x{patch_size} LR patch "
                             f"({least}); use a smaller patch_size or larger images")
        if self.skipped:
            warnings.warn(f"{len(self.skipped)} of {len(pairs)} images of {self.name} are smaller than the "
                          f"{patch_size}x{patch_size} LR patch and are skipped: {', '.join(self.skipped[:5])}"
                          + (" ..." if len(self.skipped) > 5 else ""), stacklevel=2)

    def _add(self, pairs: Dataset, index: int) -> None:
        if self.cache_dir is not None:
            digest = hashlib.sha1(pairs.cache_key(index).encode()).hexdigest()[:20]
            lr_file, hr_file = (self.cache_dir / f"{digest}_{kind}.npy" for kind in ("lr", "hr"))
            hr_file = None if self.lr_only else hr_file
            if lr_file.is_file() and (hr_file is None or hr_file.is_file()):
                lr_height, lr_width = np.load(lr_file, mmap_mode="r").shape[-2:]
                name = str(np.load(lr_file.with_name(f"{digest}_name.npy")))
                self._keep(index, name, lr_height, lr_width, files=(lr_file, hr_file))
                return
        try:
            lr, hr, name = pairs[index]
        except ImageTooSmall as error:
            self.skipped.append(error.name)
            return
        if not self._keep(index, name, *lr.shape[-2:]):
            return
        if self.cache_dir is None:
            # In place when already contiguous: an LR image cached by the
            # dataset is then shared, not held twice.
            self._images.append((lr.contiguous().share_memory_(),
                                 None if hr is None else hr.contiguous().share_memory_()))
            return
        # Name file first: the pair counts as cached only once both arrays exist.
        arrays = [(np.array(name), lr_file.with_name(f"{digest}_name.npy")), (lr.numpy(), lr_file)]
        for array, target in arrays + ([] if hr is None else [(hr.numpy(), hr_file)]):
            with atomic_open(target) as stream:
                np.save(stream, array)
        self._cache_files.append((lr_file, hr_file))

    def _keep(self, source: int, name: str, lr_height: int, lr_width: int, files=None) -> bool:
        if min(lr_height, lr_width) < self.patch_size:
            self.skipped.append(name)
            return False
        self.names.append(name)
        self.sources.append(source)
        if files is not None:
            self._cache_files.append(files)
        return True

    def __getstate__(self):
        # Memory maps are reopened in each worker instead of being pickled as copies.
        state = self.__dict__.copy()
        state["_mapped"] = {}
        return state

    def _arrays(self, image: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The LR and HR arrays of kept image ``image`` (HR None for unlabelled images)."""
        if self.cache_dir is None:
            lr, hr = self._images[image]
            return lr.numpy(), None if hr is None else hr.numpy()
        if image not in self._mapped:
            lr_file, hr_file = self._cache_files[image]
            self._mapped[image] = (np.load(lr_file, mmap_mode="r"),
                                   None if hr_file is None else np.load(hr_file, mmap_mode="r"))
        return self._mapped[image]

    def lr_image(self, image: int) -> np.ndarray:
        """The whole uint8 LR image (3, h, w) of kept image ``image`` (a view, not a copy)."""
        return self._arrays(image)[0]

    def use_targets(self, targets) -> None:
        """Let every sample carry a third patch cut from ``targets.target(image)``.

        ``targets.target(image)`` returns a (C, h·scale, w·scale) array of kept
        image ``image`` (float16), or None when it cannot be read; that sample's
        target is then all NaN, for the trainer to notice (never to learn from).
        """
        self._targets = targets

    def set_epoch(self, epoch: int) -> None:
        """Draw new patches: call before iterating each epoch (as with DistributedSampler)."""
        self._epoch[0] = epoch

    def __len__(self) -> int:
        return len(self.names) * self.repeat

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        image = index % len(self.names)
        lr, hr = self._arrays(image)
        rng = np.random.default_rng((self.seed, int(self._epoch[0]), index))
        patch, scale = self.patch_size, self.scale
        top = int(rng.integers(0, lr.shape[1] - patch + 1))
        left = int(rng.integers(0, lr.shape[2] - patch + 1))
        hr_rows = slice(top * scale, (top + patch) * scale)
        hr_cols = slice(left * scale, (left + patch) * scale)
        crops = [lr[:, top: top + patch, left: left + patch]]
        if hr is not None:
            crops.append(hr[:, hr_rows, hr_cols])
        if self._targets is not None:
            target = self._targets.target(image)
            crops.append(target[:, hr_rows, hr_cols] if target is not None
                         else np.full((lr.shape[0], patch * scale, patch * scale), np.nan, np.float16))
        if self.augment:
            flip_horizontal, flip_vertical, transpose = rng.integers(0, 2, size=3)
            if flip_horizontal:
                crops = [crop[:, :, ::-1] for crop in crops]
            if flip_vertical:
                crops = [crop[:, ::-1] for crop in crops]
            if transpose:
                crops = [crop.transpose(0, 2, 1) for crop in crops]
        return tuple(torch.from_numpy(np.ascontiguousarray(crop)) for crop in crops)


def collate_patch_pairs(batch: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Stack (lr, hr) pairs (or (lr, hr, target) triples) into batches with numpy's single-threaded copy.

    torch.stack would use the intra-op thread pool, which stalls when the
    cores are busy (measured 40x slower with 2 threads on a loaded 2-core
    machine); this matters when the DataLoader runs in the main process.
    """
    return tuple(torch.from_numpy(np.stack([sample[part].numpy() for sample in batch]))
                 for part in range(len(batch[0])))


def training_loader(patches: TrainingPatches, batch_size: int = 16, num_workers: int = 2, shuffle: bool = True,
                    seed: int = 0, drop_last: bool = True, sampler=None) -> DataLoader:
    """A DataLoader over ``patches`` with the settings that keep it fast.

    Persistent workers (no restart per epoch; ``set_epoch`` still reaches
    them), a few batches prefetched per worker, pinned memory when CUDA is
    available, and a seeded shuffle so that the order is reproducible.
    Pass ``sampler`` (e.g. a DistributedSampler) to shard across processes.
    """
    return DataLoader(
        patches, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
        num_workers=num_workers, collate_fn=collate_patch_pairs, drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed))
