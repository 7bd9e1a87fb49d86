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
"""
from __future__ import annotations

import contextlib
import os
import pickle
import secrets
from pathlib import Path

import torch

__all__ = ["read_torch_file", "atomic_open", "atomic_write", "remove_stale_temporaries", "temporary_files",
           "TEMPORARY_SUFFIX"]

TEMPORARY_SUFFIX = ".partial"
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


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


def temporary_files(folder, names) -> list[Path]:
    """The temporary files :func:`atomic_write` makes for ``names`` in ``folder`` (left by a killed process)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    prefixes = tuple(f".{Path(name).name}." for name in names)
    return sorted(entry for entry in folder.iterdir()
                  if entry.name.startswith(prefixes) and entry.name.endswith(TEMPORARY_SUFFIX))


def remove_stale_temporaries(folder, names) -> list[Path]:
    """Remove what :func:`temporary_files` finds (links themselves, never what they point to)."""
    removed = []
    for entry in temporary_files(folder, names):
        try:
            entry.unlink()
            removed.append(entry)
        except FileNotFoundError:
            pass
    return removed


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
def atomic_open(path):
    """A binary stream whose content replaces ``path`` in one rename when the block ends without error.

    The stream is a fresh temporary file beside ``path`` (``O_CREAT | O_EXCL |
    O_NOFOLLOW``, a random name, the process umask's mode). It is fsynced and
    renamed over ``path`` only when the block completes; on any exception
    (``KeyboardInterrupt`` and a full disk included) it is removed and ``path``
    keeps its old content. ``OSError`` from creating it names ``path``.
    """
    path = Path(path)
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {folder} is a file, not a folder; choose another path")
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        temporary = folder / f".{path.name}.{secrets.token_hex(6)}{TEMPORARY_SUFFIX}"
        try:
            descriptor = os.open(temporary, _CREATE_FLAGS, 0o666)
            break
        except FileExistsError:  # taken (or planted): draw another name
            continue
        except OSError as error:  # a read-only or full folder: name the file that was to be written
            raise type(error)(error.errno, error.strerror, str(path)) from error
    try:
        with open(descriptor, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(folder)


def atomic_write(path, data) -> Path:
    """Write ``data`` (bytes) to ``path`` so that ``path`` is either its old content or all of the new one.

    Raises the ``OSError`` of a failed write (disk full, read-only folder) after
    removing the temporary file; ``path`` is then untouched.
    """
    with atomic_open(path) as stream:
        stream.write(data)
    return Path(path)
