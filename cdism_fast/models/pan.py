"""PAN (Zhao et al., "Efficient Image Super-Resolution Using Pixel Attention", ECCV-W 2020): a 3x3
conv, N_b self-calibrated pixel-attention blocks (SC-PA), a 3x3 conv with a skip, and U-PA
reconstruction: per ×2 step (one ×3 step at ×3), nearest upsampling, a conv to ``unf``
channels, pixel attention and a conv (each followed by LeakyReLU 0.2), then a last conv,
added to the bilinear upscaled input.

An SC-PA block splits N_c channels into two halves by 1x1 convs: one half goes through N_l
3x3 convs, the other through a pixel-attention conv (a 3x3 conv weighted by sigmoid(1x1
conv(x)), then another 3x3 conv); a 1x1 conv fuses the halves and the block's input is added.
Pixel attention (PA) is x · sigmoid(1x1 conv(x)). The published network is N_c = 40, N_b = 16,
N_l = 1, ``unf`` = 24 at ×2, ×3 and ×4.

Parameter names are the official ones (``conv_first``, ``SCPA_trunk.i.conv1_a``/``conv1_b``/
``k1.0``/``PAConv.k2``..``k4``/``conv3``, ``trunk_conv``, ``upconv1``, ``att1.conv``, ``HRconv1``,
``upconv2`` ... at ×4, ``conv_last``), so the published files load directly. Input and
output are RGB in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import check_positive_int, check_rgb, construct
from .family import (
    CheckpointFormat,
    CheckpointMismatch,
    Inheritance,
    Part,
    Preset,
    Slice,
    SRModel,
    check_multiple,
    check_rgb_input,
    conv_slices,
    indices,
    kept_layers,
    register_family,
)

#: Upscaling factors of the U-PA reconstruction: one ×2 or ×3 step, or two ×2 steps.
PAN_SCALES = (2, 3, 4)
#: N_c must be a multiple of this: an SC-PA block splits its channels in halves.
PAN_CHANNEL_MULTIPLE = 2
LEAKY_SLOPE = 0.2


class PixelAttention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x))


class PixelAttentionConv(nn.Module):
    """k4(k3(x) · sigmoid(k2(x))): a 3x3 conv weighted by a pixel-attention map, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.k2 = nn.Conv2d(channels, channels, 1)
        self.k3 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.k4 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.k4(self.k3(x) * torch.sigmoid(self.k2(x)))


class SCPA(nn.Module):
    """Self-calibrated block with pixel attention; the plain half has ``depth`` 3x3 convs."""

    def __init__(self, channels: int, depth: int):
        super().__init__()
        half = channels // 2
        self.conv1_a = nn.Conv2d(channels, half, 1, bias=False)
        self.conv1_b = nn.Conv2d(channels, half, 1, bias=False)
        layers = []
        for i in range(depth):  # official: one conv, k1.0; deeper stacks put a LeakyReLU between convs
            layers += ([nn.LeakyReLU(LEAKY_SLOPE)] if i else []) + [nn.Conv2d(half, half, 3, padding=1, bias=False)]
        self.k1 = nn.Sequential(*layers)
        self.PAConv = PixelAttentionConv(half)
        self.conv3 = nn.Conv2d(2 * half, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = F.leaky_relu(self.k1(F.leaky_relu(self.conv1_a(x), LEAKY_SLOPE)), LEAKY_SLOPE)
        attended = F.leaky_relu(self.PAConv(F.leaky_relu(self.conv1_b(x), LEAKY_SLOPE)), LEAKY_SLOPE)
        return self.conv3(torch.cat([plain, attended], dim=1)) + x


def _steps(scale: int) -> list[int]:
    return [2, 2] if scale == 4 else [scale]


def _infer_pan(state: dict, source: str, scale=None) -> dict:
    channels = check_rgb_input(state, "conv_first.weight", source)
    blocks = indices(state, r"SCPA_trunk\.(\d+)\.conv1_a\.weight$")
    if not blocks:
        raise KeyError("SCPA_trunk.0.conv1_a.weight")
    depth = len(indices(state, r"SCPA_trunk\.0\.k1\.(\d+)\.weight$"))
    if "upconv2.weight" in state:
        scale = 4
    elif scale is None:  # ×2 and ×3 files have the same tensors
        raise CheckpointMismatch(f"checkpoint {source} (PAN) does not tell ×2 from ×3 (the files have the same "
                                 "tensors): pass --scale 2 or 3 (scale= in Python)")
    return dict(scale=scale, n_c=channels, n_b=len(blocks), n_l=depth, unf=state["upconv1.weight"].shape[0])


@register_family
class PAN(SRModel):
    """PAN with N_c channels, N_b SC-PA blocks (N_l convs in the plain half), ``unf`` reconstruction channels.

    >>> import torch
    >>> from cdism_fast.models import PAN, count_params
    >>> count_params(PAN(scale=4, n_c=8, n_b=1, unf=8)) > count_params(PAN(scale=2, n_c=8, n_b=1, unf=8))
    True
    >>> tuple(PAN(scale=4, n_c=8, n_b=1, unf=8).eval()(torch.rand(1, 3, 3, 5)).shape)  # two U-PA steps
    (1, 3, 12, 20)
    """

    family = "pan"
    presets = {"pan": Preset("pan", "PAN (Zhao et al. 2020)", dict(n_c=40, n_b=16, n_l=1, unf=24))}
    checkpoint_formats = (
        CheckpointFormat("PAN", ("SCPA_trunk.0.conv1_a.weight",), _infer_pan),
    )
    deep_feature_modules = ("SCPA_trunk", "trunk_conv")
    block_module = "SCPA_trunk"

    def __init__(self, scale: int = 2, n_c: int = 40, n_b: int = 16, n_l: int = 1, unf: int = 24):
        super().__init__()
        if isinstance(scale, bool) or scale not in PAN_SCALES:
            raise ValueError(f"scale must be one of {PAN_SCALES} for PAN's U-PA reconstruction, got {scale!r}")
        self.scale = scale
        self.n_c = check_multiple("n_c", check_positive_int("n_c", n_c, PAN_CHANNEL_MULTIPLE), PAN_CHANNEL_MULTIPLE,
                                  "an SC-PA block splits its channels in halves")
        self.n_b = check_positive_int("n_b", n_b)
        self.n_l = check_positive_int("n_l", n_l)
        self.unf = check_positive_int("unf", unf)
        self.conv_first = nn.Conv2d(3, n_c, 3, padding=1)
        self.SCPA_trunk = nn.Sequential(*(SCPA(n_c, n_l) for _ in range(n_b)))
        self.trunk_conv = nn.Conv2d(n_c, n_c, 3, padding=1)
        for i, _ in enumerate(_steps(scale), start=1):
            self.add_module(f"upconv{i}", nn.Conv2d(n_c if i == 1 else unf, unf, 3, padding=1))
            self.add_module(f"att{i}", PixelAttention(unf))
            self.add_module(f"HRconv{i}", nn.Conv2d(unf, unf, 3, padding=1))
        self.conv_last = nn.Conv2d(unf, 3, 3, padding=1)

    @classmethod
    def from_structure(cls, n_b: int, n_l: int, n_c: int, scale: int = 2, **options) -> PAN:
        """PAN with N_c channels and N_b SC-PA blocks of N_l plain convs; ``options``: ``unf``."""
        return construct(cls, "from_structure", options, scale=scale, n_c=n_c, n_l=n_l, n_b=n_b)

    def config(self) -> dict:
        return dict(scale=self.scale, n_c=self.n_c, n_b=self.n_b, n_l=self.n_l, unf=self.unf)

    def channel_multiple(self) -> int:
        return PAN_CHANNEL_MULTIPLE

    def inheritance(self, student: PAN, blocks: list[int]) -> Inheritance:
        """One channel space for the features (``conv_first``, every SC-PA block's input and output,
        ``trunk_conv``, the first upsampling conv's input); per kept block, one per half-width feature map (the
        plain half after each kept conv, the attention half before and after ``PAConv``). The reconstruction
        keeps its ``unf`` channels (the student has the teacher's). A student block takes the first convs of
        the plain half and its last."""
        stream = (Part("features"),)
        halves = (self.n_c // 2, student.n_c // 2)
        spaces, weights = {"features": (self.n_c, student.n_c)}, conv_slices("conv_first", "conv_first", stream, None)
        kept = kept_layers(student.n_l, self.n_l)
        for j, b in enumerate(blocks):
            teacher, name = f"SCPA_trunk.{b}", f"SCPA_trunk.{j}"
            half = {}
            for label in ("b0", "pa", "b1", *(f"a{t}" for t in range(self.n_l + 1))):
                spaces[f"{teacher}.{label}"] = halves
                half[label] = (Part(f"{teacher}.{label}"),)
            # (student conv, teacher conv, output, input, bias); k1's convs sit at 0, 2, 4 ... (LeakyReLUs between)
            convs = [("conv1_a", "conv1_a", half["a0"], stream, False),
                     ("conv1_b", "conv1_b", half["b0"], stream, False),
                     *((f"k1.{2 * (i - 1)}", f"k1.{2 * (t - 1)}", half[f"a{t}"], half[f"a{t - 1}"], False)
                       for i, t in enumerate(kept, start=1)),
                     ("PAConv.k2", "PAConv.k2", half["pa"], half["b0"], True),
                     ("PAConv.k3", "PAConv.k3", half["pa"], half["b0"], False),
                     ("PAConv.k4", "PAConv.k4", half["b1"], half["pa"], False),
                     ("conv3", "conv3", stream, half[f"a{self.n_l}"] + half["b1"], False)]
            for mine, theirs, out, inp, bias in convs:
                weights.update(conv_slices(f"{name}.{mine}", f"{teacher}.{theirs}", out, inp, bias=bias))
        weights.update(conv_slices("trunk_conv", "trunk_conv", stream, stream))
        for name, parameter in self.named_parameters():  # the reconstruction, whole but for its first input
            if not name.startswith(("conv_first.", "SCPA_trunk.", "trunk_conv.")):
                weights[name] = Slice(name, (None, stream, None, None) if name == "upconv1.weight"
                                      else (None,) * parameter.dim())
        return Inheritance(spaces, weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_rgb(x)
        features = self.conv_first(x)
        y = features + self.trunk_conv(self.SCPA_trunk(features))
        for i, factor in enumerate(_steps(self.scale), start=1):
            y = getattr(self, f"upconv{i}")(F.interpolate(y, scale_factor=factor, mode="nearest"))
            y = F.leaky_relu(getattr(self, f"att{i}")(y), LEAKY_SLOPE)
            y = F.leaky_relu(getattr(self, f"HRconv{i}")(y), LEAKY_SLOPE)
        skip = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.conv_last(y) + skip

    def extra_repr(self) -> str:
        return f"scale={self.scale}, n_c={self.n_c}, n_b={self.n_b}, n_l={self.n_l}, unf={self.unf}"
