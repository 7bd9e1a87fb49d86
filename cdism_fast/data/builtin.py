"""The built-in images: natural photographs that ship inside scikit-image's wheel.

They let the workflow run with no data given. Only the colour photographs are
used (the wheel also holds greyscale test charts, textures and synthetic
images). The two motorcycle images are a stereo pair of one scene, so both are
on the training side; the held-out images show subjects that no training
image shows.

scikit-image is never imported (that is slow and not needed): its files are
found from the installed package's location. Users who bring their own data
do not need it at all.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .datasets import HRFolderDataset

__all__ = ["BUILTIN_SPLITS", "builtin_image_paths", "builtin_dataset"]

BUILTIN_SPLITS = {
    "train": ("astronaut.png", "hubble_deep_field.jpg", "motorcycle_left.png", "motorcycle_right.png",
              "retina.jpg", "rocket.jpg"),
    "heldout": ("chelsea.png", "coffee.png"),
}


def _skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "no data was given and the built-in sample images are unavailable because scikit-image is not "
            "installed; pass a folder of images (e.g. --data DIR) or run: pip install scikit-image "
            "(or pip install 'cdism_fast[demo]')")
    return Path(spec.origin).parent / "data"


def builtin_image_paths(split: str) -> list[Path]:
    """Paths of the built-in ``"train"`` or ``"heldout"`` photographs."""
    if split not in BUILTIN_SPLITS:
        raise ValueError(f"unknown built-in split {split!r}; use one of {', '.join(BUILTIN_SPLITS)}")
    folder = _skimage_data_dir()
    paths = [folder / name for name in BUILTIN_SPLITS[split]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"built-in image {missing[0]} is missing from the installed scikit-image; "
                                "reinstall it (pip install --force-reinstall scikit-image) or pass your own data")
    return paths


def builtin_dataset(split: str, scale: int, cache_dir=None) -> HRFolderDataset:
    """The built-in ``split`` as an :class:`HRFolderDataset` named ``builtin-<split>``."""
    return HRFolderDataset(builtin_image_paths(split), scale, cache_dir=cache_dir, name=f"builtin-{split}")
