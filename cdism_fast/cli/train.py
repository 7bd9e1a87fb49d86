"""``cdism-fast train``: stage 0: train a teacher from scratch (L1, Adam).

Train a model from scratch with L1 loss and Adam (betas 0.9, 0.999), so that the workflow runs
without downloads. Writes model.pt, checkpoint.pt (resumable), log.jsonl and stage.json to --out.
Multi-GPU: torchrun --nproc_per_node N -m cdism_fast train ...
"""
from __future__ import annotations

import argparse


def _structure(text: str) -> tuple[int, int, int]:
    try:
        n_b, n_l, n_c = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N_B,N_L,N_C (e.g. 4,1,32), got {text!r}") from None
    return n_b, n_l, n_c


def add_arguments(parser) -> None:
    from .options import add_stage_command_arguments

    parser.add_argument("--model", default=None,
                        help="preset of cdism_fast.models (default: the workflow preset's teacher)")
    parser.add_argument("--structure", type=_structure, metavar="N_B,N_L,N_C",
                        help="replace the preset's blocks, layers per block and channels")
    parser.add_argument("--scale", type=int, default=None, help="upscaling factor (default: the preset's)")
    add_stage_command_arguments(parser, "teacher")


def _train(args) -> str:
    import torch

    from ..models import build
    from ..training import distributed
    from ..training.presets import WORKFLOWS
    from ..training.stages import train_teacher
    from .options import settings_from_args

    preset = WORKFLOWS[args.preset]
    settings = settings_from_args(args, preset.teacher)
    context = distributed.setup(args.device)
    torch.manual_seed(settings.seed)
    if args.scale is not None and args.scale < 1:
        raise ValueError(f"--scale must be a positive upscaling factor (e.g. 2, 3 or 4), got {args.scale}")
    model = build(args.model or preset.teacher_model, scale=args.scale if args.scale is not None else preset.scale)
    structure = args.structure or (preset.teacher_structure if args.model is None else None)
    if structure is not None:
        model = model.with_structure(*structure)
    result = train_teacher(model, args.out, settings, args.data, args.val, resume=args.resume,
                           overwrite=args.overwrite, context=context)
    if context.is_main and result.status == "completed":
        print(f"teacher: {result.model_path}" + (f"  validation: {result.validation}" if result.validation else ""))
    return result.status


def run(args) -> int:
    from .options import run_safely

    return run_safely(_train, args)
