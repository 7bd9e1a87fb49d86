"""``cdism-fast prune``: stage 1: OBProx-SG pruning, writes density.json.

Fine-tune the teacher on charbonnier(eps=1e-3) while OBProx-SG applies lam*||theta||_1 (Prox-SG
phase, then orthant phase). The penalty is the optimizer's: only the Charbonnier term is
back-propagated. Writes the pruned model.pt and density.json (d of the deep-feature module's
weights, the paper's d, and per-layer densities). --targets teacher: each image of --data is an LR
input as it is, and the teacher is fine-tuned against its own (cached, pre-pruning) output on it.
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    from ..models import format_names
    from .options import add_stage_command_arguments

    parser.add_argument("--teacher", required=True, help="teacher: any checkpoint `eval` reads (a run's model.pt, "
                                                         f"{format_names()} files) or a shipped model")
    parser.add_argument("--scale", type=int, default=None, help="scale of a teacher file that does not tell it")
    add_stage_command_arguments(parser, "prune")


def _prune(args) -> str:
    from ..evaluation import load_model
    from ..training import distributed
    from ..training.presets import WORKFLOWS
    from ..training.stages import prune
    from .options import options_from_args, settings_from_args

    preset = WORKFLOWS[args.preset]
    settings = settings_from_args(args, preset.prune)
    options = options_from_args(args, preset.prune_options)
    context = distributed.setup(args.device)
    result = prune(load_model(args.teacher, args.scale, "--teacher"), args.out, settings, options, args.data, args.val,
                   resume=args.resume, overwrite=args.overwrite, context=context, inputs={"--teacher": args.teacher})
    if context.is_main and result.status == "completed":
        report = result.extra["density"]
        print(f"density d (deep-feature weights) = {report['density']:.4f}, all weights = "
              f"{report['all_weights']:.4f}; pruned model: {result.model_path}")
    return result.status


def run(args) -> int:
    from .options import run_safely

    return run_safely(_prune, args)
