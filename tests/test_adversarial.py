"""The workflow's safety and error contract, tried as an attacker and a careless user would.

Each case asserts the exit code, the one line printed, and that nothing but
the tool's own files changed (the folder is hashed before and after).
Kernel fuzzing against the reference: a few cases by default, CDISM_FUZZ=N
runs N per op.
"""
import ast
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cdism_fast
from cdism_fast.cli import main
from cdism_fast.ops import available_backends, obproxsg_step
from tests.tolerances import TOLERANCES, assert_close

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--preset", "demo", "--structure", "1,1,8", "--batch-size", "2", "--patch-size", "12", "--no-progress",
        "--threads", "1"]


def write_images(folder, count, seed, size=(40, 48)):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return write_images(root / "train", 2, seed=1), write_images(root / "val", 1, seed=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, images):
    """A completed one-iteration teacher run (copied by the tests that change it)."""
    train, val = images
    out = tmp_path_factory.mktemp("trained") / "teacher"
    assert main(["train", *TINY, "--data", str(train), "--val", str(val), "--iterations", "1", "--out", str(out)]) == 0
    return out


def copy_run(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file():
            (target / path.name).write_bytes(path.read_bytes())
    return target


def tree_hash(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*")) if not p.is_symlink()}


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith(f"cdism-fast {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


class Payload:
    """Unpickling this creates ``marker``: proof that a file's code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------------------------- 1. no pickle code runs
def test_every_torch_load_in_the_package_uses_weights_only():
    offenders = []
    for path in Path(cdism_fast.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not safe:
                    offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize("shape", ["bare", "in_params", "in_real_checkpoint"])
def test_crafted_pickles_are_refused_by_every_command_and_never_run(tmp_path, images, trained, capsys, shape):
    train, val = images
    marker = tmp_path / "payload_ran"
    if shape == "bare":
        content = Payload(marker)
    elif shape == "in_params":
        content = {"params": {"conv_first.weight": Payload(marker)}}
    else:
        content = torch.load(trained / "checkpoint.pt", weights_only=True)
        content["extra"] = Payload(marker)
    crafted = tmp_path / "crafted.pt"
    torch.save(content, crafted)
    run = copy_run(trained, tmp_path / "run")
    (run / "checkpoint.pt").write_bytes(crafted.read_bytes())
    (run / "model.pt").write_bytes(crafted.read_bytes())
    workflow = tmp_path / "workflow"
    (workflow / "teacher").mkdir(parents=True)
    (workflow / "stage.json").write_text(json.dumps({"stage": "run", "settings": {}, "status": "interrupted"}))
    (workflow / "teacher" / "stage.json").write_text(json.dumps({"stage": "train", "status": "interrupted"}))
    (workflow / "teacher" / "checkpoint.pt").write_bytes(crafted.read_bytes())
    data = ["--data", str(train), "--val", str(val), "--iterations", "2"]
    commands = [
        ("train", ["train", *TINY, *data, "--out", str(run), "--resume"]),
        ("prune", ["prune", *TINY[:2], "--teacher", str(crafted), *data, "--out", str(tmp_path / "p")]),
        ("distill", ["distill", *TINY[:2], "--teacher", str(crafted), "--student", str(crafted), *data,
                     "--out", str(tmp_path / "d")]),
        ("compress", ["compress", "--teacher", str(crafted), "--density", "0.5", "--out", str(tmp_path / "c")]),
        ("eval", ["eval", "--model", str(crafted), "--data", str(val)]),
        ("upscale", ["upscale", "--model", str(crafted), str(val / "img0.png"), str(tmp_path / "up.png")]),
        ("export", ["export", str(crafted), str(tmp_path / "x.pth")]),
        ("run", ["run", *TINY[:2], *TINY[4:], "--teacher", str(crafted), *data, "--out", str(tmp_path / "r")]),
        ("run", ["run", *TINY[:2], *TINY[4:], *data, "--out", str(workflow), "--resume"]),
    ]
    for command, argv in commands:
        assert main(argv) == 2, argv
        line = one_error_line(capsys, command)
        assert "was refused: it holds Python objects other than tensors" in line, line
        assert "allowlist" not in line
        assert not marker.exists(), command


# --------------------------------------------------------------------------- 2. only the tool's own files go
def test_overwrite_removes_only_the_stage_files_and_refuses_foreign_ones(tmp_path, images, trained, capsys):
    train, val = images
    run = copy_run(trained, tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    before = tree_hash(run)
    argv = ["train", *TINY, "--data", str(train), "--iterations", "1", "--out", str(run), "--overwrite"]
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


def test_overwrite_refuses_to_delete_an_input_inside_the_output_folder(tmp_path, images, trained, capsys):
    train, val = images
    run = copy_run(trained, tmp_path / "run")
    before = tree_hash(run)
    assert main(["prune", *TINY[:2], "--teacher", str(run / "model.pt"), "--data", str(train), "--iterations", "1",
                 "--out", str(run), "--overwrite", "--no-progress"]) == 2
    line = one_error_line(capsys, "prune")
    assert f"--overwrite would delete {run / 'model.pt'} (--teacher)" in line
    inside = copy_run(train, run / "data")
    assert main(["train", *TINY, "--data", str(inside), "--iterations", "1", "--out", str(run), "--overwrite"]) == 2
    assert "(--data), an input of this run" in one_error_line(capsys, "train")
    assert {k: v for k, v in tree_hash(run).items() if not k.startswith("data")} == before


def test_stale_temporaries_are_removed_on_resume_and_links_never_followed(tmp_path, images, trained, capsys):
    train, val = images
    run = copy_run(trained, tmp_path / "run")
    (run / ".checkpoint.pt.0123456789ab.partial").write_bytes(b"x" * 100)
    victim = tmp_path / "victim.txt"
    victim.write_text('{"event": "precious", "iteration": 0}\n')
    (run / ".stage.json.partial").symlink_to(victim)  # the old fixed temporary name
    argv = ["train", *TINY, "--data", str(train), "--iterations", "2", "--out", str(run), "--resume"]
    (run / "log.jsonl").unlink()
    (run / "log.jsonl").symlink_to(victim)  # planted where the log is appended to
    assert main(argv) == 2
    assert "log.jsonl is a symbolic link; cdism-fast never writes through links" in one_error_line(capsys, "train")
    (run / "log.jsonl").unlink()
    assert main(argv) == 0
    assert victim.read_text() == '{"event": "precious", "iteration": 0}\n'
    assert not list(run.glob(".checkpoint.pt.*.partial")) and not (run / ".stage.json.partial").exists()


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


def test_upscale_refuses_to_overwrite_its_input_or_merge_names(tmp_path, capsys):
    folder = write_images(tmp_path / "in", 1, seed=3)
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


# --------------------------------------------------------------------------------------- 3. error contract
def test_damaged_empty_and_foreign_files_give_one_line(tmp_path, images, trained, capsys):
    train, val = images
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((trained / "model.pt").read_bytes()[:200])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"\x80\x02}q\x00K\x65K\x01s.")  # a plain pickle of {101: 1}, not a torch file
    for path, expected in ((truncated, "cannot read"), (empty, "is empty (0 bytes)"), (foreign, "cannot read")):
        for command, argv in (("eval", ["eval", "--model", str(path), "--data", str(val)]),
                              ("prune", ["prune", "--teacher", str(path), "--out", str(tmp_path / "p")])):
            assert main(argv) == 2
            line = one_error_line(capsys, command)
            assert expected in line and str(path) in line, line
        run = copy_run(trained, tmp_path / f"run_{path.stem}")
        (run / "checkpoint.pt").write_bytes(path.read_bytes())
        assert main(["train", *TINY, "--data", str(train), "--iterations", "2", "--out", str(run), "--resume"]) == 2
        assert str(run / "checkpoint.pt") in one_error_line(capsys, "train")
        assert json.loads((run / "stage.json").read_text())["status"] == "failed"
    state_dict = tmp_path / "state_dict.pth"
    torch.save({"params": {"encoder.weight": torch.zeros(3, 3)}}, state_dict)
    for command in ("prune", "compress", "distill"):
        argv = [command, "--teacher", str(state_dict), "--out", str(tmp_path / command)]
        extra = {"compress": ["--density", "0.5"], "distill": ["--no-kd", "--student", str(state_dict)]}
        argv += extra.get(command, [])
        assert main(argv) == 2
        line = one_error_line(capsys, command)
        assert str(state_dict) in line and "the given state dict" not in line, line
    assert main(["eval", "--model", str(trained / "checkpoint.pt"), "--data", str(val)]) == 2
    assert "is a training checkpoint (resumable state), not a model file" in one_error_line(capsys, "eval")


def test_unwritable_output_and_out_that_is_a_file(tmp_path, images, capsys):
    train, _ = images
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["train", *TINY, "--data", str(train), "--iterations", "1", "--out", str(target)]) == 2
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
    assert main(["train", *TINY, "--data", str(train), "--iterations", "1", "--out", str(out)]) == 2
    line = one_error_line(capsys, "train")
    assert str(out) in line and "check its permissions or choose another --out" in line, line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA is unavailable")
def test_device_cuda_without_cuda_is_a_clear_error(tmp_path, images, capsys):
    train, val = images
    for command, argv in (("train", ["train", *TINY, "--data", str(train), "--out", str(tmp_path / "t"),
                                     "--device", "cuda"]),
                          ("eval", ["eval", "--model", "bicubic", "--scale", "2", "--data", str(val),
                                    "--device", "cuda"]),
                          ("upscale", ["upscale", "--model", "bicubic", "--scale", "2", str(val / "img0.png"),
                                       str(tmp_path / "u.png"), "--device", "cuda"])):
        assert main(argv) == 2
        assert "--device cuda: " in one_error_line(capsys, command)
    assert not (tmp_path / "t").exists()


def test_decompression_bomb_is_refused(tmp_path, monkeypatch, capsys):
    folder = write_images(tmp_path / "in", 1, seed=4)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 40x48 image is then a "bomb" (> 2x the limit)
    assert main(["upscale", "--model", "bicubic", "--scale", "2", str(folder / "img0.png"),
                 str(tmp_path / "o.png")]) == 2
    assert "likely a decompression bomb" in one_error_line(capsys, "upscale")


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


def test_unknown_key_in_student_json_and_string_density(tmp_path, images, trained, capsys):
    train, _ = images
    student = tmp_path / "student.json"
    student.write_text(json.dumps({"student": {"family": "edsr", "config": {"n_feats": 8, "no_such_option": 1}}}))
    assert main(["distill", "--no-kd", "--student", str(student), "--data", str(train), "--out",
                 str(tmp_path / "d")]) == 2
    line = one_error_line(capsys, "distill")
    assert f"student file {student}: the edsr model record got options ['n_feats', 'no_such_option']" in line
    assert "it cannot take; EDSR accepts" in line
    density = tmp_path / "density.json"
    density.write_text(json.dumps({"density": "0.5"}))
    assert main(["compress", "--teacher", str(trained / "model.pt"), "--density", str(density), "--out",
                 str(tmp_path / "c")]) == 2
    assert "'density' is '0.5', not a number" in one_error_line(capsys, "compress")


def test_small_points_scale_zero_and_huge_levels(tmp_path, images, capsys):
    from cdism_fast.ops import distillation_loss

    train, _ = images
    assert main(["train", *TINY, "--data", str(train), "--scale", "0", "--out", str(tmp_path / "t")]) == 2
    assert "--scale must be a positive upscaling factor" in one_error_line(capsys, "train")
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="levels must be an integer >= 1 and <= 32, got 1000000"):
        distillation_loss(x, x, x, levels=10 ** 6)


def test_a_failing_stage_is_marked_failed_with_its_message(tmp_path, images, capsys):
    train, _ = images
    out = tmp_path / "t"
    too_big = ["--preset", "demo", "--structure", "1,1,8", "--batch-size", "2", "--patch-size", "100", "--no-progress"]
    assert main(["train", *too_big, "--data", str(train), "--out", str(out)]) == 2
    line = one_error_line(capsys, "train")
    record = json.loads((out / "stage.json").read_text())
    assert record["status"] == "failed" and record["error"] in line
    assert not (out / ".cdism-fast.lock").exists()
    assert main(["train", *TINY, "--data", str(train), "--out", str(out)]) == 2
    assert "(failed: " in one_error_line(capsys, "train")


def test_bugs_exit_1_in_one_line_and_show_the_traceback_under_debug(monkeypatch, capsys):
    from cdism_fast.cli import info

    monkeypatch.setattr(info, "run", lambda args: {}["bug"], raising=False)
    monkeypatch.setattr("cdism_fast.cli.info.register", _register_failing_info)
    assert main(["info"]) == 1
    assert "internal error (a bug): KeyError: 'bug'; rerun with --debug" in capsys.readouterr().err
    with pytest.raises(KeyError):
        main(["--debug", "info"])


def _register_failing_info(subparsers):
    subparsers.add_parser("info").set_defaults(func=lambda args: {}["bug"])


def test_lock_refuses_a_second_writer_and_takes_over_a_stale_lock(tmp_path, images, trained, capsys):
    train, _ = images
    run = copy_run(trained, tmp_path / "run")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".cdism-fast.lock").write_text(f"{live.pid}\n")
        before = tree_hash(run)
        argv = ["train", *TINY, "--data", str(train), "--iterations", "2", "--out", str(run), "--resume"]
        assert main(argv) == 2
        assert f"is being written by process {live.pid}" in one_error_line(capsys, "train")
        assert tree_hash(run) == before
    finally:
        live.kill()
        live.wait()
    (run / ".cdism-fast.lock").write_text(f"{live.pid}\n")  # its process is gone now
    assert main(argv) == 0
    assert not (run / ".cdism-fast.lock").exists()


# ------------------------------------------------------------------------------------------ 4. resume rules
def test_resume_takes_the_new_lr_refuses_other_meanings_and_keeps_the_log_clean(tmp_path, images, trained, capsys):
    from cdism_fast.training import read_log

    train, val = images
    run = copy_run(trained, tmp_path / "run")
    with open(run / "log.jsonl", "a") as log:  # what a run killed after its checkpoint had logged
        log.write(json.dumps({"event": "train", "iteration": 2, "loss": 9.0}) + "\n")
    common = ["--data", str(train), "--val", str(val), "--out", str(run), "--resume"]
    assert main(["train", *TINY, *common, "--iterations", "3", "--lr", "0.0005", "--log-every", "1"]) == 0
    record = json.loads((run / "stage.json").read_text())
    assert record["settings"]["lr"] == 0.0005 and record["resumes"][-1]["changed"]["lr"][1] == 0.0005
    lrs = {r["iteration"]: r["lr"] for r in read_log(run / "log.jsonl", "train")}
    assert lrs[2] == lrs[3] == 0.0005
    iterations = [r["iteration"] for r in read_log(run / "log.jsonl", "train")]
    assert iterations == sorted(set(iterations))
    before = tree_hash(run)
    for change, word in ((["--batch-size", "3"], "batch_size"), (["--structure", "1,1,16"], "model")):
        argv = ["train", *TINY, *common, "--iterations", "4", *change]
        assert main(argv) == 2
        assert f"cannot resume the run in {run} with other settings ({word} was" in one_error_line(capsys, "train")
    assert {k: v for k, v in tree_hash(run).items() if k != "stage.json"} == \
        {k: v for k, v in before.items() if k != "stage.json"}


# -------------------------------------------------------------------------------------- 5. optional packages
def test_missing_matplotlib_skips_the_figures_and_says_so(tmp_path, monkeypatch):
    from cdism_fast import optional
    from cdism_fast.report import build_report

    real = optional.available
    monkeypatch.setattr(optional, "available", lambda module: module != "matplotlib" and real(module))
    run = tmp_path / "run"
    run.mkdir()
    entry = {"params": 10, "flops": 10, "psnr": 30.0, "ssim": 0.9, "sets": {}, "structure": None, "density": None}
    (run / "evaluation.json").write_text(json.dumps({"scale": 2, "crop": {}, "models": {"bicubic": entry}}))
    report = build_report(run)
    assert "matplotlib is not installed" in report["figures"]["skipped"]
    assert "pip install 'cdism_fast[demo]'" in (run / "report.md").read_text()
    assert not (run / "psnr_vs_cost.png").exists()


def test_missing_export_packages_are_named_before_any_work(tmp_path, monkeypatch, capsys):
    from cdism_fast import optional

    monkeypatch.setattr(optional, "available", lambda module: False)
    assert main(["export", "edsr_baseline", str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'cdism_fast[export]'" in one_error_line(capsys, "export")
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------------------ 6. aliased params
def _obproxsg_cases():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [(backend, device) for device in devices for backend in available_backends("obproxsg_step", device)]


@pytest.mark.parametrize("backend, device", _obproxsg_cases())
def test_obproxsg_refuses_aliased_parameters_in_every_backend(backend, device):
    x = torch.zeros(6, 8, device=device)
    cases = ([x, x], [x.t()[:4], x.t()[2:6]], [x[:, ::2], x[:, ::3]])
    for params in cases:
        before = x.clone()
        with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
            obproxsg_step(params, [torch.ones_like(p) for p in params], 0.1, 0.01, False, backend=backend)
        assert torch.equal(x, before)
    obproxsg_step([x[:3], x[3:]], [torch.ones(3, 8, device=device)] * 2, 0.1, 0.0, False, backend=backend)
    assert torch.equal(x, torch.full_like(x, -0.1))


# --------------------------------------------------------------------------------------- 8. kernel fuzzing
FUZZ_CASES = int(os.environ.get("CDISM_FUZZ", "3"))


def _layout(tensor: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "channels_last":
        return tensor.contiguous(memory_format=torch.channels_last)
    if kind == "strided":  # every other column of a wider buffer
        wide = torch.empty(*tensor.shape[:-1], tensor.shape[-1] * 2, dtype=tensor.dtype)
        wide[..., ::2] = tensor
        return wide[..., ::2]
    return tensor


def _fuzz_inputs(rng: np.random.Generator, count: int, dtype):
    channels = int(rng.integers(1, 6))
    height, width = (int(v) for v in rng.integers(17, 98, size=2))
    layout = ("contiguous", "channels_last", "strided")[int(rng.integers(0, 3))]
    seed = int(rng.integers(0, 2 ** 31))
    generator = torch.Generator().manual_seed(seed)
    tensors = [_layout(torch.rand(2, channels, height, width, generator=generator, dtype=dtype), layout)
               for _ in range(count)]
    return tensors, f"seed={seed} shape=(2, {channels}, {height}, {width}) layout={layout} dtype={dtype}"


def _image_ops():
    from cdism_fast import ops

    return {
        "gaussian_blur": (1, lambda x, b: ops.gaussian_blur(x, backend=b)),
        "gaussian_highpass": (1, lambda x, b: ops.gaussian_highpass(x, backend=b)),
        "charbonnier": (2, lambda x, y, b: ops.charbonnier(x, y, backend=b)),
        "laplacian_loss": (2, lambda x, y, b: ops.laplacian_loss(x, y, levels=3, backend=b)),
        "distillation_loss": (3, lambda x, y, z, b: ops.distillation_loss(x, y, z, levels=3, backend=b)),
    }


def assert_as_accurate(actual, reference, exact, dtype, msg):
    """``actual`` is within ``dtype``'s tolerance of the float64 ``exact`` result, or no further from it than
    twice the same-dtype ``reference`` is (an L1 term's gradient jumps where a difference changes sign, and
    fp32 and fp64 see some of those signs differently: the reference then misses as much)."""
    tol = TOLERANCES[dtype]
    exact = exact.double()
    allowed = tol["atol"] + tol["rtol"] * exact.abs() + 2 * (reference.double() - exact).abs()
    excess = ((actual.double() - exact).abs() - allowed).nan_to_num(nan=0.0)
    assert excess.max() <= 0, f"{msg}: off the float64 result by up to {float(excess.max()):.3g} more than allowed " \
                              f"at {int((excess > 0).sum())} of {excess.numel()} elements"


def _exact(function, inputs, grad_out):
    """The reference in float64 (the standard each backend is held to), and its gradient for inputs[0]."""
    leaves = [inputs[0].detach().double().requires_grad_(), *(t.double() for t in inputs[1:])]
    out = function(*leaves)
    return out, torch.autograd.grad(out, leaves[0], grad_out.double())[0]


def _run(function, inputs, grad_out, backend):
    leaf = inputs[0].detach().clone().requires_grad_()
    out = function(leaf, *inputs[1:], backend)
    return out, torch.autograd.grad(out, leaf, grad_out)[0]


@pytest.mark.parametrize("op", list(_image_ops()))
def test_fuzz_image_ops_against_the_reference(op):
    count, function = _image_ops()[op]
    backends = [b for b in available_backends(op) if b != "reference"]
    if not backends:
        pytest.skip(f"{op} has no backend other than the reference here")
    rng = np.random.default_rng(sum(map(ord, op)))
    for case in range(FUZZ_CASES):
        dtype = (torch.float32, torch.float64)[case % 2]
        inputs, described = _fuzz_inputs(rng, count, dtype)
        shape = function(*inputs, "reference").shape
        grad_out = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(case))
        expected, expected_grad = _exact(lambda *t: function(*t, "reference"), inputs, grad_out)
        reference, reference_grad = _run(function, inputs, grad_out, "reference")
        for backend in backends:
            actual, grad = _run(function, inputs, grad_out, backend)
            assert_as_accurate(actual, reference, expected, dtype, f"{op} {backend} forward, {described}")
            assert_as_accurate(grad, reference_grad, expected_grad, dtype, f"{op} {backend} gradient, {described}")


def test_fuzz_obproxsg_against_the_reference():
    backends = [b for b in available_backends("obproxsg_step") if b != "reference"]
    if not backends:
        pytest.skip("obproxsg_step has no backend other than the reference here")
    rng = np.random.default_rng(11)
    torch.manual_seed(11)
    for case in range(FUZZ_CASES * 4):
        dtype = (torch.float32, torch.float64)[case % 2]
        params, described = _fuzz_inputs(rng, 2, dtype)
        grads = [torch.randn(p.shape, dtype=dtype) for p in params]
        for p in params:
            p.mul_(torch.rand(p.shape, dtype=dtype) > 0.3)  # zeros for the orthant step to hold
        orthant, lr, lam = bool(case % 3 == 0), float(rng.uniform(0, 0.5)), float(rng.uniform(0, 0.5))
        expected = [p.clone() for p in params]
        obproxsg_step(expected, grads, lr, lam, orthant, 0.001, backend="reference")
        for backend in backends:
            actual = [p.clone() for p in params]
            obproxsg_step(actual, grads, lr, lam, orthant, 0.001, backend=backend)
            for a, e in zip(actual, expected):
                assert_close(a, e, msg=f"obproxsg {backend} orthant={orthant}, {described}")


def test_fuzz_window_attention_against_the_reference():
    from cdism_fast.ops import window_attention

    backends = [b for b in available_backends("window_attention") if b != "reference"]
    if not backends:
        pytest.skip("window_attention has no backend other than the reference here")
    rng = np.random.default_rng(12)
    torch.manual_seed(12)
    for case in range(FUZZ_CASES):
        dtype = (torch.float32, torch.float64)[case % 2]
        window, heads, dim = int(rng.integers(2, 6)), int(rng.integers(1, 4)), int(rng.integers(1, 17))
        batch, tokens = int(rng.integers(1, 5)), window * window
        q, k, v = (torch.randn(batch, heads, tokens, dim, dtype=dtype) for _ in range(3))
        k = k.transpose(-1, -2).contiguous().transpose(-1, -2)  # strided
        table = torch.randn((2 * window - 1) ** 2, heads, dtype=dtype)
        grad_out = torch.randn(batch, heads, tokens, dim, dtype=dtype)
        exact = [t.double().requires_grad_() for t in (q, k, v, table)]
        expected = window_attention(*exact, window, backend="reference")
        expected_grads = torch.autograd.grad(expected, exact, grad_out.double())
        described = f"window_attention case {case}: window {window}, heads {heads}, dim {dim}, {dtype}"

        def run(backend, inputs=(q, k, v, table), window=window, grad_out=grad_out):
            leaves = [t.clone().requires_grad_() for t in inputs]
            out = window_attention(*leaves, window, backend=backend)
            return (out, *torch.autograd.grad(out, leaves, grad_out))

        reference = run("reference")
        for backend in backends:
            names = ("forward", "gradient of q", "gradient of k", "gradient of v", "gradient of bias_table")
            for name, got, ref, want in zip(names, run(backend), reference, (expected, *expected_grads)):
                # at the scale of the values ("a few ulps of the values' scale", tests/tolerances.py)
                scale = want.abs().max()
                assert_as_accurate(got / scale, ref / scale, want / scale, dtype, f"{backend} {name}, {described}")


# ------------------------------------------------------------------------------- 7. the smaller points
@pytest.mark.parametrize("backend", available_backends("gaussian_blur"))
def test_image_ops_refuse_zero_channels_and_empty_means_and_stay_finite_near_the_float_limit(backend):
    from cdism_fast import ops

    with pytest.raises(ValueError, match="has 0 channels"):
        ops.gaussian_blur(torch.rand(1, 0, 8, 8), backend=backend)
    empty = torch.rand(0, 3, 8, 8)
    with pytest.raises(ValueError, match="the mean of an empty input"):
        ops.charbonnier(empty, empty)
    with pytest.raises(ValueError, match="the mean of an empty input"):
        ops.laplacian_loss(empty, empty, levels=2)
    assert ops.charbonnier(empty, empty, reduction="sum") == 0
    huge = torch.full((1, 1, 8, 8), 3e38)
    blurred = ops.gaussian_blur(huge, backend=backend)
    assert torch.isfinite(blurred).all()
    assert_close(blurred, ops.gaussian_blur(huge, backend="reference"))
