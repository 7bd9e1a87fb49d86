"""Loading the pretrained weights users have, in the formats the official code writes.

* EDSR-PyTorch ``.pt``: a plain state dict with ``sub_mean``/``add_mean`` (1x1 convs that
  add ∓range·mean: they give ``rgb_range``), ``head.0``, ``body.i.body.0``/``.2`` (the
  convs of block i), ``body.N_b`` (the conv after the blocks), ``tail.0.k`` (the
  upsampler's convs) and ``tail.1`` (the last conv).
* BasicSR ``.pth`` (EDSR): ``{"params": ...}`` and/or ``{"params_ema": ...}`` with
  ``conv_first``, ``body.i.conv1``/``conv2``, ``conv_after_body``, ``upsample.k``,
  ``conv_last``: our EDSR's own names. BasicSR keeps the mean and ``img_range`` (255) in
  code, not in the file.
* Official SwinIR / KAIR ``.pth`` (also what BasicSR writes for SwinIR): the same wrappers
  (or a plain state dict) with ``conv_first``, ``patch_embed.norm``,
  ``layers.i.residual_group.blocks.j.(norm1|attn.relative_position_bias_table|attn.qkv|
  attn.proj|norm2|mlp.fc1|mlp.fc2)``, ``layers.i.conv``, ``norm``, ``conv_after_body`` and
  ``conv_before_upsample.0``/``upsample.k``/``conv_last`` (classical) or ``upsample.0``
  (lightweight): our SwinIR's own names. The ``relative_position_index`` and ``attn_mask``
  buffers in these files are dropped: the attention op rebuilds them from the window size
  and the image size.

``params_ema`` is preferred to ``params`` when a file has both (pass ``params_key`` to choose).
A DataParallel ``module.`` prefix is removed.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Optional

import torch
from torch import nn

from ..safe_io import read_torch_file
from .common import DIV2K_RGB_MEAN, construct, upsampler_scale
from .presets import FAMILIES, build, preset_of

#: Buffers of the official SwinIR files that are recomputed, never loaded.
RECOMPUTED_BUFFERS = ("relative_position_index", "attn_mask")
#: How many keys of each kind a mismatch error lists.
LISTED_KEYS = 8


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit the model it should load into; the message lists the keys."""


def load_pretrained(path, name: Optional[str] = None, scale: Optional[int] = None,
                    params_key: Optional[str] = None, **overrides) -> nn.Module:
    """The model stored in ``path`` (a file in one of the formats above, or an already loaded
    dict), with its weights, in eval mode on the CPU.

    Without ``name``, the architecture (family, channels, blocks, layers, heads, window,
    upsampler) and the scale are read from the tensors, and the matching preset's options are
    used (e.g. ``res_scale=0.1`` for a 256-channel 32-block EDSR). ``name`` (a preset) and
    ``scale`` impose an architecture instead; ``overrides`` are the family's constructor
    options (e.g. ``res_scale``, ``rgb_range``, ``attention_backend``), for what tensors do
    not tell. A file that does not fit raises :class:`CheckpointMismatch` (a ValueError)
    listing the first missing, unexpected and mis-shaped keys; nothing is loaded then.
    """
    source = os.fspath(path) if isinstance(path, (str, os.PathLike)) else "the given state dict"
    raw = read_torch_file(source, "checkpoint") if isinstance(path, (str, os.PathLike)) else path
    state, original_names, file_options, file_format = _to_native(_unwrap(raw, params_key, source), source)
    options = {**file_options, **overrides}
    if name is None or scale is None:
        family, config = _infer(state, file_format, source)
        scale = config.pop("scale") if scale is None else scale
        name = name or preset_of(family, config)
    if name is not None:
        model = build(name, scale=scale, **options)
    else:  # not a preset: the architecture the tensors describe
        model = construct(FAMILIES[family], f"checkpoint {source}", options, scale=scale, **config)
    _check_fit(model, state, original_names, source, name or f"the {family} model it describes")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _unwrap(raw, params_key: Optional[str], source: str) -> dict:
    if not isinstance(raw, Mapping):
        raise ValueError(f"checkpoint {source} must hold a state dict (a mapping of names to tensors), "
                         f"got a {type(raw).__name__}")
    if str(raw.get("format", "")).startswith("cdism_fast.training/"):
        raise ValueError(f"{source} is a training checkpoint (resumable state), not a model file; pass the model.pt "
                         "that the stage writes beside it when it completes (resume the stage to finish it)")
    wrappers = [key for key in ("params_ema", "params") if isinstance(raw.get(key), Mapping)]
    if params_key is not None:
        if not isinstance(raw.get(params_key), Mapping):
            raise ValueError(f"params_key must name a state dict in checkpoint {source}, got {params_key!r}; "
                             f"it has {sorted(map(str, raw))[:LISTED_KEYS]}")
        raw = raw[params_key]
    elif wrappers:
        raw = raw[wrappers[0]]
    state = {str(k): v for k, v in raw.items()}
    non_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise ValueError(f"checkpoint {source} must map names to tensors; {non_tensors[:LISTED_KEYS]} are not "
                         "tensors (a training checkpoint? pass params_key to pick its weights)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


_EDSR_PYTORCH_BODY = re.compile(r"body\.(\d+)\.body\.(\d+)\.(weight|bias)$")
_EDSR_PYTORCH_AFTER_BODY = re.compile(r"body\.(\d+)\.(weight|bias)$")


def _to_native(state: dict, source: str):
    """(state dict in our names, our name → the file's name, options the file tells, format)."""
    if "head.0.weight" in state:
        return _from_edsr_pytorch(state, source)
    if any(".residual_group." in k for k in state):
        native = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in RECOMPUTED_BUFFERS}
        return native, {k: k for k in native}, {}, "SwinIR"
    if "conv_first.weight" in state and any(re.match(r"body\.\d+\.conv1\.weight$", k) for k in state):
        return dict(state), {k: k for k in state}, {}, "BasicSR EDSR"
    raise CheckpointMismatch(
        f"checkpoint {source} is neither EDSR-PyTorch (head.0.weight, body.0.body.0.weight ...), BasicSR EDSR "
        f"(conv_first.weight, body.0.conv1.weight ...) nor SwinIR (conv_first.weight, "
        f"layers.0.residual_group.blocks.0.attn.qkv.weight ...); its first keys are {list(state)[:LISTED_KEYS]}")


def _from_edsr_pytorch(state: dict, source: str):
    blocks = {int(m.group(1)) for k in state if (m := _EDSR_PYTORCH_BODY.match(k))}
    after_body = {int(m.group(1)) for k in state if (m := _EDSR_PYTORCH_AFTER_BODY.match(k))}
    native, original, options = {}, {}, {}
    for key, tensor in state.items():
        if key.startswith(("sub_mean.", "add_mean.")):
            continue
        if m := _EDSR_PYTORCH_BODY.match(key):
            # EDSR-PyTorch's block is conv, ReLU, conv, ...: sequential index 2j is conv j + 1.
            block, index, kind = int(m.group(1)), int(m.group(2)), m.group(3)
            new = f"body.{block}.conv{index // 2 + 1}.{kind}" if index % 2 == 0 else key
        elif (m := _EDSR_PYTORCH_AFTER_BODY.match(key)) and int(m.group(1)) not in blocks:
            new = f"conv_after_body.{m.group(2)}"
        else:
            new = (key.replace("head.0.", "conv_first.", 1) if key.startswith("head.0.")
                   else key.replace("tail.0.", "upsample.", 1) if key.startswith("tail.0.")
                   else key.replace("tail.1.", "conv_last.", 1) if key.startswith("tail.1.") else key)
        native[new] = tensor
        original[new] = key
    if len(after_body) > 1:
        raise CheckpointMismatch(f"checkpoint {source} (EDSR-PyTorch) has several convs after the residual "
                                 f"blocks: body.{sorted(after_body)}")
    options["rgb_range"] = _edsr_pytorch_range(state, source)
    return native, original, options, "EDSR-PyTorch"


def _edsr_pytorch_range(state: dict, source: str) -> float:
    """rgb_range from the mean shifts: weight = identity (std 1), bias = ±range·DIV2K mean."""
    for key in ("sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias"):
        if key not in state:
            raise CheckpointMismatch(f"checkpoint {source} (EDSR-PyTorch) lacks {key}")
    identity = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1)
    mean = torch.tensor(DIV2K_RGB_MEAN, dtype=torch.float64)
    add, sub = state["add_mean.bias"].double(), state["sub_mean.bias"].double()
    value_range = float((add / mean).mean())
    consistent = (torch.allclose(state["sub_mean.weight"].double(), identity, atol=1e-6)
                  and torch.allclose(state["add_mean.weight"].double(), identity, atol=1e-6)
                  and torch.allclose(add, value_range * mean, rtol=1e-4) and torch.allclose(sub, -add, rtol=1e-6))
    if not consistent or not value_range > 0:
        raise CheckpointMismatch(f"checkpoint {source} (EDSR-PyTorch): the mean shifts must subtract and add "
                                 f"range·{DIV2K_RGB_MEAN} with unit std; got sub_mean.bias={sub.tolist()}, "
                                 f"add_mean.bias={add.tolist()}")
    return round(value_range, 4)


def _indices(state: dict, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})


def _infer(state: dict, file_format: str, source: str) -> tuple[str, dict]:
    """(family, constructor arguments with scale) from the tensors' names and shapes."""
    try:
        first = state["conv_first.weight"]
        channels = first.shape[0]
        if first.shape[1] != 3:
            raise CheckpointMismatch(f"checkpoint {source} has {first.shape[1]} input channels; the models here "
                                     "are RGB (3)")
        upsample_convs = [state[f"upsample.{i}.weight"].shape[0] for i in _indices(state, r"upsample\.(\d+)\.weight$")]
        if file_format == "SwinIR":
            return "swinir", _infer_swinir(state, channels, upsample_convs, source)
        scale = upsampler_scale(upsample_convs, channels)
        if scale is None:
            raise CheckpointMismatch(f"checkpoint {source}: the upsampler convs' output channels {upsample_convs} "
                                     f"are not a ×2^n or ×3 pixel-shuffle upsampler of {channels} channels")
        blocks = _indices(state, r"body\.(\d+)\.conv1\.weight$")
        if not blocks:
            raise KeyError("body.0.conv1.weight")
        depth = len(_indices(state, r"body\.0\.conv(\d+)\.weight$"))
        return "edsr", dict(scale=scale, n_c=channels, n_b=len(blocks), n_l=depth - 1)
    except KeyError as missing:
        raise CheckpointMismatch(f"checkpoint {source} ({file_format}) lacks {missing}; its first keys are "
                                 f"{list(state)[:LISTED_KEYS]}") from None


def _infer_swinir(state: dict, channels: int, upsample_convs: list[int], source: str) -> dict:
    layers = _indices(state, r"layers\.(\d+)\.")
    if not layers:
        raise KeyError("layers.0.residual_group.blocks.0.attn.relative_position_bias_table")
    depths = [len(_indices(state, rf"layers\.{i}\.residual_group\.blocks\.(\d+)\.")) for i in layers]
    tables = [state[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"] for i in layers]
    window = (math.isqrt(tables[0].shape[0]) + 1) // 2
    if "conv_before_upsample.0.weight" in state:
        upsampler = "pixelshuffle"
        scale = upsampler_scale(upsample_convs, state["conv_before_upsample.0.weight"].shape[0])
    elif upsample_convs and "conv_last.weight" not in state:
        upsampler = "pixelshuffledirect"
        scale = math.isqrt(upsample_convs[0] // 3)
    else:
        raise CheckpointMismatch(f"checkpoint {source} is a SwinIR without a pixelshuffle or pixelshuffledirect "
                                 "upsampler (denoising, JPEG or real-world SR models are not supported)")
    if scale is None or scale < 2:
        raise CheckpointMismatch(f"checkpoint {source}: the upsampler convs' output channels {upsample_convs} "
                                 f"give no ×2 or more {upsampler} upsampler")
    hidden = state["layers.0.residual_group.blocks.0.mlp.fc1.weight"].shape[0]
    mlp_ratio = hidden / channels
    if int(channels * mlp_ratio) != hidden:  # the model takes int(embed_dim·mlp_ratio) hidden channels
        mlp_ratio = math.nextafter(mlp_ratio, math.inf)
    return dict(scale=scale, embed_dim=channels, depths=tuple(depths), num_heads=tuple(t.shape[1] for t in tables),
                window_size=window, mlp_ratio=mlp_ratio, upsampler=upsampler,
                qkv_bias="layers.0.residual_group.blocks.0.attn.qkv.bias" in state,
                patch_norm="patch_embed.norm.weight" in state)


def _check_fit(model: nn.Module, state: dict, original_names: dict, source: str, what: str) -> None:
    """Unexpected and mis-shaped keys are named as in the file; missing ones as in the model."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [original_names.get(k, k) for k in state if k not in expected]
    misshaped = [f"{original_names.get(k, k)}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
                 for k in state if k in expected and state[k].shape != expected[k].shape]
    if not (missing or unexpected or misshaped):
        return
    parts = []
    renamed = any(k != v for k, v in original_names.items())
    missing_label = f"missing ({type(model).__name__} names)" if renamed else "missing"
    for label, keys in ((missing_label, missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            more = f" (first {LISTED_KEYS} of {len(keys)})" if len(keys) > LISTED_KEYS else ""
            parts.append(f"{label} keys{more}: {', '.join(keys[:LISTED_KEYS])}")
    raise CheckpointMismatch(f"checkpoint {source} does not fit {what} ×{model.scale}: " + "; ".join(parts))

