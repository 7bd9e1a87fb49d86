"""safe_io: the one writer of every file the tool writes, and the weights-only reader."""
from __future__ import annotations

import errno
import os
import pickle
import stat

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


def test_a_planted_file_or_link_at_a_temporary_name_is_never_opened(tmp_path, monkeypatch):
    from cdism_fast import safe_io

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    tokens = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(safe_io.secrets, "token_hex", lambda n: next(tokens))
    planted = tmp_path / f".out.bin.aaaaaaaaaaaa{TEMPORARY_SUFFIX}"
    planted.symlink_to(victim)
    atomic_write(tmp_path / "out.bin", b"new")
    assert victim.read_bytes() == b"precious" and planted.is_symlink()
    assert (tmp_path / "out.bin").read_bytes() == b"new"


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_folder_or_fifo_at_the_target_is_refused_in_one_line(tmp_path, kind):
    target = tmp_path / "out.json"
    target.mkdir() if kind == "folder" else os.mkfifo(target)
    with pytest.raises((IsADirectoryError, FileExistsError)) as caught:
        atomic_write(target, b"{}")
    assert str(caught.value).startswith(f"cannot write {target}: it is a ") and "\n" not in str(caught.value)
    assert target.is_dir() if kind == "folder" else stat.S_ISFIFO(os.lstat(target).st_mode)
    assert [entry.name for entry in tmp_path.iterdir()] == ["out.json"]


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    from cdism_fast.safe_io import WriteError

    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError) as caught:
        atomic_write(target, b"new")
    assert caught.value.errno == errno.ENOSPC and caught.value.exit_code == 2
    assert str(pickle.loads(pickle.dumps(caught.value))) == str(caught.value)  # from a DataLoader worker too
    assert str(caught.value) == (f"cannot write {target}: No space left on device; free space on its disk or "
                                 "write it elsewhere (nothing of it was written)")
    assert [entry.name for entry in tmp_path.iterdir()] == ["out.bin"] and target.read_bytes() == b"old"


def test_missing_folders_are_an_error_when_they_may_not_be_made(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"the folder .*new does not exist; create it"):
        atomic_write(tmp_path / "new" / "out.bin", b"x", make_folders=False)
    assert not (tmp_path / "new").exists()


def test_one_form_of_temporary_name():
    from cdism_fast.safe_io import temporary_target

    assert temporary_target(f".stage.json.0123456789ab{TEMPORARY_SUFFIX}") == "stage.json"
    assert temporary_target(".a.b.npy.ffffffffffff.partial") == "a.b.npy"
    for other in (".stage.json.partial", ".stage.json.abcdefgh.partial", "stage.json.0123456789ab.partial",
                  ".stage.json.0123456789AB.partial", ".stage.json.0123456789ab.partial.npy"):
        assert temporary_target(other) is None, other


def test_a_shared_folder_loses_only_the_temporaries_no_process_writes(tmp_path):
    from cdism_fast.safe_io import remove_stale_temporaries

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / f".a.npy.0123456789ab{TEMPORARY_SUFFIX}"
    stale.write_bytes(b"left by a killed process")
    link = cache / f".b.npy.0123456789ab{TEMPORARY_SUFFIX}"
    link.symlink_to(victim)
    (cache / "mine.txt").write_bytes(b"not a temporary")
    with atomic_open(cache / "c.npy") as stream:
        stream.write(b"being written")
        removed = remove_stale_temporaries(cache, shared=True)
        written = [entry for entry in cache.iterdir() if entry.name.startswith(".c.npy.")]
        assert len(written) == 1  # the writer's own temporary is kept
    assert sorted(removed) == sorted([stale, link]) and victim.read_bytes() == b"precious"
    assert sorted(entry.name for entry in cache.iterdir()) == ["c.npy", "mine.txt"]


def test_the_run_folder_removes_the_temporaries_of_safe_io_only(tmp_path):
    from cdism_fast.training.artifacts import mark_stage, prepare_run_folder

    run = tmp_path / "run"
    prepare_run_folder(run, "train", {}, files=("checkpoint.pt",))
    mark_stage(run, status="interrupted")
    stale = run / f".checkpoint.pt.0123456789ab{TEMPORARY_SUFFIX}"
    stale.write_bytes(b"x")
    foreign = [run / ".checkpoint.pt.partial", run / ".checkpoint.pt.abcdefgh.partial"]
    for path in foreign:
        path.write_bytes(b"not a temporary of the tool")
    prepare_run_folder(run, "train", {}, resume=True, files=("checkpoint.pt",))
    mark_stage(run, status="completed")
    assert not stale.exists() and all(path.exists() for path in foreign)


def test_the_run_log_refuses_a_fifo_and_names_itself_on_a_full_disk(tmp_path, monkeypatch):
    from cdism_fast.safe_io import WriteError
    from cdism_fast.training.monitor import RunLog

    os.mkfifo(tmp_path / "log.jsonl")
    with pytest.raises(FileExistsError, match=r"log\.jsonl: it is a FIFO, socket or device"):
        RunLog(tmp_path / "log.jsonl", tensorboard=False)  # at once: never waits for a reader
    (tmp_path / "log.jsonl").unlink()
    log = RunLog(tmp_path / "log.jsonl", tensorboard=False)
    log.write("train", 1, loss=0.5)

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(log, "_stream", FullDisk())
    with pytest.raises(WriteError, match=r"cannot write .*log\.jsonl: No space left on device; free space on its "
                                         r"disk or write it elsewhere \(the records before this one are kept\)"):
        log.write("train", 2, loss=0.4)
