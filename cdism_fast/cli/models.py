"""``cdism-fast models``: presets: structure, parameters, MACs (the paper's FLOPs) per output image.

Every model preset with its structure (N_b blocks, N_l layers, N_c channels), its parameter count
and its multiply-accumulates (the paper's 'FLOPs') for one output image.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser) -> None:
    parser.add_argument("--scale", type=_scale, default=2, help="upscaling factor (default 2)")
    parser.add_argument("--size", type=_output_size, default="1280x720", metavar="WxH",
                        help="output image size, width x height (default 1280x720, the paper's Table I)")


def _scale(text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"must be an integer >= 2, got {text!r}")
    return int(text)


def _output_size(text: str) -> tuple[int, int]:
    """(height, width) from 'WIDTHxHEIGHT'."""
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()) or int(width) < 1 or int(height) < 1:
        raise argparse.ArgumentTypeError(f"must be WIDTHxHEIGHT in pixels, e.g. 1280x720, got {text!r}")
    return int(height), int(width)


def run(args) -> int:
    import torch

    from cdism_fast.models import ARCHITECTURES, PRETRAINED, build, count_flops, count_params

    shipped = dict(PRETRAINED)  # read first: a broken registry file is refused before the table is printed
    out_hw = args.size
    if out_hw[0] % args.scale or out_hw[1] % args.scale:
        print(f"error: --size {out_hw[1]}x{out_hw[0]} must be divisible by --scale {args.scale}", file=sys.stderr)
        return 2
    header = (f"{'preset':<20} {'family':<7} {'N_b':>4} {'N_l':>4} {'N_c':>4} {'params':>12} "
              f"{'w/o bias tables':>15} {'GMACs':>9} {'w/o attn':>9}")
    print(f"x{args.scale}, output {out_hw[1]}x{out_hw[0]}; MACs = multiply-accumulates (the paper's 'FLOPs'), "
          "'w/o attn' leaves out the attention products q·kᵀ and attn·v")
    print(header)
    print("-" * len(header))
    for name, preset in ARCHITECTURES.items():
        try:
            with torch.device("meta"):  # no weights are allocated: structure and counts only
                model = build(name, scale=args.scale)
        except ValueError as error:  # a scale this preset's upsampler cannot do
            print(f"{name:<20} {preset.family:<7} {error}")
            continue
        structure = model.structure()
        macs = count_flops(model, out_hw)
        print(f"{name:<20} {preset.family:<7} {structure.n_b:>4} {structure.n_l:>4} {structure.n_c:>4} "
              f"{count_params(model):>12,} {count_params(model, exclude=('relative_position_bias_table',)):>15,} "
              f"{macs['total'] / 1e9:>9.1f} {macs['total_without_attention'] / 1e9:>9.1f}")
    _print_shipped(shipped)
    return 0


def _print_shipped(shipped: dict) -> None:
    """The trained models inside the package, with the scores measured on them (x2, Y channel)."""
    if not shipped:
        return
    sets = list(dict.fromkeys(name for info in shipped.values() for name in info["scores"]))
    print()
    print("shipped trained models (cdism_fast.models.pretrained(NAME), --model NAME in eval and upscale); "
          "PSNR / SSIM on Y measured on them:")
    header = f"{'name':<20} {'x':>2} {'params':>9} " + " ".join(f"{name:>16}" for name in sets)
    print(header)
    print("-" * len(header))
    for name, info in shipped.items():
        scores = " ".join(f"{info['scores'][s]['psnr']:>7.2f} / {info['scores'][s]['ssim']:.4f}"
                          if s in info["scores"] else f"{'–':>16}" for s in sets)
        print(f"{name:<20} {info['model']['config']['scale']:>2} {info['params']:>9,} {scores}")
        print(f"{'':<20} {info['summary']}")
