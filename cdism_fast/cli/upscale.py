"""``cdism-fast upscale``: super-resolve one image or a folder of images with a model."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "upscale", help="upscale an image or a folder of images",
        description="Upscale IN (an image file or a folder of images) into OUT (a file, or a folder that "
                    "receives one PNG per image). Large images are processed in overlapping tiles with --tile.")
    parser.add_argument("input", type=Path, metavar="IN", help="image file or folder of images")
    parser.add_argument("output", type=Path, metavar="OUT", help="output file, or folder when IN is a folder")
    parser.add_argument("--model", required=True, metavar="CKPT", help="checkpoint file, preset name, or 'bicubic'")
    parser.add_argument("--scale", type=int, default=None, help="upscaling factor (default: the model's)")
    parser.add_argument("--tile", type=int, default=None,
                        help="tile size in input pixels, e.g. 256 (default: the whole image at once)")
    parser.add_argument("--overlap", type=int, default=16, help="tile overlap in input pixels (default: 16)")
    parser.add_argument("--half", action="store_true",
                        help="autocast to float16 on CUDA (bfloat16 on other devices)")
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile(model, fullgraph=True) first (pays off over many images or tiles "
                             "of one size)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..data import list_images, read_image, write_image
    from ..evaluation import infer_scale, load_model, upscale

    if not args.input.exists():
        raise FileNotFoundError(f"input {args.input} does not exist; pass an image file or a folder of images")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(args.model, args.scale).to(device)
    scale = args.scale or infer_scale(model)
    if args.compile:
        model = torch.compile(model, fullgraph=True)
    amp_dtype = None
    if args.bf16:
        amp_dtype = torch.bfloat16
    elif args.half:
        amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    if args.input.is_dir():
        if args.output.exists() and not args.output.is_dir():
            raise ValueError(f"IN {args.input} is a folder, so OUT {args.output} must be a folder, not a file")
        jobs = [(path, args.output / f"{path.stem}.png") for path in list_images(args.input)]
    else:
        output = args.output / f"{args.input.stem}.png" if args.output.is_dir() else args.output
        jobs = [(args.input, output)]
    for source, target in tqdm(jobs, desc=f"x{scale}", unit="image", disable=None if len(jobs) > 1 else True):
        image = read_image(source).to(device)
        result = upscale(model, image, scale, tile=args.tile, overlap=args.overlap, amp_dtype=amp_dtype,
                         progress=len(jobs) == 1)
        write_image(target, result)
    print(f"wrote {len(jobs)} image(s) to {args.output}")
    return 0
