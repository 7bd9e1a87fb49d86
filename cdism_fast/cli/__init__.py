"""The ``cdism-fast`` console script.

Each sub-command lives in its own module of this package: the module's
docstring is the command's help (its first line, after ``cdism-fast NAME:``)
and description (the rest), ``add_arguments(parser)`` (where the command has
options) adds its options, and ``run(args)`` runs it (taking the parsed
``argparse.Namespace`` and returning an exit code). Modules are imported only
when the command line is parsed, so ``cdism-fast info`` stays fast.

Exit codes: 0 done, 2 a problem the user can fix (bad option or file, a full
or read-only disk, a run stopped by a non-finite loss), printed as one line
that names it and says what to do; 1 a bug, printed as one line, with the
traceback under ``--debug`` or ``CDISM_DEBUG=1``; 130 interrupted; 141 the reader of
the output went away (a pipe closed).
"""
from __future__ import annotations

import argparse
import errno
import functools
import importlib
import os
import sys
import warnings

from ..ops import BackendUnavailable

# Order is the order shown in ``cdism-fast --help``.
COMMANDS = ("info", "eval", "upscale", "export", "models", "train", "prune", "compress", "distill", "run", "report")
#: OSErrors that the user's environment causes (not bugs): exit 2 with the file's name.
USER_ERRNOS = frozenset(getattr(errno, name) for name in (
    "EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "ENOTDIR", "EISDIR", "EEXIST", "ENOENT", "ENAMETOOLONG",
    "EFBIG", "ELOOP", "EMFILE", "ENFILE") if hasattr(errno, name))
EXIT_USER_ERROR = 2
EXIT_BUG = 1
#: As a shell reports a command ended by SIGPIPE.
EXIT_BROKEN_PIPE = 128 + 13


class OneLineErrorParser(argparse.ArgumentParser):
    """An option the parser refuses is one line naming it and where the options are listed, as every other
    user error (argparse's own error prints the whole usage first, 19 lines for ``distill``)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}; `{self.prog} --help` lists the options\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="cdism-fast",
        description="Compress super-resolution models: prune (OBProx-SG), compress, distill.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of any error (also: environment variable CDISM_DEBUG=1)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        add_command(subparsers, name)
    return parser


def add_command(subparsers, name: str) -> argparse.ArgumentParser:
    """The parser of command ``name``, made from its module (see the module docstring above)."""
    module = importlib.import_module(f"{__name__}.{name}")
    summary, _, description = module.__doc__.partition("\n")
    parser = subparsers.add_parser(name, help=summary.split(": ", 1)[1].rstrip("."),
                                   description=description.strip() or None)
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    parser.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command line (``argv``, default ``sys.argv[1:]``) and return its exit code.

    Run as the console script (``argv`` None), warnings print as one line each, ``cdism-fast CMD: warning:
    ...``, instead of Python's two (the source line of the code that warned means nothing to a user).
    """
    args = build_parser().parse_args(argv)
    if argv is None:
        warnings.showwarning = functools.partial(_show_warning, args.command)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below, not at interpreter exit
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of the output went away (`cdism-fast models | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the final flush cannot fail
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if args.debug or os.environ.get("CDISM_DEBUG") == "1":
            raise
        code = exit_code(exc)
        if code is None:
            from ..training.artifacts import one_line

            print(f"cdism-fast {args.command}: internal error (a bug): {type(exc).__name__}: {one_line(exc)}; "
                  "rerun with --debug for the traceback and report it", file=sys.stderr)
            return EXIT_BUG
        print(f"cdism-fast {args.command}: error: {user_message(exc)}", file=sys.stderr)
        return code


def _show_warning(command, message, category, filename, lineno, file=None, line=None) -> None:
    print(f"cdism-fast {command}: warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def user_message(exc: BaseException) -> str:
    """The one line printed for an error the user can fix."""
    if isinstance(exc, OSError) and exc.errno in USER_ERRNOS and exc.filename is not None:
        what = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        advice = {errno.ENOSPC: "free space or choose another --out",
                  errno.EROFS: "the file system is read-only: choose another --out",
                  errno.EACCES: "check its permissions or choose another --out",
                  errno.EPERM: "check its permissions or choose another --out"}.get(exc.errno, "check the path")
        return f"{what}: {exc.strerror}; {advice}"
    from ..training.artifacts import one_line

    return one_line(exc)


def exit_code(exc: BaseException) -> int | None:
    """2 for what the user can fix, an error's own ``exit_code``, else None (a bug)."""
    own = getattr(type(exc), "exit_code", None)
    if own is not None:
        return own
    if isinstance(exc, (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                        PermissionError, BackendUnavailable)):
        return EXIT_USER_ERROR
    if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:
        return EXIT_USER_ERROR
    return None
