"""IMDN (Hui et al., "Lightweight Image Super-Resolution with Information Multi-distillation
Network", ACM MM 2019): a 3x3 conv, N_b information multi-distillation blocks (IMDB), a 1x1
fusion of every block's output, a 3x3 conv with a global skip, and one conv + pixel shuffle.

An IMDB splits its features progressively: each of its first N_l − 1 3x3 convolutions
(LeakyReLU 0.05) keeps a quarter of the channels ("distilled") and passes the other three
quarters to the next conv; the last conv gives only distilled channels. The distilled
pieces are concatenated, weighted by contrast-aware channel attention (per channel: the
standard deviation plus the mean over the image, a 1x1 bottleneck of 1/16, ReLU, 1x1,
sigmoid), fused back to N_c channels by a 1x1 conv and added to the block's input. The
published network is N_c = 64, N_b = 6, N_l = 4 (convs ``c1``..``c4`` and the fusion ``c5``).

Parameter names are the official ones (``fea_conv``, ``IMDB1.c1`` ..., ``IMDB1.cca.conv_du.0``,
``c.0``, ``LR_conv``, ``upsampler.0``), so the published files load directly (their
DataParallel ``module.`` prefix removed). Input and output are RGB in [0, 1], as the
official test feeds it (no mean shift).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import check_positive_int, check_rgb, construct
from .family import (
    CheckpointFormat,
    Inheritance,
    Part,
    Preset,
    SRModel,
    check_multiple,
    check_rgb_input,
    conv_slices,
    indices,
    kept_layers,
    register_family,
)

#: N_c must be a multiple of this: a quarter of the channels is distilled at every step.
IMDN_CHANNEL_MULTIPLE = 4
#: The channel attention's bottleneck divides its channels by this (at least one channel is kept).
ATTENTION_REDUCTION = 16
#: Negative slope of the official LeakyReLU.
LEAKY_SLOPE = 0.05


class ContrastChannelAttention(nn.Module):
    """x · sigmoid(1x1(relu(1x1(std(x) + mean(x))))), std and mean per channel over the image."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(1, channels // ATTENTION_REDUCTION)
        self.conv_du = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        variance = (x - mean).square().mean(dim=(2, 3), keepdim=True)
        # The population std. A constant channel (all of a pruned filter's weights zero) has variance 0,
        # where sqrt's gradient is infinite and makes the step NaN: the clamp gives it gradient 0 instead.
        std = variance.clamp_min(torch.finfo(variance.dtype).tiny).sqrt()
        return x * self.conv_du(std + mean)


class IMDB(nn.Module):
    """Information multi-distillation block with ``steps`` 3x3 convs (c1..c{steps}) and the 1x1 fusion."""

    def __init__(self, channels: int, steps: int):
        super().__init__()
        self.steps = steps
        self.distilled = channels // 4
        remaining = channels - self.distilled
        for i in range(steps):
            self.add_module(f"c{i + 1}", nn.Conv2d(channels if i == 0 else remaining,
                                                   self.distilled if i == steps - 1 else channels, 3, padding=1))
        self.cca = ContrastChannelAttention(self.distilled * steps)
        self.add_module(f"c{steps + 1}", nn.Conv2d(self.distilled * steps, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces, y = [], x
        for i in range(1, self.steps):
            y = F.leaky_relu(getattr(self, f"c{i}")(y), LEAKY_SLOPE)
            kept, y = torch.split(y, (self.distilled, y.shape[1] - self.distilled), dim=1)
            pieces.append(kept)
        pieces.append(getattr(self, f"c{self.steps}")(y))
        return getattr(self, f"c{self.steps + 1}")(self.cca(torch.cat(pieces, dim=1))) + x


def _infer_imdn(state: dict, source: str, scale=None) -> dict:
    channels = check_rgb_input(state, "fea_conv.weight", source)
    blocks = indices(state, r"IMDB(\d+)\.c1\.weight$")
    if not blocks:
        raise KeyError("IMDB1.c1.weight")
    steps = len(indices(state, r"IMDB1\.c(\d+)\.weight$")) - 1
    scale = round((state["upsampler.0.weight"].shape[0] // 3) ** 0.5)
    return dict(scale=scale, n_c=channels, n_b=len(blocks), n_l=steps)


@register_family
class IMDN(SRModel):
    """IMDN with N_c channels, N_b IMDBs of N_l progressive 3x3 convs, ×``scale`` (any integer >= 2).

    >>> import torch
    >>> from cdism_fast.models import IMDN
    >>> model = IMDN(scale=3, n_c=16, n_b=1).eval()
    >>> model.structure()
    Structure(n_b=1, n_l=4, n_c=16)
    >>> with torch.no_grad():
    ...     print(tuple(model(torch.rand(2, 3, 4, 5)).shape))
    (2, 3, 12, 15)
    """

    family = "imdn"
    presets = {"imdn": Preset("imdn", "IMDN (Hui et al. 2019)", dict(n_c=64, n_b=6, n_l=4))}
    checkpoint_formats = (
        CheckpointFormat("IMDN", ("fea_conv.weight", "IMDB<i>.c1.weight"), _infer_imdn),
    )
    #: The blocks, the fusion of their outputs and the conv before the global skip.
    deep_feature_modules = ("blocks", "c", "LR_conv")
    block_module = "blocks"

    def __init__(self, scale: int = 2, n_c: int = 64, n_b: int = 6, n_l: int = 4):
        super().__init__()
        self.scale = check_positive_int("scale", scale, 2)
        self.n_c = check_multiple("n_c", check_positive_int("n_c", n_c, IMDN_CHANNEL_MULTIPLE), IMDN_CHANNEL_MULTIPLE,
                                  "an IMDB distils a quarter of its channels")
        self.n_b = check_positive_int("n_b", n_b)
        self.n_l = check_positive_int("n_l", n_l)
        self.fea_conv = nn.Conv2d(3, n_c, 3, padding=1)
        for i in range(n_b):
            self.add_module(f"IMDB{i + 1}", IMDB(n_c, n_l))
        self.c = nn.Sequential(nn.Conv2d(n_c * n_b, n_c, 1), nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
        self.LR_conv = nn.Conv2d(n_c, n_c, 3, padding=1)
        self.upsampler = nn.Sequential(nn.Conv2d(n_c, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    @property
    def blocks(self) -> nn.ModuleList:
        """The IMDBs (a view: the parameters are registered as ``IMDB1`` ... as in the official files)."""
        return nn.ModuleList(getattr(self, f"IMDB{i + 1}") for i in range(self.n_b))

    @classmethod
    def from_structure(cls, n_b: int, n_l: int, n_c: int, scale: int = 2, **options) -> IMDN:
        """IMDN with N_c channels and N_b blocks of N_l progressive convs (no other options)."""
        return construct(cls, "from_structure", options, scale=scale, n_c=n_c, n_l=n_l, n_b=n_b)

    def config(self) -> dict:
        return dict(scale=self.scale, n_c=self.n_c, n_b=self.n_b, n_l=self.n_l)

    def channel_multiple(self) -> int:
        return IMDN_CHANNEL_MULTIPLE

    def inheritance(self, student: IMDN, blocks: list[int]) -> Inheritance:
        """One channel space for the features every block reads and adds to (``fea_conv``, the blocks, each
        block's slot in the fusion ``c``, ``LR_conv``, the upsampler's input); per kept block, the distilled
        and the remaining channels of each kept progressive conv and the channel attention's bottleneck. A
        student block takes the teacher block's first convs and its last (which gives distilled channels only)."""
        stream = (Part("features"),)
        spaces, weights = {"features": (self.n_c, student.n_c)}, conv_slices("fea_conv", "fea_conv", stream, None)
        steps, kept = self.n_l, kept_layers(student.n_l, self.n_l)
        distilled = (self.n_c // 4, student.n_c // 4)
        remaining = (self.n_c - distilled[0], student.n_c - distilled[1])
        attention = (max(1, distilled[0] * steps // ATTENTION_REDUCTION),
                     max(1, distilled[1] * student.n_l // ATTENTION_REDUCTION))
        for j, b in enumerate(blocks):
            teacher, name = f"IMDB{b + 1}", f"IMDB{j + 1}"
            for i, t in enumerate(kept, start=1):
                spaces[f"{teacher}.d{t}"] = distilled
                out = (Part(f"{teacher}.d{t}"),)
                if t < steps:
                    spaces[f"{teacher}.r{t}"] = remaining
                    out += (Part(f"{teacher}.r{t}"),)
                if t == 1:
                    inp = stream
                else:  # the teacher's conv t reads the remaining channels of its conv t - 1
                    spaces[f"{teacher}.r{t - 1}"] = (remaining[0], student.n_c if i == 1 else remaining[1])
                    inp = (Part(f"{teacher}.r{t - 1}"),)
                weights.update(conv_slices(f"{name}.c{i}", f"{teacher}.c{t}", out, inp))
            pieces = tuple(Part(f"{teacher}.d{t}") if t in kept else Part(None, distilled[0])
                           for t in range(1, steps + 1))
            spaces[f"{teacher}.attention"] = attention
            hidden = (Part(f"{teacher}.attention"),)
            weights.update(conv_slices(f"{name}.cca.conv_du.0", f"{teacher}.cca.conv_du.0", hidden, pieces))
            weights.update(conv_slices(f"{name}.cca.conv_du.2", f"{teacher}.cca.conv_du.2", pieces, hidden))
            weights.update(conv_slices(f"{name}.c{student.n_l + 1}", f"{teacher}.c{steps + 1}", stream, pieces))
        outputs = tuple(Part("features") if b in blocks else Part(None, self.n_c) for b in range(self.n_b))
        weights.update(conv_slices("c.0", "c.0", stream, outputs))
        weights.update(conv_slices("LR_conv", "LR_conv", stream, stream))
        weights.update(conv_slices("upsampler.0", "upsampler.0", None, stream))
        return Inheritance(spaces, weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_rgb(x)
        features = self.fea_conv(x)
        outputs, y = [], features
        for i in range(self.n_b):
            y = getattr(self, f"IMDB{i + 1}")(y)
            outputs.append(y)
        fused = self.LR_conv(self.c(torch.cat(outputs, dim=1))) + features
        return self.upsampler(fused)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, n_c={self.n_c}, n_b={self.n_b}, n_l={self.n_l}"
