"""Super-resolution model families, presets, official-checkpoint import, parameter and MAC counts.

Families (:data:`FAMILIES`): :class:`EDSR`, :class:`SwinIR`, :class:`IMDN` and :class:`PAN`,
each a subclass of :class:`SRModel`, the family contract (:mod:`cdism_fast.models.family`:
knobs, deep-feature module, presets, checkpoint formats, the options ``model.pt`` keeps).
Every model takes RGB in [0, 1] (NCHW, any size) and returns RGB in the same range,
``scale`` times larger.

Presets (:data:`PRESETS`): ``edsr``, ``edsr_baseline``, ``edsr_mini`` (the paper's EDSRmini),
``swinir_classical``, ``swinir_lightweight`` (the paper's SwinIR_LW), ``swinir_mini`` (the
paper's SwinIRmini), ``imdn`` (Hui et al. 2019) and ``pan`` (Zhao et al. 2020): untrained.

Shipped trained models (:data:`PRETRAINED`, :func:`pretrained`): students this project trained with
``cdism-fast run --preset cpu-291``, e.g. ``pretrained("edsr_mini_291")``.
"""
from .checkpoints import MODEL_FORMAT, CheckpointMismatch, load_pretrained
from .counting import count_flops, count_params
from .edsr import EDSR
from .family import CheckpointFormat, Compressible, Preset, SRModel, Structure
from .imdn import IMDN
from .pan import PAN
from .presets import FAMILIES, PRESETS, build, build_from_spec, from_structure, model_spec, preset_of
from .pretrained import PRETRAINED, pretrained, pretrained_info
from .swinir import SwinIR

__all__ = [
    "EDSR",
    "SwinIR",
    "IMDN",
    "PAN",
    "SRModel",
    "Structure",
    "Compressible",
    "CheckpointFormat",
    "FAMILIES",
    "PRESETS",
    "Preset",
    "build",
    "from_structure",
    "preset_of",
    "model_spec",
    "build_from_spec",
    "MODEL_FORMAT",
    "load_pretrained",
    "PRETRAINED",
    "pretrained",
    "pretrained_info",
    "CheckpointMismatch",
    "count_params",
    "count_flops",
]
