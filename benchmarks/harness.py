"""Timing and reporting shared by the benchmark runner and the pytest-benchmark suite.

Times are medians over repeated runs after a warm-up (``torch.utils.benchmark``
on the CPU, ``triton.testing.do_bench`` or CUDA events on CUDA). Bandwidth is reported against a copy measured on
the same machine in the
same run, counting bytes read plus bytes written.
"""
from __future__ import annotations

import datetime
import json
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, min_runs: int = 7,
                min_seconds: float = 0.5, warmup: int = 2) -> float:
    """Median time of one ``fn()`` in seconds, after ``warmup`` calls.

    CPU: ``torch.utils.benchmark.Timer`` (on torch's current thread count, not
    its default of one thread), one call per sample, at least ``min_runs``
    samples and ``min_seconds`` in all. CUDA: ``triton.testing.do_bench``
    (median, CUDA events, L2 flushed between calls) when Triton is there, else
    CUDA events around each call. The cases' input rotation works across
    calls either way.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        return _cuda_median(fn, device, min_runs, min_seconds)
    from torch.utils.benchmark import Timer

    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start_all < min_seconds:
        times.append(timer.timeit(1).median)
        if len(times) >= 200:
            break
    return statistics.median(times)


def _cuda_median(fn: Callable[[], object], device: torch.device, min_runs: int, min_seconds: float) -> float:
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        return do_bench(fn, warmup=0, rep=max(1, int(1e3 * min_seconds)), return_mode="median") / 1e3
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start_all < min_seconds:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1e3)
        if len(times) >= 200:
            break
    return statistics.median(times)


def copy_bandwidth(device: torch.device, numel: int = 64 * 2**20) -> float:
    """Bytes per second of a large tensor copy (read + write), the memory ceiling."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / seconds


def peak_memory(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Peak bytes allocated by ``fn()`` above what was allocated before (CUDA only)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


@dataclass
class Measurement:
    op: str
    shape: str
    mode: str           # "fwd", "fwd+bwd", "step", ...
    backend: str        # "reference", "compile", "cpp", "cuda", "triton", or a named baseline
    seconds: float
    bytes_moved: Optional[int] = None
    items: Optional[int] = None         # images (or steps) per call, for a throughput column
    peak_bytes: Optional[int] = None
    extra: dict = field(default_factory=dict)

    def gbps(self) -> Optional[float]:
        return None if self.bytes_moved is None else self.bytes_moved / self.seconds / 1e9


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def format_table(rows: list[Measurement], bandwidth: float) -> str:
    """Markdown table; speedups against eager reference and its torch.compile of the same case."""
    by_case: dict[tuple, dict[str, Measurement]] = {}
    for row in rows:
        by_case.setdefault((row.op, row.shape, row.mode), {})[row.backend] = row
    lines = ["| op | shape | mode | backend | median ms | GB/s (% of copy) | items/s | vs eager | vs compile |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for (op, shape, mode), backends in by_case.items():
        eager, compiled = backends.get("reference"), backends.get("compile")
        for name, row in backends.items():
            gbps = row.gbps()
            bw = f"{gbps:.1f} ({100 * gbps * 1e9 / bandwidth:.0f}%)" if gbps is not None else ""
            rate = (f"{row.items / row.seconds:,.0f}" if row.items / row.seconds >= 10
                    else f"{row.items / row.seconds:.2f}") if row.items else ""
            vs_eager = f"{eager.seconds / row.seconds:.2f}x" if eager else ""
            vs_compile = f"{compiled.seconds / row.seconds:.2f}x" if compiled else ""
            lines.append(f"| {op} | {shape} | {mode} | {name} | {1e3 * row.seconds:.3f} | {bw} | {rate} "
                         f"| {vs_eager} | {vs_compile} |")
    return "\n".join(lines)


def cpu_bf16_record() -> dict:
    """The CPU's bf16 capability as torch sees it and what ``--amp auto`` decides on it (``cdism-fast info``)."""
    from cdism_fast.training.precision import bf16_decision

    return bf16_decision().as_record()


def save(rows: list[Measurement], device: torch.device, bandwidth: float, table: str, inputs: str,
         hot: bool = False, tag: str | None = None) -> Path:
    """Write JSON and markdown named with date, device, torch version (and ``_hot``, ``_<tag>``);
    ``inputs`` says how the cases' inputs were used."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.date.today().isoformat()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{device_label(device)}").strip("-").lower()
    torch_version = torch.__version__.replace("+", "-")
    stem = f"{stamp}_{slug}_torch-{torch_version}" + ("_hot" if hot else "") + (f"_{tag}" if tag else "")
    payload = {
        "date": stamp,
        "device": device_label(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "copy_bandwidth_gbps": bandwidth / 1e9,
        "inputs": inputs,
        "cpu_bf16": cpu_bf16_record(),
        "measurements": [asdict(r) | {"gbps": r.gbps()} for r in rows],
    }
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    bf16 = payload["cpu_bf16"]
    header = (f"Device: {device_label(device)}; torch {torch.__version__}; copy bandwidth "
              f"{bandwidth / 1e9:.1f} GB/s (read + write); {inputs}; {stamp}; CPU bf16: {bf16['cpu']} "
              f"({', '.join(f'{k} {v}' for k, v in bf16['flags'].items())}), --amp auto: "
              f"{', '.join(w + ' ' + a['amp'] for w, a in bf16['auto'].items())}\n\n")
    (RESULTS_DIR / f"{stem}.md").write_text(header + table + "\n")
    return RESULTS_DIR / f"{stem}.json"
