"""Training: the engine shared by every stage, and the stages of the workflow.

* :class:`Trainer` / :class:`TrainConfig`: resumable training loop with atomic
  checkpoints, validation, JSON Lines / TensorBoard logs, AMP, DDP. Its
  settings (:class:`LoopSettings`) are declared once, and a stage's
  (:class:`~.stages.StageSettings`) extend them.
* :mod:`.stages`: stage 0 (teacher), 1 (prune), 2 (compress), 3 (distill).
* :mod:`.workflow`: all stages in one run, from a preset.
"""
from .checkpoint import CheckpointError, atomic_save, capture_rng_state, load_checkpoint, restore_rng_state
from .distributed import DistributedContext
from .ema import ExponentialMovingAverage
from .engine import CHECKPOINT_NAME, LOG_NAME, LoopSettings, NonFiniteLossError, TrainConfig, Trainer, TrainResult
from .monitor import RunLog, read_log
from .sampler import ShardedStreamSampler

__all__ = [
    "CheckpointError", "atomic_save", "capture_rng_state", "load_checkpoint", "restore_rng_state",
    "DistributedContext", "ExponentialMovingAverage",
    "CHECKPOINT_NAME", "LOG_NAME", "LoopSettings", "NonFiniteLossError", "TrainConfig", "Trainer", "TrainResult",
    "RunLog", "read_log", "ShardedStreamSampler",
]
