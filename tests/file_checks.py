"""What the tests of the file writers share: a tree's content, the command's one error line, small images."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image


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
    assert len(lines) == 1 and len(err) == 1, err
    return lines[0]


def write_images(folder: Path, count: int, seed: int = 0, size=(24, 32)) -> Path:
    """``count`` random RGB PNGs ``img0.png`` ... in ``folder`` (made)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder
