"""Super-resolution model families, presets, official-checkpoint import, parameter and MAC counts.

Families (:data:`FAMILIES`, by name): each a subclass of :class:`SRModel`, the family contract
(:mod:`cdism_fast.models.family`: knobs, deep-feature module, presets, checkpoint formats, the
options ``model.pt`` keeps), in one module of this folder that registers it; importing the
package imports every module here, and each family class is exported under its class name
(``cdism_fast.models.EDSR``). Every model takes RGB in [0, 1] (NCHW, any size) and returns RGB
in the same range, ``scale`` times larger.

Presets (:data:`ARCHITECTURES`, by name: e.g. ``edsr_baseline``, ``edsr_mini`` (the paper's
EDSRmini), ``swinir_lightweight`` (the paper's SwinIR_LW), ``swinir_mini`` (the paper's
SwinIRmini), ``imdn``, ``pan``, ``carn_m``, ``carn``): untrained architectures; ``cdism-fast models`` lists them all.
``PRESETS`` is the former name of :data:`ARCHITECTURES`, kept for one release.

Files of other architectures (ESRGAN, Real-ESRGAN Compact, HAT, SPAN, ...) are read through spandrel when
it is installed (:mod:`cdism_fast.models.external`): an :class:`ExternalModel`, usable as a teacher.

Shipped trained models (:data:`PRETRAINED`, :func:`pretrained`): students this project trained with
``cdism-fast run --preset cpu-291``, e.g. ``pretrained("edsr_mini_291")``.
"""
import importlib
import pkgutil
import warnings

from .checkpoints import MODEL_FORMAT, CheckpointMismatch, format_names, load_pretrained
from .counting import count_flops, count_params
from .external import ExternalModel, SizeRequirements, model_record, pad_to_size
from .family import (
    ARCHITECTURES,
    FAMILIES,
    CheckpointFormat,
    Compressible,
    Inheritance,
    Part,
    Preset,
    Slice,
    SRModel,
    Structure,
    kept_layers,
    register_family,
)
from .presets import build, build_from_spec, family_names, from_structure, model_spec, preset_of
from .pretrained import PRETRAINED, pretrained, pretrained_info

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
globals().update({cls.__name__: cls for cls in FAMILIES.values()})

__all__ = [
    *(cls.__name__ for cls in FAMILIES.values()),
    "SRModel",
    "Structure",
    "Compressible",
    "CheckpointFormat",
    "register_family",
    "Inheritance",
    "Part",
    "Slice",
    "kept_layers",
    "FAMILIES",
    "ARCHITECTURES",
    "family_names",
    "format_names",
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
    "ExternalModel",
    "SizeRequirements",
    "model_record",
    "pad_to_size",
]


def __getattr__(name: str):
    if name == "PRESETS":
        warnings.warn("cdism_fast.models.PRESETS is now ARCHITECTURES; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return ARCHITECTURES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
