"""The report of a workflow run, rebuilt from the files the run left (``cdism-fast report RUN_DIR``).

Reads ``stage.json`` (command line, preset), ``evaluation.json`` (PSNR/SSIM,
params, FLOPs per model), ``prune/density.json`` and ``compress/student.json``
and writes:

* ``report.json``: top-level ``teacher``, ``pruned``, ``student``,
  ``student_no_kd`` (when trained) and ``bicubic``, each with ``params``,
  ``flops``, ``psnr``, ``ssim`` (means over the evaluation images),
  ``density``, ``structure`` and per-set scores; plus ``command``, ``preset``,
  ``density`` (the pruning result) and ``checks`` (the claims of the demo);
* ``report.md``: the same as tables, with the figures; in a run with
  ``--targets teacher`` also each model's PSNR/SSIM against the teacher's
  output on the images held back from ``--data`` (``vs_teacher``: how closely
  it imitates the teacher, not a score against a ground truth);
* ``psnr_vs_cost.png``: PSNR against parameters and against FLOPs, in the
  style of the paper's Fig. 4, with the published reference points of the
  run's scale (:func:`paper_points`) for scale;
* ``crops.png``: the same crop of one evaluation image for HR, bicubic,
  teacher and students, in the style of the paper's Fig. 3.

FLOPs are multiply-accumulates for one 1280×720 output image (the paper's
Table I convention).
"""
from __future__ import annotations

from pathlib import Path

from .run_evaluation import EVALUATION_FILE

__all__ = ["build_report", "PAPER_POINTS", "PUBLISHED", "PUBLISHED_BY_SCALE", "REPORT_MODELS", "paper_points"]

#: Report entries in display order, with their labels.
REPORT_MODELS = {"teacher": "teacher", "pruned": "pruned teacher", "student": "student (KD)",
                 "student_no_kd": "student (no KD)", "edsr_mini": "EDSRmini (KD)",
                 "edsr_mini_no_kd": "EDSRmini (no KD)", "bicubic": "bicubic"}
#: The folder suffix of a student's no-KD twin (the workflow names its folders so).
NO_KD_SUFFIX = "_no_kd"
#: The run's wall time of each stage in seconds, summed over the run and its resumes (written by the workflow).
TIMINGS_FILE = "timings.json"
#: The sets whose mean PSNR the paper's Fig. 4 plots.
FIGURE_SETS = ("Set5", "Set14")

#: Published ×2 models, drawn beside a run's results (benchmark table and PSNR-vs-cost figure): params,
#: FLOPs (MACs at 1280×720 output) and (PSNR, SSIM or None) per set on Y, with the source of each row. Only
#: values read in the sources are here; the rest of the paper's Table I was not at hand when this was written.
PUBLISHED = {
    "EDSR_baseline": {"params": 1_369_859, "flops": 316.3e9, "sets": {"Set5": (37.99, None), "Set14": (33.57, None)},
                      "source": "PSNR: Lim et al. 2017; size and FLOPs: Jiang et al., Table I"},
    "SwinIR_LW": {"params": 877_752, "flops": 195.6e9, "sets": {"Set5": (38.14, None), "Set14": (33.86, None)},
                  "source": "PSNR: Liang et al. 2021; size and FLOPs: Jiang et al., Table I"},
    "EDSRmini (paper)": {"params": 49_603, "flops": 11.7e9, "sets": {"Set5": (37.67, None)},
                         "source": "Jiang et al., Table I (DIV2K, 800k iterations)"},
    "SwinIRmini (paper)": {"params": 98_868, "flops": 22.0e9, "sets": {},
                           "source": "Jiang et al., Table I (size and FLOPs)"},
    "IMDN": {"params": 694_404, "flops": 158.8e9, "sets": {"Set5": (38.00, 0.9605), "Set14": (33.63, 0.9177)},
             "source": "Hui et al. 2019, Table 4; FLOPs counted here"},
    # Ahn et al. count the parameters of the released multi-scale model (an upsampler for each of x2, x3, x4); a
    # x2 model here keeps one: CARN 964,163, CARN-M 257,027 (the MACs are the same: 222.8G and 91.2G).
    "CARN": {"params": 1_592_000, "flops": 222.8e9,
             "sets": {"Set5": (37.76, 0.9590), "Set14": (33.52, 0.9166), "B100": (32.09, 0.8978)},
             "source": "Ahn et al. 2018, Table 2 (Set5, Set14 also in Jiang et al., Table I)"},
    "CARN-M": {"params": 412_000, "flops": 91.2e9,
               "sets": {"Set5": (37.53, 0.9583), "Set14": (33.26, 0.9141), "B100": (31.92, 0.8960)},
               "source": "Ahn et al. 2018, Table 2"},
}
#: Published ×3 and ×4 models (the published IMDN and PAN weights' numbers; FLOPs counted here at the size of
#: :func:`~cdism_fast.training.stages.flops_size`), by scale, beside the ×2 ones.
PUBLISHED_BY_SCALE = {
    2: PUBLISHED,
    3: {
        "IMDN ×3": {"params": 703_059, "flops": 71.50e9,
                    "sets": {"Set5": (34.36, 0.9270), "Set14": (30.32, 0.8417), "B100": (29.09, 0.8046)},
                    "source": "Hui et al. 2019, Table 4; FLOPs counted here"},
        "PAN ×3": {"params": 261_403, "flops": 39.08e9,
                   "sets": {"Set5": (34.4003, 0.92717), "Set14": (30.3553, 0.84220), "B100": (29.1045, 0.80491)},
                   "source": "Zhao et al. 2020, the released PANx3_DF2K test log; FLOPs counted here"},
    },
    4: {
        "IMDN ×4": {"params": 715_176, "flops": 40.89e9,
                    "sets": {"Set5": (32.21, 0.8948), "Set14": (28.58, 0.7811), "B100": (27.56, 0.7353)},
                    "source": "Hui et al. 2019, Table 4; FLOPs counted here"},
        "PAN ×4": {"params": 272_419, "flops": 28.16e9,
                   "sets": {"Set5": (32.1311, 0.89481), "Set14": (28.6107, 0.78215), "B100": (27.5914, 0.73627)},
                   "source": "Zhao et al. 2020, the released PANx4_DF2K test log; FLOPs counted here"},
    },
}


def paper_points(scale: int = 2) -> dict:
    """The published points of the figure at ×``scale``: the mean of Set5 and Set14 PSNR (the paper's Fig. 4),
    None where one is missing (drawn as a line at the model's size)."""
    return {name: {"params": row["params"], "flops": row["flops"],
                   "psnr": (sum(row["sets"][s][0] for s in FIGURE_SETS) / 2
                            if all(s in row["sets"] for s in FIGURE_SETS) else None)}
            for name, row in PUBLISHED_BY_SCALE.get(scale, {}).items()}


#: The published ×2 points of the figure (:func:`paper_points` at ×2).
PAPER_POINTS = paper_points(2)


def _checks(models: dict) -> dict:
    """The run's claims, measured: size ratio, margin over bicubic, each distilled student against its no-KD twin."""
    checks = {}
    teacher, student, bicubic = models.get("teacher"), models.get("student"), models.get("bicubic")
    if teacher and student:
        checks["student_params_fraction"] = student["params"] / teacher["params"]
        checks["student_under_10_percent"] = checks["student_params_fraction"] < 0.10
    if student and bicubic and student["psnr"] is not None:
        checks["student_minus_bicubic_psnr"] = student["psnr"] - bicubic["psnr"]
    if student and student.get("vs_teacher"):
        checks["student_psnr_vs_teacher"] = student["vs_teacher"]["psnr"]
    if student and models.get("student_no_kd"):
        checks["kd_minus_no_kd_psnr"] = student["psnr"] - models["student_no_kd"]["psnr"]
        checks["kd_beats_no_kd"] = checks["kd_minus_no_kd_psnr"] > 0
    pairs = {name: (entry, models[name + NO_KD_SUFFIX]) for name, entry in models.items()
             if name + NO_KD_SUFFIX in models}
    if pairs:
        # Per set, and the mean of the set means (each benchmark counts once, whatever its size).
        checks["kd_minus_no_kd"] = {}
        for name, (kd, no_kd) in pairs.items():
            per_set = {set_name: kd["sets"][set_name]["psnr"] - no_kd["sets"][set_name]["psnr"]
                       for set_name in kd["sets"]}
            checks["kd_minus_no_kd"][name] = {"sets": per_set, "mean_of_sets": sum(per_set.values()) / len(per_set)}
    return checks


def label(name: str) -> str:
    return REPORT_MODELS.get(name, name)


def figure_psnr(entry: dict) -> float | None:
    """The PSNR a model is drawn at: the mean of its Set5 and Set14 means when it has both (the paper's Fig. 4),
    else its mean over every evaluation image (None without a ground-truth set)."""
    sets = entry.get("sets") or {}
    if all(name in sets for name in FIGURE_SETS):
        return sum(sets[name]["psnr"] for name in FIGURE_SETS) / len(FIGURE_SETS)
    return entry["psnr"]


def _save_figure(figure, path: Path) -> Path:
    import io

    import matplotlib.pyplot as plt

    from .safe_io import atomic_write

    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=110, format="png")
    plt.close(figure)
    return atomic_write(path, buffer.getvalue())


def _figure_cost(models: dict, path: Path, scale: int = 2) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # On Set5 and Set14 our models and the published ones share one PSNR axis; on other images (the demo's)
    # the published points get an axis of their own.
    shared_axis = all(set(FIGURE_SETS) <= set(entry.get("sets") or {}) for entry in models.values())
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, key, axis_label in ((axes[0], "params", "parameters"),
                                  (axes[1], "flops", "FLOPs (MACs, 1280×720 output)")):
        for name, entry in models.items():
            psnr = figure_psnr(entry)
            if name == "bicubic":
                axis.axhline(psnr, color="grey", linestyle="--", linewidth=1)
                axis.annotate("bicubic", (0.02, psnr), xycoords=("axes fraction", "data"), va="bottom", color="grey")
                continue
            if entry.get(key) is None:  # FLOPs of an external teacher that could not be counted
                continue
            axis.scatter(entry[key], psnr, s=60, zorder=3, marker="o" if name in ("teacher", "pruned") else "*")
            axis.annotate(label(name), (entry[key], psnr), textcoords="offset points", xytext=(6, 4))
        axis.set_xscale("log")
        axis.set_xlabel(axis_label)
        axis.set_ylabel(f"PSNR (dB, Y), mean of {' and '.join(FIGURE_SETS)}" if shared_axis
                        else "PSNR (dB, Y) on this run's evaluation images")
        axis.grid(True, which="both", alpha=0.3)
        reference = axis if shared_axis else axis.twinx()
        for name, point in paper_points(scale).items():
            if point["psnr"] is None:
                axis.axvline(point[key], color="tab:purple", alpha=0.35, linestyle=":")
                axis.annotate(name, (point[key], 0.02), xycoords=("data", "axes fraction"), rotation=90,
                              color="tab:purple", alpha=0.8, fontsize=8)
            else:
                reference.scatter(point[key], point["psnr"], marker="s", color="tab:purple", alpha=0.6)
                reference.annotate(name, (point[key], point["psnr"]), textcoords="offset points", xytext=(6, -10),
                                   color="tab:purple", fontsize=8)
        if not shared_axis:
            reference.set_ylabel(f"published ×{scale} PSNR, mean of {' and '.join(FIGURE_SETS)} (purple)",
                                 color="tab:purple")
    figure.suptitle(f"PSNR against size and cost (style of the paper's Fig. 4; purple: published ×{scale} models)")
    figure.tight_layout()
    return _save_figure(figure, path)


def _figure_crops(run_dir: Path, names: list[str], crop: dict, models: dict, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data import read_image

    panels = [("hr", "HR")] + [(n, label(n)) for n in ["bicubic", *names]]
    panels = [(n, text) for n, text in panels if (run_dir / "crops" / f"{n}.png").is_file()]
    if len(panels) < 2:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.9))
    for axis, (name, text) in zip(axes, panels):
        image = read_image(run_dir / "crops" / f"{name}.png").permute(1, 2, 0).numpy()
        axis.imshow(image, interpolation="nearest")
        score = models.get(name)
        psnr = score and (score["psnr"] if score["psnr"] is not None else (score.get("vs_teacher") or {}).get("psnr"))
        axis.set_title(text + (f"\n{psnr:.2f} dB" if psnr is not None else "\n"), fontsize=9)
        axis.axis("off")
    figure.suptitle(f"{crop['image']}, {crop['size']}×{crop['size']} crop at ({crop['top']}, {crop['left']}) "
                    "(style of the paper's Fig. 3; dB: mean over the evaluation images)", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.88))  # room for the title above the panel titles
    return _save_figure(figure, path)


def _giga(flops, digits: int) -> str:
    """MACs in G, or a dash where they were not counted (an external architecture)."""
    return "–" if flops is None else f"{flops / 1e9:.{digits}f}G"


def _published_score(score) -> str:
    if score is None:
        return "–"
    psnr, ssim = score
    return f"{psnr:.2f} / {ssim:.4f}" if ssim is not None else f"{psnr:.2f} / –"


def _benchmark_lines(report: dict) -> list[str]:
    """Per set PSNR/SSIM with sizes and costs, ours beside the paper's Table I rows (style of that table)."""
    teacher = report.get("teacher")
    if not teacher or not teacher.get("sets"):
        return []
    sets = list(teacher["sets"])
    lines = ["## Benchmarks (style of the paper's Table I)", "",
             "| model | params | FLOPs (1280×720) | " + " | ".join(sets) + " |", "|---|---|---|" + "---|" * len(sets)]
    for name in report["models"]:
        entry = report[name]
        scores = " | ".join(f"{entry['sets'][s]['psnr']:.2f} / {entry['sets'][s]['ssim']:.4f}" if s in entry["sets"]
                            else "–" for s in sets)
        size = f"{entry['params'] / 1e3:.1f}K | {_giga(entry['flops'], 1)}" if entry["params"] else "– | –"
        lines.append(f"| {label(name)} | {size} | {scores} |")
    published = PUBLISHED_BY_SCALE.get(report.get("scale"), {})
    for name, row in published.items():
        scores = " | ".join(_published_score(row["sets"].get(s)) for s in sets)
        lines.append(f"| *published: {name}* | {row['params'] / 1e3:.1f}K | {row['flops'] / 1e9:.1f}G | {scores} |")
    lines += ["", "PSNR (dB) / SSIM on Y, border of `scale` pixels removed, mean per set. Published "
              f"×{report['scale']} rows (in italics; – where not at hand): "
              + ("; ".join(f"{n}: {r['source']}" for n, r in published.items()) or "none at this scale"), ""]
    compression = report.get("compression") or {}
    student = report.get("student")
    if student and compression.get("density") is not None:
        lines += [f"Density reached by pruning: d = {compression['density']:.4f}; the compressed student has "
                  f"{student['params']:,} parameters, {100 * student['params'] / teacher['params']:.1f}% of the "
                  f"teacher's ({teacher['params'] / student['params']:.1f}x fewer).", ""]
    return lines


def _vs_teacher_lines(report: dict) -> list[str]:
    """The models scored against the teacher's output on the held-back images (a run with --targets teacher)."""
    about = report.get("vs_teacher")
    if not about:
        return []
    lines = ["## Against the teacher's output (held-back images, no ground truth)", "",
             f"Images of `--data` held back from training: {len(about['images'])} ({', '.join(about['images'])}). "
             "The targets were the teacher's outputs, so this measures how closely each model imitates the teacher, "
             "artefacts included: PSNR against the teacher is not PSNR against a ground truth.", "",
             "| model | params | PSNR vs teacher | SSIM vs teacher |", "|---|---|---|---|"]
    for name in report["models"]:
        score = report[name].get("vs_teacher")
        if score:
            size = f"{report[name]['params'] / 1e3:.1f}K" if report[name]["params"] else "–"
            lines.append(f"| {label(name)} | {size} | {score['psnr']:.3f} | {score['ssim']:.4f} |")
    return [*lines, ""]


def _markdown(report: dict, figures: dict) -> str:
    lines = [f"# cdism-fast report: {report['preset']}", "", f"Command: `{' '.join(report['command'])}`", ""]
    lines += ["| model | N_b | N_l | N_c | params | FLOPs (1280×720) | d | PSNR | SSIM |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name in report["models"]:
        entry = report[name]
        structure = entry.get("structure") or {}
        density = f"{entry['density']:.4f}" if entry.get("density") is not None else "–"
        scores = (f"{entry['psnr']:.3f} | {entry['ssim']:.4f}" if entry["psnr"] is not None else "– | –")
        lines.append(f"| {label(name)} | {structure.get('n_b', '–')} | {structure.get('n_l', '–')} | "
                     f"{structure.get('n_c', '–')} | {entry['params'] / 1e3:.1f}K | {_giga(entry['flops'], 2)} | "
                     f"{density} | {scores} |")
    lines += ["", "PSNR/SSIM: Y channel, border of `scale` pixels removed, means over the evaluation images "
              "(–: no evaluation set with a ground truth).",
              "FLOPs: multiply-accumulates for one 1280×720 output image (the paper's Table I convention; ×3: "
              "1281×720).", ""]
    lines += _vs_teacher_lines(report)
    lines += _benchmark_lines(report)
    if report.get("density"):
        lines += ["## Pruning", "", f"Density d of the deep-feature weights: **{report['density']['density']:.4f}** "
                  f"(all weights: {report['density']['all_weights']:.4f}).", ""]
    checks = report.get("checks", {})
    if checks:
        lines += ["## Checks", ""]
        if "student_params_fraction" in checks:
            lines.append(f"- student parameters: {100 * checks['student_params_fraction']:.2f}% of the teacher's "
                         f"({'under' if checks['student_under_10_percent'] else 'NOT under'} 10%)")
        if "student_minus_bicubic_psnr" in checks:
            lines.append(f"- student PSNR minus bicubic: {checks['student_minus_bicubic_psnr']:+.3f} dB")
        if "student_psnr_vs_teacher" in checks:
            lines.append(f"- student PSNR against the teacher's output (held-back images, not a ground truth): "
                         f"{checks['student_psnr_vs_teacher']:.3f} dB")
        if "kd_minus_no_kd_psnr" in checks:
            lines.append(f"- distilled minus no-KD student (same budget): {checks['kd_minus_no_kd_psnr']:+.3f} dB")
        for name, difference in checks.get("kd_minus_no_kd", {}).items():
            per_set = ", ".join(f"{set_name} {value:+.3f}" for set_name, value in difference["sets"].items())
            lines.append(f"- {label(name)} minus its no-KD twin: {difference['mean_of_sets']:+.3f} dB on the mean of "
                         f"the sets ({per_set})")
        lines.append("")
    if report.get("timings"):
        total = sum(report["timings"].values())
        lines += ["## Wall time", "", "| stage | minutes |", "|---|---|"]
        lines += [f"| {stage} | {seconds / 60:.1f} |" for stage, seconds in report["timings"].items()]
        lines += [f"| **all** | **{total / 60:.1f}** |", "",
                  "Summed over the run and its resumes; distillation includes building the teacher-output cache "
                  "(once per teacher: later runs reuse it).", ""]
    for title, name in (("PSNR against size and cost", "cost"), ("Crops", "crops")):
        if figures.get(name):
            lines += [f"## {title}", "", f"![{title}]({figures[name]})", ""]
    if figures.get("skipped"):
        lines += ["## Figures", "", f"Skipped: {figures['skipped']}.", ""]
    return "\n".join(lines)


def build_report(run_dir) -> dict:
    """Write report.json, report.md and the two figures of a workflow run folder; returns report.json's content.

    The figures need matplotlib; without it they are skipped and the report says so.
    """
    from .optional import available, install_hint
    from .safe_io import atomic_write
    from .training.artifacts import read_json, write_json

    run_dir = Path(run_dir)
    stage = read_json(run_dir / "stage.json", "stage record") or {}
    if stage.get("stage", "run") != "run":
        raise FileNotFoundError(f"{run_dir} holds a {stage['stage']!r} stage, not a `cdism-fast run`: report needs "
                                "the --out folder of a `run` (its evaluation.json)")
    evaluation = read_json(run_dir / EVALUATION_FILE, "evaluation file")
    if evaluation is None:
        raise FileNotFoundError(f"{run_dir / EVALUATION_FILE} does not exist: {run_dir} is not a completed "
                                "`cdism-fast run` folder (resume the run to finish it)")
    try:
        report, models = _collect(run_dir, evaluation, stage, read_json)
        markdown_figures = {"cost": "psnr_vs_cost.png", "crops": "crops.png"}
        _markdown(report, markdown_figures)  # fails here, before any file is written, on odd values
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError, RecursionError) as error:
        raise ValueError(f"{run_dir} does not hold what `cdism-fast run` writes (evaluation.json or stage.json was "
                         f"edited or damaged: {type(error).__name__}: {error}); restore them, or remove "
                         "evaluation.json and resume the run to evaluate again") from None
    if available("matplotlib"):
        drawable = {name: entry for name, entry in models.items() if figure_psnr(entry) is not None}
        figures = {"cost": _figure_cost(drawable, run_dir / "psnr_vs_cost.png", report["scale"]).name
                   if drawable else None}
        crops = _figure_crops(run_dir, [n for n in report["models"] if n != "bicubic"],
                              evaluation["crop"], models, run_dir / "crops.png")
        figures["crops"] = crops.name if crops is not None else None
    else:
        figures = {"cost": None, "crops": None,
                   "skipped": f"the figures, because matplotlib is not installed ({install_hint('matplotlib')}, "
                              "then `cdism-fast report RUN_DIR` draws them)"}
    report["figures"] = figures
    write_json(run_dir / "report.json", report)
    atomic_write(run_dir / "report.md", _markdown(report, figures).encode("utf-8"))
    return report


def _collect(run_dir: Path, evaluation: dict, stage: dict, read_json) -> tuple[dict, dict]:
    """report.json's content (without the figures) and the evaluated models."""
    models = evaluation["models"]
    if not isinstance(models, dict) or not all(isinstance(entry, dict) for entry in models.values()):
        raise TypeError("'models' must map model names to their scores")
    known = [name for name in REPORT_MODELS if name in models]
    order = [*known, *(name for name in models if name not in REPORT_MODELS)]
    order.sort(key=lambda name: name == "bicubic")  # the reference last
    report = {name: models[name] for name in order}
    settings = stage.get("settings") if isinstance(stage, dict) else None
    report.update(
        preset=settings.get("preset") if isinstance(settings, dict) else None,
        command=list(stage.get("command", [])) if isinstance(stage, dict) else [],
        scale=evaluation["scale"],
        density=read_json(run_dir / "prune" / "density.json", "density file"),
        structure={"teacher": (models.get("teacher") or {}).get("structure"),
                   "student": (models.get("student") or {}).get("structure")},
        compression=read_json(run_dir / "compress" / "student.json", "student file"),
        checks=_checks(models),
        paper_points=paper_points(evaluation["scale"]),
        vs_teacher=evaluation.get("vs_teacher"),
        models=order,
        timings=read_json(run_dir / TIMINGS_FILE, "timings file") or {},
    )
    return report, models
