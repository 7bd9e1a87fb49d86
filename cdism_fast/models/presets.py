"""Building models from the registry of families (:data:`FAMILIES`, :data:`ARCHITECTURES`: filled as each
family's module is imported) and the architecture record ``model.pt`` keeps."""
from __future__ import annotations

import difflib

from torch import nn

from .common import construct
from .family import ARCHITECTURES, FAMILIES, SRModel

__all__ = ["FAMILIES", "ARCHITECTURES", "family_names", "build", "from_structure", "preset_of", "model_spec",
           "build_from_spec"]


def family_names() -> str:
    """The registered families' names, for help texts and messages.

    >>> from cdism_fast.models import family_names
    >>> family_names()
    'carn, compact, edsr, imdn, pan, swinir'
    """
    return ", ".join(FAMILIES)


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
    if name not in ARCHITECTURES:
        raise ValueError(f"name must be a preset, one of {list(ARCHITECTURES)}, got {name!r}{_close_names(name)}")
    preset = ARCHITECTURES[name]
    return construct(FAMILIES[preset.family], f"preset {name!r}", {**preset.config, **overrides}, scale=scale)


def _close_names(name: str) -> str:
    """The presets and shipped models whose names are close to ``name``, as a hint (a typo of
    ``edsr_mini_291`` reaches the presets from ``--model``); shipped names are left out when their
    registry cannot be read."""
    from .pretrained import CLOSE_NAME_RATIO, read_registry

    try:
        shipped = list(read_registry())
    except ValueError:
        shipped = []
    close = difflib.get_close_matches(name, [*ARCHITECTURES, *shipped], n=3, cutoff=CLOSE_NAME_RATIO)
    named = [f"{match} (a shipped trained model)" if match in shipped else match for match in close]
    return f"; did you mean {', '.join(named)}?" if named else ""


def from_structure(family: str, n_b: int, n_l: int, n_c: int, scale: int = 2, **rest) -> nn.Module:
    """An untrained model of ``family`` with N_b blocks of N_l layers, N_c channels, ×``scale``.

    ``rest``: the family's other options (see the family's ``from_structure``).

    >>> from cdism_fast.models import from_structure
    >>> from_structure("edsr", n_c=16, n_l=1, n_b=2).structure()
    Structure(n_b=2, n_l=1, n_c=16)
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    return FAMILIES[family].from_structure(n_b, n_l, n_c, scale, **rest)


def preset_of(family: str, config: dict) -> str | None:
    """The preset of ``family`` whose options agree with every option ``config`` has (the scale
    and options ``config`` lacks are not compared), or None.

    >>> from cdism_fast.models import preset_of
    >>> preset_of("edsr", {"n_c": 16, "n_b": 8, "n_l": 1}), preset_of("edsr", {"n_c": 24})
    ('edsr_mini', None)
    """

    for name, preset in ARCHITECTURES.items():
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
