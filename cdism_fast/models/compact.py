"""Real-ESRGAN's compact network, SRVGGNetCompact (Wang et al., "Real-ESRGAN: Training Real-World Blind
Super-Resolution with Pure Synthetic Data", ICCV-W 2021; its general-purpose and anime-video models): a
plain stack of 3x3 convolutions on the LR grid, upsampled by one pixel shuffle at the end.

* shallow features: a 3x3 conv from RGB to N_c channels and a PReLU (one slope per channel);
* deep features: N_b blocks of N_l (3x3 conv N_c → N_c, PReLU) pairs;
* reconstruction: a 3x3 conv to 3·scale² channels and a pixel shuffle; the input, upsampled by
  nearest neighbour, is added (the network learns the residual).

Every layer sits in one flat sequence named ``body``, as in the published files: ``body.0`` the first
conv, ``body.1`` its PReLU, ``body.2k`` and ``body.2k+1`` the conv and PReLU of the k-th pair, and
``body.{2P+2}`` the last conv, P = N_b·N_l pairs. So the state dict of a model here is the layout
Real-ESRGAN publishes (``realesr-general-x4v3.pth``: N_c 64, 32 pairs; under ``params``) and the one
spandrel, the model loader of chaiNNer and ComfyUI, detects as its "Compact" architecture.

N_l: the published networks have one conv per block (N_l = 1: N_b is the number of pairs). A member
with N_l > 1 is the same plain stack with N_b·N_l pairs; a file does not tell how its pairs were
grouped, so a file always loads as N_b = its number of pairs, N_l = 1. Bounds: N_b, N_l, N_c >= 1,
scale >= 2 (any integer: one pixel shuffle does it). Input and output are RGB in [0, 1] (no mean shift).
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .common import check_positive_int, check_rgb, construct
from .family import CheckpointFormat, CheckpointMismatch, Preset, SRModel, check_rgb_input, indices, register_family

#: What N_c is kept a multiple of when compressing: friendly to 8-wide vector units.
COMPACT_CHANNEL_MULTIPLE = 8


def _infer_compact(state: dict, source: str, scale=None) -> dict:
    """N_c from the first conv, the pairs from the index of the last conv (``body.{2P+2}``), the scale from
    its 3·scale² output channels; a file is read as N_l = 1."""
    channels = check_rgb_input(state, "body.0.weight", source)
    layers = indices(state, r"body\.(\d+)\.weight$")
    last = layers[-1]
    if last % 2 or last < 4:
        raise CheckpointMismatch(f"checkpoint {source} (Real-ESRGAN Compact) ends with body.{last}: a compact "
                                 "network ends with its last conv at an even index after at least one conv and "
                                 "PReLU pair (body.2, body.3)")
    outputs = state[f"body.{last}.weight"].shape[0]
    file_scale = math.isqrt(outputs // 3)
    if outputs != 3 * file_scale * file_scale or file_scale < 2:
        raise CheckpointMismatch(f"checkpoint {source} (Real-ESRGAN Compact): its last conv body.{last} gives "
                                 f"{outputs} channels, not 3·scale² for an RGB ×2 or more model")
    return dict(scale=file_scale, n_c=channels, n_b=(last - 2) // 2, n_l=1)


@register_family
class Compact(SRModel):
    """SRVGGNetCompact with N_c channels and N_b blocks of N_l conv + PReLU pairs, ×``scale``.

    >>> import torch
    >>> from cdism_fast.models import Compact, count_params
    >>> model = Compact(scale=4, n_c=8, n_b=2).eval()
    >>> count_params(model)  # 3 convs to 8 channels with their PReLUs, the last conv to 3·4² channels
    4920
    >>> tuple(model(torch.rand(1, 3, 5, 7)).shape)
    (1, 3, 20, 28)
    >>> [name for name, _ in model.named_parameters()][:4]  # Real-ESRGAN's and spandrel's names
    ['body.0.weight', 'body.0.bias', 'body.1.weight', 'body.2.weight']
    """

    family = "compact"
    presets = {
        "compact": Preset("compact", "Real-ESRGAN SRVGGNetCompact, general purpose (realesr-general-x4v3)",
                          dict(n_c=64, n_b=32, n_l=1)),
        # The compression rule's student of `compact` at d = 0.03 (as the paper's EDSRmini for EDSR_baseline).
        "compact_mini": Preset("compact", "compact student: the rule's structure from compact at d = 0.03",
                               dict(n_c=16, n_b=18, n_l=1)),
    }
    checkpoint_formats = (
        # Real-ESRGAN's files ({"params": state dict}, PReLU activations) and spandrel's layout: our own names.
        CheckpointFormat("Real-ESRGAN Compact", ("body.0.weight", "body.1.weight"), _infer_compact),
    )
    #: The conv + PReLU pairs body.2 .. body.{2P+1} of the flat ``body`` (see :meth:`deep_feature_parameters`).
    deep_feature_modules = ("body",)
    spandrel_architecture = "Compact"

    def __init__(self, scale: int = 2, n_c: int = 64, n_b: int = 32, n_l: int = 1):
        super().__init__()
        self.scale = check_positive_int("scale", scale, 2)
        self.n_c = check_positive_int("n_c", n_c)
        self.n_b = check_positive_int("n_b", n_b)
        self.n_l = check_positive_int("n_l", n_l)
        layers = [nn.Conv2d(3, n_c, 3, padding=1), nn.PReLU(n_c)]
        for _ in range(n_b * n_l):
            layers += [nn.Conv2d(n_c, n_c, 3, padding=1), nn.PReLU(n_c)]
        layers.append(nn.Conv2d(n_c, 3 * scale * scale, 3, padding=1))
        self.body = nn.Sequential(*layers)

    @classmethod
    def from_structure(cls, n_b: int, n_l: int, n_c: int, scale: int = 2, **options) -> Compact:
        """Compact with N_c channels and N_b·N_l conv + PReLU pairs (N_b blocks of N_l); no other options."""
        return construct(cls, "from_structure", options, scale=scale, n_c=n_c, n_l=n_l, n_b=n_b)

    def config(self) -> dict:
        return dict(scale=self.scale, n_c=self.n_c, n_b=self.n_b, n_l=self.n_l)

    def channel_multiple(self) -> int:
        return COMPACT_CHANNEL_MULTIPLE

    def deep_feature_parameters(self) -> Iterator[nn.Parameter]:
        """The pairs between the shallow features (``body.0``, ``body.1``) and the reconstruction (the last conv)."""
        for layer in self.body[2:-1]:
            yield from layer.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_rgb(x)
        residual = F.pixel_shuffle(self.body(x), self.scale)
        return residual + F.interpolate(x, scale_factor=self.scale, mode="nearest")

    def extra_repr(self) -> str:
        return f"scale={self.scale}, n_c={self.n_c}, n_b={self.n_b}, n_l={self.n_l}"
