"""CARN (Ahn, Kang and Sohn, "Fast, Accurate, and Lightweight Super-Resolution with Cascading Residual
Network", ECCV 2018) and its mobile variant CARN-M.

The network: the DIV2K mean subtracted (RGB in [0, 1], range 1), a 3x3 conv ``entry`` to N_c
channels, N_b cascading blocks joined by the cascade below, an upsampler and a 3x3 conv ``exit`` to RGB,
the mean added back.

The cascade (of the whole network, and again inside each cascading block): with ``o_0 = c_0 = x``,
unit ``j`` gives ``c_j = cat(c_{j-1}, unit_j(o_{j-1}))`` and ``o_j = relu(1x1 conv(c_j))`` (a 1x1 conv
from (j + 1)·N_c channels back to N_c); the output is ``o_N``. The units of the network are the N_b
cascading blocks (``b1`` .. and their fusions ``c1`` ..); those of a cascading block its N_l residual
blocks (``b1.b1`` ..., fusions ``b1.c1`` ...):

* CARN: residual blocks ``relu(x + conv3(relu(conv3(x))))``, N_l of them per cascading block;
* CARN-M: efficient residual blocks ``relu(x + conv1(relu(gconv3(relu(gconv3(x))))))``, whose 3x3
  convs are group convolutions (``group`` groups, 4), and one of them per cascading block applied N_l
  times (``shared``: the recursive weight sharing of the paper; its parameters are ``b1.b1`` alone).

The upsampler: per ×2 step (one ×3 step at ×3) a 3x3 conv to r²·N_c channels (``group`` groups), a
ReLU and a pixel shuffle. The published models are N_c = 64, N_b = 3, N_l = 3: CARN with group 1 and
no sharing, CARN-M with efficient blocks, group 4 and sharing.

Parameter names are the official ones (``entry``, ``b1.b1.body.0``, ``b1.c1.body.0``, ``c1.body.0``,
``upsample.up.body.0``, ``exit``), so the released files load directly. The released files hold one
multi-scale model (the same body, an upsampler per scale: ``upsample.up2``, ``upsample.up3``,
``upsample.up4``); a model here is built for one scale and keeps that scale's upsampler only, so
reading such a file needs the scale (``--scale``; a scale the file lacks is refused naming those it
has). The mean shifts of the official files (1x1 convs of identity weight and ∓mean bias,
``sub_mean.shifter``/``add_mean.shifter``) become ``rgb_mean``; here the mean is a fixed buffer.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from .common import (
    DIV2K_RGB_MEAN,
    MeanShift,
    check_positive_int,
    check_rgb,
    check_rgb_mean,
    check_shuffle_scale,
    construct,
    upsampler_scale,
)
from .family import (
    CheckpointFormat,
    CheckpointMismatch,
    Preset,
    SRModel,
    check_multiple,
    check_rgb_input,
    indices,
    register_family,
)

#: The group count of CARN-M's group convolutions.
CARN_M_GROUPS = 4
#: The official files' keys of one scale's upsampler in a multi-scale file: ``upsample.up<scale>.<rest>``.
_MULTI_SCALE_KEY = re.compile(r"upsample\.up(\d+)\.(.+)$")
#: The official mean-shift convs, read into ``rgb_mean``.
_MEAN_SHIFTS = ("sub_mean.shifter.", "add_mean.shifter.")


class ResidualBlock(nn.Module):
    """CARN's residual block: relu(x + conv3(relu(conv3(x))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class EfficientResidualBlock(nn.Module):
    """CARN-M's efficient residual block: relu(x + conv1(relu(gconv3(relu(gconv3(x)))))), the 3x3 convs in
    ``group`` groups."""

    def __init__(self, channels: int, group: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=group), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1, groups=group), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class Fusion(nn.Module):
    """relu(1x1 conv(x)) from ``units + 1`` concatenated feature maps back to ``channels``."""

    def __init__(self, channels: int, units: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d((units + 1) * channels, channels, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def cascade(x: torch.Tensor, units, fusions) -> torch.Tensor:
    """The cascading connections: c_j = cat(c_{j-1}, unit_j(o_{j-1})), o_j = fusion_j(c_j), from o_0 = c_0 = x."""
    concatenated = output = x
    for unit, fusion in zip(units, fusions):
        concatenated = torch.cat([concatenated, unit(output)], dim=1)
        output = fusion(concatenated)
    return output


class CascadingBlock(nn.Module):
    """``depth`` residual blocks (one applied ``depth`` times when ``shared``) in the cascade, fusions c1.."""

    def __init__(self, channels: int, depth: int, efficient: bool, shared: bool, group: int):
        super().__init__()
        self.depth, self.shared = depth, shared
        for j in range(1 if shared else depth):
            self.add_module(f"b{j + 1}", EfficientResidualBlock(channels, group) if efficient
                            else ResidualBlock(channels))
        for j in range(depth):
            self.add_module(f"c{j + 1}", Fusion(channels, j + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        units = [getattr(self, "b1" if self.shared else f"b{j + 1}") for j in range(self.depth)]
        return cascade(x, units, [getattr(self, f"c{j + 1}") for j in range(self.depth)])


class UpsampleSteps(nn.Module):
    """Per ×2 step (one ×3 step at ×3): a 3x3 conv to r²·channels in ``group`` groups, ReLU, pixel shuffle r."""

    def __init__(self, channels: int, scale: int, group: int):
        super().__init__()
        factors = [3] if scale == 3 else [2] * (scale.bit_length() - 1)
        layers = []
        for factor in factors:
            layers += [nn.Conv2d(channels, factor * factor * channels, 3, padding=1, groups=group), nn.ReLU(),
                       nn.PixelShuffle(factor)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsampler(nn.Module):
    """The upsampler of one scale, as ``up`` (the official single-scale name ``upsample.up``)."""

    def __init__(self, channels: int, scale: int, group: int):
        super().__init__()
        self.up = UpsampleSteps(channels, scale, group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


def _scale_list(scales) -> str:
    """``2, 3 or 4``."""
    names = [str(s) for s in scales]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _select_scale(state: dict, source: str, scale=None) -> dict:
    """Of a multi-scale file (``upsample.up2``, ``upsample.up3`` ...), the state with the upsampler of
    ``scale`` alone, as ``upsample.up``; a single-scale state unchanged."""
    scales = sorted({int(m.group(1)) for k in state if (m := _MULTI_SCALE_KEY.match(k))})
    if not scales:
        return state
    held = ", ".join(f"×{s}" for s in scales)
    if scale is None:
        raise CheckpointMismatch(f"checkpoint {source} (CARN) is one model for {held} (an upsampler per scale): "
                                 f"pass --scale {_scale_list(scales)} (scale= in Python)")
    if scale not in scales:
        raise CheckpointMismatch(f"checkpoint {source} (CARN) has upsamplers for {held} only, not ×{scale}: "
                                 f"pass --scale {_scale_list(scales)}")
    selected = {}
    for key, tensor in state.items():
        m = _MULTI_SCALE_KEY.match(key)
        if m is None:
            selected[key] = tensor
        elif int(m.group(1)) == scale:
            selected[f"upsample.up.{m.group(2)}"] = tensor
    return selected


def _from_official(state: dict, source: str):
    """The official names are ours but for the mean shifts, which give ``rgb_mean``."""
    native = {k: v for k, v in state.items() if not k.startswith(_MEAN_SHIFTS)}
    options = {}
    if len(native) < len(state):
        options["rgb_mean"] = _official_mean(state, source)
    return native, {k: k for k in native}, options


def _official_mean(state: dict, source: str) -> tuple[float, float, float]:
    """The mean of the official mean shifts: identity weights, bias −mean in and +mean out."""
    keys = [prefix + kind for prefix in _MEAN_SHIFTS for kind in ("weight", "bias")]
    missing = [key for key in keys if key not in state]
    if missing:
        raise CheckpointMismatch(f"checkpoint {source} (CARN) has mean shifts without {', '.join(missing)}")
    identity = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1)
    sub, add = state["sub_mean.shifter.bias"].double(), state["add_mean.shifter.bias"].double()
    consistent = (state["sub_mean.shifter.weight"].shape == identity.shape
                  and state["add_mean.shifter.weight"].shape == identity.shape and add.shape == (3,)
                  and torch.allclose(state["sub_mean.shifter.weight"].double(), identity, atol=1e-6)
                  and torch.allclose(state["add_mean.shifter.weight"].double(), identity, atol=1e-6)
                  and torch.allclose(sub, -add, atol=1e-6))
    if not consistent:
        raise CheckpointMismatch(f"checkpoint {source} (CARN): the mean shifts must subtract and add one mean "
                                 f"with identity weights; got sub_mean.shifter.bias={sub.tolist()}, "
                                 f"add_mean.shifter.bias={add.tolist()}")
    return tuple(round(float(v), 6) for v in add)


def _infer_carn(state: dict, source: str, scale=None) -> dict:
    channels = check_rgb_input(state, "entry.weight", source)
    blocks = indices(state, r"b(\d+)\.c1\.body\.0\.weight$")
    if not blocks:
        raise KeyError("b1.c1.body.0.weight")
    depth = len(indices(state, r"b1\.c(\d+)\.body\.0\.weight$"))
    upsampler = [state[f"upsample.up.body.{i}.weight"] for i in indices(state, r"upsample\.up\.body\.(\d+)\.weight$")]
    if not upsampler:
        raise KeyError("upsample.up.body.0.weight")
    file_scale = upsampler_scale([w.shape[0] for w in upsampler], channels)
    if file_scale is None or channels % upsampler[0].shape[1]:
        raise CheckpointMismatch(f"checkpoint {source} (CARN): the upsampler convs' shapes "
                                 f"{[tuple(w.shape) for w in upsampler]} are not a ×2^n or ×3 upsampler of "
                                 f"{channels} channels")
    return dict(scale=file_scale, n_c=channels, n_b=len(blocks), n_l=depth, group=channels // upsampler[0].shape[1],
                efficient="b1.b1.body.4.weight" in state, shared="b1.b2.body.0.weight" not in state)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


@register_family
class CARN(SRModel):
    """CARN / CARN-M with N_c channels, N_b cascading blocks of N_l residual blocks, ×``scale`` (2^n or 3).

    The defaults are CARN-M's (``group`` 4, ``efficient``, ``shared``); ``build("carn")`` is the full CARN.

    >>> import torch
    >>> from cdism_fast.models import CARN, count_params
    >>> model = CARN(scale=3, n_c=8, n_b=2, n_l=3).eval()  # CARN-M's blocks: one shared block per cascade
    >>> [name for name, _ in model.b1.named_children()]
    ['b1', 'c1', 'c2', 'c3']
    >>> model.b1.b1.body[0].groups, count_params(model) < count_params(CARN(scale=3, n_c=8, n_b=2, n_l=3, shared=False))
    (4, True)
    >>> with torch.no_grad():
    ...     print(tuple(model(torch.rand(2, 3, 4, 5)).shape))
    (2, 3, 12, 15)
    """

    family = "carn"
    presets = {
        "carn_m": Preset("carn", "CARN-M (Ahn et al. 2018)", dict(n_c=64, n_b=3, n_l=3, group=CARN_M_GROUPS,
                                                                   efficient=True, shared=True)),
        "carn": Preset("carn", "CARN (Ahn et al. 2018)", dict(n_c=64, n_b=3, n_l=3, group=1, efficient=False,
                                                               shared=False)),
    }
    checkpoint_formats = (
        # The official files: entry, b<i>.b<j>/c<j>, c<i>, upsample.up (one scale) or upsample.up<s> (CARN-M and
        # CARN as released: x2, x3 and x4), exit, and the mean shifts sub_mean/add_mean.shifter.
        CheckpointFormat("CARN", ("entry.weight", "b<i>.c1.body.0.weight"), _infer_carn, _from_official,
                         select=_select_scale),
    )
    deep_feature_modules = ("cascade",)

    def __init__(self, scale: int = 2, n_c: int = 64, n_b: int = 3, n_l: int = 3, group: int = CARN_M_GROUPS,
                 efficient: bool = True, shared: bool = True, rgb_mean=DIV2K_RGB_MEAN):
        super().__init__()
        self.scale = check_shuffle_scale(scale, "CARN")
        self.group = check_positive_int("group", group)
        self.n_c = check_multiple("n_c", check_positive_int("n_c", n_c), self.group,
                                  f"the group convolutions split the channels into group = {self.group} groups")
        self.n_b = check_positive_int("n_b", n_b)
        self.n_l = check_positive_int("n_l", n_l)
        self.efficient = _check_bool("efficient", efficient)
        self.shared = _check_bool("shared", shared)
        self.rgb_mean = check_rgb_mean(rgb_mean)
        self.mean_shift = MeanShift(1.0, self.rgb_mean)
        self.entry = nn.Conv2d(3, n_c, 3, padding=1)
        for i in range(n_b):
            self.add_module(f"b{i + 1}", CascadingBlock(n_c, n_l, efficient, shared, group))
        for i in range(n_b):
            self.add_module(f"c{i + 1}", Fusion(n_c, i + 1))
        self.upsample = Upsampler(n_c, scale, group)
        self.exit = nn.Conv2d(n_c, 3, 3, padding=1)

    @property
    def cascade(self) -> nn.ModuleList:
        """The deep-feature module: the cascading blocks and the fusions between them (a view: the parameters
        are registered as ``b1``, ``c1`` ... as in the official files)."""
        return nn.ModuleList(getattr(self, f"{kind}{i + 1}") for i in range(self.n_b) for kind in ("b", "c"))

    @classmethod
    def from_structure(cls, n_b: int, n_l: int, n_c: int, scale: int = 2, **options) -> CARN:
        """CARN with N_c channels and N_b cascading blocks of N_l residual blocks; ``options``: group, efficient,
        shared, rgb_mean (default: CARN-M's)."""
        return construct(cls, "from_structure", options, scale=scale, n_c=n_c, n_l=n_l, n_b=n_b)

    def config(self) -> dict:
        return dict(scale=self.scale, n_c=self.n_c, n_b=self.n_b, n_l=self.n_l, group=self.group,
                    efficient=self.efficient, shared=self.shared, rgb_mean=self.rgb_mean)

    def channel_multiple(self) -> int:
        return self.group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_rgb(x)
        features = self.entry(self.mean_shift.subtract(x))
        features = cascade(features, [getattr(self, f"b{i + 1}") for i in range(self.n_b)],
                           [getattr(self, f"c{i + 1}") for i in range(self.n_b)])
        return self.mean_shift.add(self.exit(self.upsample(features)))

    def extra_repr(self) -> str:
        return (f"scale={self.scale}, n_c={self.n_c}, n_b={self.n_b}, n_l={self.n_l}, group={self.group}, "
                f"efficient={self.efficient}, shared={self.shared}")
