"""Runs of the commands on tiny inputs, and what the error contract asserts about them: the exit code, the one
line printed, and that nothing but the tool's own files changed (a folder hashed before and after)."""
import hashlib
from pathlib import Path

from cdism_fast.cli import main

#: The options of a training command that make it take a fraction of a second.
TINY_ARGS = ["--preset", "demo", "--structure", "1,1,8", "--batch-size", "2", "--patch-size", "12", "--no-progress",
             "--threads", "1"]


def train_tiny_teacher(out: Path, train: Path, val: Path) -> Path:
    """A completed one-iteration teacher run in ``out``."""
    assert main(["train", *TINY_ARGS, "--data", str(train), "--val", str(val), "--iterations", "1",
                 "--out", str(out)]) == 0
    return out


def copy_run(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file():
            (target / path.name).write_bytes(path.read_bytes())
    return target


def tree_hash(folder: Path) -> dict:
    """{relative path: sha256 of the content, "dir", or "link -> target"} of everything below ``folder``."""
    def entry(path: Path) -> str:
        if path.is_symlink():
            return f"link -> {path.readlink()}"
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"

    return {p.relative_to(folder).as_posix(): entry(p) for p in sorted(folder.rglob("*"))
            if p.is_symlink() or p.is_file() or p.is_dir()}


def one_error_line(capsys, command: str) -> str:
    """The one ``cdism-fast COMMAND: error: ...`` line the command printed (asserts there is exactly one)."""
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith(f"cdism-fast {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]
