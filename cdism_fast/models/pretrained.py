"""Trained models shipped inside the package, loadable by name without network access.

Each entry of :data:`PRETRAINED` is a student this project trained (``cdism-fast run --preset
cpu-291``: a published teacher compressed and distilled on the 291 classic training images) and
records its architecture, how it was trained, its licence and the benchmark numbers measured on
it. The weights are safetensors files in ``cdism_fast/models/weights/`` (no pickle: loading one
runs no code). ``pretrained(name)`` returns the model in eval mode; ``cdism-fast eval --model
NAME`` and ``cdism-fast upscale --model NAME`` accept the same names.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterator, Mapping
from importlib import resources

from torch import nn

__all__ = ["PRETRAINED", "pretrained", "pretrained_info", "read_registry", "WEIGHTS_PACKAGE"]

#: Where the files live inside the package.
WEIGHTS_PACKAGE = "cdism_fast.models.weights"
#: The registry file beside the weights: ``{name: {"file", "sha256", "model", "scores", ...}}``.
REGISTRY_FILE = "pretrained.json"
#: What every record of the registry file holds (the other entries are descriptive).
RECORD_KEYS = ("file", "sha256", "model")
#: How alike a name must be to a shipped one to be offered for it (difflib's ratio; the names share suffixes).
CLOSE_NAME_RATIO = 0.8


def read_registry() -> dict:
    """The records of the registry file; a file that cannot be read or parsed is one ``ValueError`` naming it.

    >>> from cdism_fast.models.pretrained import read_registry
    >>> sorted(read_registry())
    ['edsr_mini_291', 'imdn_mini_291', 'pan_mini_291']
    """
    registry = resources.files(WEIGHTS_PACKAGE).joinpath(REGISTRY_FILE)
    try:
        records = json.loads(registry.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"the shipped-model registry {registry} cannot be read ({error}); reinstall "
                         "cdism_fast") from None
    if not isinstance(records, dict) or not all(
            isinstance(record, dict) and all(key in record for key in RECORD_KEYS) for record in records.values()):
        raise ValueError(f"the shipped-model registry {registry} must map names to records with "
                         f"{', '.join(RECORD_KEYS)}; reinstall cdism_fast")
    return records


class ShippedModels(Mapping):
    """The registry read when it is used, not when the package is imported: a broken file fails only the
    commands that use shipped models."""

    def __getitem__(self, name: str) -> dict:
        return read_registry()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(read_registry())

    def __len__(self) -> int:
        return len(read_registry())


#: Every shipped model by name, with its record (architecture, training, licence, measured scores).
PRETRAINED: Mapping[str, dict] = ShippedModels()


def pretrained_info(name: str) -> dict:
    """The record of shipped model ``name``.

    >>> from cdism_fast.models import pretrained_info
    >>> info = pretrained_info("edsr_mini_291")
    >>> info["model"]["family"], round(info["scores"]["Set5"]["psnr"], 2)
    ('edsr', 37.26)
    """
    records = read_registry()
    if name not in records:
        close = difflib.get_close_matches(name, list(records), n=3, cutoff=CLOSE_NAME_RATIO)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        known = ", ".join(records) or "none"
        raise ValueError(f"no shipped model is named {name!r}; {hint}the shipped models are: {known}")
    return records[name]


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
