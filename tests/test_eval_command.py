"""``cdism-fast eval``: what --json may write, and one line with exit 2 for each input the user can fix."""
from __future__ import annotations

import errno
import importlib.util
import json
import os

import pytest

from cdism_fast.cli import main

from helpers.images import write_noise_images
from helpers.runs import one_error_line, tree_hash

EVAL = ["eval", "--model", "bicubic", "--scale", "2"]


@pytest.fixture
def data(tmp_path):
    """A small set in the HR layout."""
    write_noise_images(tmp_path / "set" / "HR", 2, size=(16, 20))
    return tmp_path / "set"


def _eval(argv, capsys):
    code = main([*EVAL, *argv])
    return code, one_error_line(capsys, "eval") if code else None


def test_json_is_written_with_its_mark_and_replaces_only_its_own_files(tmp_path, data, capsys):
    out = tmp_path / "r.json"
    assert _eval(["--data", str(data), "--json", str(out)], capsys)[0] == 0
    assert json.loads(out.read_text())["written_by"] == "cdism-fast eval"
    assert _eval(["--data", str(data), "--json", str(out)], capsys)[0] == 0  # its own file again
    mine = tmp_path / "mine.json"
    mine.write_text('{"notes": 1}')
    code, line = _eval(["--data", str(data), "--json", str(mine)], capsys)
    assert code == 2 and line == (f"cdism-fast eval: error: --json {mine} exists and was not written by this "
                                  "command; pass --force to replace it, or choose another path (nothing was written)")
    assert mine.read_text() == '{"notes": 1}'
    assert _eval(["--data", str(data), "--json", str(mine), "--force"], capsys)[0] == 0
    assert json.loads(mine.read_text())["sets"]


def test_json_never_replaces_an_input_or_a_run_folder_file(tmp_path, data, capsys):
    from cdism_fast.export import export
    from cdism_fast.models import build

    model = export(build("edsr_mini", scale=2), tmp_path / "model.pt")
    run = tmp_path / "run"
    run.mkdir()
    (run / "stage.json").write_text(json.dumps({"stage": "train", "status": "completed"}))
    image = data / "HR" / "img0.png"
    os.link(image, tmp_path / "twin.png")
    before = tree_hash(tmp_path)
    cases = {str(image): f"--json {image} is an input of this command;",
             str(data / "HR" / ".." / "HR" / "img1.png"): "an input of this command (",
             str(tmp_path / "twin.png"): "an input of this command", str(model): "an input of this command",
             str(run / "stage.json"): f"lies in the run folder {run}", str(run / "r.json"): "lies in the run folder"}
    for target, expected in cases.items():
        code, line = _eval(["--model", str(model), "--data", str(data), "--json", target, "--force"], capsys)
        assert code == 2 and expected in line and line.endswith("(nothing was written)"), (target, line)
    assert tree_hash(tmp_path) == before
    assert _eval(["--data", str(data), "--json", str(data / "HR" / "scores.json")], capsys)[0] == 0  # a new file


def test_json_target_is_checked_before_the_evaluation(tmp_path, data, capsys, monkeypatch):
    import cdism_fast.evaluation

    monkeypatch.setattr(cdism_fast.evaluation, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    missing = tmp_path / "nonexist" / "dir" / "r.json"
    code, line = _eval(["--data", str(data), "--json", str(missing)], capsys)
    assert code == 2 and line == (f"cdism-fast eval: error: --json {missing}: the folder {missing.parent} does not "
                                  "exist; create it first or choose another path (nothing was written)")
    assert not (tmp_path / "nonexist").exists()
    monkeypatch.setattr("cdism_fast.cli.outputs.os.access", lambda path, mode: False)
    code, line = _eval(["--data", str(data), "--json", str(tmp_path / "r.json")], capsys)
    assert code == 2 and f"the folder {tmp_path} is not writable" in line


def test_a_link_or_fifo_at_the_json_target(tmp_path, data, capsys):
    victim = tmp_path / "victim.json"
    victim.write_text('{"precious": true}')
    out = tmp_path / "r.json"
    out.symlink_to(victim)
    code, line = _eval(["--data", str(data), "--json", str(out)], capsys)
    assert code == 2 and "exists and was not written by this command" in line
    assert _eval(["--data", str(data), "--json", str(out), "--force"], capsys)[0] == 0
    assert victim.read_text() == '{"precious": true}' and not out.is_symlink()
    os.mkfifo(tmp_path / "fifo.json")
    code, line = _eval(["--data", str(data), "--json", str(tmp_path / "fifo.json"), "--force"], capsys)
    assert code == 2 and "is a FIFO, socket or device, not a regular file" in line


def test_a_full_disk_names_the_json_file_and_leaves_nothing(tmp_path, data, capsys, monkeypatch):
    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "r.json"
    monkeypatch.setattr(os, "fsync", full)
    code, line = _eval(["--data", str(data), "--json", str(out)], capsys)
    assert code == 2 and line == (f"cdism-fast eval: error: cannot write {out}: No space left on device; free space "
                                  "on its disk or write it elsewhere (nothing of it was written)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_builtin_data_without_scikit_image_is_one_line(capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage"
                        else real_find_spec(name, *a))
    code, line = _eval(["--data", "builtin:heldout"], capsys)
    assert code == 2 and line == ("cdism-fast eval: error: --data builtin:... (the built-in photographs) needs "
                                  "scikit-image, which is not installed; run: pip install 'cdism_fast[demo]' "
                                  "(or: pip install scikit-image)")


def test_an_image_smaller_than_the_scale_is_one_line(tmp_path, capsys):
    from PIL import Image

    folder = write_noise_images(tmp_path / "set", 1, size=(24, 32))
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    code, line = _eval(["--data", str(folder)], capsys)
    assert code == 2 and line == (f"cdism-fast eval: error: HR image {folder / 'dot.png'} is 1x1, smaller than the "
                                  "scale x2; remove it from the set")


def test_an_empty_or_folder_json_target_names_the_option(tmp_path, data, capsys, monkeypatch):
    import cdism_fast.evaluation

    monkeypatch.setattr(cdism_fast.evaluation, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    monkeypatch.chdir(tmp_path)
    before = tree_hash(tmp_path)
    code, line = _eval(["--data", str(data), "--json", ""], capsys)
    assert code == 2 and line == "cdism-fast eval: error: --json is empty; name the file to write (nothing was written)"
    code, line = _eval(["--data", str(data), "--json", str(data)], capsys)
    assert code == 2 and line == (f"cdism-fast eval: error: --json: cannot write {data}: it is a folder; choose a file "
                                  "name (nothing was written)")
    assert tree_hash(tmp_path) == before
