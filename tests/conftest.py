"""Shared fixtures: the optional reference data beside the checkout, seeding, threads, and the image folders
and the tiny teacher run the command tests share (tests/helpers/ holds the functions behind them)."""
import os
from pathlib import Path

# Under pytest-xdist (make test runs two processes on two cores) each process, and every
# command it starts, runs torch on one thread: a second OpenMP thread would wait for the core
# the other test process holds, which makes small ops many times slower.
IN_XDIST_WORKER = bool(os.environ.get("PYTEST_XDIST_WORKER"))
if IN_XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

if IN_XDIST_WORKER:  # in case torch was imported before this file read the variable
    torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout, or ``$CDISM_SHARED_DATA``."""
    return Path(os.environ.get("CDISM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "benchmarks").is_dir():
        pytest.skip(f"reference data not found at {path} (set CDISM_SHARED_DATA to the folder "
                    "holding benchmarks/, train/ and weights/)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _teacher_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Distillation in tests caches teacher outputs under pytest's temporary folder, never in the
    user's ~/.cache (tests that choose a folder themselves still pass their own)."""
    from cdism_fast.training import teacher_cache

    folder = tmp_path_factory.getbasetemp() / "teacher-outputs"
    monkeypatch.setattr(teacher_cache, "default_cache_folder", lambda: folder)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one intra-op thread: on a shared 2-core machine, OpenMP
    threads waiting for busy cores make small ops many times slower. Module scope, so
    that module-scoped results (a reference training run) see the same thread count
    as the tests comparing against them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def noise_images(tmp_path_factory):
    """(train, val): two and one 40x48 uniform-noise PNGs, for the commands' input and error tests."""
    from helpers.images import write_noise_images

    root = tmp_path_factory.mktemp("noise_images")
    return write_noise_images(root / "train", 2, seed=1), write_noise_images(root / "val", 1, seed=2)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, noise_images, one_thread):
    """A completed one-iteration teacher run on ``noise_images`` (copied by the tests that change it)."""
    from helpers.runs import train_tiny_teacher

    return train_tiny_teacher(tmp_path_factory.mktemp("teacher_run") / "teacher", *noise_images)
