"""Checkpoint files: atomic writes, RNG states, and loading that never runs a file's code.

A checkpoint is written with :func:`cdism_fast.safe_io.atomic_write`: to a
fresh temporary file in the target's own folder, flushed and fsync'ed, then
renamed over the target, after which the folder itself is fsync'ed so the
rename survives a power cut. A failure at any point (disk full, killed
process) leaves the previous checkpoint untouched and removes the partial
file (a killed process's one is removed when its run folder is next prepared).

Everything in a checkpoint is a tensor or a plain container (the NumPy RNG
state is stored as a tensor), so it is read with ``weights_only=True``: a
crafted file is refused before any of its code runs.
"""
from __future__ import annotations

import errno
import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..safe_io import atomic_write, read_torch_file

__all__ = ["CheckpointError", "atomic_save", "load_checkpoint", "capture_rng_state", "restore_rng_state"]


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says what is kept and what to do."""

    exit_code = 2  # the command line prints the message alone (cdism_fast.cli.main)


def atomic_save(obj: Any, path) -> Path:
    """``torch.save(obj)`` to ``path`` so that ``path`` is either the old file or the complete new one.

    The object is serialised in memory first (a pickling error never touches
    the disk). Raises :class:`CheckpointError` (from the ``OSError``) when the
    write fails, saying that the previous file is intact.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    try:
        return atomic_write(path, data)
    except OSError as error:
        kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} existed"
        reason = "the disk is full" if error.errno == errno.ENOSPC else str(error)
        raise CheckpointError(f"could not write {path} ({len(data) / 2**20:.1f} MiB): {reason}; {kept}. "
                              "Free space (or choose another --out) and resume.") from error


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a file written by :func:`atomic_save` (a dict), with one-line errors that name the file."""
    try:
        state = read_torch_file(path, "checkpoint", map_location=map_location)
    except ValueError as error:
        raise CheckpointError(str(error)) from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint dict")
    return state


def capture_rng_state() -> dict:
    """The states of every random generator a training step may draw from (tensors and plain values)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"generator": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Undo :func:`capture_rng_state`: the generators continue exactly where they were."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["generator"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:  # another machine: restore the devices both have
            for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, device)
