"""``cdism-fast run``: every stage of a preset, the evaluation and the report, in one command."""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    from .options import add_output_arguments, add_training_arguments, data_argument, preset_argument, stage_defaults

    parser = subparsers.add_parser(
        "run", help="all stages (teacher, prune, compress, distill, no-KD baseline), evaluation and report",
        description="Run the whole workflow of a preset into --out: teacher (trained unless --teacher), pruning, "
                    "compression, distillation and the no-KD baseline, then evaluate teacher, pruned teacher, "
                    "students and bicubic and write report.md/report.json with the figures. --resume skips "
                    "completed stages and resumes the interrupted one.")
    preset_argument(parser, "demo")
    data_argument(parser, "the built-in photographs; paper presets: DIV2K; cpu-291: T91 and BSD200")
    parser.add_argument("--val", action="append", help="evaluation set (repeatable; default: the built-in "
                                                      "held-out photographs when --data is not given)")
    parser.add_argument("--teacher", help="pretrained teacher checkpoint (any format load_pretrained reads); "
                                          "default: train one (stage 0)")
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument("--no-kd-baseline", dest="no_kd_baseline", action="store_true", default=None,
                          help="also train the student without distillation, same budget (default: on)")
    baseline.add_argument("--skip-no-kd-baseline", dest="no_kd_baseline", action="store_false",
                          help="do not train the no-KD baseline")
    add_training_arguments(parser, stage_defaults("demo", "teacher", "prune", "distill"), "demo")
    add_output_arguments(parser, required=False)
    parser.set_defaults(func=run)


def _run(args) -> str:
    from ..optional import available, install_hint
    from ..training import distributed
    from ..workflow import run_workflow
    from .options import overrides_from_args

    context = distributed.setup(args.device)
    if context.is_main and not available("matplotlib"):
        print(f"note: matplotlib is not installed, so the report will have no figures ({install_hint('matplotlib')} "
              "adds them; `cdism-fast report` redraws them later)", file=sys.stderr)
    out = args.out or f"runs/{args.preset}"
    result = run_workflow(args.preset, out, data=args.data, val=args.val, teacher=args.teacher,
                          no_kd_baseline=args.no_kd_baseline is not False, resume=args.resume,
                          overwrite=args.overwrite, settings_overrides=overrides_from_args(args),
                          progress=args.progress is not False, context=context)
    if context.is_main and result.status == "completed":
        from .report import print_summary

        print_summary(result.report, out)
    return result.status


def run(args) -> int:
    from .options import run_safely

    return run_safely(_run, args)
