"""Command-line pieces shared by the stage commands (train, prune, distill, run).

Every training command takes the same data, budget and output options. The
budget options are generated from the fields of
:class:`~cdism_fast.training.stages.StageSettings` (one option per field, the
field's name in kebab-case: ``num_workers`` is ``--num-workers``), with the
help, unit and choices that the field declares; their defaults come from a
workflow preset (``--preset``, default ``paper-edsr`` for the stage commands),
so ``cdism-fast prune --preset demo ...`` runs the demo's pruning schedule.
The spellings of earlier versions (``--workers``, ``--ema``) are aliases.

Exit codes: 0 completed, 2 bad input or stopped by a non-finite loss, 130
interrupted (resume with ``--resume``).
"""
from __future__ import annotations

import argparse
import gc
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import fields

from ..training.stages import StageSettings

__all__ = ["add_data_arguments", "data_argument", "add_output_arguments", "add_training_arguments",
           "settings_from_args", "overrides_from_args", "run_safely", "EXIT_INTERRUPTED", "preset_argument",
           "option_name", "SETTING_ALIASES", "stage_defaults", "StageOptions", "stage_options_from_args"]

EXIT_INTERRUPTED = 130
#: Earlier spellings of setting options, still accepted: field → option strings.
SETTING_ALIASES = {"num_workers": ("--workers",), "ema_decay": ("--ema",)}


def option_name(field_name: str) -> str:
    """The option of a settings field: ``num_workers`` → ``--num-workers``."""
    return "--" + field_name.replace("_", "-")


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected iteration counts separated by commas (e.g. 200000,400000), "
                                         f"got {text!r}") from None


def _parser_of(annotation) -> dict:
    """``add_argument`` keywords for a settings field of type ``annotation``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        annotation = args[0]  # Optional[X]: None is the default, never typed
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float, str):
        return {"type": annotation}
    if typing.get_origin(annotation) in (Sequence, tuple, list) and typing.get_args(annotation)[:1] == (int,):
        return {"type": _milestones, "metavar": "N,N,..."}
    raise TypeError(f"no command-line parser for a settings field of type {annotation!r}")


def _shown(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) if value else "none"
    return str(value)


def _help(field, defaults: Mapping[str, StageSettings], preset: str | None) -> str:
    text = field.metadata["help"]
    if field.metadata.get("unit"):
        text += f", in {field.metadata['unit']}"
    values = {stage: getattr(settings, field.name) for stage, settings in defaults.items()}
    if values:
        distinct = {repr(v) for v in values.values()}
        shown = (_shown(next(iter(values.values()))) if len(distinct) == 1
                 else ", ".join(f"{stage} {_shown(v)}" for stage, v in values.items()))
        text += f". Default: the preset's ({preset}: {shown})"
    return text.replace("%", "%%")


def add_training_arguments(parser: argparse.ArgumentParser, defaults: Mapping[str, StageSettings] | None = None,
                           preset: str | None = None) -> None:
    """One option per field of :class:`StageSettings` (and ``--device``, ``--threads``).

    ``defaults``: ``{stage: settings}`` of the default ``preset``, shown in ``--help``; the values a run
    uses are those of the ``--preset`` given (see :func:`settings_from_args`)."""
    group = parser.add_argument_group("training (defaults: the preset's)")
    hints = typing.get_type_hints(StageSettings)
    for field in fields(StageSettings):
        choices = field.metadata.get("choices")
        group.add_argument(option_name(field.name), *SETTING_ALIASES.get(field.name, ()), dest=field.name,
                           default=None, help=_help(field, defaults or {}, preset),
                           **({"choices": choices} if choices else {}), **_parser_of(hints[field.name]))
    group.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda:LOCAL_RANK when available)")
    group.add_argument("--threads", type=int, help="CPU threads of torch (default: torch's choice; on a machine "
                                                   "that other jobs share, 1 avoids OpenMP threads waiting on "
                                                   "each other, which can make steps 10-20x slower)")


# The preset whose values the stage commands (train, prune, distill) use unless --preset is given.
STAGE_COMMAND_PRESET = "paper-edsr"


def add_stage_command_arguments(parser: argparse.ArgumentParser, stage: str, run) -> None:
    """What every stage command takes after its own options: ``--preset``, the data, one option per
    training setting (``--help`` shows the default preset's values for ``stage``), the output folder."""
    preset_argument(parser, STAGE_COMMAND_PRESET)
    add_data_arguments(parser)
    add_training_arguments(parser, stage_defaults(STAGE_COMMAND_PRESET, stage), STAGE_COMMAND_PRESET)
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def stage_defaults(preset_name: str, *stages: str) -> dict[str, StageSettings]:
    """``{stage: settings}`` of a preset (stages: ``teacher``, ``prune``, ``distill``), for ``--help``."""
    from ..training.presets import PRESETS

    return {stage: getattr(PRESETS[preset_name], stage) for stage in stages}


def preset_argument(parser: argparse.ArgumentParser, default: str | None) -> None:
    from ..training.presets import PRESETS

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


def add_output_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--out", required=required, help="output folder")
    exclusive = group.add_mutually_exclusive_group()
    exclusive.add_argument("--resume", action="store_true", help="continue the run in --out")
    exclusive.add_argument("--overwrite", action="store_true", help="delete the run in --out and start over")


def settings_from_args(args: argparse.Namespace, base: StageSettings) -> StageSettings:
    """``base`` with every setting the user gave on the command line."""
    return base.replace(**overrides_from_args(args))


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The settings the user gave, by :class:`StageSettings` field (for every stage of a workflow).

    Every field must be an option of the command (:func:`add_training_arguments`): one that is not raises
    KeyError instead of being left at the preset's value unnoticed."""
    given = vars(args)
    return {f.name: given[f.name] for f in fields(StageSettings) if given[f.name] is not None}


class StageOptions:
    """The options of one stage function that a command writes by hand (prune's ``--lam``, distill's
    ``--alpha``, ...): each option's dest is a keyword of that function, its default the preset's
    (see :func:`stage_options_from_args`), so no other place lists them."""

    def __init__(self, parser: argparse.ArgumentParser, title: str):
        self._group = parser.add_argument_group(title)
        self.dests: list[str] = []
        parser.set_defaults(stage_options=self.dests)

    def add(self, *flags: str, **kwargs) -> None:
        self.dests.append(self._group.add_argument(*flags, default=None, **kwargs).dest)


def stage_options_from_args(args: argparse.Namespace, defaults: Mapping) -> dict:
    """The preset's options of a stage (``defaults``) with those given on the command line."""
    return {**defaults, **{dest: getattr(args, dest) for dest in args.stage_options
                           if getattr(args, dest) is not None}}


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
