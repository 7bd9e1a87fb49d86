"""``cdism-fast export``: write a model as safetensors, .pth or ONNX.

Export MODEL (checkpoint file or preset name) to OUT. safetensors: the state dict; pth: {'params':
weights} in the layout of the family's published files (BasicSR, KAIR and Real-ESRGAN load it; spandrel,
and so chaiNNer and ComfyUI, opens the Compact and SwinIR families' files: the command says so for each
file it writes); pth-native: {'params': state_dict}, the model's own names (SwinIR without its index and
mask buffers); onnx: input 'lr', output 'sr', dynamic batch, height and width.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .outputs import add_force_argument


def add_arguments(parser) -> None:
    from ..export import EXPORT_FORMATS

    parser.add_argument("model", metavar="MODEL", help="checkpoint file or preset name")
    parser.add_argument("output", type=Path, metavar="OUT",
                        help="output file (its folder must exist; an existing file is replaced only when export "
                             "wrote it, or with --force)")
    parser.add_argument("--format", choices=tuple(EXPORT_FORMATS), default=None,
                        help="default: from the suffix of OUT (.safetensors, .pth or .pt, .onnx); pth-native only "
                             "by name")
    parser.add_argument("--scale", type=int, default=None, help="upscaling factor (default: the model's)")
    parser.add_argument("--input-size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"),
                        help="example input size traced for ONNX (default: 64 64)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    parser.add_argument("--static", action="store_true", help="ONNX: fix the input size to --input-size")
    add_force_argument(parser, "an OUT file")


def run(args: argparse.Namespace) -> int:
    from ..evaluation import infer_scale, load_model
    from ..export import check_onnx_settings, export, format_for, spandrel_note, written_by_export
    from ..optional import require
    from .outputs import check_output_file

    format = format_for(args.output, args.format, "--format")
    needs = {"safetensors": ("safetensors",), "onnx": ("onnx", "onnxscript")}
    require(f"export to {args.output}", *needs.get(format, ()))
    if format == "onnx":
        check_onnx_settings(tuple(args.input_size), args.opset, not args.static, ("--input-size", "--opset"))
    sources = [Path(args.model)] if Path(args.model).is_file() else []
    check_output_file(args.output, "OUT", sources, lambda path: written_by_export(path, format), args.force)

    model = load_model(args.model, args.scale, "MODEL")
    scale = args.scale or infer_scale(model)
    path = export(model, args.output, format=format, scale=scale, input_size=tuple(args.input_size),
                  opset=args.opset, dynamic=not args.static)
    note = spandrel_note(model, format)
    print(f"wrote {path}" + (f"; {note}" if note else ""))
    return 0
