"""``cdism-fast distill``: stage 3, train the compact student with the Laplacian-pyramid distillation loss."""
from __future__ import annotations


def register(subparsers) -> None:
    from ..training.cli_support import add_data_arguments, add_output_arguments, add_training_arguments, \
        preset_argument

    parser = subparsers.add_parser(
        "distill", help="stage 3: distill the compact student (AdaMax), or --no-kd",
        description="Train the student of student.json from random initialisation with alpha*L_stu + "
                    "L_Lap(student, teacher) + L_Lap(HF(student), HF(teacher)) and AdaMax (betas 0.9, 0.99). "
                    "The teacher is frozen, in eval mode, under no_grad (and in the autocast dtype with --amp). "
                    "--no-kd trains the same student on the ground truth alone with the same budget. "
                    "By default the teacher runs once on each whole training image before training (tiled, "
                    "float16 outputs kept in a cache folder and reused by later runs with the same teacher and "
                    "images): the teacher then sees the whole image instead of the patch (no patch-border "
                    "effects), and the random flips/transpose are applied to its output instead of its input. "
                    "--teacher-cache off runs the teacher on every patch instead.")
    parser.add_argument("--teacher", help="teacher checkpoint (required unless --no-kd)")
    parser.add_argument("--student", required=True, help="student.json written by `compress`")
    parser.add_argument("--no-kd", action="store_true", help="ablation: ground-truth loss only, no teacher")
    parser.add_argument("--alpha", type=float, default=None, help="weight of the student loss (default 0.1)")
    parser.add_argument("--student-loss", choices=("l1", "charbonnier"), default=None,
                        help="the teacher family's original loss (default l1: EDSR and SwinIR)")
    parser.add_argument("--kd-reduction", choices=("mean", "sum"), default=None,
                        help="per pyramid level: mean (the authors' code; paper presets) or sum (Niklaus and Liu; "
                             "the demo preset)")
    parser.add_argument("--teacher-cache", default=None, metavar="DIR|off",
                        help="folder of the teacher-output cache (default: $CDISM_CACHE/teacher-outputs, "
                             "i.e. ~/.cache/cdism-fast/teacher-outputs), or 'off' for the per-patch teacher")
    preset_argument(parser, "paper-edsr")
    add_data_arguments(parser)
    add_training_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def _distill(args) -> str:
    from ..training import distributed
    from ..training.artifacts import load_model
    from ..training.cli_support import settings_from_args
    from ..training.presets import PRESETS
    from ..training.stages import distill

    preset = PRESETS[args.preset]
    settings = settings_from_args(args, preset.distill)
    options = dict(preset.distill_options)
    given = {"alpha": args.alpha, "student_loss": args.student_loss, "reduction": args.kd_reduction}
    options.update({k: v for k, v in given.items() if v is not None})
    if not args.no_kd and args.teacher is None:
        raise ValueError("--teacher is required for distillation; pass --no-kd for the ground-truth-only ablation")
    teacher = load_model(args.teacher) if args.teacher and not args.no_kd else None
    context = distributed.setup(args.device)
    cache = True if args.teacher_cache is None else (False if args.teacher_cache == "off" else args.teacher_cache)
    result = distill(teacher, args.student, args.out, settings, args.data, args.val, kd=not args.no_kd,
                     teacher_cache=cache, resume=args.resume, overwrite=args.overwrite, context=context, **options)
    if context.is_main and result.status == "completed":
        print(f"student: {result.model_path}" + (f"  validation: {result.validation}" if result.validation else ""))
    return result.status


def run(args) -> int:
    from ..training.cli_support import run_safely

    return run_safely(_distill, args)
