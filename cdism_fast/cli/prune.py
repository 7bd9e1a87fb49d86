"""``cdism-fast prune``: stage 1, sparsify the teacher with OBProx-SG and measure its density d."""
from __future__ import annotations


def register(subparsers) -> None:
    from ..models import format_names
    from .options import StageOptions, add_stage_command_arguments

    parser = subparsers.add_parser(
        "prune", help="stage 1: OBProx-SG pruning, writes density.json",
        description="Fine-tune the teacher on charbonnier(eps=1e-3) while OBProx-SG applies lam*||theta||_1 "
                    "(Prox-SG phase, then orthant phase). The penalty is the optimizer's: only the Charbonnier "
                    "term is back-propagated. Writes the pruned model.pt and density.json (d of the "
                    "deep-feature module's weights, the paper's d, and per-layer densities).")
    parser.add_argument("--teacher", required=True, help="teacher checkpoint (model.pt of `train`, or an "
                                                         f"{format_names()} file)")
    pruning = StageOptions(parser, "pruning (defaults: the preset's)")
    pruning.add("--lam", type=float, help="l1 weight lambda (paper presets: 1e-4)")
    pruning.add("--n-p", type=int, help="Prox-SG phase length in phase epochs (default: the preset's; without one, "
                                        "a tenth of the iterations)")
    pruning.add("--n-o", type=int, help="orthant phase length in phase epochs per cycle (default: orthant to the end)")
    pruning.add("--steps-per-epoch", type=int, help="optimizer steps per phase epoch")
    pruning.add("--eps", type=float, help="orthant projection threshold")
    pruning.add("--penalty", choices=("all", "deep"),
                help="penalise all parameters (the paper) or only the deep-feature module")
    add_stage_command_arguments(parser, "prune", run)


def _prune(args) -> str:
    from ..training import distributed
    from ..training.artifacts import load_model
    from ..training.presets import PRESETS
    from ..training.stages import prune
    from .options import settings_from_args, stage_options_from_args

    preset = PRESETS[args.preset]
    settings = settings_from_args(args, preset.prune)
    options = stage_options_from_args(args, preset.prune_options)
    context = distributed.setup(args.device)
    result = prune(load_model(args.teacher), args.out, settings, args.data, args.val, resume=args.resume,
                   overwrite=args.overwrite, context=context, inputs={"--teacher": args.teacher}, **options)
    if context.is_main and result.status == "completed":
        report = result.extra["density"]
        print(f"density d (deep-feature weights) = {report['density']:.4f}, all weights = "
              f"{report['all_weights']:.4f}; pruned model: {result.model_path}")
    return result.status


def run(args) -> int:
    from .options import run_safely

    return run_safely(_prune, args)
