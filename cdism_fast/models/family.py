"""The model-family contract: what a family declares once, and all the package reads.

A family is a subclass of :class:`SRModel` (an ``nn.Module`` mapping RGB in [0, 1] to
RGB in [0, 1], ``scale`` times larger) listed in :data:`cdism_fast.models.FAMILIES`.
Its declaration is:

* ``family``: the registry name (``"edsr"``); ``model.pt`` stores it;
* ``config()``: every constructor argument, so ``cls(**model.config())`` rebuilds the same
  architecture (this is what ``model.pt`` keeps, options included);
* ``from_structure(n_c, n_l, n_b, scale, **options)``: a member from the three knobs of the
  compression rule, with the constructor's other options; knobs out of bounds raise a
  ``ValueError`` naming the knob and the allowed values;
* ``structure()`` (:class:`Structure`) and ``channel_multiple()``: the knobs of this model,
  and what the channel count must be a multiple of (the channel counts compression may pick);
* ``deep_feature_modules``: the names of the submodules that make the deep-feature module
  (the density is measured on it; ``prune --penalty deep`` penalises only it);
* ``presets``: named configurations (:class:`Preset`);
* ``checkpoint_formats``: the files it reads (:class:`CheckpointFormat`: detection from the
  key names, the key map to its own names, and the architecture read from the tensors).

``with_structure``, ``deep_feature_parameters`` and ``structure_options`` follow from these.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple, Optional, Protocol, runtime_checkable

from torch import nn

#: How many keys of each kind a checkpoint error lists.
LISTED_KEYS = 8


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

    >>> from cdism_fast.models import PRESETS
    >>> PRESETS["edsr_mini"].family, PRESETS["edsr_mini"].config
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

    ``detect(state)``: whether the key names are this layout's. ``to_native(state, source)``:
    (the state dict in the family's own names, own name → the file's name, constructor
    options the file tells). ``infer(native, source)``: the constructor arguments, ``scale``
    included, that the tensors' names and shapes describe (a ``KeyError`` names a missing
    key; :class:`CheckpointMismatch` anything else). ``signature``: keys that identify the
    layout, for error messages.

    >>> from cdism_fast.models import EDSR
    >>> [fmt.name for fmt in EDSR.checkpoint_formats]
    ['EDSR-PyTorch', 'BasicSR EDSR']
    """

    name: str
    signature: str
    detect: Callable[[dict], bool]
    infer: Callable[[dict, str, Optional[int]], dict]
    to_native: Callable[[dict, str], tuple[dict, dict, dict]] = (
        lambda state, source: (dict(state), {k: k for k in state}, {}))


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
    structural_options: ClassVar[tuple[str, ...]] = ("scale", "n_b", "n_l", "n_c")
    scale: int

    @classmethod
    def from_structure(cls, n_c: int, n_l: int, n_b: int, scale: int = 2, **options) -> SRModel:
        raise NotImplementedError

    def config(self) -> dict:
        raise NotImplementedError

    def structure(self) -> Structure:
        raise NotImplementedError

    def channel_multiple(self) -> int:
        raise NotImplementedError

    def structure_options(self) -> dict:
        """The options ``from_structure`` takes besides the knobs: what a compressed student keeps."""
        return {k: v for k, v in self.config().items() if k not in self.structural_options}

    def with_structure(self, n_b: int, n_l: int, n_c: int) -> SRModel:
        return type(self).from_structure(n_c, n_l, n_b, self.scale, **self.structure_options())

    def deep_feature_parameters(self) -> Iterator[nn.Parameter]:
        for name in self.deep_feature_modules:
            yield from getattr(self, name).parameters()


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
