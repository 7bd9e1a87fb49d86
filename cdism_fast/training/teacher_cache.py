"""The frozen teacher's outputs, computed once per training image and kept on disk for distillation.

In stage 3 the teacher never changes, yet running it on every patch of every
iteration costs most of a training step (EDSR_baseline on 16 patches of 48²:
about 5x the student's whole step on a 2-core CPU). :class:`TeacherCache`
runs the teacher (eval mode, ``no_grad``) once on each whole training LR
image, tiled with overlap as :func:`cdism_fast.evaluation.upscale` does, and
stores the output as float16, one ``.npy`` file per image that every
DataLoader worker memory-maps. :class:`~cdism_fast.data.TrainingPatches`
then cuts the target patch at the HR patch's place, with the HR patch's
flips and transpose.

Semantics, compared with the per-patch teacher: the teacher sees the whole
image, so its output has no patch-border effects; for a convolutional
teacher whose receptive field fits inside the patch, the target equals the
per-patch one away from the patch borders (to float16 rounding). The
flip/transpose is applied to the teacher's output instead of its input.

Entries live in ``<folder>/<teacher fingerprint>/<entry key>.npy`` with a
``.json`` record beside each (teacher fingerprint, image key, shape,
checksum). The entry key hashes the teacher's fingerprint (weights and
structure), the image file's signature (path, size, modification time),
the scale, the tiling and the autocast dtype: a changed teacher or image
gets new entries, a resumed run and other runs with the same teacher reuse
them. Under DDP each rank builds its share (image ``i`` on rank
``i % world_size``) and waits for the others.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed

__all__ = ["TeacherCache", "TeacherCacheError", "teacher_fingerprint", "default_cache_folder",
           "CACHE_TILE", "CACHE_OVERLAP"]

#: Tile side (LR pixels) and overlap of the teacher's pass over a whole image: bounds its memory.
CACHE_TILE = 256
CACHE_OVERLAP = 16
_FORMAT = "cdism_fast.teacher_cache/1"
#: Bytes of an entry's .npy header and .json record, beyond its pixels (an upper bound).
_ENTRY_OVERHEAD = 4096


class TeacherCacheError(ValueError):
    """A cache folder or entry that cannot be used; the message names the path and the fix."""


def default_cache_folder() -> Path:
    """``$CDISM_CACHE/teacher-outputs`` (``~/.cache/cdism-fast/teacher-outputs`` by default)."""
    from .._extension import cache_dir

    return cache_dir() / "teacher-outputs"


def teacher_fingerprint(teacher: nn.Module) -> str:
    """SHA-256 of the teacher's structure (its repr) and of every parameter and buffer, bit for bit."""
    digest = hashlib.sha256(repr(teacher).encode())
    for name, tensor in teacher.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _checksum(array: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


class TeacherCache:
    """The teacher's float16 outputs for every image of a :class:`~cdism_fast.data.TrainingPatches`.

    ``pairs`` is the dataset the patches were made from (its ``cache_key``
    names each image file). :meth:`prepare` checks the folder and the
    entries, then builds the missing ones; :meth:`target` (what the patches
    call) memory-maps an entry and verifies it the first time each process
    opens it, returning None for an entry that is damaged or was changed, so
    that no sample learns from it; :meth:`repair` rebuilds such entries.
    """

    def __init__(self, folder, teacher: nn.Module, patches, pairs, *, tile: int = CACHE_TILE,
                 overlap: int = CACHE_OVERLAP, amp_dtype: Optional[torch.dtype] = None, progress: bool = True):
        if not hasattr(pairs, "cache_key"):
            raise TeacherCacheError(f"the teacher cache needs a dataset of image files (with cache_key), not "
                                    f"{type(pairs).__name__}; pass --teacher-cache off")
        self.folder = Path(folder)
        self.teacher = teacher
        self.patches = patches
        self.scale, self.tile, self.overlap, self.amp_dtype = patches.scale, tile, overlap, amp_dtype
        self.progress = progress
        self.fingerprint = teacher_fingerprint(teacher)
        settings = f"x{self.scale}|tile {tile}|overlap {overlap}|amp {amp_dtype}"
        self.keys = [f"{pairs.cache_key(source)}|{settings}" for source in patches.sources]
        entry_folder = self.folder / self.fingerprint[:20]
        self.paths = [entry_folder / (hashlib.sha256(f"{self.fingerprint}|{key}".encode()).hexdigest()[:24] + ".npy")
                      for key in self.keys]
        self._mapped: dict[int, tuple[tuple, np.ndarray]] = {}
        self.built: list[int] = []
        self.warned = False

    # ----------------------------------------------------------------- entries
    def shape(self, image: int) -> tuple[int, int, int]:
        lr = self.patches.lr_image(image)
        return (3, lr.shape[1] * self.scale, lr.shape[2] * self.scale)

    def entry_bytes(self, image: int) -> int:
        return int(np.prod(self.shape(image))) * 2 + _ENTRY_OVERHEAD

    @staticmethod
    def record_path(path: Path) -> Path:
        return path.with_suffix(".json")

    def _problem(self, image: int) -> Optional[str]:
        """Why entry ``image`` cannot be used (None when it is sound): a full check, checksum included."""
        try:
            self._open(image)
        except (OSError, ValueError, EOFError) as error:
            return str(error)
        return None

    def _open(self, image: int) -> np.ndarray:
        path = self.paths[image]
        record_path = self.record_path(path)
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ValueError(f"has no readable record {record_path.name}") from None
        if record.get("format") != _FORMAT or record.get("teacher") != self.fingerprint:
            raise ValueError("is an entry of another teacher")
        if record.get("key") != self.keys[image]:
            raise ValueError(f"is an entry of another image ({record.get('key')!r})")
        expected = self.shape(image)
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, EOFError) as error:  # numpy: "mmap length is greater than file size", bad header
            raise ValueError(f"is truncated or not a .npy array ({error})") from None
        if array.dtype != np.float16 or tuple(array.shape) != expected:
            raise ValueError(f"holds a {array.dtype} array of shape {tuple(array.shape)}, not float16 {expected}")
        if _checksum(array) != record.get("crc32"):
            raise ValueError("does not match its checksum (damaged)")
        return array

    def target(self, image: int) -> Optional[np.ndarray]:
        """The mapped output of image ``image``, or None when its entry is damaged (re-checked when the
        file changes)."""
        path = self.paths[image]
        try:
            stat = path.stat()
        except OSError:
            self._mapped.pop(image, None)
            return None
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        mapped = self._mapped.get(image)
        if mapped is not None and mapped[0] == signature:
            return mapped[1]
        self._mapped.pop(image, None)
        try:
            array = self._open(image)
        except (OSError, ValueError, EOFError):
            return None
        self._mapped[image] = (signature, array)
        return array

    def __getstate__(self):
        # DataLoader workers get the paths and keys; never the teacher or open memory maps.
        state = self.__dict__.copy()
        state.update(teacher=None, _mapped={})
        return state

    # ------------------------------------------------------------------ build
    def prepare(self) -> None:
        """Check the folder and the existing entries (rank 0), then build the missing ones (every rank its
        share). Errors (one line: the path and the fix) come before any training."""
        context = distributed.current()
        outcome = None
        if context.is_main:
            try:
                outcome = ("ok", self._check())
            except TeacherCacheError as error:
                outcome = ("error", str(error))
        kind, value = distributed.broadcast_object(outcome)
        if kind == "error":
            raise TeacherCacheError(value)
        missing = value
        mine = missing[context.rank::context.world_size]
        started = time.perf_counter()
        bar = tqdm(mine, desc="teacher outputs", unit="image", leave=False,
                   disable=None if (self.progress and context.is_main) else True)
        written = 0
        for image in bar:
            self.build_entry(image, suffix=f".partial{context.rank}")
            written += self.entry_bytes(image) - _ENTRY_OVERHEAD
            bar.set_postfix_str(f"{written / 2**20:.1f} MiB", refresh=False)
        bar.close()
        distributed.barrier()
        self.built = mine
        if context.is_main and self.progress:
            total = sum(self.paths[i].stat().st_size for i in range(len(self.paths)))
            tqdm.write(f"teacher cache: {len(self.paths)} images, {total / 2**20:.1f} MiB in "
                       f"{self.paths[0].parent} ({len(missing)} built in {time.perf_counter() - started:.1f} s)")

    def _check(self) -> list[int]:
        """The images whose entry is missing; raises for an unusable folder, entry or disk."""
        folder = self.paths[0].parent
        fix = "or pass --teacher-cache off"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test"):
                pass
        except OSError as error:
            raise TeacherCacheError(f"teacher cache folder {folder} is not writable ({error.strerror or error}); "
                                    f"pass --teacher-cache DIR with a writable folder, {fix}") from None
        missing = []
        for image, path in enumerate(self.paths):
            if not path.exists():  # a record alone: a build stopped before its last rename
                missing.append(image)
                continue
            problem = self._problem(image)
            if problem is not None:
                raise TeacherCacheError(f"teacher cache entry {path} {problem}; delete {path} and "
                                        f"{self.record_path(path).name} (the entry is then rebuilt), {fix}")
        needed = sum(self.entry_bytes(image) for image in missing)
        free = shutil.disk_usage(folder).free
        if needed > free:
            raise TeacherCacheError(f"the teacher cache needs {needed / 2**20:.1f} MiB in {folder} but only "
                                    f"{free / 2**20:.1f} MiB are free; free disk space, pass --teacher-cache DIR "
                                    f"on a larger disk, {fix}")
        return missing

    def build_entry(self, image: int, suffix: str) -> None:
        """Run the teacher on the whole image and write its entry (record first; each file renamed into place)."""
        from ..evaluation import upscale

        lr = torch.from_numpy(np.ascontiguousarray(self.patches.lr_image(image)))
        # Tiles run on the teacher's device; the output is assembled on the CPU.
        x = lr.float().div_(255.0)
        output = upscale(self.teacher, x, self.scale, tile=self.tile, overlap=self.overlap,
                         amp_dtype=self.amp_dtype)
        array = output.numpy().astype(np.float16)
        if not np.isfinite(array).all():
            raise FloatingPointError(f"the teacher's output for {self.patches.names[image]} is not finite in "
                                     "float16; check the teacher, or pass --teacher-cache off")
        path = self.paths[image]
        record = {"format": _FORMAT, "teacher": self.fingerprint, "key": self.keys[image],
                  "image": self.patches.names[image], "shape": list(array.shape), "crc32": _checksum(array)}
        partial_record = path.with_name(path.stem + suffix + ".json")
        partial_record.write_text(json.dumps(record, indent=1), encoding="utf-8")
        partial_array = path.with_name(path.stem + suffix + ".npy")
        np.save(partial_array, array)
        os.replace(partial_record, self.record_path(path))
        os.replace(partial_array, path)

    def repair(self) -> list[int]:
        """Rebuild every entry that cannot be read now (found damaged during training); returns their images."""
        broken = [image for image in range(len(self.paths)) if self._problem(image) is not None]
        if broken and not self.warned:
            warnings.warn(f"teacher cache: {len(broken)} damaged entr{'y' if len(broken) == 1 else 'ies'} found "
                          f"during training (first {self.paths[broken[0]]}); rebuilt, and the affected samples "
                          "used the live teacher", stacklevel=2)
            self.warned = True
        rank = distributed.current().rank
        for image in broken:
            self.build_entry(image, suffix=f".partial{rank}")
            self._mapped.pop(image, None)
        return broken

    def targets_for(self, target: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """The batch's float targets; samples whose entry was unreadable (NaN) get the live teacher's output
        on their LR patch, and the damaged entries are rebuilt."""
        target = target.float()
        bad = ~torch.isfinite(target).flatten(1).all(1)
        if bool(bad.any()):
            with torch.no_grad():
                target[bad] = self.teacher(lr[bad]).float()
            self.repair()
        return target
