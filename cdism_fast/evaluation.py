"""Benchmark evaluation and tiled upscaling with any super-resolution model.

A model here is any ``nn.Module`` that maps an RGB image batch in [0, 1]
(N, 3, h, w) to its upscaled RGB batch (N, 3, h·scale, w·scale).
"""
from __future__ import annotations

import contextlib
import difflib
import math
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ._checks import check_int
from .data import folder_dataset, imresize, to_uint8
from .metrics import psnr, ssim

__all__ = ["upscale", "evaluate", "Bicubic", "infer_scale", "load_model", "model_device"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    # no_grad rather than inference_mode: models that cache masks or indices
    # on first use would otherwise keep inference tensors that training cannot use.
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering ``length`` with at least ``overlap`` shared pixels; the last tile ends at the edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def _blend_weights(length: int, ramp: int, fade_in: bool, fade_out: bool, device) -> torch.Tensor:
    """1-D weights of one tile along one axis, fading over ``ramp`` pixels at each side shared with a neighbour.

    Across a fade the weight is 0 over the outer quarter (pixels that saw the
    tile's edge instead of the image), rises linearly over the middle half and
    is 1 over the inner quarter. Neighbouring tiles share at least ``ramp``
    pixels, so every pixel keeps a positive total weight, and a model whose
    receptive field reaches at most ``ramp/4`` pixels gives exactly its untiled output.
    """
    weights = torch.ones(length, device=device)
    ramp = min(ramp, length)
    if ramp > 0:
        margin = ramp // 4
        rising = ((torch.arange(ramp, device=device, dtype=torch.float32) + 0.5 - margin)
                  / max(ramp - 2 * margin, 1)).clamp(0, 1)
        if fade_in:
            weights[:ramp] = torch.minimum(weights[:ramp], rising)
        if fade_out:
            weights[-ramp:] = torch.minimum(weights[-ramp:], rising.flip(0))
    return weights


def _run(model: nn.Module, x: torch.Tensor, scale: int, device: torch.device, amp_dtype) -> torch.Tensor:
    # Without a dtype, fp32 even inside a caller's autocast region (a training step's): the scores are fp32.
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else torch.autocast(device.type, enabled=False))
    with autocast:
        out = model(x.to(device))
    expected = (x.shape[0], x.shape[-2] * scale, x.shape[-1] * scale)
    if out.dim() != 4 or (out.shape[0], *out.shape[-2:]) != expected:
        raise ValueError(f"the model turned a {tuple(x.shape)} input into {tuple(out.shape)}, but at x{scale} the "
                         f"output must be (N, C, H, W) = ({expected[0]}, C, {expected[1]}, {expected[2]}); "
                         "check that the model is built for this scale")
    return out.float().to(x.device)


def upscale(model: nn.Module, image: torch.Tensor, scale: int, tile: int | None = None, overlap: int = 16,
            amp_dtype: torch.dtype | None = None, progress: bool = False) -> torch.Tensor:
    """Upscale ``image`` ((3, h, w) or (N, 3, h, w); uint8, or float in [0, 1]) with ``model``.

    With ``tile`` (in input pixels), the image is processed in tiles of at
    most ``tile``×``tile`` that overlap by ``overlap`` pixels, and the tile
    outputs are blended across the overlaps (see ``_blend_weights``), so that
    memory is bounded by the tile size and seams do not show; a model that
    looks at most ``overlap/4`` input pixels away gives its untiled output. Tiles run on the
    model's device; the result is assembled on the image's device. ``amp_dtype``
    (``torch.float16``/``torch.bfloat16``) runs the model under autocast; without it the model runs in
    its own precision with autocast off, also inside an autocast region of the caller (so :func:`evaluate`,
    which calls this without ``amp_dtype``, always scores the fp32 model).
    ``progress`` shows a progress bar over the tiles.
    Returns uint8 for uint8 input (quantised as ``to_uint8``), else float32
    (unclamped model output), in the input's layout.

    >>> import torch
    >>> from cdism_fast import upscale
    >>> from cdism_fast.models import build
    >>> _ = torch.manual_seed(0)
    >>> image = torch.rand(3, 10, 12)
    >>> tuple(upscale(build("edsr_mini"), image, 2).shape)
    (3, 20, 24)
    >>> tiled = upscale(build("edsr_mini"), (image * 255).to(torch.uint8), 2, tile=6, overlap=4)
    >>> tuple(tiled.shape), tiled.dtype
    ((3, 20, 24), torch.uint8)
    """
    check_int("scale", scale)
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4):
        raise ValueError(f"upscale: image must be a (3, h, w) or (N, 3, h, w) tensor, got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    if not (image.dtype == torch.uint8 or image.is_floating_point()):
        raise ValueError(f"upscale: image must be uint8 or float in [0, 1], got {image.dtype}")
    if tile is not None:
        check_int("tile", tile)
        if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile:
            raise ValueError(f"overlap must be an integer in [0, tile) = [0, {tile}), got {overlap!r}")
    batch = image if image.dim() == 4 else image[None]
    x = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
    device = model_device(model)
    height, width = x.shape[-2:]
    with _inference(model):
        if tile is None or (height <= tile and width <= tile):
            out = _run(model, x, scale, device, amp_dtype)
        else:
            out = None
            weight_sum = torch.zeros(height * scale, width * scale, device=x.device)
            origins = [(top, left) for top in _tile_starts(height, tile, overlap)
                       for left in _tile_starts(width, tile, overlap)]
            for top, left in tqdm(origins, desc="tiles", unit="tile", leave=False,
                                  disable=None if progress else True):
                patch = x[..., top: top + tile, left: left + tile]
                tile_out = _run(model, patch, scale, device, amp_dtype)
                if out is None:
                    out = x.new_zeros(x.shape[0], tile_out.shape[1], height * scale, width * scale)
                rows = _blend_weights(tile_out.shape[-2], overlap * scale, top > 0,
                                      top + tile < height, x.device)
                cols = _blend_weights(tile_out.shape[-1], overlap * scale, left > 0,
                                      left + tile < width, x.device)
                weights = rows[:, None] * cols[None, :]
                region = (..., slice(top * scale, top * scale + tile_out.shape[-2]),
                          slice(left * scale, left * scale + tile_out.shape[-1]))
                out[region] += tile_out * weights
                weight_sum[region] += weights
            out /= weight_sum
    if image.dim() == 3:
        out = out[0]
    return to_uint8(out) if image.dtype == torch.uint8 else out


class Bicubic(nn.Module):
    """Bicubic upscaling as published baselines make it: MATLAB ``imresize`` of the uint8 image.

    A parameter-free model (RGB [0, 1] in, RGB [0, 1] out) for the bicubic
    row of result tables.
    """

    def __init__(self, scale: int):
        super().__init__()
        self.scale = check_int("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return imresize(to_uint8(x), self.scale).float() / 255.0


def infer_scale(model: nn.Module) -> int:
    """The upscaling factor of ``model``, measured on a small probe input."""
    probe = torch.zeros(1, 3, 16, 16, device=model_device(model))
    with _inference(model):
        out = model(probe)
    scale = out.shape[-1] // 16
    if scale < 1 or tuple(out.shape[-2:]) != (16 * scale, 16 * scale):
        raise ValueError(f"cannot tell the scale of the model: a 16x16 input gave {tuple(out.shape[-2:])}; "
                         "pass the scale explicitly")
    return scale


def warn_name_over_file(option: str, name: str, what: str) -> None:
    """Warn that ``option name`` means ``what`` (the preset, the shipped model) when a file ``name`` is in the
    working directory, and how to pick the file instead."""
    if Path(name).is_file():
        warnings.warn(f"{option} {name} is {what} {name}, not the file {name} in the working directory; pass "
                      f"{option} ./{name} to use the file", stacklevel=3)


def load_model(spec: str, scale: int | None = None, option: str = "--model") -> nn.Module:
    """The model a command line names (``option``, named in every message): ``bicubic``, a shipped trained
    model (:data:`cdism_fast.models.PRETRAINED`, e.g. ``edsr_mini_291``), a checkpoint file or a preset
    name of ``cdism_fast.models``.

    A shipped or preset name means that model even when a file of that name is in the working directory
    (a warning says so; ``./name`` picks the file); only a name that is neither reads the shipped-model
    registry, so a preset works with a damaged one. Files go to :func:`cdism_fast.models.load_pretrained`,
    the one loader of every command: a run's ``model.pt`` comes back with every option it was built
    with, official files (EDSR-PyTorch, BasicSR, SwinIR, IMDN, PAN, CARN) with their inferred architecture;
    ``scale`` is checked against a ``model.pt`` and tells a file that does not record it (PAN ×2/×3) or
    holds several (the released CARN-M).
    A preset gives an untrained model (useful for timing and checks, not for results). A name that is
    none of these is refused, listing the close shipped names and presets.
    """
    if spec == "bicubic":
        if scale is None:
            raise ValueError(f"{option} bicubic needs the scale: pass --scale")
        return Bicubic(scale)
    try:
        from . import models
    except ImportError as error:
        raise RuntimeError(f"{option} {spec}: checkpoints and presets need cdism_fast.models, which cannot be "
                           f"imported ({error}); only {option} bicubic works without it") from error
    path = Path(spec)
    names_a_path = "/" in spec or os.sep in spec or bool(path.suffix)  # no shipped name or preset does
    if not names_a_path and spec in models.ARCHITECTURES:  # checked first: presets need no registry
        warn_name_over_file(option, spec, "the preset")
        model = models.build(spec, scale=scale if scale is not None else 2)
        warnings.warn(f"{option} {spec} is a preset name: its weights are random, not trained", stacklevel=2)
        return model
    if not names_a_path and spec in models.PRETRAINED:
        warn_name_over_file(option, spec, "the shipped model")
        model = models.pretrained(spec)
        if scale is not None and scale != model.scale:
            raise ValueError(f"{option} {spec} is a x{model.scale} model, not x{scale}: drop --scale or pass "
                             f"--scale {model.scale}")
        return model
    if path.is_file():
        model = models.load_pretrained(path, scale=scale)
        if isinstance(model, models.ExternalModel):  # what was detected, said once, where the file is read
            print(f"{option} {spec}: {model.summary()}", file=sys.stderr)
        return model
    if names_a_path:
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a checkpoint file, a shipped model "
                                "(`cdism-fast models` lists them) or a preset name")
    close = difflib.get_close_matches(spec, [*models.PRETRAINED, *models.ARCHITECTURES], n=4)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise ValueError(f"{option} {spec} is not a file, a shipped model or a preset; {hint}shipped models: "
                     f"{', '.join(models.PRETRAINED) or 'none'}; presets: {', '.join(models.ARCHITECTURES)}")


def evaluate(model: nn.Module, data, scale: int, crop_border: int | None = None, y_channel: bool = True,
             device=None, tile: int | None = None, overlap: int = 16, progress: bool = True) -> dict:
    """PSNR/SSIM of ``model`` on one data folder (or dataset), or on each of a list of them.

    ``data`` is a folder in either layout (see
    :func:`cdism_fast.data.resolve_layout`; its own LR images for ``scale`` are
    used when present, else they are made with ``imresize``), a dataset of
    :class:`~cdism_fast.data.ImagePair`, or a list of those. ``crop_border``
    defaults to ``scale``. ``device`` moves the model there; by default it
    stays where it is. For one folder the result is ``{"name", "psnr",
    "ssim", "images": [{"name", "psnr", "ssim"}, ...], "scale",
    "crop_border", "y_channel"}`` with the means over the images; for a list,
    a dict of those keyed by set name.

    >>> import tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from cdism_fast import evaluate
    >>> from cdism_fast.evaluation import Bicubic
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     rng = np.random.default_rng(0)
    ...     Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(f"{folder}/noise.png")
    ...     result = evaluate(Bicubic(2), folder, scale=2, progress=False)
    >>> result["images"][0]["name"], round(result["psnr"], 2), round(result["ssim"], 3)
    ('noise', 16.56, 0.264)
    """
    if isinstance(data, (list, tuple)):
        results: dict[str, dict] = {}
        for position, item in enumerate(data):
            result = evaluate(model, item, scale, crop_border, y_channel, device, tile, overlap, progress)
            key = result["name"]
            if key in results:  # two sets of one name: tell them apart by path (or position)
                key = str(item) if isinstance(item, (str, Path)) else f"{key}#{position + 1}"
            results[key] = result
        return results
    check_int("scale", scale)
    crop_border = scale if crop_border is None else crop_border
    dataset = folder_dataset(data, scale) if isinstance(data, (str, Path)) else data
    name = str(getattr(dataset, "name", None) or type(dataset).__name__)
    if getattr(dataset, "scale", scale) != scale:
        raise ValueError(f"the dataset {name} is for x{dataset.scale}, not x{scale}; make it for the same scale")
    if device is not None:
        model.to(device)
    device = model_device(model)
    images = []
    for index in tqdm(range(len(dataset)), desc=f"{name} x{scale}", unit="image", leave=False,
                      disable=None if progress else True):
        lr, hr, image_name = dataset[index]
        sr = upscale(model, lr.to(device), scale, tile=tile, overlap=overlap)
        images.append({"name": image_name,
                       "psnr": psnr(sr, hr, crop_border, y_channel),
                       "ssim": ssim(sr, hr, crop_border, y_channel)})
    if not images:
        raise ValueError(f"the dataset {name} has no images")
    return {"name": name,
            "psnr": math.fsum(i["psnr"] for i in images) / len(images),
            "ssim": math.fsum(i["ssim"] for i in images) / len(images),
            "images": images, "scale": scale, "crop_border": crop_border, "y_channel": y_channel}
