"""The model-family contract: what a family declares once, and all the package reads.

A family is a subclass of :class:`SRModel` (an ``nn.Module`` mapping RGB in [0, 1] to
RGB in [0, 1], ``scale`` times larger) decorated with :func:`register_family`, which enters it
in :data:`FAMILIES` and its presets in :data:`ARCHITECTURES`; ``cdism_fast.models`` imports every
module of its folder, so a family is one file. Its declaration is:

* ``family``: the registry name (``"edsr"``); ``model.pt`` stores it;
* ``config()``: every constructor argument, so ``cls(**model.config())`` rebuilds the same
  architecture (this is what ``model.pt`` keeps, options included);
* ``from_structure(n_b, n_l, n_c, scale, **options)``: a member from the three knobs of the
  compression rule, with the constructor's other options; knobs out of bounds raise a
  ``ValueError`` naming the knob and the allowed values;
* ``structure()`` (:class:`Structure`) and ``channel_multiple()``: the knobs of this model (by
  default its attributes ``n_b``, ``n_l``, ``n_c``), and what the channel count must be a multiple
  of (the channel counts compression may pick);
* ``deep_feature_modules``: the names of the submodules that make the deep-feature module
  (the density is measured on it; ``prune --penalty deep`` penalises only it);
* ``presets``: named configurations (:class:`Preset`);
* ``checkpoint_formats``: the files it reads (:class:`CheckpointFormat`: the key names that
  identify the layout, the key map to its own names, and the architecture read from the tensors);
* ``official_state_dict()`` and ``spandrel_architecture``: the weights in the layout of the family's
  published files (what ``export`` writes to ``.pth``; by default the state dict) and the architecture
  id spandrel (the model loader of chaiNNer and ComfyUI) detects that layout as, or None where spandrel
  does not know the family; ``spandrel_mismatch()`` says why spandrel would build another network
  from this model's file (an option it does not read), or None.
* optionally, how a smaller member takes its weights from a larger one (``distill --init inherit``):
  ``block_module`` (the submodule listing the deep-feature blocks, one of which is kept or dropped as a
  whole) and ``inheritance(student, blocks)`` (:class:`Inheritance`: for every parameter of the student,
  the teacher's parameter it is sliced from and which channel space each of its dimensions runs over).
  A family without them says why in ``inheritance_refusal``.

``with_structure``, ``deep_feature_parameters`` and ``inherited_options`` follow from these.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple, Optional, Protocol, runtime_checkable

import torch
from torch import nn

#: How many keys of each kind a checkpoint error lists.
LISTED_KEYS = 8
#: In the key patterns of a :class:`CheckpointFormat`: what stands for an index, and for any text.
INDEX, ANY = "<i>", "*"


class Structure(NamedTuple):
    """The three numbers the compression rule changes.

    >>> from cdism_fast.models import Structure, build
    >>> build("edsr_mini").structure() == Structure(n_b=8, n_l=1, n_c=16)
    True
    """

    n_b: int  #: blocks of the deep-feature module
    n_l: int  #: layers per block (EDSR: a block has n_l + 1 convolutions)
    n_c: int  #: channels (SwinIR: embedding dimension)


@runtime_checkable
class Compressible(Protocol):
    """What :mod:`cdism_fast.compress` needs of a model: every :class:`SRModel` has it.

    ``with_structure`` returns a new (untrained) model of the same family and options with
    the shallow-feature and reconstruction modules resized to the new channel count;
    ``deep_feature_parameters`` are the parameters of the deep-feature module only (what
    the density is measured on); ``channel_multiple`` is what N_c must be a multiple of.

    >>> import torch
    >>> from cdism_fast.models import Compressible, build
    >>> isinstance(build("edsr_mini"), Compressible), isinstance(torch.nn.Conv2d(3, 3, 1), Compressible)
    (True, False)
    """

    def structure(self) -> Structure: ...

    def with_structure(self, n_b: int, n_l: int, n_c: int) -> nn.Module: ...

    def deep_feature_parameters(self) -> Iterable[nn.Parameter]: ...

    def channel_multiple(self) -> int: ...


@dataclass(frozen=True)
class Preset:
    """A named configuration of a family: its constructor options.

    >>> from cdism_fast.models import ARCHITECTURES
    >>> ARCHITECTURES["edsr_mini"].family, ARCHITECTURES["edsr_mini"].config
    ('edsr', {'n_c': 16, 'n_b': 8, 'n_l': 1, 'res_scale': 1.0})
    """

    family: str
    description: str
    config: dict = field(default_factory=dict)


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit the model it should load into; the message lists the keys.

    >>> from cdism_fast.models import CheckpointMismatch, build, load_pretrained
    >>> try:
    ...     load_pretrained(build("edsr_mini").state_dict(), name="edsr_baseline")
    ... except CheckpointMismatch as error:
    ...     print(str(error).split(":")[0])
    checkpoint the given state dict does not fit edsr_baseline ×2
    """


@dataclass(frozen=True)
class CheckpointFormat:
    """One file layout a family reads (after the ``params``/``params_ema`` wrapper and a
    ``module.`` prefix are removed).

    ``keys``: the key patterns that identify the layout, each matched by some key of the file
    (``<i>`` stands for an index, ``*`` for any text: ``"IMDB<i>.c1.weight"``); :meth:`detect`
    and the error naming the layouts a file was compared against both read them.
    ``to_native(state, source)``: (the state dict in the family's own names, own name → the
    file's name, constructor options the file tells). ``infer(native, source, scale)``: the
    constructor arguments, ``scale`` included, that the tensors' names and shapes describe (a
    ``KeyError`` names a missing key; :class:`CheckpointMismatch` anything else).
    ``select(state, source, scale)``, for a file that holds one model for several scales (CARN-M:
    one upsampler per scale): the state dict of the model at ``scale`` (the scale the caller asked
    for, or None), before ``to_native``; a scale the file does not hold, or None when it holds
    several, is a :class:`CheckpointMismatch` naming the scales it has. None (the default): a file
    holds one model.

    >>> from cdism_fast.models import EDSR
    >>> [fmt.name for fmt in EDSR.checkpoint_formats]
    ['EDSR-PyTorch', 'BasicSR EDSR']
    """

    name: str
    keys: tuple[str, ...]
    infer: Callable[[dict, str, Optional[int]], dict]
    to_native: Callable[[dict, str], tuple[dict, dict, dict]] = (
        lambda state, source: (dict(state), {k: k for k in state}, {}))
    select: Optional[Callable[[dict, str, Optional[int]], dict]] = None

    def __post_init__(self):
        if not isinstance(self.keys, tuple) or not self.keys or not all(isinstance(k, str) and k for k in self.keys):
            raise TypeError(f"keys of checkpoint format {self.name!r} must be a non-empty tuple of key patterns, "
                            f"got {self.keys!r}")

    def detect(self, state: dict) -> bool:
        """Whether every key pattern matches a key of ``state``."""
        patterns = [re.compile(_key_regex(key)) for key in self.keys]
        return all(any(pattern.fullmatch(k) for k in state) for pattern in patterns)

    def describe(self) -> str:
        """The layout for error messages: ``IMDN (fea_conv.weight, IMDB<i>.c1.weight)``."""
        return f"{self.name} ({', '.join(self.keys)})"


class Part(NamedTuple):
    """A run of entries along one dimension of a teacher's parameter: the channels of the channel space
    ``space``, each ``group`` consecutive entries wide (a pixel shuffle's r² input channels make one output
    channel), or, with ``space=None``, ``size`` entries that the student drops.

    >>> from cdism_fast.models import Part
    >>> Part("features"), Part(None, size=16)
    (Part(space='features', size=0, group=1), Part(space=None, size=16, group=1))
    """

    space: Optional[str]
    size: int = 0
    group: int = 1


class Slice(NamedTuple):
    """Where one parameter of an inheriting student comes from: the teacher's parameter ``source`` and, per
    dimension, the :class:`Part` s that dimension is made of in the teacher, in order (``None``: the whole
    dimension is kept, e.g. a kernel's height or an RGB input).

    >>> from cdism_fast.models import Part, Slice
    >>> Slice("conv_first.weight", ((Part("features"),), None, None, None)).source
    'conv_first.weight'
    """

    source: str
    dims: tuple


@dataclass(frozen=True)
class Inheritance:
    """How a student takes its weights from a teacher of its family (see :mod:`cdism_fast.inheritance`).

    ``spaces``: every channel space, ``name -> (the teacher's channels, the student's)``; one space is shared
    by every dimension that must keep the same channels (the residual stream of the deep features, from the
    first convolution to the upsampler). ``weights``: every parameter of the student, by name, and its
    :class:`Slice` of the teacher. Which channels of a space are kept is chosen from the magnitudes (of a
    pruned copy of the teacher) along all the dimensions that run over it.

    >>> from cdism_fast.models import Inheritance, Part, Slice
    >>> plan = Inheritance({"features": (64, 16)}, {"head.bias": Slice("head.bias", ((Part("features"),),))})
    >>> plan.spaces["features"]
    (64, 16)
    """

    spaces: dict
    weights: dict


def kept_layers(student_layers: int, teacher_layers: int) -> list[int]:
    """Which of a teacher block's ``teacher_layers`` layers (1-based) a block of ``student_layers`` layers
    takes, in order: the first ``student_layers - 1`` and the last (the one that closes the block).

    >>> from cdism_fast.models import kept_layers
    >>> kept_layers(2, 4), kept_layers(1, 4), kept_layers(3, 3)
    ([1, 4], [4], [1, 2, 3])
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"a student block of {student_layers} layers cannot take them from a teacher block of "
                         f"{teacher_layers}")
    return [*range(1, student_layers), teacher_layers]


def conv_slices(student: str, teacher: str, out, inp, bias: bool = True) -> dict:
    """The :class:`Slice` entries of a student convolution ``student`` taken from the teacher's ``teacher``:
    ``out`` and ``inp`` are the output and input dimensions' parts (None: whole); its bias when ``bias``."""
    entries = {f"{student}.weight": Slice(f"{teacher}.weight", (out, inp, None, None))}
    if bias:
        entries[f"{student}.bias"] = Slice(f"{teacher}.bias", (out,))
    return entries


def _key_regex(pattern: str) -> str:
    return ".*".join(r"\d+".join(map(re.escape, part.split(INDEX))) for part in pattern.split(ANY))


class SRModel(nn.Module):
    """Base class of the model families (see the module docs for the contract).

    >>> from cdism_fast.models import SRModel, build
    >>> model = build("edsr_mini")
    >>> isinstance(model, SRModel), model.family, model.scale
    (True, 'edsr', 2)
    >>> model.with_structure(n_b=2, n_l=1, n_c=8).structure()  # a smaller untrained member, same options
    Structure(n_b=2, n_l=1, n_c=8)
    """

    family: ClassVar[str]
    presets: ClassVar[dict[str, Preset]] = {}
    checkpoint_formats: ClassVar[tuple[CheckpointFormat, ...]] = ()
    deep_feature_modules: ClassVar[tuple[str, ...]]
    #: The config() keys that from_structure sets from the knobs (and scale).
    structure_keys: ClassVar[tuple[str, ...]] = ("scale", "n_b", "n_l", "n_c")
    #: The architecture id spandrel gives the layout of :meth:`official_state_dict` ("Compact", "SwinIR"), or
    #: None where spandrel does not know the family (``tests/test_spandrel_export.py`` checks both).
    spandrel_architecture: ClassVar[Optional[str]] = None
    #: The submodule whose children are the deep-feature blocks a student inheriting from this model picks
    #: from (``--init inherit``; None: the family declares no inheritance, see ``inheritance_refusal``).
    block_module: ClassVar[Optional[str]] = None
    #: Why the students of this family cannot inherit their weights (when ``block_module`` is None).
    inheritance_refusal: ClassVar[str] = "the family declares no weight inheritance (block_module, inheritance)"
    scale: int

    @classmethod
    def from_structure(cls, n_b: int, n_l: int, n_c: int, scale: int = 2, **options) -> SRModel:
        raise NotImplementedError

    def config(self) -> dict:
        raise NotImplementedError

    def structure(self) -> Structure:
        """The knobs from the attributes ``n_b``, ``n_l`` and ``n_c``; a family that keeps them otherwise
        overrides it (SwinIR: ``depths``, ``embed_dim``)."""
        return Structure(self.n_b, self.n_l, self.n_c)

    def channel_multiple(self) -> int:
        raise NotImplementedError

    def inherited_options(self) -> dict:
        """The options ``from_structure`` takes besides the knobs: what a compressed student keeps."""
        return {k: v for k, v in self.config().items() if k not in self.structure_keys}

    def with_structure(self, n_b: int, n_l: int, n_c: int) -> SRModel:
        return type(self).from_structure(n_b, n_l, n_c, self.scale, **self.inherited_options())

    def deep_feature_parameters(self) -> Iterator[nn.Parameter]:
        for name in self.deep_feature_modules:
            yield from getattr(self, name).parameters()

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights in the layout of the family's published files (``.pth`` export writes it): by default
        the state dict, whose names are the official ones; a family whose files hold more (SwinIR: its index
        and mask buffers) adds it."""
        return dict(self.state_dict())

    def spandrel_mismatch(self) -> Optional[str]:
        """Why spandrel would not rebuild this very network from :meth:`official_state_dict` (an option it
        does not read from the tensors), or None; only asked of a family with a ``spandrel_architecture``."""
        return None
    def inheritance(self, student: SRModel, blocks: list[int]) -> Inheritance:
        """How ``student`` (a smaller member of this family, same options) takes its weights from this model,
        its block ``j`` from this model's block ``blocks[j]`` (0-based, ascending)."""
        raise NotImplementedError(f"{type(self).__name__}: {self.inheritance_refusal}")


#: Model families by name, in the order their modules were imported (see :func:`register_family`).
FAMILIES: dict[str, type[SRModel]] = {}
#: Every family's presets (named architectures), by name.
ARCHITECTURES: dict[str, Preset] = {}


def register_family(cls: type[SRModel]) -> type[SRModel]:
    """Class decorator entering a family in :data:`FAMILIES` and its presets in :data:`ARCHITECTURES`:
    importing the family's module is all it takes to make it known to every command.

    >>> from cdism_fast.models import EDSR, FAMILIES, register_family
    >>> register_family(EDSR) is EDSR and FAMILIES["edsr"] is EDSR  # registering the same class again is a no-op
    True
    """
    name = getattr(cls, "family", None)
    if not (isinstance(cls, type) and issubclass(cls, SRModel)) or not isinstance(name, str) or not name:
        raise TypeError(f"register_family takes an SRModel subclass with a family name, got {cls!r}")
    if not getattr(cls, "deep_feature_modules", None):
        raise TypeError(f"family {name!r} ({cls.__qualname__}) must declare its deep_feature_modules")
    previous = FAMILIES.get(name)
    if previous is not None and (previous.__module__, previous.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"family {name!r} is registered twice: {previous.__module__}.{previous.__qualname__} and "
                         f"{cls.__module__}.{cls.__qualname__}")
    for preset_name, preset in cls.presets.items():
        owner = ARCHITECTURES.get(preset_name)
        if owner is not None and owner.family != name:
            raise ValueError(f"preset {preset_name!r} of family {name!r} is already a preset of {owner.family!r}")
        if preset.family != name:
            raise ValueError(f"preset {preset_name!r} of family {name!r} says it is of family {preset.family!r}")
    FAMILIES[name] = cls
    ARCHITECTURES.update(cls.presets)
    return cls


def indices(state: dict, pattern: str) -> list[int]:
    """The sorted integers the first group of ``pattern`` matches among the keys of ``state``."""
    return sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})


def check_rgb_input(state: dict, key: str, source: str) -> int:
    """The output channels of the first conv ``key``, refusing a file whose input is not RGB."""
    weight = state[key]
    if weight.shape[1] != 3:
        raise CheckpointMismatch(f"checkpoint {source} has {weight.shape[1]} input channels; the models here "
                                 "are RGB (3)")
    return weight.shape[0]


def check_multiple(name: str, value: int, multiple: int, why: str) -> int:
    """``value`` (already a positive int), refused unless a multiple of ``multiple``."""
    if value % multiple:
        raise ValueError(f"{name} must be a multiple of {multiple} ({why}), got {value}")
    return value
