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
structure), the decoded LR image's pixels, the scale, the tiling and the
autocast dtype: a changed teacher or image gets new entries, a resumed run
and other runs with the same teacher reuse them.

Every file is written by :func:`~cdism_fast.safe_io.atomic_open` (a fresh
random temporary, renamed into place), the array first and the record last:
the record is the commit point. An entry is built under its lock file
(``O_EXCL``, holding the owner's pid and host; a dead owner's lock is taken
over), so processes sharing a folder wait for each other's entries and
reuse them. Entries are read only from regular files (``lstat``, then
``O_NOFOLLOW``), the record up to a small fixed size, the array mapped only
where the header, the file size and the record agree; a sound-looking entry
whose values are not finite or lie outside :data:`VALUE_RANGE` is rebuilt.
Under DDP each rank builds its share (image ``i`` on rank
``i % world_size``) and waits for the others.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import tempfile
import time
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import safe_io
from . import distributed

__all__ = ["TeacherCache", "TeacherCacheError", "teacher_fingerprint", "default_cache_folder", "cache_folder",
           "CACHE_TILE", "CACHE_OVERLAP", "VALUE_RANGE"]

#: Tile side (LR pixels) and overlap of the teacher's pass over a whole image: bounds its memory.
CACHE_TILE = 256
CACHE_OVERLAP = 16
#: The values a teacher mapping RGB [0, 1] to RGB [0, 1] can sanely output (overshoot included); an entry
#: holding anything else (NaN and inf included) is rebuilt, and a teacher producing it is refused.
VALUE_RANGE = (-1.0, 2.0)
_FORMAT = "cdism_fast.teacher_cache/1"
#: Bytes of an entry's .npy header and .json record, beyond its pixels (an upper bound).
_ENTRY_OVERHEAD = 4096
#: The most bytes read from a record or a lock file (a link to /dev/zero is never read unboundedly).
_RECORD_LIMIT = 1 << 16
#: Seconds between two looks at an entry another process is building, and before saying that it waits.
_LOCK_POLL = 0.05
_LOCK_PATIENCE = 60.0
_OFF = "off"
#: Values of --teacher-cache that mean "off" in other tools: refused rather than taken as folder names.
_LOOKS_LIKE_OFF = frozenset({"none", "no", "false", "0", "disable", "disabled"})
#: Seconds after which an empty lock file (its owner died before writing its pid) is stale.
_EMPTY_LOCK_AGE = 10.0
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
_LOCK_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


class TeacherCacheError(ValueError):
    """A cache folder or entry that cannot be used; the message names the path and the fix."""


class _BadEntry(ValueError):
    """Why an entry cannot be used; ``rebuild``: the cache replaces it itself (one warning), else the user decides."""

    def __init__(self, message: str, rebuild: bool = False, incomplete: bool = False):
        super().__init__(message)
        self.rebuild = rebuild or incomplete
        self.incomplete = incomplete  # a build stopped (or running) before its record: rebuilt without a word


def default_cache_folder() -> Path:
    """``$CDISM_CACHE/teacher-outputs`` (``~/.cache/cdism-fast/teacher-outputs`` by default)."""
    from .._extension import cache_dir

    if os.environ.get("CDISM_CACHE") is not None and not os.environ["CDISM_CACHE"].strip():
        raise TeacherCacheError("the environment variable CDISM_CACHE is set but empty: set it to a folder or unset "
                                "it (the default is ~/.cache/cdism-fast)")
    return cache_dir() / "teacher-outputs"


def cache_folder(value: Optional[str]) -> Optional[Path]:
    """The cache folder of a ``--teacher-cache`` value: None (not given) → :func:`default_cache_folder`,
    ``"off"`` (any case) → None (the teacher runs on every patch), any other text → that folder; an empty value,
    and words such as ``none`` that mean "off" elsewhere, are errors (``./none`` is the folder)."""
    if value is None:
        return default_cache_folder()
    if value.strip().lower() == _OFF:
        return None
    if not value.strip():
        raise TeacherCacheError(f"--teacher-cache {value!r} names no folder; pass --teacher-cache DIR, or "
                                f"--teacher-cache {_OFF} for the per-patch teacher")
    if value.strip().lower() in _LOOKS_LIKE_OFF:  # a folder of that name is more likely a slip than meant
        raise TeacherCacheError(f"--teacher-cache {value}: pass --teacher-cache {_OFF} to run the teacher on every "
                                f"patch, or --teacher-cache ./{value} for a folder of that name")
    return Path(value)


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


def _image_digest(image: np.ndarray) -> str:
    """SHA-256 of a decoded image's pixels and shape: what the teacher's output depends on."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{image.dtype}|{image.shape}|".encode())
    digest.update(memoryview(image).cast("B"))
    return digest.hexdigest()


def _value_problem(array: np.ndarray) -> Optional[str]:
    """Why the values cannot be a teacher's output (NaN, inf, outside VALUE_RANGE), or None."""
    low, high = float(array.min()), float(array.max())  # NaN propagates and fails both comparisons
    if VALUE_RANGE[0] <= low and high <= VALUE_RANGE[1]:
        return None
    return f"holds values from {low} to {high}, outside [{VALUE_RANGE[0]:g}, {VALUE_RANGE[1]:g}]"


def _kind(mode: int) -> Optional[str]:
    """What a non-regular file is, in words (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def _open_regular(path: Path):
    """A binary stream on ``path`` only if it is a regular file (never through a link, never blocking on a FIFO);
    None when it does not exist."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    kind = _kind(mode)
    if kind is not None:
        raise _BadEntry(f"has {path.name} as {kind}, not a file the cache wrote", rebuild=kind != "a folder")
    descriptor = os.open(path, _READ_FLAGS)
    stream = open(descriptor, "rb")
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):  # replaced between lstat and open
        stream.close()
        raise _BadEntry(f"has {path.name} as a file that is not regular", rebuild=True)
    return stream


def _read_bounded(path: Path) -> Optional[bytes]:
    """At most _RECORD_LIMIT bytes of a regular file (None when it does not exist); longer is damage."""
    stream = _open_regular(path)
    if stream is None:
        return None
    with stream:
        data = stream.read(_RECORD_LIMIT + 1)
    if len(data) > _RECORD_LIMIT:
        raise _BadEntry(f"has a record {path.name} longer than {_RECORD_LIMIT} bytes", rebuild=True)
    return data


class TeacherCache:
    """The teacher's float16 outputs for every image of a :class:`~cdism_fast.data.TrainingPatches`.

    :meth:`prepare` checks the folder and the entries, then builds the
    missing ones; :meth:`target` (what the patches call) memory-maps an entry
    and verifies it the first time each process opens it, returning None for
    an entry that is damaged or was changed, so that no sample learns from
    it; :meth:`repair` rebuilds such entries. Each image's pixels are hashed
    once, here.
    """

    def __init__(self, folder, teacher: nn.Module, patches, *, tile: int = CACHE_TILE,
                 overlap: int = CACHE_OVERLAP, amp_dtype: Optional[torch.dtype] = None, progress: bool = True):
        self.folder = Path(folder)
        self.teacher = teacher
        self.patches = patches
        self.scale, self.tile, self.overlap, self.amp_dtype = patches.scale, tile, overlap, amp_dtype
        self.progress = progress
        self.fingerprint = teacher_fingerprint(teacher)
        settings = f"x{self.scale}|tile {tile}|overlap {overlap}|amp {amp_dtype}"
        self.keys = [f"lr {_image_digest(patches.lr_image(image))}|{settings}" for image in range(len(patches.names))]
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

    @staticmethod
    def lock_path(path: Path) -> Path:
        return path.with_suffix(".lock")

    def _problem(self, image: int) -> Optional[_BadEntry]:
        """Why entry ``image`` cannot be used (None when it is sound): a full check, checksum and values included."""
        try:
            self._open(image)
        except _BadEntry as problem:
            return problem
        except (OSError, ValueError, EOFError) as error:
            return _BadEntry(f"cannot be read ({error})")
        return None

    def _record(self, image: int) -> dict:
        path = self.record_path(self.paths[image])
        data = _read_bounded(path)
        if data is None:
            raise _BadEntry("is not complete (no record)", incomplete=True)
        try:
            record = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _BadEntry(f"has a record {path.name} that is not JSON", rebuild=True) from None
        if not isinstance(record, dict) or not isinstance(record.get("crc32"), int):
            raise _BadEntry(f"has a record {path.name} that is not a cache record", rebuild=True)
        if record.get("format") != _FORMAT or record.get("teacher") != self.fingerprint:
            raise _BadEntry("is an entry of another teacher")
        if record.get("key") != self.keys[image]:
            raise _BadEntry(f"is an entry of another image ({record.get('key')!r})")
        return record

    def _open(self, image: int) -> np.ndarray:
        path = self.paths[image]
        record = self._record(image)
        stream = _open_regular(path)
        if stream is None:
            raise _BadEntry("is not complete (no array)", incomplete=True)
        expected = self.shape(image)
        with stream:
            try:
                version = np.lib.format.read_magic(stream)
                if version not in _HEADER_READERS:
                    raise ValueError(f"format version {version}")
                shape, fortran, dtype = _HEADER_READERS[version](stream)
            except (ValueError, EOFError) as error:  # numpy: bad magic, bad or truncated header
                raise _BadEntry(f"is truncated or not a .npy array ({error})") from None
            if dtype != np.float16 or tuple(shape) != expected or fortran:
                raise _BadEntry(f"holds a {dtype} array of shape {tuple(shape)}, not float16 {expected}")
            offset = stream.tell()
            size = os.fstat(stream.fileno()).st_size
            if size != offset + 2 * int(np.prod(expected)):
                raise _BadEntry(f"is truncated or too long ({size} bytes, its header declares "
                                f"{offset + 2 * int(np.prod(expected))})")
            array = np.memmap(stream, dtype=dtype, mode="r", offset=offset, shape=expected)
        if _checksum(array) != record["crc32"]:
            raise _BadEntry("does not match its checksum (damaged)")
        problem = _value_problem(array)
        if problem is not None:
            raise _BadEntry(problem, rebuild=True)
        return array

    def target(self, image: int) -> Optional[np.ndarray]:
        """The mapped output of image ``image``, or None when its entry is damaged (re-checked when the
        file changes)."""
        try:
            info = os.lstat(self.paths[image])
        except OSError:
            self._mapped.pop(image, None)
            return None
        signature = (info.st_ino, info.st_size, info.st_mtime_ns)
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

    # ------------------------------------------------------------------ locks
    @contextmanager
    def _locked(self, image: int):
        """Hold entry ``image``'s lock file (``O_EXCL``: pid and host), waiting while a live process holds it."""
        lock = self.lock_path(self.paths[image])
        owner = f"{os.getpid()} {socket.gethostname()}".encode()
        started, told = time.monotonic(), False
        while True:
            try:
                descriptor = os.open(lock, _LOCK_FLAGS, 0o666)
            except FileExistsError:
                if not self._take_over(lock):
                    if not told and time.monotonic() - started > _LOCK_PATIENCE:
                        warnings.warn(f"teacher cache: waiting for another process to build {self.paths[image]} "
                                      f"(its lock {lock} names the process and the host); delete the lock if that "
                                      "process is gone", stacklevel=4)
                        told = True
                    time.sleep(_LOCK_POLL)
                continue
            try:
                os.write(descriptor, owner)
            finally:
                os.close(descriptor)
            break
        try:
            yield
        finally:
            try:
                os.unlink(lock)
            except FileNotFoundError:
                pass

    @staticmethod
    def _take_over(lock: Path) -> bool:
        """Remove a lock whose owner is gone (a dead pid on this host, or not a lock the cache wrote); True if
        removed or already gone."""
        try:
            held = _read_bounded(lock)
        except (OSError, _BadEntry):
            held = b"?"  # a link, a FIFO, a device or a folder planted at the lock's name
        if held is None:
            return True
        fields = held.decode("utf-8", "replace").split()
        if not fields:  # the owner is between creating and writing it, or died there
            try:
                if time.time() - os.lstat(lock).st_mtime < _EMPTY_LOCK_AGE:
                    return False
            except FileNotFoundError:
                return True
        if len(fields) == 2 and fields[0].isdigit():
            if fields[1] != socket.gethostname():
                return False  # another machine's process: only it can release it
            if safe_io.process_alive(int(fields[0])):
                return False
        try:
            if os.path.isdir(lock) and not os.path.islink(lock):
                raise TeacherCacheError(f"teacher cache lock {lock} is a folder: remove it, or pass "
                                        f"--teacher-cache {_OFF}")
            os.unlink(lock)
        except FileNotFoundError:
            pass
        return True

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
        written, built = 0, []
        for done, image in enumerate(bar):
            if self._ensure(image, left=mine[done:]):
                built.append(image)
                written += self.entry_bytes(image) - _ENTRY_OVERHEAD
                bar.set_postfix_str(f"{written / 2**20:.1f} MiB", refresh=False)
        bar.close()
        distributed.barrier()
        self.built = built
        if context.is_main and self.progress:
            total = sum(self.paths[i].stat().st_size for i in range(len(self.paths)))
            tqdm.write(f"teacher cache: {len(self.paths)} images, {total / 2**20:.1f} MiB in "
                       f"{self.paths[0].parent} ({len(missing)} built in {time.perf_counter() - started:.1f} s)")

    def _check(self) -> list[int]:
        """The images whose entry is missing or to be rebuilt (one warning for those); raises for an unusable
        folder, entry or disk."""
        folder = self.paths[0].parent
        fix = f"or pass --teacher-cache {_OFF}"
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            kind = "a symbolic link" if folder.is_symlink() else "not a folder"
            raise TeacherCacheError(f"teacher cache folder {folder} is {kind}, not a folder the cache made (it "
                                    f"never writes through links); remove {folder} (its entries are then rebuilt), "
                                    f"pass --teacher-cache DIR, {fix}")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test"):
                pass
        except OSError as error:
            raise TeacherCacheError(f"teacher cache folder {folder} is not writable ({error.strerror or error}); "
                                    f"pass --teacher-cache DIR with a writable folder, {fix}") from None
        missing, replaced = [], []
        for image, path in enumerate(self.paths):
            problem = self._problem(image)
            if problem is not None and not problem.rebuild:
                with self._locked(image):  # another process may be writing it: look again once it is done
                    problem = self._problem(image)
            if problem is None:
                continue
            if not problem.rebuild:
                raise TeacherCacheError(f"teacher cache entry {path} {problem}; delete {path} and "
                                        f"{self.record_path(path).name} (the entry is then rebuilt), {fix}")
            missing.append(image)
            if not problem.incomplete:
                replaced.append((path, problem))
        if replaced:
            path, problem = replaced[0]
            warnings.warn(f"teacher cache: {len(replaced)} unusable entr{'y' if len(replaced) == 1 else 'ies'} "
                          f"rebuilt (first {path}: {problem})", stacklevel=3)
        needed = sum(self.entry_bytes(image) for image in missing)
        free = shutil.disk_usage(folder).free
        if needed > free:
            raise TeacherCacheError(f"the teacher cache needs {needed / 2**20:.1f} MiB in {folder} but only "
                                    f"{free / 2**20:.1f} MiB are free; free disk space, pass --teacher-cache DIR "
                                    f"on a larger disk, {fix}")
        return missing

    def _ensure(self, image: int, left=()) -> bool:
        """Build entry ``image`` under its lock unless another process built it meanwhile; True if built here."""
        path = self.paths[image]
        with self._locked(image):
            problem = self._problem(image)
            if problem is None:
                return False
            if not problem.rebuild:
                raise TeacherCacheError(f"teacher cache entry {path} {problem}; delete {path} and "
                                        f"{self.record_path(path).name} (the entry is then rebuilt), or pass "
                                        f"--teacher-cache {_OFF}")
            self._replace(image, left)
        return True

    def _replace(self, image: int, left=()) -> None:
        """Build entry ``image`` (its lock held) in place of whatever is at its names.

        A failed write (a full disk) raises TeacherCacheError naming the folder and the space the entries
        ``left`` still need; the entry's temporary files are removed by then."""
        path = self.paths[image]
        names = (path, self.record_path(path))
        safe_io.remove_stale_temporaries(path.parent, [name.name for name in names])
        for name in names:
            try:
                mode = os.lstat(name).st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
                os.unlink(name)  # a link, FIFO or device at the cache's own name: the name only
        try:
            self.build_entry(image)
        except OSError as error:
            left = list(left) or [image]
            needed = sum(self.entry_bytes(i) for i in left)
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise TeacherCacheError(
                f"writing the teacher cache in {path.parent} failed ({reason}); the {len(left)} missing "
                f"entr{'y' if len(left) == 1 else 'ies'} need {needed / 2**20:.1f} MiB there: free disk space, pass "
                f"--teacher-cache DIR on another disk, or --teacher-cache {_OFF}") from error

    def build_entry(self, image: int) -> None:
        """Run the teacher on the whole image and write its entry: the array, then the record (the commit point)."""
        from ..evaluation import upscale

        lr = torch.from_numpy(np.ascontiguousarray(self.patches.lr_image(image)))
        # Tiles run on the teacher's device; the output is assembled on the CPU.
        x = lr.float().div_(255.0)
        output = upscale(self.teacher, x, self.scale, tile=self.tile, overlap=self.overlap,
                         amp_dtype=self.amp_dtype)
        array = output.numpy().astype(np.float16)
        problem = _value_problem(array)
        if problem is not None:
            raise TeacherCacheError(f"the teacher's output for {self.patches.names[image]} {problem} in float16; "
                                    f"check the teacher (it maps RGB [0, 1] to RGB [0, 1]), or pass "
                                    f"--teacher-cache {_OFF}")
        path = self.paths[image]
        record = {"format": _FORMAT, "teacher": self.fingerprint, "key": self.keys[image],
                  "image": self.patches.names[image], "shape": list(array.shape), "crc32": _checksum(array)}
        with safe_io.atomic_open(path) as stream:
            np.lib.format.write_array(stream, array, allow_pickle=False)
        safe_io.atomic_write(self.record_path(path), json.dumps(record, indent=1).encode("utf-8"))

    def repair(self) -> list[int]:
        """Rebuild every entry that cannot be read now (found damaged during training); returns their images."""
        broken = [image for image in range(len(self.paths)) if self._problem(image) is not None]
        if broken and not self.warned:
            warnings.warn(f"teacher cache: {len(broken)} damaged entr{'y' if len(broken) == 1 else 'ies'} found "
                          f"during training (first {self.paths[broken[0]]}); rebuilt, and the affected samples "
                          "used the live teacher", stacklevel=2)
            self.warned = True
        for image in broken:
            with self._locked(image):
                self._replace(image)
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
