"""Runs every benchmark case on every device here and prints one table per device.

    python -m benchmarks [--quick] [--hot] [--device cpu|cuda] [--only GROUP ...] [--threads N] [--no-save]

Results go to benchmarks/results/<date>_<device>_torch-<version>[_hot].{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import traceback

import torch

from .cases import GROUP_NAMES, ROTATION_BYTES, all_cases
from .harness import Measurement, copy_bandwidth, device_label, format_table, median_time, peak_memory, save


def run_device(device: torch.device, quick: bool, only: list[str] | None, save_results: bool,
               hot: bool = False, tag: str | None = None) -> None:
    bandwidth = copy_bandwidth(device)
    inputs = inputs_note(hot)
    print(f"\n## {device_label(device)} (torch {torch.__version__}; copy {bandwidth / 1e9:.1f} GB/s; {inputs})\n",
          flush=True)
    rows: list[Measurement] = []
    for group, build in all_cases(device, quick, hot):
        if only and group not in only:
            continue
        try:
            cases = build()
        except Exception as exc:  # a missing piece skips its group, loudly
            print(f"[{group}] skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
            traceback.print_exc(limit=2)
            continue
        for case in cases:
            for backend, fn in case.runners.items():
                try:
                    seconds = median_time(fn, device, min_runs=3 if quick else 7)
                except Exception as exc:
                    print(f"[{case.op} {case.shape} {backend}] failed: {type(exc).__name__}: {exc}",
                          file=sys.stderr)
                    continue
                rows.append(Measurement(case.op, case.shape, case.mode, backend, seconds, case.bytes_moved,
                                        case.items, peak_memory(fn, device)))
                print(f"  {case.op:<28} {case.shape:<36} {case.mode:<8} {backend:<10} {1e3 * seconds:9.3f} ms",
                      flush=True)
    table = format_table(rows, bandwidth)
    print("\n" + table)
    if save_results and rows:
        print(f"\nsaved {save(rows, device, bandwidth, table, inputs, hot, tag)}")


def inputs_note(hot: bool) -> str:
    if hot:
        return "hot: memory-bound cases reuse one input set"
    return f"memory-bound cases rotate over {ROTATION_BYTES / 2**30:g} GiB of input copies"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer runs")
    parser.add_argument("--device", action="append", choices=("cpu", "cuda"),
                        help="devices to run (default: cpu, and cuda when visible)")
    parser.add_argument("--only", nargs="+", choices=GROUP_NAMES)
    parser.add_argument("--hot", action="store_true",
                        help="memory-bound cases reuse one input set (cache-resident) instead of rotating copies")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--tag", help="appended to the result files' names (runs of other groups on one day)")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    for name in devices:
        run_device(torch.device(name), args.quick, args.only, not args.no_save, args.hot, args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
