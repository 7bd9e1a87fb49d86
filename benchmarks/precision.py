"""fp32 against bf16 autocast, side by side in one process: what ``--amp auto`` decides from.

    python -m benchmarks.precision [--rounds 5] [--only step forward cache prune] [--models edsr_mini ...]

Per model (one per family at least: :data:`PRECISION_MODELS`, and the first preset of any family not in it),
in the layout the engine picks (``uses_channels_last``):

* ``step``: a stage-3 student step on 16x3x48² (forward, distillation loss against a fixed target,
  backward, AdaMax), the ``train`` workload;
* ``forward``: inference on 1x3x360x640 (a 720x1280 output at x2), under ``no_grad``.

And the two other workloads of ``--amp auto``:

* ``cache``: the teacher-output cache's build of a few T91 images (the IMDN x2 teacher: the published
  weights when ``../shared/data`` is there, else the preset; the time does not depend on the weights),
  with the PSNR between the float16-stored bf16 and fp32 targets;
* ``prune``: one OBProx-SG step of the cpu-291 pruning (IMDN, 16x3x32², Charbonnier), the ``prune`` workload.

Each round runs fp32 then bf16 (interleaved), after one warm-up call of each; the medians of the wall time and
of the process's CPU time are reported (on a machine other jobs share, ``--threads 1`` and the CPU time give
the steadier ratio), with the machine's load (``uptime``) before and after, the CPU's model name and flags, torch's bf16
checks and what ``--amp auto`` decides here. Writes benchmarks/results/<date>_precision[_<tag>].{json,md}.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from .harness import RESULTS_DIR

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: The models timed (``distill --student`` specs or presets), a teacher and a student per family where both run
#: in minutes here; a family without an entry is timed by its first preset.
PRECISION_MODELS = ("edsr_mini", "edsr_baseline", "swinir_mini", "imdn", "imdn:4,2,28", "pan")
STEP_SHAPE = (16, 3, 48, 48)
FORWARD_SHAPE = (1, 3, 360, 640)
PRUNE_SHAPE = (16, 3, 32, 32)
CACHE_IMAGES = 4
PARTS = ("step", "forward", "cache", "prune")


def cpu_description() -> dict:
    """The CPU's model name and bf16 flags (/proc/cpuinfo), torch's checks and the ``--amp auto`` decision."""
    from cdism_fast.training.precision import bf16_decision

    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()}
    except (OSError, StopIteration):
        pass
    wanted = ("amx_tile", "amx_bf16", "avx512_bf16", "avx512f", "avx2")
    return {"model_name": name, "cpuinfo_flags": {flag: flag in flags for flag in wanted},
            "threads": torch.get_num_threads(), **bf16_decision().as_record()}


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def interleaved(runners: dict, rounds: int) -> dict:
    """Median wall and CPU seconds of each runner, the runners called in turn ``rounds`` times after one warm-up
    each. The CPU time (this process's, all its threads) is less sensitive than the wall time to other jobs on a
    shared machine; on one thread it is the work done."""
    for run in runners.values():
        run()
    times = {name: [] for name in runners}
    cpu = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            run()
            times[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    return {name: {"median_s": statistics.median(times[name]), "cpu_median_s": statistics.median(cpu[name]),
                   "runs_s": times[name], "cpu_runs_s": cpu[name]} for name in runners}


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def models_to_time(names) -> list[str]:
    from cdism_fast.models import FAMILIES, build, count_params
    from cdism_fast.training.stages import student_from

    names = list(names)
    covered = {student_from(name, scale=2).family for name in names}
    for family, cls in FAMILIES.items():
        if family not in covered and cls.presets:  # its smallest preset
            names.append(min(cls.presets, key=lambda name: count_params(build(name, scale=2))))
    return names


def model_runners(spec: str, part: str, device=None, shape=None) -> dict:
    """``{"fp32": run, "bf16": run}`` of one model's ``part`` ("step" or "forward") on ``device`` at ``shape``
    (default: the CPU; :data:`STEP_SHAPE` or :data:`FORWARD_SHAPE`)."""
    from cdism_fast.ops import distillation_loss
    from cdism_fast.training.engine import uses_channels_last
    from cdism_fast.training.stages import student_from

    device = torch.device(device or "cpu")
    torch.manual_seed(0)
    model = student_from(spec, scale=2).to(device)
    layout = torch.channels_last if uses_channels_last(None, device, model) else torch.contiguous_format
    model = model.to(memory_format=layout)
    n, c, h, w = shape or (STEP_SHAPE if part == "step" else FORWARD_SHAPE)
    x = torch.rand(n, c, h, w, device=device).contiguous(memory_format=layout)

    def autocast(bf16):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    if part == "step":
        target = torch.rand(n, c, 2 * h, 2 * w, device=device)
        gt = torch.rand(n, c, 2 * h, 2 * w, device=device)
        optimizer = torch.optim.Adamax(model.parameters(), lr=1e-4, betas=(0.9, 0.99))
        model.train()

        def step(bf16):
            def run():
                with autocast(bf16):
                    output = model(x).float()
                    loss = distillation_loss(output, target, gt, alpha=0.1, reduction="sum")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            return run

        return {"fp32": step(False), "bf16": step(True)}
    model.eval()

    def forward(bf16):
        def run():
            with torch.no_grad(), autocast(bf16):
                model(x)
        return run

    return {"fp32": forward(False), "bf16": forward(True)}


def imdn_teacher():
    from cdism_fast.models import build, load_pretrained

    weights = SHARED / "weights" / "IMDN_x2.pth"
    if weights.is_file():
        return load_pretrained(weights), str(weights)
    torch.manual_seed(0)
    return build("imdn", scale=2), "the imdn preset, random weights (../shared/data absent)"


def cache_case(rounds: int) -> dict:
    """The cache build of CACHE_IMAGES T91 images in fp32 and bf16, and the PSNR between their targets."""
    import types

    import numpy as np

    from cdism_fast.data import folder_dataset
    from cdism_fast.training.teacher_cache import TeacherCache

    folder = SHARED / "train" / "T91"
    if not folder.is_dir():
        return {"skipped": f"T91 not found at {folder}"}
    dataset = folder_dataset(folder, 2)
    lrs = [dataset[i][0].numpy() for i in range(CACHE_IMAGES)]
    teacher, source = imdn_teacher()
    teacher = teacher.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    patches = types.SimpleNamespace(scale=2, names=[f"t91-{i}" for i in range(CACHE_IMAGES)],
                                    lr_image=lambda index: lrs[index])
    import tempfile

    outputs = {}
    with tempfile.TemporaryDirectory(prefix="precision-cache-") as work:
        caches = {name: TeacherCache(Path(work) / name, teacher, patches, progress=False, amp_dtype=dtype)
                  for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))}
        for cache in caches.values():
            cache.paths[0].parent.mkdir(parents=True, exist_ok=True)

        def build(name):
            def run():
                for image in range(CACHE_IMAGES):
                    caches[name].build_entry(image)
            return run

        timings = interleaved({name: build(name) for name in caches}, rounds)
        for name, cache in caches.items():
            outputs[name] = [np.load(path).astype(np.float64) for path in cache.paths]
    psnrs = []
    for fp32, bf16 in zip(outputs["fp32"], outputs["bf16"]):
        mse = float(np.mean((fp32 - bf16) ** 2))
        psnrs.append(10 * math.log10(1.0 / mse) if mse > 0 else math.inf)
    pixels = sum(int(np.prod(lr.shape[1:])) for lr in lrs)
    return {"teacher": source, "images": CACHE_IMAGES, "lr_megapixels": pixels / 1e6, **timings,
            "target_psnr_db": {"min": min(psnrs), "per_image": psnrs}}


def prune_case(rounds: int) -> dict:
    """One OBProx-SG step (Prox-SG phase) of IMDN on 16x3x32² with the Charbonnier loss."""
    import copy

    from cdism_fast.ops import CHARBONNIER_EPS, charbonnier
    from cdism_fast.optim import OBProxSG

    base, source = imdn_teacher()
    base = base.train().to(memory_format=torch.channels_last)
    n, c, h, w = PRUNE_SHAPE
    x = torch.rand(n, c, h, w).contiguous(memory_format=torch.channels_last)
    gt = torch.rand(n, c, 2 * h, 2 * w)

    def step(bf16):
        model = copy.deepcopy(base)
        optimizer = OBProxSG(model.parameters(), lr=5e-3, lam=0.15, n_p=10 ** 6, steps_per_epoch=1)

        def run():
            with autocast(bf16):
                loss = charbonnier(model(x).float(), gt, eps=CHARBONNIER_EPS)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return run

    return {"teacher": source, "shape": "x".join(map(str, PRUNE_SHAPE)),
            **interleaved({"fp32": step(False), "bf16": step(True)}, rounds)}


def ratio(entry: dict, key: str = "median_s") -> float:
    return entry["fp32"][key] / entry["bf16"][key]


def table(results: dict) -> str:
    lines = ["| case | fp32 ms | bf16 ms | fp32 / bf16 (wall) | fp32 / bf16 (CPU time) |", "|---|---:|---:|---:|---:|"]
    for case, entry in results.items():
        if "fp32" not in entry:
            lines.append(f"| {case} | {entry.get('skipped', '')} | | | |")
            continue
        lines.append(f"| {case} | {1e3 * entry['fp32']['median_s']:.1f} | {1e3 * entry['bf16']['median_s']:.1f} "
                     f"| {ratio(entry):.2f}x | {ratio(entry, 'cpu_median_s'):.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--models", nargs="+", default=list(PRECISION_MODELS))
    parser.add_argument("--tag", help="appended to the result files' names")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cpu = cpu_description()
    print(json.dumps(cpu, indent=1), flush=True)
    results, loads = {}, {"before": load()}
    for spec in models_to_time(args.models):
        for part, shape in (("step", STEP_SHAPE), ("forward", FORWARD_SHAPE)):
            if part in args.only:
                case = f"{part} {spec} {'x'.join(map(str, shape))}"
                results[case] = interleaved(model_runners(spec, part), args.rounds)
                print(f"{case}: {ratio(results[case]):.2f}x wall, {ratio(results[case], 'cpu_median_s'):.2f}x CPU "
                      f"time ({load()})", flush=True)
    if "cache" in args.only:
        results[f"cache build, {CACHE_IMAGES} T91 images, IMDN x2"] = cache_case(args.rounds)
        print(results[f"cache build, {CACHE_IMAGES} T91 images, IMDN x2"].get("target_psnr_db"), flush=True)
    if "prune" in args.only:
        results["prune step, IMDN x2 " + "x".join(map(str, PRUNE_SHAPE))] = prune_case(args.rounds)
    loads["after"] = load()
    stamp = datetime.date.today().isoformat()
    payload = {"date": stamp, "torch": torch.__version__, "cpu": cpu, "rounds": args.rounds, "load": loads,
               "results": results}
    RESULTS_DIR.mkdir(exist_ok=True)
    stem = RESULTS_DIR / (f"{stamp}_precision" + (f"_{args.tag}" if args.tag else ""))
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    summary = (f"fp32 against bf16 autocast, interleaved medians of {args.rounds} rounds ({stamp}, torch "
               f"{torch.__version__}, {cpu['model_name']}, {cpu['threads']} threads; flags "
               f"{', '.join(f'{k} {v}' for k, v in cpu['cpuinfo_flags'].items())}; --amp auto here: "
               f"{', '.join(w + ' ' + a['amp'] for w, a in cpu['auto'].items())}); load before: {loads['before']}; "
               f"after: {loads['after']}\n\n")
    text = summary + table(results) + "\n"
    stem.with_suffix(".md").write_text(text)
    print("\n" + text + f"\nwrote {stem.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
