"""The ``cdism-fast`` console script.

Each sub-command lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to the
callable that runs it (taking the parsed ``argparse.Namespace`` and returning
an exit code). Modules are imported only when the command line is parsed, so
``cdism-fast info`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..ops._dispatch import BackendUnavailable

# Order is the order shown in ``cdism-fast --help``.
COMMANDS = ("info", "eval", "upscale", "export", "models", "train", "prune", "compress", "distill", "run", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdism-fast",
        description="Compress super-resolution models: prune (OBProx-SG), compress, distill.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Bad input, or a run stopped for a reason its message explains: one line that names
        # it (CDISM_DEBUG=1 shows the traceback). Anything else is a bug: the traceback.
        code = exit_code(exc)
        if code is None or os.environ.get("CDISM_DEBUG") == "1":
            raise
        print(f"cdism-fast {args.command}: error: {exc}", file=sys.stderr)
        return code


def exit_code(exc: BaseException) -> int | None:
    """2 for bad input, an error's own ``exit_code`` (checkpoint and non-finite-loss errors), else None."""
    if isinstance(exc, (ValueError, FileNotFoundError, FileExistsError, BackendUnavailable)):
        return 2
    return getattr(type(exc), "exit_code", None)
