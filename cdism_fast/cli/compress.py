"""``cdism-fast compress``: stage 2, the compact student's structure from the density d."""
from __future__ import annotations


def _density(text: str):
    try:
        return float(text)
    except ValueError:
        return text  # a density.json path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compress", help="stage 2: compact structure from the density, before/after table",
        description="Map the density d to (N_b, N_l, N_c): N_b and N_l by the paper's eq. (6), N_c as the "
                    "channel count whose deep-feature module has the weight count closest to d times the "
                    "teacher's (--channels eq7: the paper's eq. (7)); write the student's architecture to student.json "
                    "and print structure, parameters and FLOPs (multiply-"
                    "accumulates for a 1280x720 output) before and after.")
    parser.add_argument("--teacher", required=True, help="the pruned (or original) teacher's checkpoint")
    parser.add_argument("--density", required=True, type=_density,
                        help="density.json written by `prune`, or a number in (0, 1]")
    parser.add_argument("--n-b", type=int, help="override the number of blocks")
    parser.add_argument("--n-l", type=int, help="override the layers per block")
    parser.add_argument("--n-c", type=int, help="override the channels")
    parser.add_argument("--rounding", choices=("nearest", "down", "up"), default=None)
    parser.add_argument("--channel-multiple", type=int, default=None,
                        help="N_c is rounded to a multiple of this (default: the family's)")
    parser.add_argument("--channels", choices=("count", "eq7"), default=None,
                        help="how N_c is chosen: exact weight count (default) or eq. (7)")
    parser.add_argument("--scale", type=int, default=None, help="scale of a teacher file that does not tell it")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a compress run in --out")
    parser.set_defaults(func=run)


def _compress(args) -> str:
    from ..training.artifacts import load_model
    from ..training.stages import STUDENT_FILE, compress, format_table

    result = compress(load_model(args.teacher, scale=args.scale), args.density, args.out, overwrite=args.overwrite,
                      inputs={"--teacher": args.teacher},
                      n_b=args.n_b, n_l=args.n_l, n_c=args.n_c, rounding=args.rounding,
                      channel_multiple=args.channel_multiple, channels=args.channels)
    print(format_table(result.extra["table"]))
    print(f"density d = {result.extra['density']:.4g}; achieved (the student's deep-feature weights over the "
          f"teacher's) = {result.extra['achieved_density']:.4g}")
    print(f"student architecture: {result.folder / STUDENT_FILE}")
    return result.status


def run(args) -> int:
    from .options import run_safely

    return run_safely(_compress, args)
