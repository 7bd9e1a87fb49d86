"""Multi-process training as launched by ``torchrun --nproc_per_node N -m cdism_fast ...``.

torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`setup` reads them, joins the process group (NCCL on
GPUs, gloo on CPU) and pins each process to its GPU. Without them the run is
a single process and nothing is initialised.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "setup", "check_device", "current", "barrier", "broadcast_object", "gather_objects",
           "on_main"]


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and reports."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer (set by torchrun), got {value!r}") from None


def check_device(device) -> torch.device:
    """``device`` as a ``torch.device`` this process can use; a ``ValueError`` naming ``--device`` otherwise."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            reason = ("this torch build has no CUDA support" if torch.version.cuda is None
                      else "no CUDA GPU is visible to this process")
            raise ValueError(f"--device {device}: {reason} (torch {torch.__version__}); pass --device cpu, or "
                             "install a CUDA build of torch on a machine with a GPU")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif parsed.type in ("mps", "xpu"):
        backend = torch.backends.mps if parsed.type == "mps" else getattr(torch, "xpu", None)
        if backend is None or not backend.is_available():
            raise ValueError(f"--device {device}: this torch build (torch {torch.__version__}) or machine has no "
                             f"{parsed.type} device; pass --device cpu (or cuda on a machine with an NVIDIA GPU)")
    elif parsed.type != "cpu":
        raise ValueError(f"--device {device}: device type {parsed.type!r} is not supported; use cpu or cuda")
    return parsed


def setup(device: str | torch.device | None = None) -> DistributedContext:
    """Join the process group that torchrun describes (once), and return this process's place in it.

    ``device``: ``None`` picks ``cuda:LOCAL_RANK`` when CUDA is available,
    else the CPU.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device is None:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = check_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, local_rank, world_size, device)


def current() -> DistributedContext:
    """This process's place, from an initialised process group (or a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistributedContext()
    return DistributedContext(dist.get_rank(), _env_int("LOCAL_RANK", 0), dist.get_world_size())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(value, source: int = 0):
    """``value`` of rank ``source`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=source)
    return holder[0]


def gather_objects(value) -> list:
    """The ``value`` of every rank, in rank order, on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def on_main(function, *args, **kwargs):
    """Run ``function`` on rank 0 only; every rank gets its result, or raises its error."""
    context = current()
    outcome = None
    if context.is_main:
        try:
            outcome = ("ok", function(*args, **kwargs))
        except Exception as error:  # re-raised on every rank below
            outcome = ("error", error)
    kind, value = broadcast_object(outcome)
    if kind == "error":
        raise value
    return value
