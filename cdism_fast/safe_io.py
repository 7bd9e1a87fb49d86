"""Reading and writing files without running their code or clobbering what is not ours.

* :func:`read_torch_file` loads with ``weights_only=True`` only: a file whose
  pickle names anything but tensors and plain containers is refused before
  any of it runs, and every failure is one ``ValueError`` line naming the file.
* :func:`atomic_open` (and :func:`atomic_write` for bytes in memory) writes to
  a fresh temporary file beside the target
  (``O_CREAT | O_EXCL | O_NOFOLLOW``: a planted file or link at that name is
  never opened), fsyncs it and renames it over the target, which replaces a
  link at the target instead of writing through it. The temporary file is
  removed on every exit path; one left by a killed process is removed by
  :func:`remove_stale_temporaries` the next time its folder is prepared.
  A target that is a folder, FIFO or device is refused, and a failed write
  raises :class:`WriteError`, one line naming the file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import secrets
import stat
from pathlib import Path

import torch

__all__ = ["read_torch_file", "atomic_open", "atomic_write", "remove_stale_temporaries", "temporary_files",
           "temporary_target", "check_target", "process_alive", "WriteError", "TEMPORARY_SUFFIX"]

TEMPORARY_SUFFIX = ".partial"
#: ``.NAME.<12 hex digits>.partial``: the one form of :func:`atomic_open`'s temporary names.
_TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}" + re.escape(TEMPORARY_SUFFIX) + "$")
_TOKEN_BYTES = 6
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
#: What to do about each failure of the file system that a write can meet (EDQUOT is not on every platform).
_ADVICE = {getattr(errno, name): advice for name, advice in (
    ("ENOSPC", "free space on its disk or write it elsewhere"),
    ("EDQUOT", "free space within the disk quota or write it elsewhere"),
    ("EROFS", "the file system is read-only: write it elsewhere"),
    ("EFBIG", "the file is too large for its file system: write it elsewhere"),
    ("EACCES", "check the folder's permissions or write it elsewhere"),
    ("EPERM", "check the folder's permissions or write it elsewhere")) if hasattr(errno, name)}


class WriteError(OSError):
    """Writing a file failed (disk full, read-only, no permission); the one line names the file.

    ``errno`` and ``strerror`` are the failure's; ``outcome`` says what is left (for an atomic write: nothing)."""

    exit_code = 2  # the command line prints the message alone (cdism_fast.cli.main)

    def __init__(self, path, error: OSError, outcome: str = "nothing of it was written"):
        super().__init__(error.errno, error.strerror or str(error))
        self.path, self.outcome = Path(path), outcome

    def __str__(self) -> str:
        advice = _ADVICE.get(self.errno, "check the path or write it elsewhere")
        return f"cannot write {self.path}: {self.strerror}; {advice} ({self.outcome})"

    def __reduce__(self):  # across processes (DataLoader workers) with its own arguments
        return _write_error, (str(self.path), self.errno, self.strerror, self.outcome)


def _write_error(path: str, number: int, strerror: str, outcome: str) -> WriteError:
    return WriteError(path, OSError(number, strerror), outcome)


def _first_line(error: BaseException) -> str:
    """The error's type and first sentence (torch's next ones speculate about causes)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0].split('. ')[0].rstrip('.')}" if lines else type(error).__name__


def _unpickler_detail(error: BaseException) -> str:
    """The line of torch's weights-only refusal that says what was refused (the rest is boilerplate)."""
    boilerplate = ("weights only load failed", "please file an issue", "check the documentation")
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines = [line for line in lines if not line.lower().startswith(boilerplate)] or lines or [type(error).__name__]
    detail = lines[-1].removeprefix("WeightsUnpickler error:").strip()
    return detail.split(". ")[0].rstrip(".")  # the first sentence; the next ones suggest allowlisting it


def read_torch_file(path, what: str = "file", map_location="cpu"):
    """``torch.load(path, weights_only=True)``, with one-line errors that name ``what`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes); it was never written completely: use another file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        detail = _unpickler_detail(error)
        if any(word in detail.lower() for word in ("global", "reduce", "build", "class")):
            raise ValueError(f"{what} {path} was refused: it holds Python objects other than tensors and plain "
                             f"containers, and loading them could run code ({detail}; none of it ran); use a file "
                             "written by cdism-fast or a plain state dict") from error
        raise ValueError(f"cannot read {what} {path} ({detail}): it is damaged or not a PyTorch file; "
                         "use another file") from error
    except Exception as error:  # torch raises several kinds for truncated or foreign files
        raise ValueError(f"cannot read {what} {path} ({_first_line(error)}): it is truncated, damaged or not a "
                         "PyTorch file; use another file") from error


def temporary_target(name: str) -> str | None:
    """The target name of an :func:`atomic_open` temporary called ``name``, or None when it is not one."""
    match = _TEMPORARY_NAME.match(name)
    return match.group("name") if match else None


def temporary_files(folder, names=None) -> list[Path]:
    """The temporary files :func:`atomic_open` makes in ``folder`` (for the targets ``names``; None: any)."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return []
    wanted = None if names is None else {Path(name).name for name in names}
    return sorted(entry for entry in folder.iterdir()
                  if (target := temporary_target(entry.name)) is not None and (wanted is None or target in wanted))


def _unused(entry: Path) -> bool:
    """Whether no process is writing the temporary ``entry`` (:func:`atomic_open` holds a lock on it)."""
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): a writer cannot be told from a dead one
        return False
    try:
        descriptor = os.open(entry, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    except OSError:  # a planted link or a file of someone else: not a writer's
        return True
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return True
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(descriptor)


def remove_stale_temporaries(folder, names=None, shared: bool = False) -> list[Path]:
    """Remove what :func:`temporary_files` finds (links themselves, never what they point to).

    ``shared``: other processes may be writing ``folder`` now (a data cache): only temporaries that no
    process holds are removed."""
    removed = []
    for entry in temporary_files(folder, names):
        if shared and not _unused(entry):
            continue
        try:
            entry.unlink()
            removed.append(entry)
        except FileNotFoundError:
            pass
    return removed


def check_target(path) -> Path:
    """Refuse ``path`` as a file to write when it exists as a folder, FIFO, socket or device (a link is
    replaced, never followed). Returns ``path``."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"cannot write {path}: it is a folder; choose a file name (nothing was written)")
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise FileExistsError(f"cannot write {path}: it is a FIFO, socket or device, not a regular file; choose "
                              "another path (nothing was written)")
    return path


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # folders cannot be opened on some platforms (Windows): the rename is still atomic
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_open(path, make_folders: bool = True):
    """A binary stream whose content replaces ``path`` in one rename when the block ends without error.

    The stream is a fresh temporary file beside ``path`` (``O_CREAT | O_EXCL |
    O_NOFOLLOW``, a random name, the process umask's mode), locked while it is
    written so that :func:`remove_stale_temporaries` leaves it alone. It is
    fsynced and renamed over ``path`` only when the block completes; on any
    exception (``KeyboardInterrupt`` and a full disk included) it is removed
    and ``path`` keeps its old content. ``path`` must not be a folder, FIFO or
    device (:func:`check_target`); ``make_folders``: create missing parent
    folders (else they are an error naming the folder). A failure of the
    file system raises :class:`WriteError` naming ``path``.
    """
    path = check_target(path)
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {folder} is a file, not a folder; choose another path")
    if not folder.exists() and not make_folders:
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist; create it or choose "
                                "another path (nothing was written)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            temporary = folder / f".{path.name}.{secrets.token_hex(_TOKEN_BYTES)}{TEMPORARY_SUFFIX}"
            try:
                descriptor = os.open(temporary, _CREATE_FLAGS, 0o666)
                break
            except FileExistsError:  # taken (or planted): draw another name
                continue
    except OSError as error:  # a read-only or full folder: name the file that was to be written
        raise WriteError(path, error) from error
    try:
        with open(descriptor, "wb") as stream:
            locked = _lock(descriptor)
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
            if locked:  # renamed while still held, so no cleaner takes it between closing and renaming
                os.replace(temporary, path)
        if not locked:  # an open file cannot be renamed everywhere (Windows)
            os.replace(temporary, path)
    except BaseException as error:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError) and not isinstance(error, WriteError) and error.errno in _ADVICE:
            raise WriteError(path, error) from error
        raise
    _fsync_folder(folder)


def _lock(descriptor: int) -> bool:
    """Hold an advisory lock on the temporary being written; whether one is held."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # a file system without locks: the write itself is still atomic
        return False


def atomic_write(path, data, make_folders: bool = True) -> Path:
    """Write ``data`` (bytes) to ``path`` so that ``path`` is either its old content or all of the new one.

    Raises :class:`WriteError` for a failed write (disk full, read-only folder)
    after removing the temporary file; ``path`` is then untouched.
    """
    with atomic_open(path, make_folders=make_folders) as stream:
        stream.write(data)
    return Path(path)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs (the owner of a lock file: run folders, cache entries).

    >>> import os
    >>> process_alive(os.getpid())
    True
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True
