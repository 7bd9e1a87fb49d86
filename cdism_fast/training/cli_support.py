"""Command-line pieces shared by the stage commands (train, prune, distill, run).

Every training command takes the same data, budget and output options; their
defaults come from a workflow preset (``--preset``, default ``paper-edsr``
for the stage commands), so ``cdism-fast prune --preset demo ...`` runs the
demo's pruning schedule. Exit codes: 0 completed, 2 bad input or stopped by
a non-finite loss, 130 interrupted (resume with ``--resume``).
"""
from __future__ import annotations

import argparse
import gc
import sys
from dataclasses import fields

from .stages import StageSettings

__all__ = ["add_data_arguments", "data_argument", "add_output_arguments", "add_training_arguments",
           "settings_from_args", "overrides_from_args", "run_safely", "EXIT_INTERRUPTED", "preset_argument"]

EXIT_INTERRUPTED = 130
#: CLI option → StageSettings field.
_SETTING_OPTIONS = {
    "iterations": "iterations", "batch_size": "batch_size", "patch_size": "patch_size", "lr": "lr",
    "milestones": "milestones", "gamma": "gamma", "seed": "seed", "workers": "num_workers",
    "checkpoint_every": "checkpoint_every", "validate_every": "validate_every", "log_every": "log_every",
    "amp": "amp", "channels_last": "channels_last", "compile": "compile", "ema": "ema_decay",
}


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected iteration counts separated by commas (e.g. 200000,400000), "
                                         f"got {text!r}") from None


def preset_argument(parser: argparse.ArgumentParser, default: str | None) -> None:
    from .presets import PRESETS

    parser.add_argument("--preset", choices=sorted(PRESETS), default=default,
                        help=f"workflow preset whose settings are the defaults (default: {default})")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    data_argument(group)
    group.add_argument("--val", action="append", help="held-out set for validation and evaluation (repeatable; "
                                                      "default: the built-in held-out photographs when --data "
                                                      "is not given)")


def data_argument(parser, default_text: str = "the built-in photographs") -> None:
    """``--data``, repeatable: several folders are read as one training set (e.g. T91 and BSD200)."""
    parser.add_argument("--data", action="append", metavar="DIR",
                        help="training images: a folder of HR images, or a dataset root in the DIV2K or HR/LR_bicubic "
                             f"layout; repeat it to train on several folders as one set (default: {default_text})")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training (defaults: the preset's)")
    group.add_argument("--iterations", type=int)
    group.add_argument("--batch-size", type=int, help="per process")
    group.add_argument("--patch-size", type=int, help="LR patch side in pixels")
    group.add_argument("--lr", type=float, help="learning rate")
    group.add_argument("--milestones", type=_milestones, help="iterations at which the lr is multiplied by gamma")
    group.add_argument("--gamma", type=float)
    group.add_argument("--seed", type=int)
    group.add_argument("--workers", type=int, help="DataLoader worker processes")
    group.add_argument("--checkpoint-every", type=int, help="iterations between checkpoints (0: only at the end)")
    group.add_argument("--validate-every", type=int, help="iterations between validations (0: only at the end)")
    group.add_argument("--log-every", type=int, help="iterations between log lines")
    group.add_argument("--amp", choices=("none", "bf16", "fp16"), help="autocast precision (fp16 needs CUDA)")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels_last memory format (default: the faster one measured: on for CUDA, and "
                            "on the CPU for convolutional models such as EDSR, off for SwinIR)")
    group.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile(model, fullgraph=True): the first steps compile, the later ones run faster")
    group.add_argument("--ema", type=float, help="EMA decay of the weights (e.g. 0.999)")
    group.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda:LOCAL_RANK when available)")
    group.add_argument("--threads", type=int, help="CPU threads of torch (default: torch's choice; on a machine "
                                                   "that other jobs share, 1 avoids OpenMP threads waiting on "
                                                   "each other, which can make steps 10-20x slower)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_output_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--out", required=required, help="output folder")
    exclusive = group.add_mutually_exclusive_group()
    exclusive.add_argument("--resume", action="store_true", help="continue the run in --out")
    exclusive.add_argument("--overwrite", action="store_true", help="delete the run in --out and start over")


def settings_from_args(args: argparse.Namespace, base: StageSettings) -> StageSettings:
    """``base`` with every option the user gave on the command line."""
    changes = overrides_from_args(args)
    changes["progress"] = not getattr(args, "no_progress", False)
    known = {f.name for f in fields(StageSettings)}
    return base.replace(**{k: v for k, v in changes.items() if k in known})


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The training options the user gave, as StageSettings fields (for every stage of a workflow)."""
    return {field: getattr(args, option) for option, field in _SETTING_OPTIONS.items()
            if getattr(args, option, None) is not None}


def run_safely(function, args: argparse.Namespace) -> int:
    """Run a training command with ``--threads`` applied and a clean process group; errors
    propagate to ``cdism_fast.cli.main``, which prints them in one line with the exit codes above."""
    import torch
    import torch.distributed as dist

    from ..optional import require

    if hasattr(args, "data") and args.data is None:
        require("training on the built-in sample images (no --data given)", "skimage")
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        status = function(args)
    finally:
        if dist.is_available() and dist.is_initialized():
            # Free every DDP reducer first: one destroyed after its process group hangs in gloo's destructor.
            gc.collect()
            dist.destroy_process_group()
    if status == "interrupted":
        print("interrupted: the checkpoint is saved; continue with the same command and --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
