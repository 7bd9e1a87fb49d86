"""Command-line pieces shared by the stage commands (train, prune, compress, distill, run).

Every training command takes the same data, budget and output options. The
budget options are generated from the fields of
:class:`~cdism_fast.training.stages.StageSettings`, and each stage's own
options from its options dataclass (:data:`~cdism_fast.training.stages.STAGE_OPTIONS`:
``PruneOptions``, ``CompressOptions``, ``DistillOptions``; the fields of
``TargetOptions``, which pruning and distillation share, are one option of
``run`` for both): one option per field, the field's name in kebab-case (``num_workers`` is ``--num-workers``),
with the help, unit, choices and metavar that the field declares. Their
defaults come from a workflow preset (``--preset``, default ``paper-edsr`` for
the stage commands), so ``cdism-fast prune --preset demo ...`` runs the demo's
pruning schedule; ``run`` has every option of every stage it runs.
``--workers``, ``--ema`` and ``--kd-reduction`` are other spellings of
``--num-workers``, ``--ema-decay`` and ``--reduction``.

Exit codes: 0 completed, 2 bad input or stopped by a non-finite loss, 130
interrupted (resume with ``--resume``).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import fields

from ..training.stages import STAGE_OPTIONS, StageSettings, TargetOptions

__all__ = ["add_data_arguments", "data_argument", "add_output_arguments", "add_training_arguments",
           "add_stage_options", "add_target_options", "settings_from_args", "overrides_from_args", "run_safely",
           "EXIT_INTERRUPTED", "preset_argument", "option_name", "SETTING_ALIASES", "stage_defaults",
           "options_from_args"]

EXIT_INTERRUPTED = 130
#: Other spellings of setting and option flags, also accepted: field → option strings.
SETTING_ALIASES = {"num_workers": ("--workers",), "ema_decay": ("--ema",), "reduction": ("--kd-reduction",)}


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


def _help(field, defaults: Mapping[str, object], preset: str | None) -> str:
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


def _add_fields(parser: argparse.ArgumentParser, cls, title: str, defaults: Mapping[str, object],
                preset: str | None, skip=frozenset()) -> None:
    """One option per field of the dataclass ``cls`` (but those named in ``skip``), its dest the field's name and
    its default None (given options are told apart from the preset's values by that)."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for field in fields(cls):
        if field.name in skip:
            continue
        extra = {key: field.metadata[key] for key in ("choices", "metavar") if field.metadata.get(key)}
        group.add_argument(option_name(field.name), *SETTING_ALIASES.get(field.name, ()), dest=field.name,
                           default=None, help=_help(field, defaults, preset), **{**_parser_of(hints[field.name]),
                                                                                  **extra})


def add_training_arguments(parser: argparse.ArgumentParser, defaults: Mapping[str, StageSettings] | None = None,
                           preset: str | None = None) -> None:
    """One option per field of :class:`StageSettings` (and ``--device``, ``--threads``).

    ``defaults``: ``{stage: settings}`` of the default ``preset``, shown in ``--help``; the values a run
    uses are those of the ``--preset`` given (see :func:`settings_from_args`)."""
    _add_fields(parser, StageSettings, "training (defaults: the preset's)", defaults or {}, preset)
    group = parser.add_argument_group("device")
    group.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda:LOCAL_RANK when available)")
    group.add_argument("--threads", type=int, help="CPU threads of torch (default: torch's choice; on a machine "
                                                   "that other jobs share, 1 avoids OpenMP threads waiting on "
                                                   "each other, which can make steps 10-20x slower)")


def add_stage_options(parser: argparse.ArgumentParser, stage: str, preset: str | None, skip=frozenset()) -> None:
    """One option per field of ``stage``'s options dataclass, but those named in ``skip`` (``--help`` shows
    ``preset``'s values)."""
    from ..training.presets import WORKFLOWS

    defaults = {stage: getattr(WORKFLOWS[preset], f"{stage}_options")} if preset else {}
    _add_fields(parser, STAGE_OPTIONS[stage], f"{stage} (defaults: the preset's)" if preset else stage, defaults,
                preset, skip)


def add_target_options(parser: argparse.ArgumentParser, preset: str) -> frozenset:
    """``run``'s one option per field of :class:`TargetOptions`, for every stage whose options extend it (``--help``
    shows ``preset``'s values); returns their names, for :func:`add_stage_options` to skip."""
    from ..training.presets import WORKFLOWS

    stages = [stage for stage, cls in STAGE_OPTIONS.items() if issubclass(cls, TargetOptions)]
    defaults = {stage: getattr(WORKFLOWS[preset], f"{stage}_options") for stage in stages}
    _add_fields(parser, TargetOptions, f"targets of {' and '.join(stages)} (defaults: the preset's)", defaults, preset)
    return frozenset(field.name for field in fields(TargetOptions))


# The preset whose values the stage commands (train, prune, distill) use unless --preset is given.
STAGE_COMMAND_PRESET = "paper-edsr"


def add_stage_command_arguments(parser: argparse.ArgumentParser, stage: str) -> None:
    """What every stage command takes after its own options: the stage's options (when it has a dataclass of
    them), ``--preset``, the data, one option per training setting (``--help`` shows the default preset's
    values for ``stage``), the output folder."""
    if stage in STAGE_OPTIONS:
        add_stage_options(parser, stage, STAGE_COMMAND_PRESET)
    preset_argument(parser, STAGE_COMMAND_PRESET)
    add_data_arguments(parser)
    add_training_arguments(parser, stage_defaults(STAGE_COMMAND_PRESET, stage), STAGE_COMMAND_PRESET)
    add_output_arguments(parser)


def stage_defaults(preset_name: str, *stages: str) -> dict[str, StageSettings]:
    """``{stage: settings}`` of a preset (stages: ``teacher``, ``prune``, ``distill``), for ``--help``."""
    from ..training.presets import WORKFLOWS

    return {stage: getattr(WORKFLOWS[preset_name], stage) for stage in stages}


def preset_argument(parser: argparse.ArgumentParser, default: str | None) -> None:
    from ..training.presets import WORKFLOWS

    parser.add_argument("--preset", choices=sorted(WORKFLOWS), default=default,
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
                             "layout (with --targets teacher: a folder of LR inputs, used as they are); repeat it to "
                             f"train on several folders as one set, none inside another (default: {default_text})")


def add_output_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--out", required=required, help="output folder")
    exclusive = group.add_mutually_exclusive_group()
    exclusive.add_argument("--resume", action="store_true", help="continue the run in --out")
    exclusive.add_argument("--overwrite", action="store_true", help="delete the run in --out and start over")


def settings_from_args(args: argparse.Namespace, base: StageSettings) -> StageSettings:
    """``base`` with every setting the user gave on the command line (a preset's ``num_workers`` capped by
    the CPUs this process may use)."""
    from ..training.stages import with_overrides

    return with_overrides(base, overrides_from_args(args))


def options_from_args(args: argparse.Namespace, base):
    """A stage's options dataclass ``base`` (a preset's) with every option the user gave."""
    return dataclasses.replace(base, **overrides_from_args(args, type(base)))


def overrides_from_args(args: argparse.Namespace, cls=StageSettings) -> dict:
    """The fields of the dataclass ``cls`` that the user gave (for every stage of a workflow).

    Every field must be an option of the command (:func:`add_training_arguments`, :func:`add_stage_options`):
    one that is not raises KeyError instead of being left at the preset's value unnoticed."""
    given = vars(args)
    return {f.name: given[f.name] for f in fields(cls) if given[f.name] is not None}


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
