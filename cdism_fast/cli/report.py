"""``cdism-fast report``: rebuild the report of a `run` folder from its files.

Rebuild report.json, report.md, psnr_vs_cost.png (Fig. 4 style) and crops.png (Fig. 3 style) of a
`cdism-fast run` folder from evaluation.json and the stage files.
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of `cdism-fast run`")


def print_summary(report: dict, run_dir) -> None:
    """The report's models as a short table, its checks, and where the files are."""
    from ..report import label

    vs_teacher = bool(report.get("vs_teacher"))
    print(f"{'model':<18} {'params':>10} {'FLOPs@720p':>11} {'PSNR':>8} {'SSIM':>7}"
          + (f" {'PSNR vs teacher':>16}" if vs_teacher else ""))
    for name in report["models"]:
        entry = report[name]
        scores = (f"{entry['psnr']:>8.3f} {entry['ssim']:>7.4f}" if entry["psnr"] is not None
                  else f"{'–':>8} {'–':>7}")
        against = (entry.get("vs_teacher") or {}).get("psnr")
        print(f"{label(name):<18} {entry['params'] / 1e3:>9.1f}K {entry['flops'] / 1e9:>10.2f}G {scores}"
              + ((f" {against:>16.3f}" if against is not None else f" {'(reference)':>16}") if vs_teacher else ""))
    if vs_teacher:
        print(f"PSNR vs teacher: against the teacher's output on the images held back from --data "
              f"({len(report['vs_teacher']['images'])}), not against a ground truth")
    checks = report.get("checks", {})
    if "student_params_fraction" in checks:
        print(f"student/teacher parameters: {100 * checks['student_params_fraction']:.2f}%")
    if "student_minus_bicubic_psnr" in checks:
        print(f"student - bicubic: {checks['student_minus_bicubic_psnr']:+.3f} dB")
    for name, difference in checks.get("kd_minus_no_kd", {}).items():
        print(f"{label(name)} - its no-KD twin: {difference['mean_of_sets']:+.3f} dB (mean of the sets)")
    print(f"report: {run_dir}/report.md")


def _report(args) -> str:
    from ..report import build_report

    print_summary(build_report(args.run_dir), args.run_dir)
    return "completed"


def run(args) -> int:
    from .options import run_safely

    return run_safely(_report, args)
