"""Models of architectures that are not families of this package, read through spandrel (optional).

spandrel (``pip install 'cdism_fast[spandrel]'``) detects the architecture of a bare state dict for
some forty architectures the super-resolution community runs (ESRGAN/RRDB, Real-ESRGAN Compact, SwinIR,
HAT, DAT, SPAN, OmniSR, RCAN, PLKSR, ...). :func:`cdism_fast.models.load_pretrained` tries this
package's own file formats first and hands a file that none of them reads to :func:`load_spandrel`,
which returns an :class:`ExternalModel`: an ``nn.Module`` mapping RGB [0, 1] to RGB [0, 1], ``scale``
times larger, at any input size (it pads the input to the architecture's size requirements and crops
the output back), so every caller (a live teacher, the teacher-output cache, ``eval``, ``upscale``)
runs it as it runs a family model.

An external model is no family: it has no knobs, so it is not compressed itself, but it can be a
teacher (distilled into any family) and be pruned (OBProx-SG does not care about the architecture;
its deep-feature module is all its weights). spandrel is imported only when a file is not one of
ours, never by ``import cdism_fast``.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torch import nn

from .._checks import check_int
from .presets import model_spec

__all__ = ["SizeRequirements", "ExternalModel", "model_record", "pad_to_size", "EXTERNAL_LOADER",
           "EXTRA_ARCHES_PACKAGE"]

#: The package that reads the external files, and its extra of cdism_fast.
EXTERNAL_LOADER = "spandrel"
#: spandrel's separate package of further architectures (other licences), used when it is installed.
EXTRA_ARCHES_PACKAGE = "spandrel_extra_arches"
#: What an external model's deep-feature module is, in records and messages.
ALL_WEIGHTS = "all weights (not a cdism_fast family: no deep-feature module of its own)"


@dataclass(frozen=True)
class SizeRequirements:
    """What an architecture's input must be: at least ``minimum`` pixels high and wide, a multiple of
    ``multiple_of``, square when ``square``.

    >>> from cdism_fast.models import SizeRequirements
    >>> SizeRequirements(minimum=16, multiple_of=4).padded_size(9, 21)
    (16, 24)
    >>> SizeRequirements(multiple_of=2, square=True).padded_size(5, 3)
    (6, 6)
    """

    minimum: int = 0
    multiple_of: int = 1
    square: bool = False

    def __post_init__(self):
        check_int("minimum", self.minimum, 0)
        check_int("multiple_of", self.multiple_of)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest (height, width) at least as large as the given one that meets the requirements."""
        def side(length: int) -> int:
            length = max(length, self.minimum)
            return -(-length // self.multiple_of) * self.multiple_of

        height, width = side(height), side(width)
        if self.square:
            height = width = max(height, width)
        return height, width

    @property
    def none(self) -> bool:
        """Whether any input size is accepted as it is."""
        return self.minimum <= 1 and self.multiple_of == 1 and not self.square


def pad_to_size(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``x`` (N, C, h, w) padded at the bottom and right to ``height`` × ``width``: mirrored (reflect) as far
    as the image allows (h − 1 rows, w − 1 columns), the rest repeating the last row and column (replicate).

    >>> import torch
    >>> from cdism_fast.models import pad_to_size
    >>> row = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    >>> pad_to_size(row, 1, 7).flatten().tolist()
    [1.0, 2.0, 3.0, 2.0, 1.0, 1.0, 1.0]
    """
    pad_h, pad_w = height - x.shape[-2], width - x.shape[-1]
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"pad_to_size: cannot pad a {tuple(x.shape[-2:])} image to the smaller {(height, width)}")
    reflect_h, reflect_w = min(pad_h, x.shape[-2] - 1), min(pad_w, x.shape[-1] - 1)
    if reflect_h or reflect_w:
        x = nn.functional.pad(x, (0, reflect_w, 0, reflect_h), mode="reflect")
    if pad_h > reflect_h or pad_w > reflect_w:
        x = nn.functional.pad(x, (0, pad_w - reflect_w, 0, pad_h - reflect_h), mode="replicate")
    return x


def _call_module(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module(x)


class ExternalModel(nn.Module):
    """A model of an architecture outside this package's families, as a family model behaves: RGB [0, 1]
    in, RGB [0, 1] out, ``scale`` times larger, any input size.

    ``model`` is the network; ``call(model, x)`` runs it (default ``model(x)``; an output tuple gives its
    first entry); ``size_requirements`` are honoured by padding the input (:func:`pad_to_size`) and cropping
    the output back to ``scale`` times the input. ``info`` describes what was detected (architecture,
    tags, ...) and goes into :meth:`record`. Its deep-feature module, for pruning and compression, is all
    its weights. The output is not clamped (as the families' is not).

    >>> import torch
    >>> from cdism_fast.models import ExternalModel, SizeRequirements
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2))
    >>> model = ExternalModel(net, scale=2, size_requirements=SizeRequirements(minimum=8, multiple_of=4),
    ...                       info={"architecture": {"id": "toy", "name": "Toy"}})
    >>> tuple(model(torch.rand(1, 3, 5, 7)).shape)  # run at 8x8, cropped back to 10x14
    (1, 3, 10, 14)
    >>> model.record()["architecture"], model.record()["params"]
    ({'id': 'toy', 'name': 'Toy'}, 336)
    """

    def __init__(self, model: nn.Module, scale: int, *, size_requirements: SizeRequirements = SizeRequirements(),
                 call: Optional[Callable[[nn.Module, torch.Tensor], torch.Tensor]] = None,
                 info: Optional[Mapping] = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.scale = check_int("scale", scale)
        self.size_requirements = size_requirements
        self.call = call or _call_module
        self.info = dict(info or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        padded = self.size_requirements.padded_size(height, width)
        if padded != (height, width):
            x = pad_to_size(x, *padded)
        out = self.call(self.model, x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if padded != (height, width):
            out = out[..., : height * self.scale, : width * self.scale]
        return out

    def deep_feature_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter: an architecture of no family has no deep-feature module of its own."""
        yield from self.model.parameters()

    def record(self) -> dict:
        """What was detected, for ``stage.json``, ``density.json`` and messages (JSON-able)."""
        weights = sum(p.numel() for p in self.model.parameters() if p.dim() >= 2)
        return {"external": self.info.get("loader", "module"), **{k: v for k, v in self.info.items() if k != "loader"},
                "scale": self.scale, "params": sum(p.numel() for p in self.model.parameters()), "weights": weights,
                "size_requirements": asdict(self.size_requirements), "deep_feature_module": ALL_WEIGHTS}

    def summary(self) -> str:
        """One line: the architecture, scale, parameters, size requirements and tags, and what that means here.

        >>> import torch
        >>> from cdism_fast.models import ExternalModel, SizeRequirements
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2))
        >>> ExternalModel(net, 2, size_requirements=SizeRequirements(minimum=16)).summary()
        'detected Sequential ×2 (336 parameters; input padded to at least 16 px); of no cdism_fast family: ...'
        """
        record = self.record()
        arch = record.get("architecture") or {}
        name = arch.get("name") or type(self.model).__name__
        ident = f", id {arch['id']}" if arch.get("id") and arch.get("id") != name else ""
        needs = self.size_requirements
        size = [f"at least {needs.minimum} px"] if needs.minimum > 1 else []
        size += [f"a multiple of {needs.multiple_of}"] if needs.multiple_of > 1 else []
        size += ["square"] if needs.square else []
        size_text = f"; input padded to {', '.join(size)}" if size else ""
        tags = f"; tags {', '.join(record['tags'])}" if record.get("tags") else ""
        loader = (f"{record['external']} {record.get('loader_version', '')}".strip() + " "
                  if record["external"] != "module" else "")
        return (f"{loader}detected {name}{ident} ×{self.scale} ({record['params']:,} parameters{size_text}{tags}); "
                "of no cdism_fast family: usable as a teacher (pruning measures d over all its weights), not "
                "compressed itself")

    def extra_repr(self) -> str:
        return f"scale={self.scale}, size_requirements={self.size_requirements}"


def model_record(model: nn.Module) -> dict:
    """What describes ``model`` in records: the family record (:func:`~cdism_fast.models.model_spec`) of a
    family model, :meth:`ExternalModel.record` of an external one, the class name of any other module.

    >>> from cdism_fast.models import build, model_record
    >>> model_record(build("edsr_mini"))["family"]
    'edsr'
    >>> import torch
    >>> model_record(torch.nn.Identity())
    {'module': 'Identity'}
    """
    if isinstance(model, ExternalModel):
        return model.record()
    try:
        return model_spec(model)
    except ValueError:
        return {"module": type(model).__name__}


# --------------------------------------------------------------------------------------------- spandrel
def spandrel_problem() -> Optional[str]:
    """Why spandrel cannot read files here (not installed, or installed but failing to import), or None."""
    from ..optional import available, install_hint

    if not available(EXTERNAL_LOADER):
        return f"spandrel, which reads some forty more architectures, is not installed: {install_hint('spandrel')}"
    try:
        importlib.import_module(EXTERNAL_LOADER)
    except Exception as error:  # torchvision built for another torch fails at import with several kinds
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return (f"spandrel is installed but cannot be imported ({type(error).__name__}: {first}); it needs a torch "
                "and torchvision that import together, e.g. torch 2.14.1 with torchvision 0.29.1")
    return None


def _registry(spandrel):
    """spandrel's registry, with spandrel_extra_arches' architectures when that package is installed."""
    from ..optional import available

    if not available(EXTRA_ARCHES_PACKAGE):
        return spandrel.MAIN_REGISTRY, False
    try:
        extra = importlib.import_module(EXTRA_ARCHES_PACKAGE)
        registry = spandrel.MAIN_REGISTRY.copy()
        registry.add(*extra.EXTRA_REGISTRY, ignore_duplicates=True)
    except Exception:  # an incompatible version: the main registry alone
        return spandrel.MAIN_REGISTRY, False
    return registry, True


class NotDetected(ValueError):
    """spandrel is usable but did not detect the architecture; the message says so (and how extras may)."""


def load_spandrel(state: Mapping, source: str, scale: Optional[int] = None) -> ExternalModel:
    """The :class:`ExternalModel` of the state dict ``state`` (read from ``source``) by spandrel's
    detection, on the CPU in eval mode. Refused in one line naming ``source`` and the fix: spandrel
    missing or broken (:class:`~cdism_fast.optional.MissingDependency`, see :func:`spandrel_problem`), not
    detected (:class:`NotDetected`), not an RGB super-resolution model (another purpose, such as a ×1 restoration
    model, or not 3 input and output channels), or of another scale than ``scale``."""
    from ..optional import MissingDependency

    problem = spandrel_problem()
    if problem is not None:
        raise MissingDependency(f"checkpoint {source}: {problem}")
    spandrel = importlib.import_module(EXTERNAL_LOADER)
    registry, with_extras = _registry(spandrel)
    version = getattr(spandrel, "__version__", "")
    try:
        descriptor = spandrel.ModelLoader(registry=registry).load_from_state_dict(dict(state))
    except spandrel.UnsupportedModelError:
        extras = (f"with {EXTRA_ARCHES_PACKAGE}" if with_extras else
                  f"(an architecture of {EXTRA_ARCHES_PACKAGE} needs that package: pip install spandrel-extra-arches)")
        raise NotDetected(f"spandrel {version} did not detect it either {extras}") from None
    except Exception as error:  # a detected architecture whose tensors do not fit it
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ValueError(f"checkpoint {source}: spandrel {version} took it for an architecture it could not load "
                         f"({type(error).__name__}: {first}); the file is damaged or of an unsupported "
                         "variant: use another file") from None
    arch = descriptor.architecture
    what = f"checkpoint {source} (spandrel: {arch.name})"
    purpose = getattr(descriptor, "purpose", None)
    if purpose != "SR":
        detail = {"Restoration": "a ×1 restoration model: it does not upscale",
                  "FaceSR": "a face restoration model for aligned face crops",
                  "Inpainting": "an inpainting model"}.get(purpose, f"a {purpose} model")
        raise ValueError(f"{what} is {detail}; teachers and students here upscale images (×2, ×3, ×4): pass a "
                         "super-resolution model")
    if (descriptor.input_channels, descriptor.output_channels) != (3, 3):
        raise ValueError(f"{what} maps {descriptor.input_channels} input channels to {descriptor.output_channels}; "
                         "the models here are RGB (3 to 3): pass an RGB model")
    if scale is not None and scale != descriptor.scale:
        raise ValueError(f"{what} is a ×{descriptor.scale} model, not ×{scale}: pass --scale {descriptor.scale} "
                         "or drop --scale")
    needs = descriptor.size_requirements
    info = {"loader": EXTERNAL_LOADER, "loader_version": version,
            "architecture": {"id": str(arch.id), "name": arch.name}, "purpose": purpose,
            "tags": [str(tag) for tag in descriptor.tags],
            "supports_half": bool(descriptor.supports_half), "supports_bfloat16": bool(descriptor.supports_bfloat16),
            "input_channels": descriptor.input_channels, "output_channels": descriptor.output_channels}
    if with_extras:
        info["extra_architectures"] = EXTRA_ARCHES_PACKAGE
    # The descriptor's own call function where it has one (a few architectures post-process the output).
    call = getattr(descriptor, "_call_fn", None)
    model = ExternalModel(descriptor.model, descriptor.scale,
                          size_requirements=SizeRequirements(int(needs.minimum), int(needs.multiple_of),
                                                             bool(needs.square)),
                          call=call, info=info)
    return model.float().eval()
