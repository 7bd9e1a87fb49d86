"""Training checkpoints (resumable state): atomic replacement, disk-full safety, RNG round trip, damaged files."""
import errno
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from cdism_fast import safe_io
from cdism_fast.training import (
    CHECKPOINT_NAME,
    CheckpointError,
    TrainConfig,
    Trainer,
    atomic_save,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from cdism_fast.training import checkpoint as checkpoint_module


class DiskFullFile:
    """A file that accepts half of what is written, then fails as a full disk does."""

    def __init__(self, real):
        self.real = real

    def write(self, data):
        self.real.write(bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def fill_disk(monkeypatch):
    monkeypatch.setattr(safe_io, "open", lambda path, mode: DiskFullFile(open(path, mode)), raising=False)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def test_atomic_save_round_trip_leaves_no_temporary_files(tmp_path):
    state = {"weights": torch.arange(10.0), "iteration": 3}
    path = atomic_save(state, tmp_path / "sub" / "ck.pt")
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["weights"], state["weights"]) and loaded["iteration"] == 3
    assert leftovers(path.parent) == []


def test_disk_full_keeps_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    atomic_save({"iteration": 1, "weights": torch.ones(1000)}, path)
    before = path.read_bytes()
    fill_disk(monkeypatch)
    with pytest.raises(CheckpointError, match=r"the disk is full; the previous ck\.pt is intact") as caught:
        atomic_save({"iteration": 2, "weights": torch.zeros(1000)}, path)
    assert caught.value.__cause__.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1


def test_disk_full_on_a_first_checkpoint_says_none_existed(tmp_path, monkeypatch):
    fill_disk(monkeypatch)
    with pytest.raises(CheckpointError, match="no earlier ck.pt existed"):
        atomic_save({"a": 1}, tmp_path / "ck.pt")
    assert list(tmp_path.iterdir()) == []


def test_failed_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    atomic_save({"iteration": 1}, path)

    def failing_replace(source, target):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(safe_io.os, "replace", failing_replace)
    with pytest.raises(CheckpointError, match="Input/output error"):
        atomic_save({"iteration": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert leftovers(tmp_path) == []


def test_unpicklable_state_never_touches_the_disk(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_save({"iteration": 1}, path)
    class Unpicklable:
        def __reduce__(self):
            raise pickle.PicklingError("refused")

    with pytest.raises(pickle.PicklingError, match="refused"):
        atomic_save({"bad": Unpicklable()}, path)
    assert load_checkpoint(path)["iteration"] == 1
    assert leftovers(tmp_path) == []


def test_trainer_disk_full_mid_run_keeps_last_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = nn.Conv2d(3, 3, 3, padding=1)
    data = torch.utils.data.TensorDataset(torch.rand(8, 3, 5, 5), torch.rand(8, 3, 5, 5))
    saves = {"n": 0}
    real_atomic_save = checkpoint_module.atomic_save

    def save_then_fill(obj, path):
        saves["n"] += 1
        if saves["n"] == 2:
            fill_disk(monkeypatch)
        return real_atomic_save(obj, path)

    from cdism_fast.training import engine
    monkeypatch.setattr(engine, "atomic_save", save_then_fill)
    trainer = Trainer(model, lambda m, b: (m(b[0]) - b[1]).abs().mean(), torch.optim.SGD(model.parameters(), 0.1),
                      data, TrainConfig(iterations=6, batch_size=2, checkpoint_every=2, progress=False), tmp_path)
    with pytest.raises(CheckpointError, match="disk is full; the previous checkpoint.pt is intact"):
        trainer.fit()
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["iteration"] == 2
    assert leftovers(tmp_path) == []


def test_rng_state_round_trip():
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_damaged_or_foreign_files_raise_naming_the_file(tmp_path):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*damaged.pt"):
        load_checkpoint(damaged)
    foreign = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), foreign)
    with pytest.raises(CheckpointError, match="holds a Tensor, not a checkpoint dict"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
