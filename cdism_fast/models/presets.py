"""The registry of model families, their presets, and the architecture record ``model.pt`` keeps."""
from __future__ import annotations

from torch import nn

from .common import construct
from .edsr import EDSR
from .family import Preset, SRModel
from .imdn import IMDN
from .pan import PAN
from .swinir import SwinIR

#: Model families by name (see :mod:`cdism_fast.models.family` for what a family declares).
FAMILIES: dict[str, type[SRModel]] = {cls.family: cls for cls in (EDSR, SwinIR, IMDN, PAN)}

#: Every family's presets, by name.
PRESETS: dict[str, Preset] = {name: preset for cls in FAMILIES.values() for name, preset in cls.presets.items()}


def build(name: str, scale: int = 2, **overrides) -> nn.Module:
    """The untrained model of preset ``name`` at ×``scale``; ``overrides`` replace constructor
    arguments of its family (e.g. ``res_scale``, ``attention_backend``).

    >>> import torch
    >>> from cdism_fast.models import build, count_params
    >>> model = build("edsr_mini", scale=3).eval()
    >>> count_params(model)
    61203
    >>> tuple(model(torch.rand(1, 3, 5, 5)).shape)
    (1, 3, 15, 15)
    """
    if name not in PRESETS:
        raise ValueError(f"name must be a preset, one of {list(PRESETS)}, got {name!r}")
    preset = PRESETS[name]
    return construct(FAMILIES[preset.family], f"preset {name!r}", {**preset.config, **overrides}, scale=scale)


def from_structure(family: str, n_c: int, n_l: int, n_b: int, scale: int = 2, **rest) -> nn.Module:
    """An untrained model of ``family`` with N_c channels, N_b blocks of N_l layers, ×``scale``.

    ``rest``: the family's other options (see the family's ``from_structure``).

    >>> from cdism_fast.models import from_structure
    >>> from_structure("edsr", n_c=16, n_l=1, n_b=2).structure()
    Structure(n_b=2, n_l=1, n_c=16)
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    return FAMILIES[family].from_structure(n_c, n_l, n_b, scale, **rest)


def preset_of(family: str, config: dict) -> str | None:
    """The preset of ``family`` whose options agree with every option ``config`` has (the scale
    and options ``config`` lacks are not compared), or None.

    >>> from cdism_fast.models import preset_of
    >>> preset_of("edsr", {"n_c": 16, "n_b": 8, "n_l": 1}), preset_of("edsr", {"n_c": 24})
    ('edsr_mini', None)
    """
    for name, preset in PRESETS.items():
        if preset.family == family and all(config[key] == value for key, value in preset.config.items()
                                           if key in config):
            return name
    return None


def model_spec(model: nn.Module) -> dict:
    """``{"family", "config"}``: what rebuilds ``model``'s architecture, options included (see
    :func:`build_from_spec`).

    >>> from cdism_fast.models import build, model_spec
    >>> spec = model_spec(build("edsr_mini"))
    >>> spec["family"], spec["config"]["n_c"], spec["config"]["n_b"]
    ('edsr', 16, 8)
    """
    family = getattr(model, "family", None)
    if not isinstance(model, SRModel) or FAMILIES.get(family) is not type(model):
        raise ValueError(f"model must be of a cdism_fast model family ({', '.join(FAMILIES)}), got "
                         f"{type(model).__name__}")
    return {"family": family, "config": json_plain(model.config())}


def json_plain(value):
    """Tuples as lists, so that the spec is JSON and survives a round trip unchanged."""
    if isinstance(value, dict):
        return {key: json_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_plain(item) for item in value]
    return value


def build_from_spec(spec: dict) -> nn.Module:
    """An untrained model of the architecture that :func:`model_spec` described.

    >>> from cdism_fast.models import build_from_spec, from_structure, model_spec
    >>> spec = model_spec(from_structure("pan", n_c=8, n_l=1, n_b=2))
    >>> build_from_spec(spec).structure()
    Structure(n_b=2, n_l=1, n_c=8)
    """
    family = spec.get("family") if isinstance(spec, dict) else None
    if family not in FAMILIES:
        raise ValueError(f"model family {family!r} is unknown; known families: {sorted(FAMILIES)}")
    return construct(FAMILIES[family], f"the {family} model record", dict(spec.get("config", {})))
