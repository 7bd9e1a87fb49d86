"""safe_io: the one writer of every file the tool writes, and the weights-only reader."""
from __future__ import annotations

import os

import pytest

from cdism_fast.safe_io import TEMPORARY_SUFFIX, atomic_open, atomic_write


def test_atomic_open_replaces_the_target_in_one_rename_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_open(target) as stream:
        stream.write(b"new ")
        stream.write(b"content")
        assert target.read_bytes() == b"old"  # nothing visible before the block ends
    assert target.read_bytes() == b"new content"
    assert [entry.name for entry in tmp_path.iterdir()] == ["out.bin"]


def test_a_failed_block_keeps_the_old_content_and_removes_its_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target) as stream:
            stream.write(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert not any(entry.name.endswith(TEMPORARY_SUFFIX) for entry in tmp_path.iterdir())


def test_a_link_at_the_target_is_replaced_never_written_through(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "result.json").symlink_to(outside)
    atomic_write(folder / "result.json", b"{}")
    assert outside.read_bytes() == b"precious"
    assert not (folder / "result.json").is_symlink() and (folder / "result.json").read_bytes() == b"{}"


def test_new_files_get_the_umask_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
