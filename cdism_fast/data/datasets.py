"""Paired HR/LR image folders for evaluation and training.

Two folder layouts are understood (``resolve_layout``):

* DIV2K: ``DIV2K_train_HR/0001.png`` with ``DIV2K_train_LR_bicubic/X2/0001x2.png``;
* same stem: ``Set5/HR/baby.png`` with ``Set5/LR_bicubic/X2/baby.png``.

A folder of HR images without LR images works too (``HRFolderDataset``): the LR
images are made with the MATLAB-exact :func:`~cdism_fast.data.imresize` and
cached. Every item is an :class:`ImagePair` of RGB uint8 (3, H, W) tensors with
the HR image mod-cropped to ``scale`` times the LR size (top-left kept), which
is how published results pair them.

A folder of unlabelled images (``LRFolderDataset``, :func:`unlabelled_dataset`)
gives the images as LR inputs as they are, without HR (``hr`` is None): the
training targets are then a teacher's outputs. :func:`hold_back` splits off a
few of them, chosen by their place in the sorted list, to validate on.
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from .._checks import check_int
from ..safe_io import remove_stale_temporaries
from .imresize import imresize
from .io import image_size, list_images, read_image, write_image

__all__ = ["ImagePair", "ImageTooSmall", "PairedFolderDataset", "HRFolderDataset", "LRFolderDataset", "CombinedPairs",
           "ImageSubset", "resolve_layout", "folder_dataset", "unlabelled_dataset", "hold_back", "mod_crop"]


class ImagePair(NamedTuple):
    """An LR image, its HR image (None in a dataset of unlabelled LR images) and the image's name."""
    lr: torch.Tensor
    hr: torch.Tensor | None
    name: str


class ImageTooSmall(ValueError):
    """An HR image smaller than the scale (no LR pixel): :class:`~cdism_fast.data.TrainingPatches` skips it."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


def mod_crop(img: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop the bottom and right so that height and width are multiples of ``scale``."""
    height, width = img.shape[-2:]
    return img[..., : height - height % scale, : width - width % scale]


def _file_signature(path: Path) -> str:
    """Path, size and modification time: enough to notice a replaced file."""
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _scale_subfolder(folder: Path, scale: int) -> Path | None:
    for name in (f"X{scale}", f"x{scale}"):
        if (folder / name).is_dir():
            return folder / name
    return None


class PairedFolderDataset(Dataset):
    """An HR folder and the folder of its LR images for one ``scale``.

    ``lr_dir`` is the folder of LR files for that scale (``.../LR_bicubic/X2``);
    its parent (``.../LR_bicubic``) is accepted too. An HR file ``stem.ext`` is
    paired with ``{stem}x{scale}.*`` (DIV2K) or ``{stem}.*`` (same stem). Sizes are
    checked from the file headers when the dataset is made, so a wrong pair
    fails at once with both file names.
    """

    def __init__(self, hr_dir, lr_dir, scale: int, name: str | None = None):
        self.scale = check_int("scale", scale)
        hr_dir, lr_dir = Path(hr_dir), Path(lr_dir)
        if not lr_dir.is_dir():
            raise FileNotFoundError(f"LR folder {lr_dir} does not exist; pass the folder of LR images for x{scale} "
                                    "(e.g. LR_bicubic/X2), or use HRFolderDataset to make them with imresize")
        lr_dir = _scale_subfolder(lr_dir, scale) or lr_dir
        self.hr_dir, self.lr_dir = hr_dir, lr_dir
        self.name = name or (hr_dir.parent.name if hr_dir.name == "HR" else hr_dir.name)
        hr_paths = list_images(hr_dir)
        lr_by_stem = {p.stem: p for p in list_images(lr_dir)}
        self.pairs: list[tuple[Path, Path]] = []
        for hr_path in hr_paths:
            lr_path = lr_by_stem.get(f"{hr_path.stem}x{scale}") or lr_by_stem.get(hr_path.stem)
            if lr_path is None:
                raise FileNotFoundError(
                    f"no LR image for HR file {hr_path} in {lr_dir} (looked for {hr_path.stem}x{scale}.* and "
                    f"{hr_path.stem}.*); add it, remove the HR file, or use HRFolderDataset to make LR images")
            self._check_sizes(hr_path, lr_path)
            self.pairs.append((hr_path, lr_path))

    def _check_sizes(self, hr_path: Path, lr_path: Path) -> None:
        (hr_h, hr_w), (lr_h, lr_w) = image_size(hr_path), image_size(lr_path)
        if (lr_h, lr_w) != (hr_h // self.scale, hr_w // self.scale):
            raise ValueError(
                f"LR image {lr_path} is {lr_w}x{lr_h} but HR image {hr_path} is {hr_w}x{hr_h}, which at x{self.scale} "
                f"needs an LR image of {hr_w // self.scale}x{hr_h // self.scale}; check that the LR folder is the "
                f"one for x{self.scale}")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> ImagePair:
        hr_path, lr_path = self.pairs[index]
        lr = read_image(lr_path)
        hr = mod_crop(read_image(hr_path), self.scale)
        if hr.shape[-2:] != tuple(s * self.scale for s in lr.shape[-2:]):
            # The header check passed, so the decoded file changed since.
            raise ValueError(f"HR image {hr_path} and LR image {lr_path} no longer match at x{self.scale}")
        return ImagePair(lr, hr, hr_path.stem)

    def cache_key(self, index: int) -> str:
        """A string that changes when either file of pair ``index`` changes."""
        hr_path, lr_path = self.pairs[index]
        return f"paired|x{self.scale}|{_file_signature(hr_path)}|{_file_signature(lr_path)}"


def _image_files(images, name: str | None, owner: str, noun: str) -> tuple[list[Path], str]:
    """The image files of a folder or of a list of files (each checked to exist), and the data set's name."""
    if isinstance(images, (str, Path)):
        return list_images(images), name or Path(images).name
    paths = [Path(p) for p in images]
    if not paths:
        raise ValueError(f"{owner}: the list of {noun}s is empty; pass a folder or image files")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{noun} {missing[0]} does not exist ({len(missing)} missing in all)")
    return paths, name or paths[0].parent.name


class HRFolderDataset(Dataset):
    """HR images only (a folder or a list of files); LR images are made with ``imresize``.

    The LR image of each file is computed once (MATLAB-exact uint8 bicubic of
    the mod-cropped HR image) and kept in memory, or, with ``cache_dir``,
    written there as PNG and reused across runs.
    """

    def __init__(self, hr: str | Path | Sequence[str | Path], scale: int, cache_dir=None, name: str | None = None):
        self.scale = check_int("scale", scale)
        self.paths, self.name = _image_files(hr, name, "HRFolderDataset", "HR image")
        # Refused when read (ImageTooSmall), so that training skips them as it skips the other small images.
        self._too_small = {index: size for index, path in enumerate(self.paths)
                           if min(size := image_size(path)) < self.scale}
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            remove_stale_temporaries(self.cache_dir / f"X{self.scale}", shared=True)  # a killed run's
        self._lr_cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def cache_key(self, index: int) -> str:
        return f"hr-only|x{self.scale}|{_file_signature(self.paths[index])}"

    def _lr_cache_path(self, index: int) -> Path:
        digest = hashlib.sha1(self.cache_key(index).encode()).hexdigest()[:16]
        return self.cache_dir / f"X{self.scale}" / f"{self.paths[index].stem}_{digest}.png"

    def _make_lr(self, index: int, hr: torch.Tensor) -> torch.Tensor:
        if index in self._lr_cache:
            return self._lr_cache[index]
        cached = self._lr_cache_path(index) if self.cache_dir is not None else None
        if cached is not None and cached.is_file():
            lr = read_image(cached)
        else:
            lr = imresize(hr, 1 / self.scale)
            if cached is not None:
                write_image(cached, lr)
        if self.cache_dir is None:
            self._lr_cache[index] = lr
        return lr

    def __getitem__(self, index: int) -> ImagePair:
        if index in self._too_small:
            (height, width), path = self._too_small[index], self.paths[index]
            raise ImageTooSmall(path.stem, f"HR image {path} is {width}x{height}, smaller than the scale "
                                           f"x{self.scale}; remove it from the set")
        hr = mod_crop(read_image(self.paths[index]), self.scale)
        return ImagePair(self._make_lr(index, hr), hr, self.paths[index].stem)


class LRFolderDataset(Dataset):
    """Unlabelled images (a folder or a list of files) as LR inputs, as they are: no degradation, no HR.

    Each item is an :class:`ImagePair` whose ``hr`` is None: the training target
    of such an image is a teacher's output at ×``scale`` (``scale`` is the
    teacher's, the size of the targets, not a size these images are cut to).
    Greyscale files are read as RGB (as every image is, see :func:`read_image`),
    so a folder may mix greyscale and colour images.
    """

    #: Items have no HR image.
    lr_only = True

    def __init__(self, images: str | Path | Sequence[str | Path], scale: int, name: str | None = None):
        self.scale = check_int("scale", scale)
        self.paths, self.name = _image_files(images, name, "LRFolderDataset", "image")

    def __len__(self) -> int:
        return len(self.paths)

    def cache_key(self, index: int) -> str:
        return f"lr-only|{_file_signature(self.paths[index])}"

    def __getitem__(self, index: int) -> ImagePair:
        return ImagePair(read_image(self.paths[index]), None, self.paths[index].stem)


def _single_hr_subfolder(root: Path) -> Path | None:
    candidates = sorted(p for p in root.iterdir() if p.is_dir() and (p.name == "HR" or p.name.endswith("_HR")))
    if len(candidates) > 1:
        raise ValueError(f"{root} holds several HR folders ({', '.join(p.name for p in candidates)}); "
                         "pass one of them")
    return candidates[0] if candidates else None


def _lr_folder_for(hr_dir: Path, scale: int) -> Path | None:
    """Where the layouts keep the LR images of ``hr_dir`` at ``scale``, if they exist."""
    if hr_dir.name == "HR":
        base = hr_dir.parent / "LR_bicubic"
    else:  # DIV2K_train_HR -> DIV2K_train_LR_bicubic
        base = hr_dir.parent / f"{hr_dir.name[: -len('_HR')]}_LR_bicubic"
    return _scale_subfolder(base, scale) if base.is_dir() else None


def resolve_layout(path, scale: int) -> tuple[Path, Path | None]:
    """(HR folder, LR folder or None) for a data folder in either layout.

    ``path`` may be a set's root (``Set5`` holding ``HR`` and ``LR_bicubic``,
    or ``DIV2K`` holding ``DIV2K_valid_HR`` and ``DIV2K_valid_LR_bicubic``), the
    HR folder itself (``Set5/HR``, ``DIV2K_valid_HR``), or any folder of images
    (no LR folder: the LR images are made with ``imresize``).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {path} does not exist; pass a folder of images or a dataset root "
                                "(e.g. Set5 holding HR/ and LR_bicubic/X2/)")
    if path.name == "HR" or path.name.endswith("_HR"):
        hr_dir = path
    else:
        hr_dir = _single_hr_subfolder(path)
        if hr_dir is None:
            return path, None
    return hr_dir, _lr_folder_for(hr_dir, check_int("scale", scale))


class CombinedPairs(Dataset):
    """Several image-pair datasets of one scale read as one (e.g. T91 and BSD200, the 291 images)."""

    def __init__(self, datasets: Sequence[Dataset]):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("CombinedPairs needs at least one dataset")
        scales = {dataset.scale for dataset in self.datasets}
        if len(scales) != 1:
            raise ValueError(f"the datasets to combine are at different scales ({sorted(scales)}); combine sets "
                             "of one scale")
        self.scale = scales.pop()
        kinds = {bool(getattr(dataset, "lr_only", False)) for dataset in self.datasets}
        if len(kinds) != 1:
            raise ValueError("the datasets to combine mix image pairs and unlabelled images; combine sets of one kind")
        self.lr_only = kinds.pop()
        self.name = "+".join(dataset.name for dataset in self.datasets)
        self._ends = list(itertools.accumulate(len(dataset) for dataset in self.datasets))
        self._length = self._ends[-1]

    def __len__(self) -> int:
        return self._length

    def _locate(self, index: int) -> tuple[Dataset, int]:
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} is out of range for {self._length} images")
        which = bisect.bisect_right(self._ends, index)
        return self.datasets[which], index - (self._ends[which - 1] if which else 0)

    def __getitem__(self, index: int) -> ImagePair:
        dataset, local = self._locate(index)
        return dataset[local]

    def cache_key(self, index: int) -> str:
        dataset, local = self._locate(index)
        return dataset.cache_key(local)


class ImageSubset(Dataset):
    """The images ``indices`` of a dataset, in that order, with its scale, kind and cache keys."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], name: str | None = None):
        self.dataset, self.indices = dataset, list(indices)
        self.scale = dataset.scale
        self.lr_only = getattr(dataset, "lr_only", False)
        self.name = name or getattr(dataset, "name", "images")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> ImagePair:
        return self.dataset[self.indices[index]]

    def cache_key(self, index: int) -> str:
        return self.dataset.cache_key(self.indices[index])


def hold_back(dataset: Dataset, count: int, option: str = "--holdout") -> tuple[ImageSubset, ImageSubset]:
    """(training images, held-back images) of ``dataset``: ``count`` images spread evenly over its order (image
    ``floor((i + 0.5) * n / count)`` of ``n``, for i < ``count``), never trained on; the rest train.

    At least one image must be left to train on: otherwise a ValueError names ``option``.
    """
    count = check_int("count of held-back images", count, 0, expected="an integer >= 0")
    total = len(dataset)
    name = getattr(dataset, "name", "images")
    if count >= total:
        raise ValueError(f"the training images ({name}) are {total}, too few to hold back {count} for validation and "
                         f"train on the rest; add images, or pass a smaller {option} (at most {max(total - 1, 0)}; "
                         f"{option} 0 holds none back)")
    held = sorted({int((i + 0.5) * total / count) for i in range(count)})
    kept = [index for index in range(total) if index not in set(held)]
    return ImageSubset(dataset, kept, name), ImageSubset(dataset, held, f"{name} held back")


def _check_folders(path: Sequence) -> None:
    """Several data folders are read as one set: each once, none inside another."""
    resolved = [Path(folder).resolve() for folder in path]
    for first, second in itertools.combinations(range(len(path)), 2):
        one, other = resolved[first], resolved[second]
        if one == other:
            raise ValueError(f"data folder {path[second]} is given twice; pass each folder once")
        if one.is_relative_to(other) or other.is_relative_to(one):
            inner, outer = (first, second) if one.is_relative_to(other) else (second, first)
            raise ValueError(f"data folder {path[inner]} lies inside data folder {path[outer]}, so its images "
                             "would be read twice; pass only one of the two --data folders")


def folder_dataset(path, scale: int, cache_dir=None) -> PairedFolderDataset | HRFolderDataset | CombinedPairs:
    """The dataset for a data folder in either layout (see :func:`resolve_layout`), or for a
    list of folders (read as one :class:`CombinedPairs`).

    Uses the folder's own LR images for ``scale`` when it has them, as published
    results do, else makes them with ``imresize``.
    """
    if isinstance(path, (list, tuple)):
        if len(path) == 1:
            return folder_dataset(path[0], scale, cache_dir)
        _check_folders(path)
        return CombinedPairs([folder_dataset(folder, scale, cache_dir) for folder in path])
    hr_dir, lr_dir = resolve_layout(path, scale)
    name = Path(path).name if hr_dir != Path(path) else None
    if lr_dir is not None:
        return PairedFolderDataset(hr_dir, lr_dir, scale, name=name)
    return HRFolderDataset(hr_dir, scale, cache_dir=cache_dir, name=name)


def unlabelled_dataset(path, scale: int) -> LRFolderDataset | CombinedPairs:
    """The images of a folder (or of a list of folders, read as one set) as unlabelled LR inputs
    (:class:`LRFolderDataset`) for a teacher of ×``scale``.

    The images are those directly in the folder, or in its HR folder when it is a dataset root
    (``T91`` holding ``HR/``, as :func:`resolve_layout` finds it); LR folders of a dataset root are not read.
    """
    if isinstance(path, (list, tuple)):
        if len(path) == 1:
            return unlabelled_dataset(path[0], scale)
        _check_folders(path)
        return CombinedPairs([unlabelled_dataset(folder, scale) for folder in path])
    folder, _ = resolve_layout(path, scale)
    return LRFolderDataset(folder, scale, name=Path(path).name)
