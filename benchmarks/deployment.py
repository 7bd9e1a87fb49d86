"""What compression buys at deployment: latency and peak memory of whole models at 1280x720 output.

    python -m benchmarks.deployment [--model SPEC ...] [--runs 7] [--threads N] [--no-save]

Every model (default: the shipped students, plus the published x2 teachers in
``../shared/data/weights`` where that folder is) upscales one RGB image to
1280x720 in three ways, side by side in one process: fp32 eager, fp32 under
``torch.compile(fullgraph=True, dynamic=False)``, and eager under bf16 autocast
(the CPU's native-bf16 capability is recorded beside the numbers: without it,
bf16 is emulated and slower). The calls of the three ways are interleaved, one
of each per round, and the median of the rounds is reported, so a change in the
machine's load falls on all three alike. Peak memory is the resident set's
high-water mark during one steady-state call above the resident set before it
(Linux: ``/proc/self/clear_refs`` resets the mark). Parameters and
multiply-accumulates come from :mod:`cdism_fast.models.counting`. Writes
benchmarks/results/<date>_deployment_<cpu>.{json,md}.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from .harness import RESULTS_DIR

SHARED_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "weights"
#: The published teachers measured beside the students, where they are at hand, with their scale (a PAN file
#: does not tell x2 from x3).
TEACHER_FILES = {"IMDN_x2.pth": 2, "PANx2_DF2K.pth": 2}
OUTPUT_HW = (720, 1280)
MODES = ("fp32", "compile", "bf16")
CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


def cpu_description() -> dict:
    """The CPU's model name and the instruction-set flags that decide bf16 speed."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {"model": name, "flags": [flag for flag in CPU_FLAGS if flag in flags],
            "torch_capability": torch.backends.cpu.get_cpu_capability(), "cpus": os.cpu_count()}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_bytes(fn) -> int | None:
    """Resident-set high-water mark of one ``fn()`` above the resident set before it (Linux only)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) * 1024
    except (OSError, RuntimeError):
        return None


def default_models() -> list[tuple[str, int | None]]:
    from cdism_fast.models.pretrained import PRETRAINED

    teachers = [(str(SHARED_WEIGHTS / name), scale) for name, scale in TEACHER_FILES.items()
                if (SHARED_WEIGHTS / name).is_file()]
    return teachers + [(name, None) for name in PRETRAINED]


def _runners(model: torch.nn.Module, x: torch.Tensor) -> dict:
    compiled = torch.compile(model, fullgraph=True, dynamic=False)

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    return {"fp32": lambda: model(x), "compile": lambda: compiled(x), "bf16": bf16}


def measure(spec: str, runs: int, scale: int | None = None) -> dict:
    from cdism_fast.evaluation import infer_scale, load_model
    from cdism_fast.models import count_flops, count_params

    model = load_model(spec, scale).eval()
    scale = infer_scale(model)
    height, width = OUTPUT_HW[0] // scale, OUTPUT_HW[1] // scale
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    runners = _runners(model, x)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    row = {"model": spec if not Path(spec).is_file() else Path(spec).name, "scale": scale,
           "input": [height, width], "params": count_params(model), "macs": count_flops(model)["total"]}
    with torch.inference_mode():
        for mode in MODES:  # warm-up: the compile happens here, outside the timed rounds
            started = time.perf_counter()
            runners[mode]()
            row[f"{mode}_first_call_s"] = time.perf_counter() - started
        for _ in range(runs):
            for mode in MODES:
                started = time.perf_counter()
                runners[mode]()
                times[mode].append(time.perf_counter() - started)
        for mode in MODES:
            row[f"{mode}_ms"] = 1e3 * statistics.median(times[mode])
            row[f"{mode}_peak_bytes"] = peak_bytes(runners[mode])
    return row


def format_table(rows: list[dict]) -> str:
    lines = ["| model | params | MACs (720p) | fp32 ms | compile ms | bf16 ms | bf16 vs fp32 | peak MiB fp32 / "
             "compile / bf16 |", "|---|---:|---:|---:|---:|---:|---:|---|"]

    def mib(value):
        return "–" if value is None else f"{value / 2**20:.0f}"

    for row in rows:
        peaks = " / ".join(mib(row[f"{mode}_peak_bytes"]) for mode in MODES)
        lines.append(f"| {row['model']} | {row['params'] / 1e3:.1f}K | {row['macs'] / 1e9:.1f}G | {row['fp32_ms']:.0f} "
                     f"| {row['compile_ms']:.0f} | {row['bf16_ms']:.0f} | {row['fp32_ms'] / row['bf16_ms']:.2f}x "
                     f"| {peaks} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deployment", description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="a model `cdism-fast eval` reads (repeat; default: the "
                                                         "shipped students and the published x2 teachers at hand)")
    parser.add_argument("--runs", type=int, default=7, help="timed rounds (one call of each way per round)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = cpu_description()
    load_before = os.getloadavg()
    print(f"{cpu['model']} ({', '.join(cpu['flags'])}), {torch.get_num_threads()} threads, torch {torch.__version__}",
          flush=True)
    rows = []
    for spec, scale in [(spec, None) for spec in args.model or ()] or default_models():
        rows.append(measure(spec, args.runs, scale))
        print(f"  {rows[-1]['model']}: " + ", ".join(f"{mode} {rows[-1][mode + '_ms']:.0f} ms" for mode in MODES),
              flush=True)
    table = format_table(rows)
    print("\n" + table)
    if args.no_save:
        return 0
    stamp = datetime.date.today().isoformat()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", cpu["model"]).strip("-").lower()
    stem = RESULTS_DIR / f"{stamp}_deployment_{slug}"
    RESULTS_DIR.mkdir(exist_ok=True)
    payload = {"date": stamp, "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu,
               "output": list(OUTPUT_HW), "runs": args.runs, "load_before": load_before,
               "load_after": os.getloadavg(), "rows": rows}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    header = (f"Whole models at 1280x720 output, batch 1, {cpu['model']} ({', '.join(cpu['flags'])}; torch's "
              f"capability {cpu['torch_capability']}), {torch.get_num_threads()} threads, torch {torch.__version__}, "
              f"{stamp}; median of {args.runs} interleaved rounds; load average before "
              f"{load_before[0]:.2f}, after {payload['load_after'][0]:.2f}.")
    stem.with_suffix(".md").write_text(header + "\n\n" + table + "\n")
    print(f"\nwrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
