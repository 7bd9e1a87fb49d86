"""DDP on CPU: two gloo processes started by torchrun, as users launch multi-GPU runs.

The test starts ``torchrun --standalone --nproc_per_node 2`` on this very
file; ``worker()`` below is what each rank runs. It trains a tiny model
straight through, then the same run interrupted halfway and resumed, and
rank 0 writes what it saw to ``result.json`` for the test to check.
"""
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

REPO_ROOT = Path(__file__).resolve().parents[1]


class RecordingPairs(Dataset):
    """Index-determined (lr, hr) pairs that remember which indices this rank loaded."""

    def __init__(self, count=10):
        generator = torch.Generator().manual_seed(1)
        self.lr = torch.rand(count, 3, 6, 6, generator=generator)
        self.hr = torch.rand(count, 3, 6, 6, generator=generator)
        self.seen = []

    def __len__(self):
        return len(self.lr)

    def __getitem__(self, index):
        self.seen.append(index)
        return self.lr[index], self.hr[index]


def _trainer(out_dir, iterations, data):
    from cdism_fast.training import TrainConfig, Trainer, distributed

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Dropout(0.3), nn.Conv2d(6, 3, 3, padding=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    config = TrainConfig(iterations=iterations, batch_size=2, seed=4, checkpoint_every=0, ema_decay=0.5,
                         progress=False)
    return Trainer(model, lambda m, b: (m(b[0]) - b[1]).abs().mean(), optimizer, data, config, out_dir,
                   kind="ddp-test", context=distributed.setup("cpu"))


def worker(out_dir: Path) -> None:
    import torch.distributed as dist

    from cdism_fast.training import distributed, read_log

    context = distributed.setup("cpu")
    straight_data = RecordingPairs()
    straight = _trainer(out_dir / "straight", 6, straight_data)
    straight.fit()
    _trainer(out_dir / "resumed", 3, RecordingPairs()).fit()
    resumed = _trainer(out_dir / "resumed", 6, RecordingPairs())
    resumed.fit(resume=True)

    def flat(trainer):
        return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])

    all_weights = distributed.gather_objects(flat(resumed))
    all_seen = distributed.gather_objects(straight_data.seen[:5])  # one epoch per rank: ceil(10 / 2)
    if context.is_main:
        starts = [r for r in read_log(out_dir / "resumed" / "log.jsonl") if r["event"] == "start"]
        result = {
            "world_size": context.world_size,
            "identical_to_straight": bool(torch.equal(flat(straight), flat(resumed))),
            "ranks_agree": all(torch.equal(all_weights[0], w) for w in all_weights),
            "first_epoch_indices": all_seen,
            "start_records": [(r["iteration"], r["world_size"]) for r in starts],
            "rng_states_saved": len(torch.load(out_dir / "resumed" / "checkpoint.pt", weights_only=False)["rng"]),
        }
        (out_dir / "result.json").write_text(json.dumps(result))
    # DDP's reducer must go before its process group: destroyed after it, gloo's destructor waits forever.
    del straight, resumed
    gc.collect()
    dist.destroy_process_group()


def _environment() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def test_two_gloo_ranks_shard_the_data_and_resume_identically(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
         str(tmp_path)], env=_environment(), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    assert result["identical_to_straight"]
    assert result["ranks_agree"]
    rank0, rank1 = result["first_epoch_indices"]
    assert sorted(rank0 + rank1) == list(range(10))  # each rank a disjoint half of the epoch
    assert result["start_records"] == [[0, 2], [3, 2]]  # only rank 0 logs (once per fit)
    assert result["rng_states_saved"] == 2  # every rank's RNG state is in the checkpoint


def test_torchrun_cli_trains_and_resumes_on_two_ranks(tmp_path):
    from cdism_fast.training import read_log

    from helpers.images import write_smooth_images as write_images

    data = write_images(tmp_path / "images", 3, seed=3)
    out = tmp_path / "teacher"

    def torchrun(iterations, *extra):
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
             "cdism_fast", "train", "--preset", "demo", "--structure", "1,1,8", "--data", str(data),
             "--iterations", str(iterations), "--batch-size", "2", "--patch-size", "12", "--no-progress",
             "--out", str(out), *extra], env=_environment(), capture_output=True, text=True, timeout=300)

    for completed in (torchrun(2), torchrun(3, "--resume")):
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert completed.stdout.count("teacher:") == 1  # rank 0 alone reports
    starts = read_log(out / "log.jsonl", "start")
    assert [(r["iteration"], r["world_size"]) for r in starts] == [(0, 2), (2, 2)]
    assert len(torch.load(out / "checkpoint.pt", weights_only=False)["rng"]) == 2
    assert (out / "model.pt").is_file()


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
