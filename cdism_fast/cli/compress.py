"""``cdism-fast compress``: stage 2: compact structure from the density, before/after table.

Map the density d to (N_b, N_l, N_c): N_b and N_l by the paper's eq. (6), N_c as the channel count
whose deep-feature module has the weight count closest to d times the teacher's (--channels eq7: the
paper's eq. (7)); write the student's architecture to student.json and print structure, parameters
and FLOPs (multiply-accumulates for a 1280x720 output) before and after. --student-family F gives a
student of another family (required for a teacher of no family here, such as a spandrel file) the
structure whose weights are closest to d times the teacher's; --params N the structure whose parameter
count is closest to N (then --density may be left out).
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    from .options import add_stage_options

    parser.add_argument("--teacher", required=True, help="the pruned (or original) teacher's checkpoint (any file "
                                                         "`eval` reads, spandrel files included)")
    parser.add_argument("--density", metavar="FILE|D",
                        help="density.json written by `prune`, or a number in (0, 1] (required unless --params)")
    parser.add_argument("--scale", type=int, default=None, help="scale of a teacher file that does not tell it")
    add_stage_options(parser, "compress", None)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a compress run in --out")


def _compress(args) -> str:
    from ..evaluation import load_model
    from ..training.stages import STUDENT_FILE, CompressOptions, compress, density_value, format_table
    from .options import options_from_args

    options = options_from_args(args, CompressOptions())
    if args.density is None and options.params is None:
        raise ValueError("pass --density (the density.json of `cdism-fast prune`, or a number in (0, 1]) or the "
                         "student's size --params N")
    density = density_value(args.density) if args.density is not None else None
    result = compress(load_model(args.teacher, args.scale, "--teacher"), density, args.out, options,
                      overwrite=args.overwrite, inputs={"--teacher": args.teacher})
    print(format_table(result.extra["table"]))
    rule = result.extra["size_rule"]
    if "target" in rule:
        print(f"{rule['rule']}: target {rule['target']:,.0f}, student {rule['student_size']:,}; its weights over the "
              f"teacher's = {result.extra['achieved_density']:.4g}"
              + (f" (density d = {result.extra['density']:.4g})" if result.extra["density"] is not None else ""))
    else:
        print(f"density d = {result.extra['density']:.4g}; achieved (the student's deep-feature weights over the "
              f"teacher's) = {result.extra['achieved_density']:.4g}")
    print(f"student architecture: {result.folder / STUDENT_FILE}")
    return result.status


def run(args) -> int:
    from .options import run_safely

    return run_safely(_compress, args)
