"""Which precision each training workload runs in: ``--amp auto`` and the CPU's bf16 units.

``amp`` is one of :data:`AMP_CHOICES`. ``"auto"`` (the default) resolves per
workload and per machine through :func:`bf16_decision`, the one place that reads
the CPU's bf16 capability (torch's own checks: AMX tiles, AVX-512 BF16, oneDNN's
bf16 support) and looks the result up in :data:`AUTO_BF16`, the measured rule:
bf16 autocast only for the workloads where it measured faster at no cost on
that class of CPU, fp32 everywhere else. The workloads are

* ``"cache"``: the teacher's pass over every training image (the teacher-output
  cache of stage 3, inference);
* ``"prune"``: stage 1, the OBProx-SG fine-tune of the teacher;
* ``"train"``: a training step of a student (stage 3, with or without the
  teacher) or of a teacher trained from scratch (stage 0).

Evaluation, validation and every number the package reports are computed in
fp32 whatever ``amp`` says (:func:`cdism_fast.evaluation.upscale` turns autocast
off unless it is given a dtype).

``"bf16"`` forces bf16 autocast (on a CPU without native bf16 it runs, emulated
and slowly, and says so once); ``"fp16"`` needs CUDA and is refused on the CPU
before anything is written (:func:`check_amp`); ``"none"`` is fp32.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

__all__ = ["AMP_CHOICES", "AMP_DTYPES", "WORKLOADS", "AUTO_BF16", "CPU_CLASSES", "Bf16Decision", "Precision",
           "cpu_bf16_flags", "bf16_decision", "resolve_amp", "check_amp", "workload_of"]

#: The autocast dtype of each explicit choice (``"auto"`` resolves to one of ``"none"`` and ``"bf16"``).
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AMP_CHOICES = ("auto", *AMP_DTYPES)
#: The workloads ``auto`` decides for (see the module docs).
WORKLOADS = ("cache", "prune", "train")
#: The workload of each :class:`~cdism_fast.training.engine.Trainer` kind (another kind is a ``"train"``).
KIND_WORKLOADS = {"prune": "prune", "train": "train", "distill": "train", "distill-no-kd": "train"}


class Choice(NamedTuple):
    """What ``auto`` picks for one workload on one class of CPU, and the measurement behind it."""
    bf16: bool
    why: str


#: The CPU classes :func:`bf16_decision` tells apart, best first: AMX tiles (bf16 matrix units; with
#: ``amx_bf16`` and ``avx512_bf16``), AVX-512 BF16 without AMX (bf16 dot-product instructions), neither.
CPU_CLASSES = ("amx", "avx512_bf16", "none")

#: The rule of ``--amp auto``: per CPU class and workload, bf16 or fp32, with the measured reason.
#: AMX: issue 20, on a 2-core machine with amx_bf16 (channels_last, interleaved medians, fp32 -> bf16): train step
#: 16x3x48² 1.8-4.0x faster (EDSRmini 72 -> 31 ms, IMDN 688 -> 306 ms, PAN 552 -> 301 ms), inference 1x3x360x640
#: 1.9-3.6x, `distill` of EDSRmini from IMDN 1.9x as a whole command.
#: AVX-512 BF16 without AMX: `python -m benchmarks.precision --threads 1` on this project's 2-core AMD EPYC
#: (docs/benchmarks-precision.md): train step 1.06-2.0x (the cpu-291 IMDN student 4/2/28 1.34x), the cache build of
#: four T91 images by IMDN x2 1.68x with targets 52.8 dB or more from fp32, the cpu-291 pruning step 1.76x (its stage
#: 1.8x, the same density and zero mask as fp32); 1,000 cpu-291 distillation iterations of the IMDN student reach
#: 35.663 dB on Set5 in bf16 against 35.655 and 35.643 dB in fp32 (two seeds).
AUTO_BF16: dict[str, dict[str, Choice]] = {
    "amx": {
        "cache": Choice(True, "AMX: teacher inference 1.9-3.6x faster in bf16 (issue 20, 1x3x360x640)"),
        "prune": Choice(True, "AMX: training steps 1.8-4.0x faster in bf16 (issue 20, 16x3x48²)"),
        "train": Choice(True, "AMX: training steps 1.8-4.0x faster in bf16 (issue 20, 16x3x48²)"),
    },
    "avx512_bf16": {
        "cache": Choice(True, "AVX-512 BF16: IMDN's cache build 1.68x faster in bf16, targets >= 52.8 dB from fp32 "
                              "(AMD EPYC, docs/benchmarks-precision.md)"),
        "prune": Choice(True, "AVX-512 BF16: the cpu-291 pruning step 1.76x faster in bf16, the same density "
                              "(AMD EPYC, docs/benchmarks-precision.md)"),
        "train": Choice(True, "AVX-512 BF16: training steps 1.06-2.0x faster in bf16 (the cpu-291 IMDN student "
                              "1.34x), the same Set5 PSNR after 1,000 distillation iterations (AMD EPYC, "
                              "docs/benchmarks-precision.md)"),
    },
    "none": {workload: Choice(False, "no native bf16 on this CPU: bf16 would be emulated, slower than fp32")
             for workload in WORKLOADS},
}


def cpu_bf16_flags() -> dict[str, bool]:
    """The CPU's bf16 capability as torch sees it: ``amx_tile``, ``avx512_bf16`` (``torch.cpu``'s checks, in
    torch 2.11 and later) and ``mkldnn_bf16`` (oneDNN's bf16 kernels); a check this torch lacks reads False."""
    def check(owner, name: str) -> bool:
        function = getattr(owner, name, None)
        try:
            return bool(function()) if callable(function) else False
        except (RuntimeError, AttributeError):
            return False

    return {"amx_tile": check(torch.cpu, "_is_amx_tile_supported"),
            "avx512_bf16": check(torch.cpu, "_is_avx512_bf16_supported"),
            "mkldnn_bf16": check(torch.ops.mkldnn, "_is_mkldnn_bf16_supported")}


@dataclass(frozen=True)
class Bf16Decision:
    """What ``--amp auto`` does on this CPU: its class, bf16 or not per workload, and why."""
    cpu: str                  #: one of :data:`CPU_CLASSES`
    flags: dict               #: :func:`cpu_bf16_flags`
    capability: str           #: ``torch.backends.cpu.get_cpu_capability()`` (the vector ISA torch's kernels use)
    choices: dict             #: workload -> :class:`Choice`

    @property
    def native(self) -> bool:
        """Whether the CPU has bf16 units (AMX or AVX-512 BF16) that oneDNN uses."""
        return self.cpu != "none"

    def amp(self, workload: str) -> str:
        """``"bf16"`` or ``"none"`` for ``workload``."""
        return "bf16" if self.choices[workload].bf16 else "none"

    def summary(self) -> str:
        """One line: the CPU's class and the choice per workload (``cdism-fast info``)."""
        picks = ", ".join(f"{workload} {'bf16' if self.choices[workload].bf16 else 'fp32'}" for workload in WORKLOADS)
        return f"{self.cpu} ({', '.join(f'{k} {v}' for k, v in self.flags.items())}; {self.capability}): {picks}"

    def as_record(self) -> dict:
        return {"cpu": self.cpu, "flags": dict(self.flags), "capability": self.capability,
                "auto": {workload: {"amp": self.amp(workload), "why": choice.why}
                         for workload, choice in self.choices.items()}}


def bf16_decision(flags: Optional[dict] = None) -> Bf16Decision:
    """The decision of ``--amp auto`` on this CPU (``flags``: :func:`cpu_bf16_flags` unless given) and its reason.

    >>> from cdism_fast.training.precision import bf16_decision
    >>> decision = bf16_decision({"amx_tile": False, "avx512_bf16": False, "mkldnn_bf16": False})
    >>> decision.cpu, decision.amp("train")
    ('none', 'none')
    >>> bf16_decision({"amx_tile": True, "avx512_bf16": True, "mkldnn_bf16": True}).amp("cache")
    'bf16'
    """
    flags = cpu_bf16_flags() if flags is None else dict(flags)
    if flags.get("amx_tile") and flags.get("mkldnn_bf16"):
        cpu = "amx"
    elif flags.get("avx512_bf16") and flags.get("mkldnn_bf16"):
        cpu = "avx512_bf16"
    else:
        cpu = "none"
    return Bf16Decision(cpu, flags, torch.backends.cpu.get_cpu_capability(), AUTO_BF16[cpu])


class Precision(NamedTuple):
    """The autocast of one workload: ``amp`` (``"none"``, ``"bf16"`` or ``"fp16"``), as ``requested``, and why."""
    amp: str
    requested: str
    reason: str

    @property
    def dtype(self) -> Optional[torch.dtype]:
        return AMP_DTYPES[self.amp]

    def as_record(self) -> dict:
        return {"amp": self.amp, "requested": self.requested, "reason": self.reason}


def workload_of(kind: str) -> str:
    """The workload of a trainer's ``kind`` (``"prune"`` -> ``"prune"``, a distillation -> ``"train"``)."""
    return KIND_WORKLOADS.get(kind, "train")


_warned: set = set()


def check_amp(amp: str, device) -> None:
    """Refuse, in one line, an ``amp`` that cannot run on ``device`` (fp16 on a CPU) or is unknown: called before a
    stage writes anything."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if amp == "fp16" and torch.device(device).type != "cuda":
        raise ValueError(f"--amp fp16 needs a CUDA device (this runs on {torch.device(device)}); pass --amp auto "
                         "(bf16 where this CPU runs it faster) or --amp bf16 (nothing was written)")


def resolve_amp(amp: str, device, workload: str, decision: Optional[Bf16Decision] = None) -> Precision:
    """The autocast ``workload`` runs under on ``device`` for the setting ``amp``.

    ``auto`` on the CPU follows :func:`bf16_decision` (``decision`` when given), on CUDA it is fp32 (not measured
    there yet). ``bf16`` on a CPU without native bf16 runs, and warns once per process.
    """
    check_amp(amp, device)
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
    device = torch.device(device)
    if amp == "auto":
        if device.type != "cpu":
            return Precision("none", amp, f"auto on {device.type}: fp32 (bf16 is measured only on CPUs here)")
        decision = decision or bf16_decision()
        choice = decision.choices[workload]
        return Precision("bf16" if choice.bf16 else "none", amp, f"auto ({decision.cpu} CPU): {choice.why}")
    if amp == "bf16" and device.type == "cpu":
        decision = decision or bf16_decision()
        if not decision.native:
            if "bf16" not in _warned:
                _warned.add("bf16")
                warnings.warn("--amp bf16: this CPU has no native bf16 (no AMX, no AVX-512 BF16), so bf16 is "
                              "emulated and slower than fp32; --amp auto picks fp32 here", stacklevel=2)
            return Precision("bf16", amp, "asked for; this CPU has no native bf16 (emulated)")
    return Precision(amp, amp, "asked for")
