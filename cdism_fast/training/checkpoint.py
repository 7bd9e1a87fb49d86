"""Checkpoint files: atomic writes, RNG states, and loading with clear errors.

A checkpoint is written to a temporary file in the target's own folder,
flushed and fsync'ed, and only then renamed over the target (``os.replace`` is
atomic on POSIX and Windows), after which the folder itself is fsync'ed so the
rename survives a power cut. A failure at any point (disk full, killed
process) leaves the previous checkpoint untouched and removes the partial
file.
"""
from __future__ import annotations

import errno
import io
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CheckpointError", "atomic_save", "load_checkpoint", "capture_rng_state", "restore_rng_state"]


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says what is kept and what to do."""

    exit_code = 2  # the command line prints the message alone (cdism_fast.cli.main)


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


def atomic_save(obj: Any, path) -> Path:
    """``torch.save(obj)`` to ``path`` so that ``path`` is either the old file or the complete new one.

    The object is serialised in memory first (a pickling error never touches
    the disk), then written under a temporary name beside ``path``.
    Raises :class:`CheckpointError` (from the ``OSError``) when the write
    fails, saying that the previous file is intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(descriptor)
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} existed"
        reason = "the disk is full" if error.errno == errno.ENOSPC else str(error)
        raise CheckpointError(f"could not write {path} ({len(data) / 2**20:.1f} MiB): {reason}; {kept}. "
                              "Free space (or choose another --out) and resume.") from error
    _fsync_folder(path.parent)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a file written by :func:`atomic_save` (a dict), with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises several kinds for damaged or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint dict")
    return state


def capture_rng_state() -> dict:
    """The states of every random generator a training step may draw from."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Undo :func:`capture_rng_state`: the generators continue exactly where they were."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:  # another machine: restore the devices both have
            for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, device)
