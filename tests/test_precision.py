"""--amp auto: the CPU's bf16 capability (mocked both ways) decides per workload, `info` and stage.json say what it
resolved to and why; the scores stay fp32; bf16 teacher targets stay within float16 storage precision; --amp fp16 is
refused on the CPU before anything is written, --amp bf16 without native bf16 runs and warns once."""
import json
import math
import types
import warnings

import numpy as np
import pytest
import torch

from cdism_fast import evaluate
from cdism_fast.cli import main
from cdism_fast.models import PRETRAINED, build, load_pretrained, pretrained
from cdism_fast.training import precision
from cdism_fast.training.teacher_cache import TeacherCache

from helpers.images import write_noise_images, write_smooth_images
from helpers.runs import one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")

AMX = {"amx_tile": True, "avx512_bf16": True, "mkldnn_bf16": True}
AVX512_BF16 = {"amx_tile": False, "avx512_bf16": True, "mkldnn_bf16": True}
NO_BF16 = {"amx_tile": False, "avx512_bf16": False, "mkldnn_bf16": False}
#: Stage options that make a command take a fraction of a second.
QUICK = ["--preset", "demo", "--batch-size", "2", "--patch-size", "12", "--iterations", "1", "--num-workers", "0",
         "--no-progress", "--threads", "1"]


@pytest.fixture
def cpu(monkeypatch):
    """``cpu(flags)``: torch's bf16 checks read ``flags`` (and the once-per-process warning is reset)."""
    monkeypatch.setattr(precision, "_warned", set())

    def set_flags(flags):
        monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: dict(flags))
    return set_flags


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    teacher = build("edsr_mini", scale=2).with_structure(2, 1, 8)
    torch.save(teacher.state_dict(), root / "teacher.pth")
    return {"train": write_noise_images(root / "train", 2, seed=1), "val": write_noise_images(root / "val", 1, seed=2),
            "teacher": root / "teacher.pth"}


def test_the_decision_is_the_rule_table_of_the_cpu_class():
    for flags, cpu in ((AMX, "amx"), (AVX512_BF16, "avx512_bf16"), (NO_BF16, "none")):
        decision = precision.bf16_decision(flags)
        assert decision.cpu == cpu and decision.native == (cpu != "none")
        for workload in precision.WORKLOADS:
            choice = precision.AUTO_BF16[cpu][workload]
            assert decision.amp(workload) == ("bf16" if choice.bf16 else "none")
            assert choice.why
    assert all(precision.bf16_decision(AMX).amp(w) == "bf16" for w in precision.WORKLOADS)
    assert all(precision.bf16_decision(NO_BF16).amp(w) == "none" for w in precision.WORKLOADS)
    # oneDNN without bf16 kernels: no native bf16 whatever the instruction flags say.
    assert precision.bf16_decision({**AMX, "mkldnn_bf16": False}).cpu == "none"


def test_the_capability_checks_exist_in_this_torch():
    flags = precision.cpu_bf16_flags()
    assert set(flags) == {"amx_tile", "avx512_bf16", "mkldnn_bf16"}
    assert all(isinstance(value, bool) for value in flags.values())
    assert callable(getattr(torch.cpu, "_is_amx_tile_supported", None))
    assert callable(getattr(torch.cpu, "_is_avx512_bf16_supported", None))


def test_auto_resolves_per_workload_and_is_fp32_on_cuda(cpu):
    cpu(AMX)
    resolved = precision.resolve_amp("auto", "cpu", "train")
    assert resolved.amp == "bf16" and resolved.dtype == torch.bfloat16 and "amx" in resolved.reason
    cpu(NO_BF16)
    assert precision.resolve_amp("auto", "cpu", "cache").amp == "none"
    assert precision.resolve_amp("auto", "cuda", "train").amp == "none"
    assert precision.resolve_amp("none", "cpu", "prune").dtype is None
    assert precision.workload_of("distill-no-kd") == "train" and precision.workload_of("prune") == "prune"


@pytest.mark.parametrize("flags,shown", [(AMX, "bf16"), (NO_BF16, "fp32")])
def test_info_shows_what_auto_picks_and_why(cpu, capsys, flags, shown):
    cpu(flags)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    cpu_class = precision.bf16_decision(flags).cpu
    assert f"bf16 on the CPU: {cpu_class} (amx_tile {'yes' if flags['amx_tile'] else 'no'}" in out
    for workload in precision.WORKLOADS:
        assert f"--amp auto, {workload:<6} {shown}: {precision.AUTO_BF16[cpu_class][workload].why}" in out


@pytest.mark.parametrize("flags,amp", [(AMX, "bf16"), (NO_BF16, "none")])
def test_stage_json_records_what_auto_resolved_to(cpu, folders, tmp_path, flags, amp):
    cpu(flags)
    assert main(["prune", *QUICK, "--teacher", str(folders["teacher"]), "--data", str(folders["train"]),
                 "--out", str(tmp_path / "prune")]) == 0
    record = json.loads((tmp_path / "prune" / "stage.json").read_text())
    assert record["settings"]["amp"] == "auto"
    assert record["precision"] == {"prune": {"amp": amp, "requested": "auto",
                                             "reason": precision.resolve_amp("auto", "cpu", "prune").reason}}
    assert main(["distill", *QUICK, "--patch-size", "16", "--teacher", str(folders["teacher"]), "--student",
                 "edsr:1,1,8", "--data", str(folders["train"]), "--out", str(tmp_path / "distill")]) == 0
    record = json.loads((tmp_path / "distill" / "stage.json").read_text())
    assert {workload: entry["amp"] for workload, entry in record["precision"].items()} == {"cache": amp,
                                                                                           "train": amp}


@pytest.mark.parametrize("command", ["prune", "distill", "run"])
def test_fp16_on_the_cpu_is_refused_in_one_line_before_anything_is_written(folders, tmp_path, capsys, command):
    cache = ["--teacher-cache", str(tmp_path / "cache")]
    argv = {"prune": ["prune", *QUICK, "--teacher", str(folders["teacher"])],
            "distill": ["distill", *QUICK, "--patch-size", "16", "--teacher", str(folders["teacher"]), "--student",
                        "edsr:1,1,8", *cache],
            "run": ["run", *QUICK, "--patch-size", "16", "--teacher", str(folders["teacher"]), "--val",
                    str(folders["val"]), *cache]}[command]
    assert main([*argv, "--data", str(folders["train"]), "--amp", "fp16", "--out", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys, command)  # (run notes a missing matplotlib on a line of its own)
    assert line == (f"cdism-fast {command}: error: --amp fp16 needs a CUDA device (this runs on cpu); pass --amp auto "
                    "(bf16 where this CPU runs it faster) or --amp bf16 (nothing was written)")
    assert list(tmp_path.iterdir()) == []


def test_bf16_without_native_bf16_runs_and_warns_once(cpu, folders, tmp_path):
    cpu(NO_BF16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert precision.resolve_amp("bf16", "cpu", "train").amp == "bf16"
        assert precision.resolve_amp("bf16", "cpu", "cache").amp == "bf16"
        assert main(["prune", *QUICK, "--teacher", str(folders["teacher"]), "--data", str(folders["train"]),
                     "--amp", "bf16", "--out", str(tmp_path / "prune")]) == 0
    (warning,) = [w for w in caught if "bf16" in str(w.message)]
    assert str(warning.message) == ("--amp bf16: this CPU has no native bf16 (no AMX, no AVX-512 BF16), so bf16 is "
                                    "emulated and slower than fp32; --amp auto picks fp32 here")
    cpu(AMX)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        precision.resolve_amp("bf16", "cpu", "train")
    assert not caught


def test_evaluation_under_autocast_gives_the_fp32_number(folders):
    model = build("edsr_mini", scale=2)
    fp32 = evaluate(model, folders["val"], 2, progress=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert evaluate(model, folders["val"], 2, progress=False) == fp32


def test_validation_of_a_bf16_stage_is_the_fp32_number(cpu, folders, tmp_path):
    cpu(AMX)
    assert main(["prune", *QUICK, "--teacher", str(folders["teacher"]), "--data", str(folders["train"]), "--val",
                 str(folders["val"]), "--out", str(tmp_path / "prune")]) == 0
    record = json.loads((tmp_path / "prune" / "stage.json").read_text())
    assert record["precision"]["prune"]["amp"] == "bf16"
    model = load_pretrained(tmp_path / "prune" / "model.pt").to(memory_format=torch.channels_last)
    fp32 = evaluate(model, folders["val"], 2, progress=False)["psnr"]
    from cdism_fast.data import folder_dataset
    from cdism_fast.evaluation import upscale
    from cdism_fast.metrics import psnr

    lr, hr, _ = folder_dataset(folders["val"], 2)[0]
    bf16 = psnr(upscale(model, lr, 2, amp_dtype=torch.bfloat16), hr, 2, True)
    assert abs(record["validation"]["psnr"] - fp32) < 1e-6
    assert abs(bf16 - fp32) > 1e-4  # so the check above tells an fp32 score from a bf16 one


def _targets(teacher, images: list, amp_dtype, folder) -> list:
    """The teacher cache's float16 entries of ``images`` (uint8 LR, 3xHxW) built under ``amp_dtype``."""
    patches = types.SimpleNamespace(scale=teacher.scale, names=[f"image{i}" for i in range(len(images))],
                                    lr_image=lambda index: images[index])
    cache = TeacherCache(folder, teacher, patches, progress=False, amp_dtype=amp_dtype)
    cache.paths[0].parent.mkdir(parents=True, exist_ok=True)
    for image in range(len(images)):
        cache.build_entry(image)
    return [np.load(path).astype(np.float64) for path in cache.paths]


def _min_psnr(teacher, images, tmp_path) -> float:
    teacher = teacher.eval().to(memory_format=torch.channels_last)
    fp32 = _targets(teacher, images, None, tmp_path / "fp32")
    bf16 = _targets(teacher, images, torch.bfloat16, tmp_path / "bf16")
    assert all((a != b).any() for a, b in zip(fp32, bf16))  # bf16 did run
    return min(10 * math.log10(1 / float(np.mean((a - b) ** 2))) for a, b in zip(fp32, bf16))


@pytest.mark.parametrize("name", list(PRETRAINED))
def test_bf16_teacher_targets_are_within_float16_storage_of_fp32_shipped_models(name, tmp_path):
    from cdism_fast.data import read_image

    folder = write_smooth_images(tmp_path / "images", 2, seed=3, size=(96, 128))
    images = [read_image(path).numpy() for path in sorted(folder.iterdir())]
    assert _min_psnr(pretrained(name), images, tmp_path) >= 50.0


def test_bf16_teacher_targets_are_within_float16_storage_of_fp32_published_imdn(shared_data, tmp_path):
    from cdism_fast.data import folder_dataset

    t91 = shared_data / "train" / "T91"
    if not t91.is_dir():
        pytest.skip(f"T91 not found at {t91}")
    dataset = folder_dataset(t91, 2)
    images = [dataset[i][0].numpy() for i in range(2)]
    assert _min_psnr(load_pretrained(shared_data / "weights" / "IMDN_x2.pth"), images, tmp_path) >= 50.0
