"""The run folder: overwrite removes only the tool's own files, temporaries and links, the lock, resume rules,
a failed stage's record, odd JSON in it; each case asserts the exit code, the one line and the folder's hash.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdism_fast.cli import main

from helpers.runs import TINY_ARGS, copy_run, one_error_line, tree_hash

pytestmark = pytest.mark.usefixtures("one_thread")


def test_overwrite_removes_only_the_stage_files_and_refuses_foreign_ones(tmp_path, noise_images, teacher_run, capsys):
    train, val = noise_images
    run = copy_run(teacher_run, tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    before = tree_hash(run)
    argv = ["train", *TINY_ARGS, "--data", str(train), "--iterations", "1", "--out", str(run), "--overwrite"]
    assert main(argv) == 2
    assert "also holds notes.txt, which cdism-fast did not write" in one_error_line(capsys, "train")
    assert tree_hash(run) == before
    (run / "notes.txt").unlink()
    (run / ".checkpoint.pt.0123456789ab.partial").write_bytes(b"stale")  # a killed run's temporary file
    assert main(argv) == 0
    assert {p.name for p in run.iterdir()} - {"tensorboard"} == {"checkpoint.pt", "log.jsonl", "model.pt",
                                                                   "stage.json"}
    assert json.loads((run / "stage.json").read_text())["files"]


def test_overwrite_of_a_workflow_run_removes_its_stage_folders_and_nothing_else(tmp_path):
    from cdism_fast.training.artifacts import prepare_run_folder
    from cdism_fast.workflow import RUN_FILES, STAGE_FOLDERS

    run = tmp_path / "run"
    prepare_run_folder(run, "run", {}, files=RUN_FILES, runs=STAGE_FOLDERS)
    prepare_run_folder(run / "teacher", "train", {}, files=("checkpoint.pt", "model.pt"))
    for name in ("evaluation.json", "report.md", "crops/hr.png", "teacher/model.pt", "teacher/checkpoint.pt"):
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_text("written by the tool")
    (run / "teacher" / "notes.txt").write_text("mine")
    (run / "crops" / "mine.jpg").write_text("mine")
    before = tree_hash(run)
    with pytest.raises(FileExistsError, match=r"also holds crops/mine.jpg, teacher/notes.txt, which cdism-fast did"):
        prepare_run_folder(run, "run", {}, overwrite=True, files=RUN_FILES, runs=STAGE_FOLDERS)
    assert tree_hash(run) == before
    (run / "teacher" / "notes.txt").unlink()
    (run / "crops" / "mine.jpg").unlink()
    prepare_run_folder(run, "run", {}, overwrite=True, files=RUN_FILES, runs=STAGE_FOLDERS)
    assert sorted(p.name for p in run.iterdir()) == [".cdism-fast.lock", "stage.json"]


def test_overwrite_refuses_to_delete_an_input_inside_the_output_folder(tmp_path, noise_images, teacher_run, capsys):
    train, val = noise_images
    run = copy_run(teacher_run, tmp_path / "run")
    before = tree_hash(run)
    assert main(["prune", *TINY_ARGS[:2], "--teacher", str(run / "model.pt"), "--data", str(train), "--iterations", "1",
                 "--out", str(run), "--overwrite", "--no-progress"]) == 2
    line = one_error_line(capsys, "prune")
    assert f"--overwrite would delete {run / 'model.pt'} (--teacher)" in line
    inside = copy_run(train, run / "data")
    argv = ["train", *TINY_ARGS, "--data", str(inside), "--iterations", "1", "--out", str(run), "--overwrite"]
    assert main(argv) == 2
    assert "(--data), an input of this run" in one_error_line(capsys, "train")
    assert {k: v for k, v in tree_hash(run).items() if not k.startswith("data")} == before


def test_stale_temporaries_are_removed_on_resume_and_links_never_followed(tmp_path, noise_images, teacher_run, capsys):
    train, val = noise_images
    run = copy_run(teacher_run, tmp_path / "run")
    (run / ".checkpoint.pt.0123456789ab.partial").write_bytes(b"x" * 100)
    victim = tmp_path / "victim.txt"
    victim.write_text('{"event": "precious", "iteration": 0}\n')
    (run / ".stage.json.fedcba987654.partial").symlink_to(victim)  # a stale temporary that is a link
    (run / ".stage.json.partial").symlink_to(victim)  # not a temporary name of the tool: someone else's file
    argv = ["train", *TINY_ARGS, "--data", str(train), "--iterations", "2", "--out", str(run), "--resume"]
    (run / "log.jsonl").unlink()
    (run / "log.jsonl").symlink_to(victim)  # planted where the log is appended to
    assert main(argv) == 2
    assert "log.jsonl is a symbolic link; cdism-fast never writes through links" in one_error_line(capsys, "train")
    (run / "log.jsonl").unlink()
    assert main(argv) == 0
    assert victim.read_text() == '{"event": "precious", "iteration": 0}\n'
    assert not list(run.glob(".checkpoint.pt.*.partial")) and not list(run.glob(".stage.json.*.partial"))
    assert (run / ".stage.json.partial").is_symlink()  # left alone: the tool removes only its own files


def test_report_never_writes_through_planted_links(tmp_path, monkeypatch):
    from cdism_fast.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    entry = {"params": 10, "flops": 10, "psnr": 30.0, "ssim": 0.9, "sets": {}, "structure": None, "density": None}
    (run / "evaluation.json").write_text(json.dumps({"scale": 2, "crop": {}, "models": {"bicubic": entry}}))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("report.json", "report.md", ".report.json.partial", "psnr_vs_cost.png"):
        (run / name).symlink_to(victim)
    build_report(run)
    assert victim.read_text() == "precious"
    assert not (run / "report.json").is_symlink() and json.loads((run / "report.json").read_text())["scale"] == 2


def test_unwritable_output_and_out_that_is_a_file(tmp_path, noise_images, capsys):
    train, _ = noise_images
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["train", *TINY_ARGS, "--data", str(train), "--iterations", "1", "--out", str(target)]) == 2
    assert "is a file, not a folder" in one_error_line(capsys, "train") and target.read_text() == "x"
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "run"
    else:  # root ignores permissions (os.access says yes); sysfs refuses new folders even to root
        out = Path("/sys/cdism-fast-test-run")
        try:
            out.mkdir()
        except OSError:
            pass
        else:
            out.rmdir()
            pytest.skip("running as root, which ignores permissions, and /sys accepts new folders here")
    assert main(["train", *TINY_ARGS, "--data", str(train), "--iterations", "1", "--out", str(out)]) == 2
    line = one_error_line(capsys, "train")
    assert str(out) in line and "check its permissions or choose another --out" in line, line


@pytest.mark.parametrize("content", ["[1, 2]", "{\"models\": 3, \"scale\": 2, \"crop\": {}}", "not json",
                                     "[" * 100000 + "]" * 100000,
                                     json.dumps({"scale": 2, "crop": {}, "models": {
                                         "teacher": {"params": 0, "flops": 0, "psnr": 1.0, "ssim": 1.0, "sets": {}},
                                         "student": {"params": 0, "flops": 0, "psnr": "x", "ssim": 1.0,
                                                     "sets": {}}}})])
def test_odd_json_in_a_run_folder_gives_one_line(tmp_path, capsys, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "evaluation.json").write_text(content)
    (run / "stage.json").write_text(json.dumps({"stage": "run", "settings": "odd"}))
    before = tree_hash(run)
    assert main(["report", str(run)]) == 2
    assert str(run) in one_error_line(capsys, "report")
    assert tree_hash(run) == before
    (run / "stage.json").write_text("[" * 100000)
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert "stage.json is not valid JSON" in one_error_line(capsys, "train")


def test_a_failing_stage_is_marked_failed_with_its_message(tmp_path, noise_images, capsys):
    train, _ = noise_images
    out = tmp_path / "t"
    too_big = ["--preset", "demo", "--structure", "1,1,8", "--batch-size", "2", "--patch-size", "100", "--no-progress"]
    assert main(["train", *too_big, "--data", str(train), "--out", str(out)]) == 2
    line = one_error_line(capsys, "train")
    record = json.loads((out / "stage.json").read_text())
    assert record["status"] == "failed" and record["error"] in line
    assert not (out / ".cdism-fast.lock").exists()
    assert main(["train", *TINY_ARGS, "--data", str(train), "--out", str(out)]) == 2
    assert "(failed: " in one_error_line(capsys, "train")


def test_lock_refuses_a_second_writer_and_takes_over_a_stale_lock(tmp_path, noise_images, teacher_run, capsys):
    train, _ = noise_images
    run = copy_run(teacher_run, tmp_path / "run")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".cdism-fast.lock").write_text(f"{live.pid}\n")
        before = tree_hash(run)
        argv = ["train", *TINY_ARGS, "--data", str(train), "--iterations", "2", "--out", str(run), "--resume"]
        assert main(argv) == 2
        assert f"is being written by process {live.pid}" in one_error_line(capsys, "train")
        assert tree_hash(run) == before
    finally:
        live.kill()
        live.wait()
    (run / ".cdism-fast.lock").write_text(f"{live.pid}\n")  # its process is gone now
    assert main(argv) == 0
    assert not (run / ".cdism-fast.lock").exists()


def test_resume_takes_the_new_lr_refuses_other_meanings_and_keeps_the_log_clean(tmp_path, noise_images, teacher_run,
                                                                                 capsys):
    from cdism_fast.training import read_log

    train, val = noise_images
    run = copy_run(teacher_run, tmp_path / "run")
    with open(run / "log.jsonl", "a") as log:  # what a run killed after its checkpoint had logged
        log.write(json.dumps({"event": "train", "iteration": 2, "loss": 9.0}) + "\n")
    common = ["--data", str(train), "--val", str(val), "--out", str(run), "--resume"]
    assert main(["train", *TINY_ARGS, *common, "--iterations", "3", "--lr", "0.0005", "--log-every", "1"]) == 0
    record = json.loads((run / "stage.json").read_text())
    assert record["settings"]["lr"] == 0.0005 and record["resumes"][-1]["changed"]["lr"][1] == 0.0005
    lrs = {r["iteration"]: r["lr"] for r in read_log(run / "log.jsonl", "train")}
    assert lrs[2] == lrs[3] == 0.0005
    iterations = [r["iteration"] for r in read_log(run / "log.jsonl", "train")]
    assert iterations == sorted(set(iterations))
    before = tree_hash(run)
    for change, word in ((["--batch-size", "3"], "batch_size"), (["--structure", "1,1,16"], "model")):
        argv = ["train", *TINY_ARGS, *common, "--iterations", "4", *change]
        assert main(argv) == 2
        assert f"cannot resume the run in {run} with other settings ({word} was" in one_error_line(capsys, "train")
    assert {k: v for k, v in tree_hash(run).items() if k != "stage.json"} == \
        {k: v for k, v in before.items() if k != "stage.json"}
