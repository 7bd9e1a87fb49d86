"""EDSR (Lim et al. 2017): head conv, N_b residual blocks, a conv after the body, pixel-shuffle
upsampler, tail conv.

Each residual block is N_l + 1 3x3 convolutions with a ReLU between consecutive
ones, scaled by ``res_scale`` and added to the block's input (EDSR's block is
N_l = 1). Parameter names follow BasicSR's ``EDSR`` (``conv_first``,
``body.i.conv1`` ..., ``conv_after_body``, ``upsample.0``, ``conv_last``), with
``conv3``, ``conv4`` ... for N_l > 1.

Input and output are RGB in [0, 1]. Inside, the DIV2K mean is subtracted and the
values are multiplied by ``rgb_range`` (255 as EDSR-PyTorch and BasicSR train
it, which works on 0-255 values): ``(x − mean)·255`` is exactly what EDSR-PyTorch's
``sub_mean`` computes on a 0-255 image, so official weights give the official
outputs divided by 255.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .common import (
    DIV2K_RGB_MEAN,
    MeanShift,
    check_positive_float,
    check_positive_int,
    check_rgb,
    check_rgb_mean,
    check_shuffle_scale,
    construct,
    shuffle_upsampler,
    upsampler_scale,
)
from .family import (
    CheckpointFormat,
    CheckpointMismatch,
    Inheritance,
    Part,
    Preset,
    SRModel,
    check_rgb_input,
    conv_slices,
    indices,
    kept_layers,
    register_family,
)

#: What N_c is kept a multiple of when compressing: friendly to 8-wide vector units.
EDSR_CHANNEL_MULTIPLE = 8


class ResidualBlock(nn.Module):
    """x + res_scale · conv(relu(conv(... relu(conv(x))))) with ``depth`` convolutions."""

    def __init__(self, channels: int, depth: int, res_scale: float):
        super().__init__()
        self.depth = depth
        self.res_scale = res_scale
        for i in range(depth):
            self.add_module(f"conv{i + 1}", nn.Conv2d(channels, channels, 3, padding=1))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        for i in range(2, self.depth + 1):
            y = getattr(self, f"conv{i}")(self.relu(y))
        return x + y * self.res_scale


_EDSR_PYTORCH_BODY = re.compile(r"body\.(\d+)\.body\.(\d+)\.(weight|bias)$")
_EDSR_PYTORCH_AFTER_BODY = re.compile(r"body\.(\d+)\.(weight|bias)$")


def _from_edsr_pytorch(state: dict, source: str):
    """EDSR-PyTorch's names to ours: ``head.0`` → ``conv_first``, ``body.i.body.2j`` → ``body.i.conv{j+1}``,
    ``body.N_b`` → ``conv_after_body``, ``tail.0`` → ``upsample``, ``tail.1`` → ``conv_last``; the
    mean shifts give ``rgb_range``."""
    blocks = {int(m.group(1)) for k in state if (m := _EDSR_PYTORCH_BODY.match(k))}
    after_body = {int(m.group(1)) for k in state if (m := _EDSR_PYTORCH_AFTER_BODY.match(k))}
    native, original = {}, {}
    for key, tensor in state.items():
        if key.startswith(("sub_mean.", "add_mean.")):
            continue
        if m := _EDSR_PYTORCH_BODY.match(key):
            # EDSR-PyTorch's block is conv, ReLU, conv, ...: sequential index 2j is conv j + 1.
            block, index, kind = int(m.group(1)), int(m.group(2)), m.group(3)
            new = f"body.{block}.conv{index // 2 + 1}.{kind}" if index % 2 == 0 else key
        elif (m := _EDSR_PYTORCH_AFTER_BODY.match(key)) and int(m.group(1)) not in blocks:
            new = f"conv_after_body.{m.group(2)}"
        else:
            new = (key.replace("head.0.", "conv_first.", 1) if key.startswith("head.0.")
                   else key.replace("tail.0.", "upsample.", 1) if key.startswith("tail.0.")
                   else key.replace("tail.1.", "conv_last.", 1) if key.startswith("tail.1.") else key)
        native[new] = tensor
        original[new] = key
    if len(after_body) > 1:
        raise CheckpointMismatch(f"checkpoint {source} (EDSR-PyTorch) has several convs after the residual "
                                 f"blocks: body.{sorted(after_body)}")
    return native, original, {"rgb_range": _edsr_pytorch_range(state, source)}


def _edsr_pytorch_range(state: dict, source: str) -> float:
    """rgb_range from the mean shifts: weight = identity (std 1), bias = ±range·DIV2K mean."""
    for key in ("sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias"):
        if key not in state:
            raise CheckpointMismatch(f"checkpoint {source} (EDSR-PyTorch) lacks {key}")
    identity = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1)
    mean = torch.tensor(DIV2K_RGB_MEAN, dtype=torch.float64)
    add, sub = state["add_mean.bias"].double(), state["sub_mean.bias"].double()
    value_range = float((add / mean).mean())
    consistent = (torch.allclose(state["sub_mean.weight"].double(), identity, atol=1e-6)
                  and torch.allclose(state["add_mean.weight"].double(), identity, atol=1e-6)
                  and torch.allclose(add, value_range * mean, rtol=1e-4) and torch.allclose(sub, -add, rtol=1e-6))
    if not consistent or not value_range > 0:
        raise CheckpointMismatch(f"checkpoint {source} (EDSR-PyTorch): the mean shifts must subtract and add "
                                 f"range·{DIV2K_RGB_MEAN} with unit std; got sub_mean.bias={sub.tolist()}, "
                                 f"add_mean.bias={add.tolist()}")
    return round(value_range, 4)


def _infer_edsr(state: dict, source: str, scale=None) -> dict:
    channels = check_rgb_input(state, "conv_first.weight", source)
    upsample_convs = [state[f"upsample.{i}.weight"].shape[0] for i in indices(state, r"upsample\.(\d+)\.weight$")]
    scale = upsampler_scale(upsample_convs, channels)
    if scale is None:
        raise CheckpointMismatch(f"checkpoint {source}: the upsampler convs' output channels {upsample_convs} "
                                 f"are not a ×2^n or ×3 pixel-shuffle upsampler of {channels} channels")
    blocks = indices(state, r"body\.(\d+)\.conv1\.weight$")
    if not blocks:
        raise KeyError("body.0.conv1.weight")
    depth = len(indices(state, r"body\.0\.conv(\d+)\.weight$"))
    return dict(scale=scale, n_c=channels, n_b=len(blocks), n_l=depth - 1)


@register_family
class EDSR(SRModel):
    """EDSR with N_c channels, N_b residual blocks of N_l + 1 convolutions, ×``scale`` (2^n or 3).

    >>> import torch
    >>> from cdism_fast.models import EDSR, count_params
    >>> model = EDSR(scale=2, n_c=16, n_b=2).eval()
    >>> count_params(model)
    21763
    >>> tuple(model(torch.rand(1, 3, 6, 6)).shape)
    (1, 3, 12, 12)
    """

    family = "edsr"
    presets = {
        "edsr": Preset("edsr", "EDSR (Lim et al. 2017)", dict(n_c=256, n_b=32, n_l=1, res_scale=0.1)),
        "edsr_baseline": Preset("edsr", "EDSR baseline", dict(n_c=64, n_b=16, n_l=1, res_scale=1.0)),
        # The compression rule gives N_b = 9 from edsr_baseline at d = 0.03; the paper chose 8.
        "edsr_mini": Preset("edsr", "the paper's EDSRmini", dict(n_c=16, n_b=8, n_l=1, res_scale=1.0)),
    }
    checkpoint_formats = (
        # A plain state dict: sub_mean/add_mean (1x1 convs adding ∓range·mean), head.0, body.i.body.0/.2,
        # body.N_b (the conv after the blocks), tail.0.k (upsampler), tail.1 (last conv).
        CheckpointFormat("EDSR-PyTorch", ("head.0.weight",), _infer_edsr, _from_edsr_pytorch),
        # BasicSR: our own names; the mean and img_range (255) are in its code, not in the file.
        CheckpointFormat("BasicSR EDSR", ("conv_first.weight", "body.<i>.conv1.weight"), _infer_edsr),
    )
    deep_feature_modules = ("body", "conv_after_body")  # EDSR-PyTorch's ``body``
    structure_keys = ("scale", "n_c", "n_b", "n_l")
    block_module = "body"

    def __init__(self, scale: int = 2, n_c: int = 64, n_b: int = 16, n_l: int = 1, res_scale: float = 1.0,
                 rgb_range: float = 255.0, rgb_mean=DIV2K_RGB_MEAN):
        super().__init__()
        self.scale = check_shuffle_scale(scale, "EDSR")
        self.n_c = check_positive_int("n_c", n_c)
        self.n_b = check_positive_int("n_b", n_b)
        self.n_l = check_positive_int("n_l", n_l)
        self.res_scale = check_positive_float("res_scale", res_scale)
        self.rgb_mean = check_rgb_mean(rgb_mean)
        self.mean_shift = MeanShift(rgb_range, self.rgb_mean)
        self.conv_first = nn.Conv2d(3, n_c, 3, padding=1)
        self.body = nn.Sequential(*(ResidualBlock(n_c, n_l + 1, self.res_scale) for _ in range(n_b)))
        self.conv_after_body = nn.Conv2d(n_c, n_c, 3, padding=1)
        self.upsample = shuffle_upsampler(n_c, scale)
        self.conv_last = nn.Conv2d(n_c, 3, 3, padding=1)

    @property
    def rgb_range(self) -> float:
        return self.mean_shift.value_range

    @classmethod
    def from_structure(cls, n_b: int, n_l: int, n_c: int, scale: int = 2, **options) -> EDSR:
        """EDSR with N_c channels, N_b blocks of N_l + 1 convolutions; ``options``: res_scale, rgb_range,
        rgb_mean."""
        return construct(cls, "from_structure", options, scale=scale, n_c=n_c, n_l=n_l, n_b=n_b)

    def config(self) -> dict:
        """The constructor's arguments: ``EDSR(**model.config())`` builds the same architecture."""
        return dict(scale=self.scale, n_c=self.n_c, n_b=self.n_b, n_l=self.n_l, res_scale=self.res_scale,
                    rgb_range=self.rgb_range, rgb_mean=self.rgb_mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_rgb(x)
        features = self.conv_first(self.mean_shift.subtract(x))
        features = self.conv_after_body(self.body(features)) + features
        return self.mean_shift.add(self.conv_last(self.upsample(features)))

    def channel_multiple(self) -> int:
        return EDSR_CHANNEL_MULTIPLE

    def inheritance(self, student: EDSR, blocks: list[int]) -> Inheritance:
        """One channel space for the residual stream (head, every block's input and output, the conv after
        the body, the upsampler's input and, four entries per channel at x2, its shuffled output) and one per
        kept inner convolution; a student block takes its first convolutions and the last of the teacher's."""
        stream = (Part("features"),)
        sizes = (self.n_c, student.n_c)
        spaces, weights = {"features": sizes}, conv_slices("conv_first", "conv_first", stream, None)
        layers = kept_layers(student.n_l + 1, self.n_l + 1)
        for j, b in enumerate(blocks):
            for i, t in enumerate(layers, start=1):
                inner = f"body.{b}.conv{t}"
                out = stream if i == len(layers) else (Part(inner),)
                inp = stream if t == 1 else (Part(f"body.{b}.conv{t - 1}"),)
                for part in (*out, *inp):
                    spaces.setdefault(part.space, sizes)
                weights.update(conv_slices(f"body.{j}.conv{i}", inner, out, inp))
        weights.update(conv_slices("conv_after_body", "conv_after_body", stream, stream))
        for index in range(0, len(self.upsample), 2):  # conv, shuffle, conv, shuffle, ...
            factor = self.upsample[index + 1].upscale_factor
            name = f"upsample.{index}"
            weights.update(conv_slices(name, name, (Part("features", group=factor * factor),), stream))
        weights.update(conv_slices("conv_last", "conv_last", None, stream))
        return Inheritance(spaces, weights)

    def extra_repr(self) -> str:
        return (f"scale={self.scale}, n_c={self.n_c}, n_b={self.n_b}, n_l={self.n_l}, res_scale={self.res_scale}, "
                f"rgb_range={self.rgb_range:g}")
