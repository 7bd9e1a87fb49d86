"""Compile every Triton kernel for CUDA targets without a GPU, and report its resources.

    python -m cdism_fast.ops.triton.compile_report [--arch 86 90] [--full]

The host code of each op runs on small CPU tensors with its kernels replaced by
recorders, so the compiled argument lists are exactly those of real launches;
each distinct specialisation is then compiled with ``triton.compile`` for a
CUDA ``GPUTarget`` (no driver needed) and its cubin's registers, spills and
Triton's shared memory are read back (``cuobjdump --dump-resource-usage``).
The calls are those of the ops' samples (:mod:`cdism_fast.ops.samples`, the
inputs the tests run every backend on): each in its own dtype, plus the 16-bit
inputs of SwinIR_LW's shifted attention; ``--full`` compiles every dtype of every
sample.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("compile_report compiles for CUDA: unset TRITON_INTERPRET (the kernels would be defined "
                     "for the interpreter)")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from .. import samples  # noqa: E402
from . import laplacian, window_attention  # noqa: E402

#: The CUDA architectures the package promises (RTX 3090 class and Hopper).
ARCHS = (86, 90)
#: Samples compiled in every dtype even without --full: SwinIR_LW's shifted attention blocks.
EVERY_DTYPE = ("SwinIR_LW-shift4",)
_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas")
_POINTER_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.int8: "*i8",
                  torch.float64: "*fp64", torch.int32: "*i32", torch.int64: "*i64"}


@dataclass(frozen=True)
class Launch:
    """One kernel specialisation as a real launch would compile it."""

    kernel: object                       # the @triton.jit function
    signature: tuple                     # ((name, type), ...) of the runtime arguments
    constexprs: tuple                    # ((name, value), ...)
    num_warps: int
    case: str                            # the call that launched it

    @property
    def name(self) -> str:
        return self.kernel.__name__

    def label(self) -> str:
        pointers = sorted({t for _, t in self.signature if t.startswith("*") and t != "*i8"})
        flags = ",".join(f"{k}={v}" for k, v in self.constexprs)
        return f"{'/'.join(pointers)} {flags}"


def _arg_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return _POINTER_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


class _Recorder:
    """Stands in for a @triton.jit function: kernel[grid](*args, **kwargs) records instead of launching."""

    def __init__(self, kernel, case: Callable[[], str], sink: list):
        self.kernel, self.case, self.sink = kernel, case, sink

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            names = self.kernel.arg_names
            values = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k not in _LAUNCH_OPTIONS}
            constexpr_names = {p.name for p in self.kernel.params if p.is_constexpr}
            signature = tuple((n, _arg_type(values[n])) for n in names if n not in constexpr_names)
            constexprs = tuple((n, values[n]) for n in names if n in constexpr_names)
            self.sink.append(Launch(self.kernel, signature, constexprs, kwargs.get("num_warps", 4), self.case()))
        return record


@contextlib.contextmanager
def _recording(sink: list, case: Callable[[], str]) -> Iterator[None]:
    saved = {}
    for module in (window_attention, laplacian):
        for name, value in vars(module).items():
            if isinstance(value, triton.runtime.jit.JITFunction) and name.endswith("_kernel"):
                saved[(module, name)] = value
                setattr(module, name, _Recorder(value, case, sink))
    try:
        yield
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _window_attention_calls(full: bool) -> Iterator[tuple[str, Callable[[], None]]]:
    # (label, call): every window-attention sample, forward and backward, in its own dtype
    # (every dtype with `full`, and always for SwinIR_LW's shifted blocks).
    cases = {**samples.WINDOW_ATTENTION, **samples.WINDOW_ATTENTION_GPU, **samples.WINDOW_ATTENTION_HEAD_DIMS_GPU}
    for label, sample in cases.items():
        for dtype in samples.GPU_DTYPES if full or label in EVERY_DTYPE else (sample.dtype,):
            def call(sample=sample, dtype=dtype):
                q, k, v, table = (t.detach() for t in sample.inputs(dtype=dtype))
                grid_h, grid_w = sample.grid or (0, 0)
                args = (sample.window, sample.shift, grid_h, grid_w, 0.3)
                out, lse = window_attention.window_attention_forward(q, k, v, table, *args)
                window_attention.window_attention_backward(out, q, k, v, out, lse, table, *args)
            yield f"window_attention {label} {_dtype_name(dtype)}", call


def _laplacian_calls(full: bool) -> Iterator[tuple[str, Callable[[], None]]]:
    # Every Laplacian-loss sample, with and without the signs the backward reads, and the backward.
    for label, sample in {**samples.LAPLACIAN_LOSS, **samples.LAPLACIAN_LOSS_GPU}.items():
        for dtype in samples.GPU_DTYPES if full else (sample.dtype,):
            def call(sample=sample, dtype=dtype):
                x = torch.zeros(sample.shape, dtype=dtype)
                mean = sample.reduction == "mean"
                for save_codes in (False, True):
                    loss, pyramid, codes = laplacian.laplacian_loss_forward(x, x, sample.levels, mean, save_codes)
                laplacian.laplacian_loss_backward(loss, x, x, pyramid, codes, sample.levels, mean)
            yield f"laplacian_loss {label} {_dtype_name(dtype)}", call


def launches(full: bool = False) -> list[Launch]:
    """Every distinct kernel specialisation of the samples' calls, in first-launch order."""
    recorded: list[Launch] = []
    current = [""]
    with _recording(recorded, lambda: current[0]):
        for label, call in [*_window_attention_calls(full), *_laplacian_calls(full)]:
            current[0] = label
            call()
    unique: dict[tuple, Launch] = {}
    for launch in recorded:
        unique.setdefault((launch.name, launch.signature, launch.constexprs, launch.num_warps), launch)
    return list(unique.values())


def _cuobjdump() -> Optional[str]:
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.is_file() else shutil.which("cuobjdump")


@dataclass
class Compiled:
    launch: Launch
    arch: int
    registers: Optional[int]
    spill_bytes: Optional[int]          # local memory per thread (spills, arrays moved off registers)
    shared_bytes: int

    def row(self) -> str:
        def show(v):
            return "?" if v is None else str(v)
        return (f"| {self.launch.name} | sm_{self.arch} | {self.launch.num_warps} | {show(self.registers)} "
                f"| {show(self.spill_bytes)} | {self.shared_bytes} | {self.launch.case} | {self.launch.label()} |")


def compile_launch(launch: Launch, arch: int) -> Compiled:
    source = ASTSource(fn=launch.kernel, signature=dict(launch.signature), constexprs=dict(launch.constexprs))
    kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": launch.num_warps})
    registers = spills = None
    tool = _cuobjdump()
    if tool is not None:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
            cubin.write(kernel.asm["cubin"])
            cubin.flush()
            usage = subprocess.run([tool, "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                                   check=True).stdout
        match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage)
        if match:
            registers, spills = int(match[1]), int(match[2]) + int(match[3])
    return Compiled(launch, arch, registers, spills, kernel.metadata.shared)


HEADER = ("| kernel | arch | warps | registers | local bytes | shared bytes | first launched by | specialisation |\n"
          "|---|---|---:|---:|---:|---:|---|---|")


def report(archs=ARCHS, full: bool = False, out=sys.stdout) -> list[Compiled]:
    results = []
    print(f"triton {triton.__version__}, torch {torch.__version__}", file=out)
    print(HEADER, file=out, flush=True)
    for launch in launches(full):
        for arch in archs:
            result = compile_launch(launch, arch)
            results.append(result)
            print(result.row(), file=out, flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdism_fast.ops.triton.compile_report",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="SM versions (default 86 90)")
    parser.add_argument("--full", action="store_true", help="every dtype of every variant")
    args = parser.parse_args(argv)
    results = report(args.arch, args.full)
    spilled = [r for r in results if r.spill_bytes]
    if spilled:
        print(f"\n{len(spilled)} compiled kernels use local memory (spills): see 'local bytes'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
