"""Wall time of ``cdism-fast distill`` on T91, with the teacher-output cache (its build included) and without.

    python -m benchmarks.distill_t91 [--data ../shared/data/train/T91] [--iterations 2000]

EDSRmini <- EDSR_baseline (untrained weights: the time does not depend on
them), x2, 16 patches of 48x48, the paper-edsr preset otherwise; no
validation, one checkpoint at the end. The cached run starts from an empty
cache folder, so it pays for the teacher's pass over every image. The two
runs go one after the other; the machine's load (``uptime``) is recorded
beside each. Writes benchmarks/results/<date>_distill-t91.{json,md}; without
the data it says so and exits 0 without running anything.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .harness import RESULTS_DIR

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "train" / "T91"


def _load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _distill(work: Path, name: str, data: Path, iterations: int, cache: str) -> dict:
    command = [sys.executable, "-m", "cdism_fast", "distill", "--preset", "paper-edsr",
               "--teacher", str(work / "teacher.pt"), "--student", str(work / "student.json"), "--data", str(data),
               "--iterations", str(iterations), "--batch-size", "16", "--patch-size", "48", "--workers", "0",
               "--checkpoint-every", "0", "--validate-every", "0", "--no-progress",
               "--teacher-cache", cache, "--out", str(work / name)]
    before = _load()
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{name} failed ({completed.returncode}): {completed.stderr[-2000:]}")
    from cdism_fast.training import read_log

    (end,) = read_log(work / name / "log.jsonl", "end")
    print(f"{name}: {seconds:.1f} s ({end['seconds']:.1f} s in the training loop)", flush=True)
    return {"seconds": seconds, "training_loop_seconds": end["seconds"], "load_before": before,
            "load_after": _load(), "command": " ".join(command)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distill_t91", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--only", choices=("cached", "live"),
                        help="run one of the two (recorded in its own result file; no ratio)")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"skipped: T91 not found at {args.data} (pass --data DIR)")
        return 0
    import torch

    from cdism_fast.models import build
    from cdism_fast.training.artifacts import model_spec, save_model, write_json

    with tempfile.TemporaryDirectory(prefix="distill-t91-") as folder:
        work = Path(folder)
        torch.manual_seed(0)
        save_model(work / "teacher.pt", build("edsr_baseline", scale=2))
        write_json(work / "student.json", {"student": model_spec(build("edsr_mini", scale=2))})
        runs = {}
        if args.only in (None, "cached"):
            runs["cached (build included)"] = _distill(work, "cached", args.data, args.iterations, str(work / "cache"))
        if args.only in (None, "live"):
            runs["live teacher"] = _distill(work, "live", args.data, args.iterations, "off")
    if args.only is not None:
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / f"{datetime.date.today().isoformat()}_distill-t91_{args.only}-only.json"
        path.write_text(json.dumps({"torch": torch.__version__, "iterations": args.iterations, "runs": runs},
                                   indent=2) + "\n")
        print(f"wrote {path}")
        return 0
    ratio = runs["live teacher"]["seconds"] / runs["cached (build included)"]["seconds"]
    stamp = datetime.date.today().isoformat()
    payload = {"date": stamp, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cpus": os.cpu_count(), "iterations": args.iterations, "data": str(args.data), "runs": runs,
               "speedup": ratio}
    RESULTS_DIR.mkdir(exist_ok=True)
    stem = RESULTS_DIR / f"{stamp}_distill-t91"
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"`cdism-fast distill` on T91, EDSRmini <- EDSR_baseline x2, {args.iterations} iterations of "
             f"16x48x48 ({stamp}, torch {torch.__version__}, {os.cpu_count()} CPUs)", "",
             "| teacher | wall s | load before | load after |", "|---|---:|---|---|"]
    lines += [f"| {name} | {run['seconds']:.1f} | {run['load_before']} | {run['load_after']} |"
              for name, run in runs.items()]
    lines += ["", f"cached is {ratio:.2f}x faster (measured, {args.iterations} iterations)"]
    if args.iterations != 2000:
        # Start-up, decoding and the cache build do not grow with the iterations; the loop does.
        def at_2000(run):
            loop = run["training_loop_seconds"]
            return run["seconds"] - loop + loop * 2000 / args.iterations
        payload["extrapolated_2000_speedup"] = (at_2000(runs["live teacher"])
                                                / at_2000(runs["cached (build included)"]))
        lines.append(f"extrapolated to 2000 iterations from these runs' fixed and per-iteration times: "
                     f"{payload['extrapolated_2000_speedup']:.2f}x (not measured)")
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
