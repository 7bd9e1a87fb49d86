"""Trained models shipped inside the package, loadable by name without network access.

Each entry of :data:`PRETRAINED` is a student this project trained (``cdism-fast run --preset
cpu-291``: a published teacher compressed and distilled on the 291 classic training images) and
records its architecture, how it was trained, its licence and the benchmark numbers measured on
it. The weights are safetensors files in ``cdism_fast/models/weights/`` (no pickle: loading one
runs no code). ``pretrained(name)`` returns the model in eval mode; ``cdism-fast eval --model
NAME`` and ``cdism-fast upscale --model NAME`` accept the same names.
"""
from __future__ import annotations

import hashlib
import json
from importlib import resources

from torch import nn

__all__ = ["PRETRAINED", "pretrained", "pretrained_info", "WEIGHTS_PACKAGE"]

#: Where the files live inside the package.
WEIGHTS_PACKAGE = "cdism_fast.models.weights"
#: The registry file beside the weights: ``{name: {"file", "sha256", "model", "scores", ...}}``.
REGISTRY_FILE = "pretrained.json"


def _registry() -> dict:
    text = resources.files(WEIGHTS_PACKAGE).joinpath(REGISTRY_FILE).read_text(encoding="utf-8")
    return json.loads(text)


#: Every shipped model by name, with its record (architecture, training, licence, measured scores).
PRETRAINED: dict[str, dict] = _registry()


def pretrained_info(name: str) -> dict:
    """The record of shipped model ``name``.

    >>> from cdism_fast.models import pretrained_info
    >>> info = pretrained_info("edsr_mini_291")
    >>> info["model"]["family"], round(info["scores"]["Set5"]["psnr"], 2)
    ('edsr', 37.26)
    """
    if name not in PRETRAINED:
        known = ", ".join(PRETRAINED) or "none"
        raise ValueError(f"no shipped model is named {name!r}; the shipped models are: {known}")
    return PRETRAINED[name]


def pretrained(name: str) -> nn.Module:
    """Shipped model ``name`` (see :data:`PRETRAINED`), with its trained weights, in eval mode.

    >>> import torch
    >>> from cdism_fast.models import count_params, pretrained
    >>> model = pretrained("edsr_mini_291")
    >>> count_params(model), model.training
    (49603, False)
    >>> with torch.no_grad():
    ...     tuple(model(torch.rand(1, 3, 8, 8)).shape)
    (1, 3, 16, 16)
    """
    from safetensors.torch import load

    from .presets import build_from_spec

    info = pretrained_info(name)
    data = resources.files(WEIGHTS_PACKAGE).joinpath(info["file"]).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != info["sha256"]:
        raise ValueError(f"the weights file of {name!r} ({info['file']}) does not match its recorded sha256 "
                         f"({digest[:12]}… instead of {info['sha256'][:12]}…); reinstall cdism_fast")
    model = build_from_spec(info["model"])
    model.load_state_dict(load(data), strict=True)
    return model.eval()
