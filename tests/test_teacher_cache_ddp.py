"""The teacher-output cache under DDP: two gloo ranks started by torchrun build disjoint shares, then distill.

The test writes a few images, then starts ``torchrun --standalone
--nproc_per_node 2`` on this very file; ``worker()`` is what each rank runs.
"""
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def worker(root: Path) -> None:
    import torch.distributed as dist

    from cdism_fast.data import TrainingPatches, folder_dataset
    from cdism_fast.models import build
    from cdism_fast.training import distributed
    from cdism_fast.training.precision import resolve_amp
    from cdism_fast.training.stages import DistillOptions, StageSettings, distill
    from cdism_fast.training.teacher_cache import TeacherCache

    context = distributed.setup("cpu")
    torch.manual_seed(0)
    teacher = build("edsr_baseline", scale=2).with_structure(2, 1, 16).eval()
    student = build("edsr_baseline", scale=2).with_structure(1, 1, 8)
    pairs = folder_dataset(root / "data", 2)
    patches = TrainingPatches(pairs, patch_size=12, progress=False)
    # In the precision distill's --amp auto resolves the cache build to on this CPU, so that distill reuses them.
    amp_dtype = resolve_amp("auto", context.device, "cache").dtype
    cache = TeacherCache(root / "cache", teacher, patches, progress=False, amp_dtype=amp_dtype)
    cache.prepare()
    built = distributed.gather_objects(cache.built)
    patches.use_targets(cache)
    targets = distributed.gather_objects([patches[i][2] for i in range(len(patches))])

    settings = StageSettings(iterations=4, batch_size=2, patch_size=12, lr=1e-3, checkpoint_every=0, log_every=1,
                             progress=False)
    cached = DistillOptions(teacher_cache=str(root / "cache"))
    straight = distill(teacher, student, root / "straight", settings, cached, data=root / "data", context=context)
    distill(teacher, student, root / "resumed", settings.replace(iterations=2), cached, data=root / "data",
            context=context)
    resumed = distill(teacher, student, root / "resumed", settings, cached, data=root / "data", context=context,
                      resume=True)
    if context.is_main:
        result = {
            "built": built,
            "entries": len(list((root / "cache").glob("*/*.npy"))),
            "ranks_read_the_same_targets": all(torch.equal(a, b) for a, b in zip(*targets)),
            "resumed_identical": all(torch.equal(a, b) for a, b in zip(straight.model.state_dict().values(),
                                                                        resumed.model.state_dict().values())),
        }
        (root / "result.json").write_text(json.dumps(result))
    del straight, resumed
    gc.collect()
    dist.destroy_process_group()


def test_two_gloo_ranks_build_disjoint_shares_and_distill_from_them(tmp_path):
    from helpers.images import nearest_pairs

    nearest_pairs(tmp_path / "data", [(24, 24), (20, 28), (26, 22), (18, 30), (24, 20)])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
         str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    rank0, rank1 = result["built"]
    assert rank0 == [0, 2, 4] and rank1 == [1, 3]  # each rank its share; rank 0 builds none twice
    assert result["entries"] == 5
    assert result["ranks_read_the_same_targets"]
    assert result["resumed_identical"]


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
