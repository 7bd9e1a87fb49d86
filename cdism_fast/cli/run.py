"""``cdism-fast run``: all stages (teacher, prune, compress, distill, no-KD baseline), evaluation and report.

Run the whole workflow of a preset into --out: teacher (trained unless --teacher), pruning,
compression, distillation and the no-KD baseline, then evaluate teacher, pruned teacher, students
and bicubic and write report.md/report.json with the figures. --resume skips completed stages and
resumes the interrupted one. Every option of every stage can be set here; the training options apply
to every training stage. --targets teacher trains pruning and distillation on the teacher's outputs
on the images of --data, taken as LR inputs as they are (no no-KD twin), and also scores every model
against the teacher on images held back from --data.
"""
from __future__ import annotations

import sys

#: The preset ``run`` uses unless --preset is given.
RUN_PRESET = "demo"


def add_arguments(parser) -> None:
    from ..training.stages import STAGE_OPTIONS
    from .options import (
        add_output_arguments,
        add_stage_options,
        add_target_options,
        add_training_arguments,
        data_argument,
        preset_argument,
        stage_defaults,
    )

    preset_argument(parser, RUN_PRESET)
    data_argument(parser, "the built-in photographs; paper presets: DIV2K; cpu-291: T91 and BSD200")
    parser.add_argument("--val", action="append", help="evaluation set (repeatable; default: the built-in "
                                                      "held-out photographs when --data is not given)")
    parser.add_argument("--teacher", help="pretrained teacher checkpoint (any format `eval` reads); "
                                          "default: train one (stage 0)")
    parser.add_argument("--scale", type=int, default=None,
                        help="upscaling factor of the run (default: the preset's), and of a teacher file "
                             "that does not tell it (a PAN x2/x3 teacher needs it)")
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument("--no-kd-baseline", dest="no_kd_baseline", action="store_true", default=None,
                          help="also train the student without distillation, same budget (default: on, but off "
                               "with --targets teacher: there is no ground truth to train it on)")
    baseline.add_argument("--skip-no-kd-baseline", dest="no_kd_baseline", action="store_false",
                          help="do not train the no-KD baseline")
    shared = add_target_options(parser, RUN_PRESET)
    for stage in STAGE_OPTIONS:
        add_stage_options(parser, stage, RUN_PRESET, skip=shared)
    add_training_arguments(parser, stage_defaults(RUN_PRESET, "teacher", "prune", "distill"), RUN_PRESET)
    add_output_arguments(parser, required=False)


def _run(args) -> str:
    from ..optional import available, install_hint
    from ..training import distributed
    from ..training.stages import STAGE_OPTIONS
    from ..workflow import run_workflow
    from .options import overrides_from_args

    if args.scale is not None and args.scale < 1:
        raise ValueError(f"--scale must be a positive upscaling factor (e.g. 2, 3 or 4), got {args.scale}")
    context = distributed.setup(args.device)
    if context.is_main and not available("matplotlib"):
        print(f"note: matplotlib is not installed, so the report will have no figures ({install_hint('matplotlib')} "
              "adds them; `cdism-fast report` redraws them later)", file=sys.stderr)
    out = args.out or f"runs/{args.preset}"
    options = {name: value for cls in STAGE_OPTIONS.values() for name, value in overrides_from_args(args, cls).items()}
    result = run_workflow(args.preset, out, data=args.data, val=args.val, teacher=args.teacher, scale=args.scale,
                          no_kd_baseline=args.no_kd_baseline, resume=args.resume,
                          overwrite=args.overwrite, settings_overrides=overrides_from_args(args),
                          option_overrides=options, progress=args.progress is not False, context=context)
    if context.is_main and result.status == "completed":
        from .report import print_summary

        print_summary(result.report, out)
    return result.status


def run(args) -> int:
    from .options import run_safely

    return run_safely(_run, args)
