"""The paper's compression rule: from a teacher and a density d, the compact student's structure.

A block-stacked SR network is described by three numbers, :class:`Structure`
(N_b blocks, N_l layers per block, N_c channels). Its deep-feature module holds
about N_b·(N_l + 1)·N_c² weights (each block has N_l + 1 weight layers of
N_c² weights: N_l layers plus the block's closing convolution for SwinIR, the
N_l + 1 convolutions of a residual block for EDSR). Shrinking the three numbers
so that this count falls by the factor d (eq. 5), spread evenly over the depth
factors with r = d^(1/6) (eq. 6), gives

* N̂_b = max(1, round(N_b·r)),
* N̂_l + 1 = max(2, round((N_l + 1)·r)),
* N̂_c = N_c·sqrt(d·N_b·(N_l + 1) / (N̂_b·(N̂_l + 1))), rounded to a positive
  multiple of the model's :meth:`channel_multiple` (eq. 7).

The paper prints a cube root in eq. (7), but its Table (SwinIRmini 24/4/3 from
SwinIR lightweight at d ≈ 0.089; EDSRmini 16/1/8 from EDSR_baseline at d ≈ 0.03)
only follows with the square root that eq. (5) implies (N_c enters the weight
count squared): with the cube root SwinIR lightweight would keep 30 channels, not 24,
and EDSR_baseline 24, not 16.
EDSR_baseline at d = 0.03 gives N̂_b = 9 by the rule; the paper chose 8 for
EDSRmini, which the ``edsr_mini`` preset of :mod:`cdism_fast.models` keeps.

``round`` is round-half-up (never Python's round-half-to-even), so the rule
does not depend on the parity of a tie.

Eq. (2)'s count N_b·(N_l + 1)·N_c² only holds for plain stacks (the paper: other blocks
"need to be analysed case by case"). So by default (``channels="count"``) N̂_b and N̂_l
come from eq. (6) and N̂_c is chosen, among the channel counts the family allows (positive
multiples of :meth:`channel_multiple`), as the one whose deep-feature module, built by
the family's own constructor on meta tensors, has the number of weights closest to
d·P_DF (P_DF: the teacher's). Weights are the tensors of two or more dimensions, the ones
the pruning stage's density d is measured on. ``channels="eq7"`` keeps eq. (7) itself.
For EDSR_baseline at d = 0.03 and SwinIR lightweight at d = 0.089 both give the paper's
numbers.

A student of another family than the teacher's (or of a teacher of no family, such as a spandrel
file) cannot take N_b, N_l and N_c from the teacher: :func:`closest_structure` gives a family the
structure whose size is closest to a target (d times the teacher's weights, or a parameter count), by
the same rule applied to a reference of the student's family (see its docs).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .models.common import check_positive_int
from .models.family import Compressible, Structure

ROUNDINGS = ("nearest", "down", "up")
#: How N̂_c is chosen: the exact weight count of the deep-feature module, or eq. (7).
CHANNEL_RULES = ("count", "eq7")


def deep_feature_weights(model) -> int:
    """Entries of the deep-feature module's weight tensors (two or more dimensions), the P_DF
    the density is measured on."""
    return sum(p.numel() for p in model.deep_feature_parameters() if p.dim() >= 2)


def weight_count(model: nn.Module) -> int:
    """Entries of every weight tensor (two or more dimensions) of the whole model: the size that a model of
    one family and a model of another (or of no family) are compared by."""
    return sum(p.numel() for p in model.parameters() if p.dim() >= 2)


def parameter_count(model: nn.Module) -> int:
    """Every parameter of the whole model (biases included): what ``--params`` names."""
    return sum(p.numel() for p in model.parameters())


#: What :func:`closest_structure` matches: the deep-feature module's weights (the density rule's P_DF),
#: the whole model's weights, or its parameters.
MEASURES = {"deep": deep_feature_weights, "weights": weight_count, "params": parameter_count}


def _candidate_weights(model, structure: Structure, measure=deep_feature_weights) -> int:
    with torch.device("meta"):  # no memory, no initialisation cost worth speaking of
        return measure(model.with_structure(*structure))


#: How many multiples a walk looks past channel counts the family refuses (e.g. not a multiple of the heads).
REFUSED_CHANNELS_SKIPPED = 256


def _closest_channels(model, n_b: int, n_l: int, start: int, multiple: int, target: float, rounding: str,
                      measure=deep_feature_weights) -> int:
    """The allowed N_c whose count is closest to ``target`` ("nearest"; a tie goes to fewer
    channels), the largest at most ``target`` ("down"), or the smallest at least ``target``
    ("up"). Allowed: positive multiples of ``multiple`` that the family's constructor accepts.
    Counts grow with N_c, so a walk from ``start`` to the best neighbour finds it."""
    counts: dict[int, Optional[int]] = {}

    def count(channels: int) -> Optional[int]:
        if channels not in counts:
            try:
                counts[channels] = _candidate_weights(model, Structure(n_b, n_l, channels), measure)
            except ValueError:  # a knob out of the family's bounds
                counts[channels] = None
        return counts[channels]

    def neighbour(channels: int, step: int) -> Optional[int]:
        for _ in range(REFUSED_CHANNELS_SKIPPED):
            channels += step * multiple
            if channels < multiple:
                return None
            if count(channels) is not None:
                return channels
        return None

    def better(a: Optional[int], b: int) -> bool:  # is a (a neighbour of b) the better choice?
        if a is None:
            return False
        if rounding == "down":
            return count(a) <= target if a > b else count(b) > target
        if rounding == "up":
            return count(a) >= target if a < b else count(b) < target
        gap_a, gap_b = abs(count(a) - target), abs(count(b) - target)
        return gap_a < gap_b or (gap_a == gap_b and a < b)

    channels = start
    if count(channels) is None:
        below, above = neighbour(channels, -1), neighbour(channels, 1)
        channels = below if above is None or (below is not None and start - below <= above - start) else above
        if channels is None:
            _candidate_weights(model, Structure(n_b, n_l, start), measure)  # raises the family's own error
    while better(neighbour(channels, -1), channels):
        channels = neighbour(channels, -1)
    while better(neighbour(channels, 1), channels):
        channels = neighbour(channels, 1)
    return channels


def achieved_density(teacher, student) -> float:
    """P_DF(student) / P_DF(teacher): the density the student's structure realises."""
    return deep_feature_weights(student) / deep_feature_weights(teacher)


def _check_model(model) -> None:
    if not isinstance(model, Compressible):
        missing = [name for name in ("structure", "with_structure", "deep_feature_parameters", "channel_multiple")
                   if not callable(getattr(model, name, None))]
        raise ValueError(f"model must implement the compression protocol (structure, with_structure, "
                         f"deep_feature_parameters, channel_multiple); a {type(model).__name__} lacks "
                         f"{', '.join(missing)}")


def _check_density(density) -> float:
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:  # NaN too
        raise ValueError(f"density must be a number in (0, 1], got {density!r}")
    return float(density)


def _round(value: float, rounding: str) -> int:
    if rounding == "nearest":
        return math.floor(value + 0.5)
    return math.floor(value) if rounding == "down" else math.ceil(value)


def compress_config(model, density: float, rounding: str = "nearest", channel_multiple: Optional[int] = None,
                    n_b: Optional[int] = None, n_l: Optional[int] = None, n_c: Optional[int] = None,
                    channels: str = "count") -> Structure:
    """The compact structure of ``model`` at ``density`` (eqs. 5-7 of the paper, N̂_c by exact
    count; see the module docs).

    ``rounding``: "nearest" (the paper's rule), "down" or "up", applied to the
    three counts (for N̂_c by count: the closest count, the largest count at most
    d·P_DF, the smallest at least d·P_DF). ``channel_multiple`` defaults to
    ``model.channel_multiple()``. ``n_b``, ``n_l``, ``n_c`` replace the rule's
    value; N̂_c is computed from the (possibly given) N̂_b and N̂_l, so the density
    is still met. ``channels``: "count" (default) or "eq7".
    """
    _check_model(model)
    density = _check_density(density)
    return _rule(model, density, density * deep_feature_weights(model), deep_feature_weights, rounding,
                 channel_multiple, n_b, n_l, n_c, channels)


def _rule(model, ratio: float, target: float, measure, rounding: str, channel_multiple, n_b, n_l, n_c,
          channels: str) -> Structure:
    """Eqs. (5)-(7) from ``model``'s structure at the size ratio ``ratio`` (> 1 grows it), N̂_c by the count
    ``measure`` closest to ``target`` (``channels="count"``) or by eq. (7)."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if channels not in CHANNEL_RULES:
        raise ValueError(f"channels must be one of {CHANNEL_RULES}, got {channels!r}")
    multiple = check_positive_int("channel_multiple",
                            model.channel_multiple() if channel_multiple is None else channel_multiple)
    teacher = model.structure()
    r = ratio ** (1 / 6)
    new_b = max(1, _round(teacher.n_b * r, rounding)) if n_b is None else check_positive_int("n_b", n_b)
    new_l = max(2, _round((teacher.n_l + 1) * r, rounding)) - 1 if n_l is None else check_positive_int("n_l", n_l)
    if n_c is not None:
        return Structure(new_b, new_l, check_positive_int("n_c", n_c))
    estimate = teacher.n_c * math.sqrt(ratio * teacher.n_b * (teacher.n_l + 1) / (new_b * (new_l + 1)))
    new_c = multiple * max(1, _round(estimate / multiple, rounding))
    if channels == "count":
        new_c = _closest_channels(model, new_b, new_l, new_c, multiple, target, rounding, measure)
    return Structure(new_b, new_l, new_c)


def _check_measure(measure: str):
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {tuple(MEASURES)}, got {measure!r}")
    return MEASURES[measure]


def _check_target(target) -> float:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target < math.inf:
        raise ValueError(f"the target size must be a positive number of weights or parameters, got {target!r}")
    return float(target)


def family_reference(family: str, target: float, scale: int = 2, measure: str = "weights") -> nn.Module:
    """The model of ``family`` that a student of size ``target`` is derived from: of the family's presets
    (at ×``scale``), the smallest whose ``measure`` is at least ``target``, else the largest (built on meta
    tensors: no memory)."""
    from .models import ARCHITECTURES, FAMILIES, build

    count = _check_measure(measure)
    target = _check_target(target)
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    with torch.device("meta"):
        presets = [build(name, scale=scale) for name, preset in ARCHITECTURES.items() if preset.family == family]
    if not presets:
        raise ValueError(f"family {family!r} has no preset to derive a student of a given size from; name the "
                         "student's structure instead (family:n_b,n_l,n_c)")
    presets.sort(key=count)
    return next((model for model in presets if count(model) >= target), presets[-1])


def closest_structure(family_or_model, target: float, measure: str = "weights", scale: int = 2,
                      rounding: str = "nearest", channel_multiple: Optional[int] = None, n_b: Optional[int] = None,
                      n_l: Optional[int] = None, n_c: Optional[int] = None, channels: str = "count") -> Structure:
    """The structure of a family whose size (``measure``: ``"weights"``, every weight tensor of the model;
    ``"params"``, every parameter; ``"deep"``, the deep-feature module's weights) is closest to ``target``.

    ``family_or_model``: a family name (the reference is :func:`family_reference`'s preset, at ×``scale``) or a
    model of the family (the reference itself, e.g. the teacher of a student of its own family). From the
    reference's (N_b, N_l, N_c) at the ratio q = target / size(reference), eq. (6) gives N̂_b = max(1,
    round(N_b·q^(1/6))) and N̂_l + 1 = max(2, round((N_l + 1)·q^(1/6))), and N̂_c is the allowed channel count
    whose model's size is closest to ``target`` (``channels="count"``; ``"eq7"``: eq. (7)). ``rounding``,
    ``channel_multiple``, ``n_b``, ``n_l`` and ``n_c`` are :func:`compress_config`'s. This is the density
    rule with the teacher's own structure replaced by a reference of the student's family: what eqs. (5)-(7)
    need of the teacher (N_b, N_l, N_c) exists only for a teacher of the student's family.
    """
    return _closest(_reference(family_or_model, target, scale, measure), target, measure, rounding=rounding,
                    channel_multiple=channel_multiple, n_b=n_b, n_l=n_l, n_c=n_c, channels=channels)


def _reference(family_or_model, target, scale: int, measure: str):
    if isinstance(family_or_model, str):
        return family_reference(family_or_model, target, scale, measure)
    _check_model(family_or_model)
    return family_or_model


def _closest(reference, target, measure: str, rounding: str = "nearest", channel_multiple=None, n_b=None, n_l=None,
             n_c=None, channels: str = "count") -> Structure:
    count = _check_measure(measure)
    target = _check_target(target)
    return _rule(reference, target / count(reference), target, count, rounding, channel_multiple, n_b, n_l, n_c,
                 channels)


def student_of_size(family_or_model, target: float, measure: str = "weights", scale: int = 2,
                    **overrides) -> nn.Module:
    """The untrained model of :func:`closest_structure` (on the CPU, float32), with the reference's options:
    its preset's for a family name, the model's own for a model."""
    reference = _reference(family_or_model, target, scale, measure)
    return reference.with_structure(*_closest(reference, target, measure, **overrides))


def compact_model(teacher, density: float, **overrides) -> nn.Module:
    """The untrained compact model of ``teacher``'s family at ``density``.

    ``overrides`` are :func:`compress_config`'s keywords (rounding,
    channel_multiple, n_b, n_l, n_c, channels). The student has the teacher's options
    (scale, upsampler, heads, window, ...) and its parameters on the teacher's
    device and dtype.
    """
    structure = compress_config(teacher, density, **overrides)
    student = teacher.with_structure(*structure)
    reference = next(iter(teacher.parameters()), None) if isinstance(teacher, nn.Module) else None
    if isinstance(reference, torch.Tensor):
        student = student.to(device=reference.device, dtype=reference.dtype)
    return student
