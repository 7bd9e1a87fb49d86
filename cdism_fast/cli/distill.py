"""``cdism-fast distill``: stage 3, train the compact student with the Laplacian-pyramid distillation loss."""
from __future__ import annotations


def register(subparsers) -> None:
    from ..models import format_names
    from ..ops import STUDENT_LOSSES
    from .options import StageOptions, add_stage_command_arguments

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
    parser.add_argument("--teacher", help="teacher: any checkpoint `eval` reads (a run's model.pt, "
                                          f"{format_names()} files) or a preset; its family may differ "
                                          "from the student's (required unless --no-kd)")
    parser.add_argument("--student", required=True,
                        help="student.json written by `compress`, a preset (e.g. edsr_mini) or family:n_b,n_l,n_c "
                             "(e.g. edsr:8,1,16)")
    parser.add_argument("--scale", type=int, default=None,
                        help="scale of a preset or family:n_b,n_l,n_c student, and of a teacher file that does not "
                             "tell it (default: the teacher's, else 2)")
    parser.add_argument("--no-kd", action="store_true", help="ablation: ground-truth loss only, no teacher")
    distillation = StageOptions(parser, "distillation (defaults: the preset's)")
    distillation.add("--alpha", type=float, help="weight of the student loss (default 0.1)")
    distillation.add("--student-loss", choices=STUDENT_LOSSES,
                     help="the teacher family's original loss (default l1: EDSR and SwinIR)")
    distillation.add("--reduction", "--kd-reduction", choices=("mean", "sum"),
                     help="of the distillation loss, per pyramid level: mean (the authors' code; paper presets) "
                          "or sum (Niklaus and Liu; the demo and cpu-291 presets)")
    parser.add_argument("--teacher-cache", default=None, metavar="DIR|off",
                        help="folder of the teacher-output cache (default: $CDISM_CACHE/teacher-outputs, "
                             "i.e. ~/.cache/cdism-fast/teacher-outputs), or 'off' for the per-patch teacher")
    add_stage_command_arguments(parser, "distill", run)


def _distill(args) -> str:
    from ..evaluation import load_model
    from ..training import distributed
    from ..training.presets import PRESETS
    from ..training.stages import distill
    from .options import settings_from_args, stage_options_from_args

    preset = PRESETS[args.preset]
    settings = settings_from_args(args, preset.distill)
    options = stage_options_from_args(args, preset.distill_options)
    if not args.no_kd and args.teacher is None:
        raise ValueError("--teacher is required for distillation; pass --no-kd for the ground-truth-only ablation")
    teacher = load_model(args.teacher, args.scale) if args.teacher and not args.no_kd else None
    context = distributed.setup(args.device)
    cache = True if args.teacher_cache is None else (False if args.teacher_cache == "off" else args.teacher_cache)
    result = distill(teacher, args.student, args.out, settings, args.data, args.val, kd=not args.no_kd,
                     teacher_cache=cache, resume=args.resume, overwrite=args.overwrite, scale=args.scale,
                     context=context, inputs={"--teacher": args.teacher}, **options)
    if context.is_main and result.status == "completed":
        print(f"student: {result.model_path}" + (f"  validation: {result.validation}" if result.validation else ""))
    return result.status


def run(args) -> int:
    from .options import run_safely

    return run_safely(_distill, args)
