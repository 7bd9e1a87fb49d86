"""Loading the pretrained weights users have, in the formats the official code writes.

Each family declares the formats it reads (:attr:`SRModel.checkpoint_formats
<cdism_fast.models.family.SRModel>`): EDSR-PyTorch ``.pt`` and BasicSR ``.pth`` (EDSR), the
official SwinIR / KAIR / BasicSR files (SwinIR), the official IMDN, PAN and CARN files (of a
file holding several scales, CARN-M's, the one asked for), Real-ESRGAN's compact files (Compact). A file is
unwrapped first: ``params_ema`` is preferred to ``params`` when a file has both (pass
``params_key`` to choose), and a DataParallel ``module.`` prefix is removed. The workflow's own
``model.pt`` (:data:`MODEL_FORMAT`) holds the family and every constructor argument, so it is
rebuilt exactly, options included. A file of none of these layouts is read by spandrel when it is
installed (:mod:`cdism_fast.models.external`).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional

import torch
from torch import nn

from ..safe_io import read_torch_file
from .common import construct
from .family import LISTED_KEYS, CheckpointFormat, CheckpointMismatch
from .presets import FAMILIES, build, build_from_spec, preset_of

__all__ = ["MODEL_FORMAT", "CheckpointMismatch", "load_pretrained", "checkpoint_formats", "format_names"]

#: The ``format`` entry of the workflow's own model files (``model.pt``).
MODEL_FORMAT = "cdism_fast.model/1"


class UnknownFormat(CheckpointMismatch):
    """A file of none of the families' layouts (no format's key patterns match)."""


def checkpoint_formats() -> list[tuple[str, CheckpointFormat]]:
    """(family, format) for every file format of every family, in the order they are tried."""
    return [(family, fmt) for family, cls in FAMILIES.items() for fmt in cls.checkpoint_formats]


def format_names() -> str:
    """The file formats :func:`load_pretrained` reads besides ``model.pt``, for help texts.

    >>> from cdism_fast.models import format_names
    >>> "EDSR-PyTorch" in format_names().split(", ")
    True
    """
    return ", ".join(fmt.name for _, fmt in checkpoint_formats())


def load_pretrained(path, name: Optional[str] = None, scale: Optional[int] = None,
                    params_key: Optional[str] = None, **overrides) -> nn.Module:
    """The model stored in ``path`` (a file in one of the formats above, or an already loaded
    dict), with its weights, in eval mode on the CPU.

    A ``model.pt`` of the workflow is rebuilt from its record (``scale``, when given, must be
    its scale; ``overrides`` replace recorded options such as ``attention_backend``). For
    other files, without ``name``, the architecture and the scale are read from the tensors,
    and the matching preset's options are used (e.g. ``res_scale=0.1`` for a 256-channel
    32-block EDSR). ``name`` (a preset) and ``scale`` impose an architecture instead;
    ``overrides`` are the family's constructor options (e.g. ``res_scale``, ``rgb_range``,
    ``attention_backend``), for what tensors do not tell. A file that does not fit raises
    :class:`CheckpointMismatch` (a ValueError) listing the first missing, unexpected and
    mis-shaped keys; nothing is loaded then.

    Resolution order: this package's formats first; a file none of them reads (or, detected as one of
    them, that does not fit it) goes to spandrel when it is installed (``pip install
    'cdism_fast[spandrel]'``; without ``name`` and ``overrides``), which returns an
    :class:`~cdism_fast.models.ExternalModel` (see :mod:`cdism_fast.models.external`). A file neither
    reads is refused in one line listing this package's formats and what spandrel said.
    ``.safetensors`` files are read as safetensors, every other file with ``torch.load(weights_only=True)``.

    >>> from cdism_fast.models import build, load_pretrained
    >>> state = build("edsr_mini").state_dict()  # a BasicSR-named EDSR state dict
    >>> model = load_pretrained(state)  # the preset and the scale are read from the tensors
    >>> model.structure(), model.scale, model.training
    (Structure(n_b=8, n_l=1, n_c=16), 2, False)
    """
    source = os.fspath(path) if isinstance(path, (str, os.PathLike)) else "the given state dict"
    raw = _read_file(source) if isinstance(path, (str, os.PathLike)) else path
    if isinstance(raw, Mapping) and raw.get("format") == MODEL_FORMAT:
        return _load_own(raw, source, name, scale, overrides)
    state = _unwrap(raw, params_key, source)
    try:
        return _load_native(state, source, name, scale, overrides)
    except CheckpointMismatch as error:
        if name is not None or overrides:  # an imposed architecture is one of ours
            raise
        return _load_external(state, source, scale, error)


def _read_file(source: str):
    """The content of a model file: safetensors by its suffix, else ``torch.load(weights_only=True)``."""
    if not source.lower().endswith(".safetensors"):
        return read_torch_file(source, "checkpoint")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isfile(source):
        raise FileNotFoundError(f"checkpoint {source} does not exist")
    try:
        return load_file(source, device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"cannot read checkpoint {source} ({str(error).splitlines()[0] if str(error) else error!r}): "
                         "it is truncated, damaged or not a safetensors file; use another file") from None


def _load_native(state: dict, source: str, name, scale, overrides) -> nn.Module:
    native, original_names, file_options, family, file_format = _to_native(state, source, scale)
    options = {**file_options, **overrides}
    config, inferred_scale = {}, None
    if name is None or scale is None:
        config = _infer(file_format, native, source, scale)
        inferred_scale = config.pop("scale")
        scale = inferred_scale if scale is None else scale
        name = name or preset_of(family, config)
    if name is not None:
        model = build(name, scale=scale, **options)
    else:  # not a preset: the architecture the tensors describe
        model = construct(FAMILIES[family], f"checkpoint {source}", options, scale=scale, **config)
    try:
        _check_fit(model, native, original_names, source, name or f"the {family} model it describes")
    except CheckpointMismatch as error:
        if inferred_scale in (None, scale):
            raise
        raise CheckpointMismatch(f"{error}; its tensors are those of a ×{inferred_scale} model: pass --scale "
                                 f"{inferred_scale} or drop --scale") from None
    model.load_state_dict(native, strict=True)
    return model.eval()


def _load_external(state: dict, source: str, scale, ours: CheckpointMismatch) -> nn.Module:
    """The file by spandrel, when this package's formats did not read it (``ours`` says why). spandrel
    missing, or not detecting it either, is one line: ``ours`` and what spandrel said."""
    from ..optional import MissingDependency
    from .external import NotDetected, load_spandrel

    try:
        return load_spandrel(state, source, scale)
    except (MissingDependency, NotDetected) as error:
        if not isinstance(ours, UnknownFormat):  # one of our layouts, damaged or of a variant we lack
            raise ours from None
        reason = str(error).removeprefix(f"checkpoint {source}: ")
        raise CheckpointMismatch(f"{ours}; {reason}") from None


def _load_own(raw: Mapping, source: str, name, scale, overrides) -> nn.Module:
    if name is not None:
        raise ValueError(f"{source} is a cdism-fast model file, which records its architecture; do not pass a "
                         f"preset name ({name!r}) with it")
    if isinstance(raw.get("external"), Mapping):  # a pruned external model: its tensors in the loader's names
        from .external import load_spandrel

        return load_spandrel(dict(raw.get("params", {})), source, scale)
    model = build_from_spec({"family": raw.get("family"), "config": {**raw.get("config", {}), **overrides}})
    if scale is not None and scale != model.scale:
        raise ValueError(f"{source} holds a ×{model.scale} model, not ×{scale}; pass --scale {model.scale} or "
                         "drop --scale")
    state = dict(raw.get("params", {}))
    _check_fit(model, state, {}, source, f"the {model.family} model it records")
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


def _to_native(state: dict, source: str, scale: Optional[int] = None):
    """(state dict in the family's names, its name → the file's name, options the file tells, family,
    :class:`CheckpointFormat`); of a file holding several scales, the model at ``scale``."""
    for family, fmt in checkpoint_formats():
        if fmt.detect(state):
            if fmt.select is not None:
                state = fmt.select(state, source, scale)
            native, original, options = fmt.to_native(state, source)
            return native, original, options, family, fmt
    known = [fmt.describe() for _, fmt in checkpoint_formats()]
    raise UnknownFormat(f"checkpoint {source} is neither {', '.join(known[:-1])} nor {known[-1]}; its first "
                             f"keys are {list(state)[:LISTED_KEYS]}")


def _infer(fmt: CheckpointFormat, state: dict, source: str, scale: Optional[int]) -> dict:
    """The constructor arguments with scale, from the tensors' names and shapes."""
    try:
        return fmt.infer(state, source, scale)
    except KeyError as missing:
        raise CheckpointMismatch(f"checkpoint {source} ({fmt.name}) lacks {missing}; its first keys are "
                                 f"{list(state)[:LISTED_KEYS]}") from None


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

