"""The training loop shared by every stage (teacher, pruning, distillation).

One :class:`Trainer` runs ``config.iterations`` optimiser steps of
``loss = step_loss(model, batch)`` and keeps a resumable checkpoint
(``checkpoint.pt`` in its folder): model, optimiser (OBProx-SG's phase
counters included), scheduler, EMA, gradient scaler, the RNG states of every
rank and the data position. Resuming from it gives bit-identical weights to an
uninterrupted run on CPU, because

* the data stream is a pure function of (seed, samples consumed)
  (:class:`~cdism_fast.training.sampler.ShardedStreamSampler`; the data set's
  items must depend on their index only, as
  :class:`~cdism_fast.data.TrainingPatches` do), and the DataLoader draws its
  worker seeds from its own generator, never from the global one;
* the global RNGs (dropout, stochastic depth) are saved as they stand at the
  start of the next iteration.

Ctrl-C (SIGINT) or SIGTERM finishes the current iteration, saves and returns
with ``status="interrupted"``; a second Ctrl-C interrupts at once and still
saves when no optimiser step was under way. A non-finite loss stops before
the step that would spread it, naming the iteration; the last checkpoint on
disk (written before that iteration) is left as it is.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .._checks import check_int
from . import distributed
from .checkpoint import CheckpointError, atomic_save, capture_rng_state, load_checkpoint, restore_rng_state
from .ema import ExponentialMovingAverage
from .monitor import RunLog, drop_repeated_records
from .precision import AMP_CHOICES, AMP_DTYPES, resolve_amp, workload_of
from .sampler import ShardedStreamSampler

__all__ = ["StopRequest", "LoopSettings", "TrainConfig", "setting", "TrainResult", "Trainer", "NonFiniteLossError",
           "CHECKPOINT_NAME", "LOG_NAME", "AMP_DTYPES"]

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
CHECKPOINT_FORMAT = "cdism_fast.training/1"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message names the iteration and the checkpoint that was kept."""

    # A setting to change (the message says which): the command line prints it alone (cdism_fast.cli.main).
    exit_code = 2


def setting(default=MISSING, *, help: str, unit: str | None = None, choices: tuple | None = None,
            metavar: str | None = None):
    """A field of the training settings or of a stage's options: its default and what ``--help`` says of it.

    The command line (:mod:`cdism_fast.cli.options`) makes every such field an
    option of the same name in kebab-case, with ``help``, ``unit``, ``choices``
    and ``metavar`` from here; nothing else lists the fields.
    """
    metadata = {"help": help, "unit": unit, "choices": choices, "metavar": metavar}
    return field(metadata=metadata) if default is MISSING else field(default=default, metadata=metadata)


def _check_off_or_more(name: str, value) -> None:
    check_int(name, value, 0, expected="an integer >= 0 (0 turns it off)")


@dataclass
class LoopSettings:
    """The training loop's settings, declared once: :class:`TrainConfig` (the engine's) and
    :class:`~cdism_fast.training.stages.StageSettings` (a stage's) extend them.

    ``batch_size`` is per process (DDP multiplies it by the number of ranks).
    ``checkpoint_every`` / ``validate_every`` / ``log_every`` are in
    iterations; 0 turns the periodic action off (a checkpoint is still written
    at the end and on interruption, and validation still runs at the end when
    a validation callable is given). ``amp``: ``"auto"`` (bf16 autocast for the
    workloads this CPU runs faster in bf16, else fp32: :mod:`~cdism_fast.training.precision`),
    ``"none"`` (fp32), ``"bf16"`` or ``"fp16"`` autocast (fp16 also scales the loss; it needs CUDA).
    ``channels_last``: ``None`` picks the faster layout (see :func:`uses_channels_last`).
    ``ema_decay``: keep an exponential moving average of the weights.
    ``compile``: train through ``torch.compile(model, fullgraph=True, dynamic=False)``.
    ``grad_clip``: clip the gradients' global L2 norm to this value before each step.
    """
    iterations: int = setting(help="optimizer steps of the stage", unit="iterations")
    batch_size: int = setting(16, help="patches per optimizer step, per process")
    seed: int = setting(0, help="seed of the initialisation, the patch stream and the data order")
    checkpoint_every: int = setting(1000, help="interval between checkpoints (0: only at the end)", unit="iterations")
    validate_every: int = setting(0, help="interval between validations (0: only at the end)", unit="iterations")
    log_every: int = setting(50, help="interval between log lines", unit="iterations")
    num_workers: int = setting(0, help="DataLoader worker processes (0: load in the training process; a "
                                         "preset's value is capped by the CPUs this process may use)")
    amp: str = setting("auto", help="autocast precision: auto (bf16 where this CPU measured faster in it, per "
                                    "workload, else fp32; `cdism-fast info` shows the choice), none (fp32), bf16, "
                                    "fp16 (CUDA only); evaluation and validation always run in fp32",
                       choices=AMP_CHOICES)
    channels_last: Optional[bool] = setting(
        None, help="channels_last memory format (unset: the faster one measured: on for CUDA, and on the CPU "
                   "for convolutional models such as EDSR, off for SwinIR)")
    compile: bool = setting(False, help="torch.compile(model, fullgraph=True, dynamic=False): the first steps "
                                        "compile, the later ones run faster")
    grad_clip: Optional[float] = setting(None, help="clip the gradients' global L2 norm to this value before each "
                                                    "step (unset: no clipping)")
    ema_decay: Optional[float] = setting(None, help="EMA decay of the weights, e.g. 0.999 (unset: no EMA; never "
                                                    "for pruning)")
    progress: bool = setting(True, help="progress bars")

    def __post_init__(self):
        for name in ("iterations", "batch_size"):
            check_int(name, getattr(self, name), expected="a positive integer")
        for name in ("checkpoint_every", "validate_every", "log_every", "num_workers"):
            _check_off_or_more(name, getattr(self, name))
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"amp must be one of {AMP_CHOICES}, got {self.amp!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {self.ema_decay!r}")


@dataclass
class TrainConfig(LoopSettings):
    """How long and how a :class:`Trainer` runs (the fields of :class:`LoopSettings`) and the name its progress
    bar shows; every field is saved in the checkpoint."""
    description: str = "train"


@dataclass
class TrainResult:
    status: str  # "completed" or "interrupted"
    iteration: int
    checkpoint: Optional[Path]
    validation: dict = field(default_factory=dict)
    seconds: float = 0.0


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag checked between iterations (a second Ctrl-C interrupts at once).

    Entered inside another, it shares the outer one's flag and handlers, so that a run of several stages stops
    after the stage during which the request came, even when that stage was on its last iteration."""

    _active: Optional[StopRequest] = None

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(f"{signal.Signals(signum).name}: finishing this iteration, saving a checkpoint, then stopping "
                   "(press Ctrl-C again to stop at once)")

    def __enter__(self) -> StopRequest:
        if StopRequest._active is not None:
            return StopRequest._active
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        StopRequest._active = self
        return self

    def __exit__(self, *exc):
        if StopRequest._active is not self:
            return
        StopRequest._active = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def uses_channels_last(requested: Optional[bool], device: torch.device, model: nn.Module) -> bool:
    """``requested``, or when None the layout measured faster (docs/benchmarks-cache.md): channels_last on
    CUDA; on the CPU for a purely convolutional model (EDSR: 1.4x training step), not for one with linear
    layers, a transformer (SwinIR: its attention and MLPs run slower on channels_last tensors)."""
    if requested is not None:
        return requested
    if device.type == "cuda":
        return True
    # Multi-process CPU runs (gloo) stay contiguous: DDP's initial broadcast of channels_last EDSR
    # parameters fails there ("refer to a single memory location", torch 2.13).
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return False
    return not any(isinstance(m, nn.Linear) for m in model.modules())


def _to_device(batch, device: torch.device, channels_last: bool):
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(item, device, channels_last) for item in batch)
    if isinstance(batch, dict):
        return {key: _to_device(value, device, channels_last) for key, value in batch.items()}
    return batch



class _Interval:
    """Loss, steps and data-loading time since the last log line."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self.loss, self.count, self.start, self.data_seconds = 0.0, 0, time.perf_counter(), 0.0

    def add(self, loss: float) -> None:
        self.loss += loss
        self.count += 1

    def take(self) -> dict:
        """The interval's mean loss, steps per second and data fraction; starts the next interval."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        measured = {"loss": self.loss / self.count, "iterations_per_second": self.count / elapsed,
                    "data_fraction": self.data_seconds / elapsed}
        self._reset()
        return measured

class Trainer:
    """Runs ``config.iterations`` steps of ``step_loss(model, batch)`` with ``optimizer``.

    ``step_loss`` receives the model to call (wrapped for DDP / compile when
    on) and the batch on the training device, and returns a scalar loss.
    ``validate(model)`` (optional, called on rank 0 under ``no_grad`` with the
    EMA model when EMA is on, in eval mode) returns a dict of numbers, e.g.
    ``{"psnr": ..., "ssim": ...}``, always in fp32. ``scheduler`` is stepped once per
    iteration. ``kind`` names what is trained (a checkpoint of another kind
    is refused on resume; it is also the workload ``config.amp="auto"`` decides for,
    see :func:`~cdism_fast.training.precision.workload_of`); ``metadata`` is stored in the
    checkpoint as is. ``precision`` is what the autocast resolved to, and why.
    ``note``: one line said once when training starts (printed on rank 0 and
    kept in the log's ``start`` record).
    """

    def __init__(self, model: nn.Module, step_loss: Callable, optimizer: torch.optim.Optimizer, dataset,
                 config: TrainConfig, out_dir, *, scheduler=None, validate: Callable | None = None,
                 kind: str = "train", metadata: dict | None = None,
                 context: distributed.DistributedContext | None = None, note: str | None = None):
        self.config = config
        self.note = note
        self.context = context or distributed.current()
        self.device = self.context.device
        self.out_dir = Path(out_dir)
        self.kind, self.metadata = kind, dict(metadata or {})
        self.step_loss, self.optimizer, self.scheduler, self.validate = step_loss, optimizer, scheduler, validate
        self.dataset = dataset
        self.precision = resolve_amp(config.amp, self.device, workload_of(kind))
        amp_dtype = self.amp_dtype = self.precision.dtype
        self.channels_last = uses_channels_last(config.channels_last, self.device, model)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = ExponentialMovingAverage(self.model, config.ema_decay) if config.ema_decay is not None else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp_dtype == torch.float16)
        # One graph for the whole model, custom ops inside (a graph break is an error, not a slow path).
        # Static shapes: the patches keep one size, and once a process has compiled the same family at
        # another size (prune, then distill), dynamo would go dynamic, and inductor (torch 2.13) fails
        # to build the backward of a dynamic-shape convolution stack.
        step_model = torch.compile(self.model, fullgraph=True, dynamic=False) if config.compile else self.model
        if self.context.enabled:
            step_model = nn.parallel.DistributedDataParallel(
                step_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.step_model = step_model
        self.iteration = 0
        self.validation: dict = {}

    # ----------------------------------------------------------------- paths
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    @property
    def log_path(self) -> Path:
        return self.out_dir / LOG_NAME

    @property
    def eval_model(self) -> nn.Module:
        """The weights to validate and export: the EMA average when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    # ----------------------------------------------------------- checkpoints
    def _state(self, rng_states: list) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": self.kind,
            "iteration": self.iteration,
            "config": asdict(self.config),
            "metadata": self.metadata,
            "world_size": self.context.world_size,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": rng_states,
            "data": {"samples_consumed": self.iteration * self.config.batch_size, "length": len(self.dataset),
                     "seed": self.config.seed},
            "validation": self.validation,
        }

    def save_checkpoint(self, rng_state: dict | None = None) -> Path:
        """Write ``checkpoint.pt`` (rank 0) holding every rank's RNG state; collective under DDP."""
        rng_states = distributed.gather_objects(rng_state or capture_rng_state())
        error = None
        if self.context.is_main:
            try:
                atomic_save(self._state(rng_states), self.checkpoint_path)
            except CheckpointError as caught:
                error = str(caught)
        error = distributed.broadcast_object(error)
        if error is not None:
            raise CheckpointError(error)
        return self.checkpoint_path

    def _resume(self) -> None:
        state = load_checkpoint(self.checkpoint_path, map_location=self.device)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{self.checkpoint_path} is not a cdism_fast training checkpoint "
                                  f"(format {state.get('format')!r}); remove it or choose another --out")
        try:
            self._restore(state)
        except CheckpointError:
            raise
        except (KeyError, TypeError, IndexError, AttributeError, RuntimeError) as error:  # altered or foreign
            lines = str(error).strip().splitlines()
            raise CheckpointError(f"{self.checkpoint_path} does not fit this run ({type(error).__name__}: "
                                  f"{lines[0] if lines else ''}); it was altered or belongs to another "
                                  "model: start over with --overwrite or choose another --out") from error

    def _restore(self, state: dict) -> None:
        if state["kind"] != self.kind:
            raise CheckpointError(f"{self.checkpoint_path} is a checkpoint of a {state['kind']!r} run, not of this "
                                  f"{self.kind!r} run; choose another --out or pass --overwrite")
        saved = state["config"]
        for name in ("batch_size", "seed"):
            if saved[name] != getattr(self.config, name):
                raise ValueError(f"{name} is {getattr(self.config, name)} but the run being resumed used "
                                 f"{saved[name]}; resume with the same {name} (or start over with --overwrite)")
        data = state["data"]
        if data["length"] != len(self.dataset):
            raise ValueError(f"the training data has {len(self.dataset)} samples but the run being resumed had "
                             f"{data['length']}; resume with the same data (or start over with --overwrite)")
        if state["world_size"] != self.context.world_size:
            warnings.warn(f"resuming a run of {state['world_size']} processes with {self.context.world_size}: "
                          "training continues, but not bit-identically to an uninterrupted run", stacklevel=3)
        self.model.load_state_dict(state["model"])
        given_lrs = [group.get("initial_lr", group["lr"]) for group in self.optimizer.param_groups]
        given_schedule = self.scheduler.state_dict() if self.scheduler is not None else None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self._apply_given_schedule(given_lrs, given_schedule)
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = state["iteration"]
        self.validation = state.get("validation", {})
        rng_states = state["rng"]
        restore_rng_state(rng_states[self.context.rank % len(rng_states)])

    def _apply_given_schedule(self, given_lrs: list, given_schedule: dict | None) -> None:
        """A learning rate (or step schedule) given on resume wins over the checkpoint's.

        Loading the optimiser and scheduler states restores the old values; when
        the caller built them with others (``--lr``, ``--milestones``,
        ``--gamma`` on ``--resume``), those are put back and the current lr is
        recomputed for the iteration reached. Unchanged settings keep the saved
        state exactly (a resumed run stays bit-identical).
        """
        groups = self.optimizer.param_groups
        saved_lrs = [group.get("initial_lr", group["lr"]) for group in groups]
        keys = ("milestones", "gamma")
        saved_schedule = self.scheduler.state_dict() if self.scheduler is not None else None
        schedule_changed = given_schedule is not None and any(
            given_schedule.get(key) != saved_schedule.get(key) for key in keys if key in given_schedule)
        if saved_lrs == given_lrs and not schedule_changed:
            return
        current = [group["lr"] for group in groups]
        for group, lr in zip(groups, given_lrs):
            if "initial_lr" in group:
                group["initial_lr"] = lr
        new_lrs = list(given_lrs)
        if self.scheduler is not None:
            for key in keys:
                if key in given_schedule:
                    setattr(self.scheduler, key, given_schedule[key])
            self.scheduler.base_lrs = list(given_lrs)
            if hasattr(self.scheduler, "_get_closed_form_lr"):
                new_lrs = list(self.scheduler._get_closed_form_lr())
            else:  # keep the decay reached so far, applied to the new base
                new_lrs = [lr * now / old for lr, now, old in zip(given_lrs, current, saved_lrs)]
            self.scheduler._last_lr = list(new_lrs)
        for group, lr in zip(groups, new_lrs):
            group["lr"] = lr
        if self.context.is_main:
            tqdm.write(f"resuming with learning rate {new_lrs[0]:.6g} (the checkpoint had {current[0]:.6g})")

    # ----------------------------------------------------------------- loop
    def _loader(self):
        from ..data.patches import training_loader

        sampler = ShardedStreamSampler(len(self.dataset), seed=self.config.seed, rank=self.context.rank,
                                       world_size=self.context.world_size,
                                       start=self.iteration * self.config.batch_size)
        return training_loader(self.dataset, batch_size=self.config.batch_size, num_workers=self.config.num_workers,
                               seed=self.config.seed, sampler=sampler)

    def _agree(self, *flags: bool) -> list[bool]:
        """Under DDP, each flag is true on every rank when it is true on any (one small all-reduce)."""
        if not self.context.enabled:
            return list(flags)
        tensor = torch.tensor([float(f) for f in flags], device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return [bool(v) for v in tensor.tolist()]

    def _run_validation(self, log: RunLog | None) -> None:
        if self.validate is None:
            return
        if self.context.is_main:
            model = self.eval_model
            was_training = model.training
            model.eval()
            with torch.no_grad():
                results = dict(self.validate(model))
            model.train(was_training)
            self.validation = {"iteration": self.iteration, **results}
            if log is not None:
                log.write("validation", self.iteration, **results)
        self.validation = distributed.broadcast_object(self.validation)

    def _forward_loss(self, batch) -> torch.Tensor:
        """``step_loss`` of ``batch`` under the autocast of ``config.amp``."""
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            loss = self.step_loss(self.step_model, batch)
        return loss

    def fit(self, resume: bool = False) -> TrainResult:
        """Train to ``config.iterations``; with ``resume``, continue from ``checkpoint.pt`` when it exists."""
        config = self.config
        started = time.perf_counter()
        if resume and self.checkpoint_path.is_file():
            self._resume()
        if self.iteration >= config.iterations:
            return TrainResult("completed", self.iteration, self.checkpoint_path, self.validation, 0.0)
        log = self._open_log(resume)
        self.model.train()
        bar = tqdm(total=config.iterations, initial=self.iteration, desc=config.description, unit="it",
                   dynamic_ncols=True, disable=not (config.progress and self.context.is_main))
        status, batches = "completed", None
        try:
            with StopRequest() as stop:
                batches = iter(self._loader())  # workers fork here and inherit the stop handler
                if log is not None:
                    log.write("start", self.iteration, kind=self.kind, iterations=config.iterations,
                              world_size=self.context.world_size, resumed=self.iteration > 0,
                              **({"note": self.note} if self.note else {}))
                    if self.note:
                        tqdm.write(self.note)
                status = self._loop(batches, stop, log, bar)
            if log is not None:
                log.write("end", self.iteration, status=status, seconds=time.perf_counter() - started)
        finally:
            batches = None  # shuts the DataLoader workers down now, not at garbage collection
            bar.close()
            if log is not None:
                log.close()
        return TrainResult(status, self.iteration, self.checkpoint_path, self.validation,
                           time.perf_counter() - started)

    def _open_log(self, resume: bool) -> Optional[RunLog]:
        """The run's log on rank 0 (None elsewhere), without the records a resumed run repeats."""
        if self.context.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if resume:
                drop_repeated_records(self.log_path, self.iteration)
        log = RunLog(self.log_path) if self.context.is_main else None
        distributed.barrier()
        return log

    def _loop(self, batches, stop, log: Optional[RunLog], bar) -> str:
        """Optimizer steps until the last iteration or a stop request; returns the status."""
        interval = _Interval()
        while self.iteration < self.config.iterations:
            rng_at_start = capture_rng_state()
            self._stepping = False
            try:
                loss_value = self._train_step(batches, interval, log)
            except KeyboardInterrupt:
                self._interrupted_at_once(self._stepping, rng_at_start)
                return "interrupted"
            interval.add(loss_value)
            bar.update(1)
            bar.set_postfix_str(f"loss={loss_value:.4g}", refresh=False)
            if self._after_step(interval, stop, log):
                return "interrupted"
        return "completed"

    def _train_step(self, batches, interval: _Interval, log: Optional[RunLog]) -> float:
        """One optimizer step on the next batch (scheduler and EMA included); returns its loss."""
        config = self.config
        fetch_start = time.perf_counter()
        batch = _to_device(next(batches), self.device, self.channels_last)
        interval.data_seconds += time.perf_counter() - fetch_start
        loss = self._forward_loss(batch)
        loss_value = float(loss.detach().float())
        (not_finite,) = self._agree(not math.isfinite(loss_value))
        if not_finite:
            self._stop_on_non_finite(loss_value, log)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self._stepping = True  # from here to the end of the step, the weights are being updated
        if config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.iteration += 1
        self._stepping = False
        return loss_value

    def _after_step(self, interval: _Interval, stop, log: Optional[RunLog]) -> bool:
        """Log, validate and checkpoint as scheduled; True when a stop request ends the run here."""
        config = self.config
        last = self.iteration == config.iterations
        if log is not None and config.log_every and (self.iteration % config.log_every == 0 or last):
            measured = interval.take()
            log.write("train", self.iteration, loss=measured.pop("loss"), lr=self.optimizer.param_groups[0]["lr"],
                      **measured)
        if (config.validate_every and self.iteration % config.validate_every == 0) or last:
            self._run_validation(log)
        (stop_now,) = self._agree(stop.requested)
        if (config.checkpoint_every and self.iteration % config.checkpoint_every == 0) or last or stop_now:
            self.save_checkpoint()
        return stop_now and not last

    def _interrupted_at_once(self, stepping: bool, rng_at_start: dict) -> None:
        """A second Ctrl-C: save when the weights are still those of the iteration's start."""
        where = self.checkpoint_path if self.checkpoint_path.is_file() else "none"
        if stepping or self.context.enabled:
            tqdm.write(f"interrupted during iteration {self.iteration + 1}; not saved (the weights were being "
                       f"updated{' or other ranks are mid-step' if self.context.enabled else ''}); "
                       f"last checkpoint kept: {where}")
            return
        self.save_checkpoint(rng_at_start)
        tqdm.write(f"interrupted; saved {self.checkpoint_path} at iteration {self.iteration}")

    def _stop_on_non_finite(self, loss_value: float, log: RunLog | None) -> None:
        iteration = self.iteration + 1
        if self.checkpoint_path.is_file():
            kept = f"the last good checkpoint {self.checkpoint_path} is kept"
        else:
            kept = "no checkpoint had been written yet"
        if log is not None:
            log.write("non_finite_loss", iteration, loss=loss_value)
        raise NonFiniteLossError(
            f"the loss is {loss_value} at iteration {iteration} (at least on one rank); training stopped before "
            f"that step and {kept}. Lower the learning rate, check the data, or use amp='none', then resume.")
