"""``cdism-fast eval``: PSNR/SSIM of a model on benchmark or image folders.

Evaluate a model on one or more data folders (BasicSR conventions: Y channel, border of `scale`
pixels cropped). A folder's own LR images for the scale are used when it has them (HR/ +
LR_bicubic/X2/, or DIV2K_*_HR + DIV2K_*_LR_bicubic/X2), else they are made with MATLAB-exact
bicubic.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .outputs import add_force_argument

BUILTIN_PREFIX = "builtin:"
#: The key that marks a results file as written by this command, which may then replace it without --force.
WRITTEN_BY = ("written_by", "cdism-fast eval")
#: Results files larger than this are not read to look for the mark.
_RESULTS_LIMIT = 64 << 20


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, metavar="CKPT_OR_NAME",
                        help="checkpoint file, shipped trained model (e.g. edsr_mini_291; `cdism-fast models` lists "
                             "them), preset name of cdism_fast.models (untrained), or 'bicubic'")
    parser.add_argument("--data", required=True, action="append", metavar="DIR",
                        help="data folder; repeat for several sets; 'builtin:heldout' or 'builtin:train' "
                             "for the built-in photographs")
    parser.add_argument("--scale", type=int, default=None, help="upscaling factor (default: the model's)")
    parser.add_argument("--crop-border", type=int, default=None, help="border pixels ignored (default: scale)")
    parser.add_argument("--rgb", action="store_true", help="compare RGB instead of the Y channel")
    parser.add_argument("--tile", type=int, default=None, help="process images in tiles of this many LR pixels")
    parser.add_argument("--overlap", type=int, default=16, help="tile overlap in LR pixels (default: 16)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda or cpu (default: cuda if present)")
    parser.add_argument("--compile", action="store_true", help="torch.compile(model, fullgraph=True) first")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="also write the results here (its folder must exist; an existing file is replaced "
                             "only when eval wrote it, or with --force)")
    add_force_argument(parser, "a --json file")


def _written_by_eval(path: Path) -> bool:
    import json

    if path.stat().st_size > _RESULTS_LIMIT:
        return False
    try:
        content = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(content, dict) and content.get(WRITTEN_BY[0]) == WRITTEN_BY[1]


def _check_json_target(args: argparse.Namespace) -> Path:
    from .outputs import check_output_file, input_files

    sources = [Path(args.model)] if Path(args.model).is_file() else []
    sources += [Path(text) for text in args.data if not text.startswith(BUILTIN_PREFIX)]
    return check_output_file(args.json, "--json", input_files(sources), _written_by_eval, args.force)


def _data_source(text: str, scale: int):
    if text.startswith(BUILTIN_PREFIX):
        from ..data import builtin_dataset

        return builtin_dataset(text[len(BUILTIN_PREFIX):], scale)
    return Path(text)


def format_table(results: dict, y_channel: bool) -> str:
    """The results of ``evaluate`` on several sets as an aligned text table."""
    channel = "Y" if y_channel else "RGB"
    width = max(len("set"), *(len(name) for name in results))
    lines = [f"{'set':<{width}}  {'PSNR_' + channel:>9}  {'SSIM_' + channel:>8}  {'images':>6}"]
    for name, result in results.items():
        lines.append(f"{name:<{width}}  {result['psnr']:>9.4f}  {result['ssim']:>8.5f}  {len(result['images']):>6}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation import evaluate, infer_scale, load_model
    from ..optional import require
    from ..training.distributed import check_device

    if args.scale is not None and args.scale < 1:
        raise ValueError(f"--scale must be a positive upscaling factor (e.g. 2, 3 or 4), got {args.scale}")
    if any(text.startswith(BUILTIN_PREFIX) for text in args.data):
        require("--data builtin:... (the built-in photographs)", "skimage")
    if args.json is not None:
        args.json = _check_json_target(args)
    device = check_device(args.device if args.device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(args.model, args.scale)
    model.to(device)
    scale = args.scale or infer_scale(model)
    if args.compile:
        model = torch.compile(model, fullgraph=True)
    data = [_data_source(text, scale) for text in args.data]
    results = evaluate(model, data, scale, crop_border=args.crop_border, y_channel=not args.rgb,
                       tile=args.tile, overlap=args.overlap)
    print(f"{args.model} x{scale}")
    print(format_table(results, y_channel=not args.rgb))
    if args.json is not None:
        from ..training.artifacts import write_json

        write_json(args.json, {WRITTEN_BY[0]: WRITTEN_BY[1], "model": args.model, "scale": scale, "sets": results})
        print(f"wrote {args.json}")
    return 0
