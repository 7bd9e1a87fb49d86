"""``cdism-fast distill``: stage 3: distill the compact student (AdaMax), or --no-kd.

Train the student of student.json from random initialisation (or, with --init inherit, from the
teacher's own weights, the blocks and channels of the largest magnitudes in the pruned teacher given
by --pruned, else in the teacher) with alpha*L_stu + L_Lap(student, teacher) + L_Lap(HF(student),
HF(teacher)) and AdaMax (betas 0.9, 0.99). The teacher is frozen, in
eval mode, under no_grad (and in the autocast dtype with --amp). --no-kd trains the same student on
the ground truth alone with the same budget. By default the teacher runs once on each whole training
image before training (tiled, float16 outputs kept in a cache folder and reused by later runs with
the same teacher and images): the teacher then sees the whole image instead of the patch (no
patch-border effects), and the random flips/transpose are applied to its output instead of its
input. --teacher-cache off runs the teacher on every patch instead. --targets teacher trains on
unlabelled images: each image of --data is an LR input as it is, the target is the teacher's output,
the loss is the distillation term alone (no alpha * L_stu: there is no ground truth), and a few
held-back images (--holdout) validate against the teacher's output.
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    from ..models import format_names
    from .options import add_stage_command_arguments

    parser.add_argument("--teacher", help="teacher: any checkpoint `eval` reads (a run's model.pt, "
                                          f"{format_names()} files), a shipped model or a preset; its family "
                                          "may differ from the student's (required unless --no-kd)")
    parser.add_argument("--student", required=True,
                        help="student.json written by `compress`, a preset (e.g. edsr_mini) or family:n_b,n_l,n_c "
                             "(e.g. edsr:8,1,16)")
    parser.add_argument("--scale", type=int, default=None,
                        help="scale of a preset or family:n_b,n_l,n_c student, and of a teacher file that does not "
                             "tell it (default: the teacher's, else 2)")
    parser.add_argument("--pruned", metavar="FILE",
                        help="the pruned teacher (the model.pt `prune` wrote from --teacher) whose magnitudes choose "
                             "the blocks and channels a student keeps under --init inherit or auto (default: the "
                             "teacher's own magnitudes)")
    parser.add_argument("--no-kd", action="store_true", help="ablation: ground-truth loss only (a --teacher then only "
                                                             "gives an inheriting student its initial weights)")
    add_stage_command_arguments(parser, "distill")


def _distill(args) -> str:
    from ..evaluation import load_model
    from ..training import distributed
    from ..training.presets import WORKFLOWS
    from ..training.stages import distill
    from .options import options_from_args, settings_from_args

    preset = WORKFLOWS[args.preset]
    settings = settings_from_args(args, preset.distill)
    options = options_from_args(args, preset.distill_options)
    if not args.no_kd and args.teacher is None:
        raise ValueError("--teacher is required for distillation; pass --no-kd for the ground-truth-only ablation")
    wanted = args.teacher and (not args.no_kd or options.init != "scratch")
    teacher = load_model(args.teacher, args.scale, "--teacher") if wanted else None
    pruned = load_model(args.pruned, args.scale, "--pruned") if args.pruned and options.init != "scratch" else None
    context = distributed.setup(args.device)
    result = distill(teacher, args.student, args.out, settings, options, args.data, args.val, kd=not args.no_kd,
                     scale=args.scale, resume=args.resume, overwrite=args.overwrite, context=context,
                     inputs={"--teacher": args.teacher, "--pruned": args.pruned}, pruned=pruned)
    if context.is_main and result.status == "completed":
        print(f"student: {result.model_path}" + (f"  validation: {result.validation}" if result.validation else ""))
    return result.status


def run(args) -> int:
    from .options import run_safely

    return run_safely(_distill, args)
