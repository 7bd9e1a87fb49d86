"""×3 and ×4 end to end: the published IMDN and PAN ×3/×4 files reproduce their numbers through `cdism-fast eval`,
FLOPs at ×3 are counted as the published ones are, and `cdism-fast run --preset cpu-291 --scale 3|4` trains,
prunes, compresses, distils, evaluates on the benchmarks' LR_bicubic/X3|X4 and reports, its teacher row equal to
the published numbers (a few iterations; the cases reading ../shared/data skip without it)."""
import json
import shutil

import pytest

from cdism_fast.cli import main
from cdism_fast.models import build, count_flops, count_params
from cdism_fast.report import PUBLISHED_BY_SCALE
from cdism_fast.training.stages import flops_size

pytestmark = pytest.mark.usefixtures("one_thread")

#: Y-channel PSNR / SSIM, border = scale. PAN: the released test logs (four decimals); IMDN: Hui et al. 2019,
#: Table 4 (two decimals). Tolerances: half the last published digit.
#: Set5 only, to keep the suite short (Set14 and B100, measured the same way: docs/workflow.md).
PUBLISHED = {
    ("PANx3_DF2K.pth", 3): ({"Set5": (34.4003, 0.92717)}, 5e-5, 5e-6),
    ("PANx4_DF2K.pth", 4): ({"Set5": (32.1311, 0.89481)}, 5e-5, 5e-6),
    ("IMDN_x3.pth", 3): ({"Set5": (34.36, 0.9270)}, 5e-3, 5e-5),
    ("IMDN_x4.pth", 4): ({"Set5": (32.21, 0.8948)}, 5e-3, 5e-5),
}


@pytest.mark.parametrize("weights, scale", list(PUBLISHED))
def test_published_x3_and_x4_files_reproduce_their_numbers_through_eval(shared_data, tmp_path, capsys, weights,
                                                                          scale):
    numbers, psnr_tolerance, ssim_tolerance = PUBLISHED[weights, scale]
    sets = [str(shared_data / "benchmarks" / name) for name in numbers]
    assert main(["eval", "--model", str(shared_data / "weights" / weights), "--scale", str(scale),
                 *(f"--data={s}" for s in sets), "--json", str(tmp_path / "scores.json")]) == 0
    print(capsys.readouterr().out)
    results = json.loads((tmp_path / "scores.json").read_text())["sets"]
    for name, (psnr, ssim) in numbers.items():
        assert results[name]["psnr"] == pytest.approx(psnr, abs=psnr_tolerance + 1e-9)
        assert results[name]["ssim"] == pytest.approx(ssim, abs=ssim_tolerance + 1e-9)


def test_flops_at_x3_are_counted_at_1281x720_as_the_published_x3_models_are():
    assert flops_size(2) == flops_size(4) == (720, 1280) and flops_size(3) == (720, 1281)
    for scale, rows in PUBLISHED_BY_SCALE.items():
        if scale == 2:
            continue
        for name, row in rows.items():  # the published architectures: their size and cost counted here
            model = build(name.split()[0].lower(), scale=scale)
            assert count_params(model) == row["params"], name
            assert count_flops(model, out_hw=flops_size(scale))["total"] / 1e9 == pytest.approx(row["flops"] / 1e9,
                                                                                                  abs=0.005), name
    assert round(count_flops(build("imdn", scale=3), out_hw=flops_size(3))["total"] / 1e9, 1) == 71.5  # Hui et al.


@pytest.mark.parametrize("weights, scale, published_set5", [("IMDN_x3.pth", 3, 34.36), ("PANx4_DF2K.pth", 4, 32.1311)])
def test_run_cpu_291_at_x3_and_x4_end_to_end(shared_data, tmp_path, capsys, weights, scale, published_set5):
    data = tmp_path / "train"
    data.mkdir()
    for name in sorted(p.name for p in (shared_data / "train" / "BSD200" / "HR").glob("*.png"))[:2]:
        shutil.copy(shared_data / "train" / "BSD200" / "HR" / name, data / name)
    out = tmp_path / "run"
    assert main(["run", "--preset", "cpu-291", "--scale", str(scale), "--teacher", str(shared_data / "weights" /
                 weights), "--data", str(data), "--val", str(shared_data / "benchmarks" / "Set5"), "--iterations", "2",
                 "--batch-size", "2", "--skip-no-kd-baseline", "--teacher-cache", str(tmp_path / "cache"),
                 "--num-workers", "0", "--no-progress", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["scale"] == scale and report["models"] == ["teacher", "pruned", "student", "edsr_mini", "bicubic"]
    teacher_set5 = report["teacher"]["sets"]["Set5"]["psnr"]
    print(f"\n{weights} x{scale}: the report's teacher row on Set5 {teacher_set5:.4f} (published {published_set5})")
    assert teacher_set5 == pytest.approx(published_set5, abs=0.01)
    for name in ("student", "edsr_mini"):
        student = json.loads((out / name / "stage.json").read_text())["settings"]["student"]
        assert student["config"]["scale"] == scale
    markdown = (out / "report.md").read_text()
    family = "IMDN" if weights.startswith("IMDN") else "PAN"
    assert f"| *published: {family} ×{scale}* |" in markdown and f"Published ×{scale} rows" in markdown
    assert (out / "crops" / "teacher.png").is_file()
