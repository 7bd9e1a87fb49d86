"""Super-resolution model families, presets, official-checkpoint import, parameter and MAC counts.

Families: :class:`EDSR` and :class:`SwinIR`, each implementing the compression protocol of
:mod:`cdism_fast.compress` (``structure``, ``with_structure``, ``deep_feature_parameters``,
``channel_multiple``). Every model takes RGB in [0, 1] (NCHW, any size) and returns RGB
in the same range, ``scale`` times larger.

Presets (:data:`PRESETS`): ``edsr``, ``edsr_baseline``, ``edsr_mini`` (the paper's EDSRmini),
``swinir_classical``, ``swinir_lightweight`` (the paper's SwinIR_LW), ``swinir_mini`` (the
paper's SwinIRmini).
"""
from .checkpoints import CheckpointMismatch, load_pretrained
from .counting import count_flops, count_params
from .edsr import EDSR
from .presets import FAMILIES, PRESETS, Preset, build, from_structure, preset_of
from .swinir import SwinIR

__all__ = [
    "EDSR",
    "SwinIR",
    "FAMILIES",
    "PRESETS",
    "Preset",
    "build",
    "from_structure",
    "preset_of",
    "load_pretrained",
    "CheckpointMismatch",
    "count_params",
    "count_flops",
]
