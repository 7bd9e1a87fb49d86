"""Named architectures (presets) and the families they belong to."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .common import construct
from .edsr import EDSR
from .swinir import SwinIR

#: Model families by name: the class builds the model from its keyword arguments.
FAMILIES: dict[str, type[nn.Module]] = {"edsr": EDSR, "swinir": SwinIR}


@dataclass(frozen=True)
class Preset:
    family: str
    description: str
    config: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "edsr": Preset("edsr", "EDSR (Lim et al. 2017)", dict(n_c=256, n_b=32, n_l=1, res_scale=0.1)),
    "edsr_baseline": Preset("edsr", "EDSR baseline", dict(n_c=64, n_b=16, n_l=1, res_scale=1.0)),
    # The compression rule gives N_b = 9 from edsr_baseline at d = 0.03; the paper chose 8.
    "edsr_mini": Preset("edsr", "the paper's EDSRmini", dict(n_c=16, n_b=8, n_l=1, res_scale=1.0)),
    "swinir_classical": Preset("swinir", "SwinIR classical SR (SwinIR-M)", dict(
        embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6, window_size=8, mlp_ratio=2.0,
        upsampler="pixelshuffle")),
    "swinir_lightweight": Preset("swinir", "SwinIR lightweight SR (SwinIR-S, the paper's SwinIR_LW)", dict(
        embed_dim=60, depths=(6,) * 4, num_heads=(6,) * 4, window_size=8, mlp_ratio=2.0,
        upsampler="pixelshuffledirect")),
    "swinir_mini": Preset("swinir", "the paper's SwinIRmini", dict(
        embed_dim=24, depths=(4,) * 3, num_heads=(6,) * 3, window_size=8, mlp_ratio=2.0,
        upsampler="pixelshuffledirect")),
}


def build(name: str, scale: int = 2, **overrides) -> nn.Module:
    """The untrained model of preset ``name`` at ×``scale``; ``overrides`` replace constructor
    arguments of its family (e.g. ``res_scale``, ``attention_backend``)."""
    if name not in PRESETS:
        raise ValueError(f"name must be a preset, one of {list(PRESETS)}, got {name!r}")
    preset = PRESETS[name]
    return construct(FAMILIES[preset.family], f"preset {name!r}", {**preset.config, **overrides}, scale=scale)


def from_structure(family: str, n_c: int, n_l: int, n_b: int, scale: int = 2, **rest) -> nn.Module:
    """An untrained model of ``family`` with N_c channels, N_b blocks of N_l layers, ×``scale``.

    ``rest``: the family's other options (see the family's ``from_structure``).
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    return FAMILIES[family].from_structure(n_c, n_l, n_b, scale, **rest)


def preset_of(family: str, config: dict) -> str | None:
    """The preset of ``family`` whose options agree with every option ``config`` has (the scale
    and options ``config`` lacks are not compared), or None."""
    for name, preset in PRESETS.items():
        if preset.family == family and all(config[key] == value for key, value in preset.config.items()
                                           if key in config):
            return name
    return None
