"""Without an optional package, what needs it is skipped or refused in one line naming the extra to install.
"""
import json

from cdism_fast.cli import main

from helpers.runs import one_error_line


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
