"""``cdism-fast upscale``: every input checked before the first output, and no file in OUT it did not write."""
from __future__ import annotations

import os

from PIL import Image

from cdism_fast.cli import main

from helpers.images import write_noise_images
from helpers.runs import one_error_line, tree_hash

UPSCALE = ["upscale", "--model", "bicubic", "--scale", "2"]


def _upscale(argv, capsys):
    code = main([*UPSCALE, *argv])
    return code, one_error_line(capsys, "upscale") if code else None


def test_files_in_out_that_upscale_did_not_write_need_force(tmp_path, capsys):
    source = write_noise_images(tmp_path / "in", 2, size=(24, 32))
    out = tmp_path / "out"
    out.mkdir()
    (out / "img1.png").write_bytes(b"someone's picture")
    code, line = _upscale([str(source), str(out)], capsys)
    assert code == 2 and line == (f"cdism-fast upscale: error: OUT {out / 'img1.png'} exists and was not written by "
                                  "upscale; pass --force to replace it, or choose another output (nothing was written)")
    assert sorted(p.name for p in out.iterdir()) == ["img1.png"]
    assert _upscale([str(source), str(out), "--force"], capsys)[0] == 0
    assert _upscale([str(source), str(out)], capsys)[0] == 0  # its own outputs: replaced without --force
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img1.png"]


def test_a_bad_image_in_the_middle_stops_before_any_output(tmp_path, capsys):
    source = write_noise_images(tmp_path / "in", 3, size=(24, 32))
    data = (source / "img1.png").read_bytes()
    (source / "img1.png").write_bytes(data[: len(data) // 2])  # truncated: the header still reads
    code, line = _upscale([str(source), str(tmp_path / "out")], capsys)
    assert code == 2 and f"cannot decode image {source / 'img1.png'}" in line
    assert not (tmp_path / "out").exists()


def test_links_and_fifos_in_out_are_never_written_through(tmp_path, capsys):
    source = write_noise_images(tmp_path / "in", 2, size=(24, 32))
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "img0.png").symlink_to(victim)
    before = tree_hash(tmp_path)
    code, line = _upscale([str(source), str(out)], capsys)
    assert code == 2 and "exists and was not written by upscale" in line and tree_hash(tmp_path) == before
    assert _upscale([str(source), str(out), "--force"], capsys)[0] == 0
    assert victim.read_bytes() == b"precious" and not (out / "img0.png").is_symlink()
    os.mkfifo(out / "img1.fifo.png")
    (source / "img1.png").rename(source / "img1.fifo.png")
    code, line = _upscale([str(source), str(out), "--force"], capsys)
    assert code == 2 and "is a FIFO, socket or device, not a regular file" in line


def test_a_full_disk_names_the_output(tmp_path, capsys, monkeypatch):
    import errno

    source = write_noise_images(tmp_path / "in", 1, size=(24, 32))

    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    code, line = _upscale([str(source), str(tmp_path / "out")], capsys)
    assert code == 2 and line == (f"cdism-fast upscale: error: cannot write {tmp_path / 'out' / 'img0.png'}: No "
                                  "space left on device; free space on its disk or write it elsewhere (nothing of "
                                  "it was written)")
    assert list((tmp_path / "out").iterdir()) == []


def test_upscale_refuses_to_overwrite_its_input_or_merge_names(tmp_path, capsys):
    folder = write_noise_images(tmp_path / "in", 1, seed=3)
    Image.open(folder / "img0.png").save(folder / "img0.jpg")
    before = tree_hash(folder)
    assert main(["upscale", "--model", "bicubic", "--scale", "2", str(folder), str(folder)]) == 2
    assert "OUT" in one_error_line(capsys, "upscale") and tree_hash(folder) == before
    assert main(["upscale", "--model", "bicubic", "--scale", "2", str(folder / "img0.png"),
                 str(folder / "img0.png")]) == 2
    assert "is an input image" in one_error_line(capsys, "upscale") and tree_hash(folder) == before
    assert main(["upscale", "--model", "bicubic", "--scale", "2", str(folder), str(tmp_path / "out")]) == 2
    line = one_error_line(capsys, "upscale")
    assert "img0.jpg and img0.png would both be written to" in line and not (tmp_path / "out").exists()
