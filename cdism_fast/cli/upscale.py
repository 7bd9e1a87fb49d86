"""``cdism-fast upscale``: upscale an image or a folder of images.

Upscale IN (an image file or a folder of images) into OUT (a file, or a folder that receives one PNG
per image). Large images are processed in overlapping tiles with --tile. Every input is checked
before the first output is written; a file in OUT that upscale did not write is replaced only with
--force.
"""
from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

from .outputs import add_force_argument

#: The PNG text entry that marks a file as written by this command, which may then replace it without --force.
WRITTEN_BY = {"Software": "cdism-fast upscale"}


def add_arguments(parser) -> None:
    parser.add_argument("input", type=Path, metavar="IN", help="image file or folder of images")
    parser.add_argument("output", type=Path, metavar="OUT", help="output file, or folder when IN is a folder")
    parser.add_argument("--model", required=True, metavar="CKPT_OR_NAME",
                        help="checkpoint file, shipped trained model (e.g. edsr_mini_291; `cdism-fast models` lists "
                             "them), preset name (untrained), or 'bicubic'")
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
    add_force_argument(parser, "files in OUT")


def _jobs(source: Path, output: Path, list_images) -> list[tuple[Path, Path]]:
    """(image, where its result goes) pairs; refuses, before anything is written, to overwrite an input or to
    send two images to one file."""
    if source.is_dir():
        if output.exists() and not output.is_dir():
            raise ValueError(f"IN {source} is a folder, so OUT {output} must be a folder, not a file")
        if output.resolve() == source.resolve():
            raise ValueError(f"OUT {output} is the input folder IN: the results would replace or mix with the "
                             "originals; choose another output folder (nothing was written)")
        jobs = [(path, output / f"{path.stem}.png") for path in list_images(source)]
    else:
        jobs = [(source, output / f"{source.stem}.png" if output.is_dir() else output)]
    inputs = {path.resolve() for path, _ in jobs}
    targets: dict[Path, Path] = {}
    for path, target in jobs:
        if target.resolve() in inputs:
            raise ValueError(f"OUT {target} is an input image: upscaling would overwrite it; choose another "
                             "output (nothing was written)")
        if target.resolve() in targets:
            raise ValueError(f"{targets[target.resolve()].name} and {path.name} would both be written to {target} "
                             "(one PNG per name); rename one of them or upscale them separately (nothing was "
                             "written)")
        targets[target.resolve()] = path
    return jobs


def _written_by_upscale(path: Path, image_text) -> bool:
    return path.suffix.lower() == ".png" and all(image_text(path).get(k) == v for k, v in WRITTEN_BY.items())


def _check_jobs(jobs: list[tuple[Path, Path]], force: bool) -> None:
    """Refuse, before anything is written, a broken input image, a target that is a folder, FIFO or device,
    and (unless ``force``) a file in OUT that this command did not write."""
    from ..data import check_image, image_text
    from ..safe_io import check_target

    for source, _ in jobs:
        check_image(source)
    for _, target in jobs:
        check_target(target)
        if os.path.lexists(target) and not force:
            if not (stat.S_ISREG(os.lstat(target).st_mode) and _written_by_upscale(target, image_text)):
                raise FileExistsError(f"OUT {target} exists and was not written by upscale; pass --force to "
                                      "replace it, or choose another output (nothing was written)")


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..data import list_images, read_image, write_image
    from ..evaluation import infer_scale, load_model, upscale
    from ..training.distributed import check_device

    if not args.input.exists():
        raise FileNotFoundError(f"input {args.input} does not exist; pass an image file or a folder of images")
    if args.scale is not None and args.scale < 1:
        raise ValueError(f"--scale must be a positive upscaling factor (e.g. 2, 3 or 4), got {args.scale}")
    jobs = _jobs(args.input, args.output, list_images)
    _check_jobs(jobs, args.force)
    device = check_device(args.device if args.device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(args.model, args.scale).to(device)
    scale = args.scale or infer_scale(model)
    if args.compile:
        model = torch.compile(model, fullgraph=True)
    amp_dtype = None
    if args.bf16:
        amp_dtype = torch.bfloat16
    elif args.half:
        amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    for source, target in tqdm(jobs, desc=f"x{scale}", unit="image", disable=None if len(jobs) > 1 else True):
        image = read_image(source).to(device)
        result = upscale(model, image, scale, tile=args.tile, overlap=args.overlap, amp_dtype=amp_dtype,
                         progress=len(jobs) == 1)
        write_image(target, result, text=WRITTEN_BY if target.suffix.lower() == ".png" else None)
    print(f"wrote {len(jobs)} image(s) to {args.output}")
    return 0
