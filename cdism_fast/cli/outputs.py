"""The checks a command makes, before any work, on a file the user names for it to write (``eval --json``,
``export OUT``, ``upscale OUT``).

A target is refused, in one line naming the option and the fix, when its folder
is missing (it is never created from a typed path) or not writable, when it is
a folder, FIFO or device, when it is one of the command's inputs or a file in
one of its input folders (by resolved path, or by inode for another spelling
or a hard link), when it lies in a
cdism-fast run folder (a folder with a ``stage.json`` stage record, written
only by its stage), and, unless ``--force`` is given, when it exists and was
not written by this command (each command marks its files: see ``ours``).
"""
from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from ..safe_io import check_target
from ..training.artifacts import STAGE_FILE, read_stage

__all__ = ["check_output_file", "input_files", "add_force_argument"]

#: Stage records larger than this are not read while looking for run folders.
_STAGE_RECORD_LIMIT = 1 << 20


def add_force_argument(parser, what: str) -> None:
    parser.add_argument("--force", action="store_true",
                        help=f"replace {what} that this command did not write (never an input of the command or a "
                             "file of a run folder)")


def input_files(paths: Iterable[Path]) -> list[Path]:
    """``paths`` (files or folders), each folder with every file below it: what a target must not be."""
    found = []
    for path in paths:
        path = Path(path)
        found.append(path)
        if path.is_dir():
            found += [entry for entry in path.rglob("*") if entry.is_file()]
    return found


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _run_folder(path: Path) -> Path | None:
    """The innermost run folder that ``path`` lies in, if any."""
    for folder in path.parents:
        record = folder / STAGE_FILE
        try:
            info = os.lstat(record)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode) or info.st_size > _STAGE_RECORD_LIMIT:
            continue
        try:
            if read_stage(folder) is not None:
                return folder
        except ValueError:  # a stage.json of another program
            continue
    return None


def check_output_file(path: Path | str, option: str, inputs: Iterable[Path], ours: Callable[[Path], bool],
                      force: bool) -> Path:
    """Refuse ``path`` (as typed: a ``str`` tells an empty one) as the file ``option`` writes (see the
    module's docstring); returns it as a Path.

    ``inputs``: the files and folders the command reads; ``ours(path)``: whether an existing regular file
    ``path`` was written by this command, which may then replace it without ``--force``."""
    if not str(path):  # Path("") would be the working directory
        raise ValueError(f"{option} is empty; name the file to write (nothing was written)")
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"{option} {path}: the folder {folder} {state}; create it first or choose another "
                                "path (nothing was written)")
    try:
        check_target(path)
    except OSError as error:
        raise type(error)(f"{option}: {error}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: the folder {folder} is not writable; choose another path or "
                              "change its permissions (nothing was written)")
    resolved = path.resolve()
    identity = _identity(path)
    for source in inputs:
        source = Path(source)
        if source.resolve() == resolved or (identity is not None and _identity(source) == identity):
            spelling = "" if source == path else f" ({source})"
            raise ValueError(f"{option} {path} is an input of this command{spelling}; writing it would overwrite "
                             "the input: choose another path (nothing was written)")
    run = _run_folder(resolved)
    if run is not None:
        raise ValueError(f"{option} {path} lies in the run folder {run}, whose files only its stage writes; "
                         "choose a path outside it (nothing was written)")
    if os.path.lexists(path) and not force:
        mine = stat.S_ISREG(os.lstat(path).st_mode) and ours(path)
        if not mine:
            raise FileExistsError(f"{option} {path} exists and was not written by this command; pass --force to "
                                  "replace it, or choose another path (nothing was written)")
    return path
