"""SwinIR (Liang et al. 2021) for super-resolution: shallow conv, N_b residual Swin transformer
blocks (RSTB, each N_l Swin layers and a 3x3 conv), a conv after the body, and reconstruction by
``pixelshuffle`` (classical SR: conv + LeakyReLU to 64 channels, 2^n/3 shuffles, conv) or
``pixelshuffledirect`` (lightweight SR: one conv to 3·scale² channels and one shuffle).

Parameter names are those of the official code (``conv_first``, ``patch_embed.norm``,
``layers.i.residual_group.blocks.j.attn.qkv`` ..., ``norm``, ``conv_after_body``,
``conv_before_upsample.0``, ``upsample.0``, ``conv_last``); the relative-position index and
the shifted-window masks are not parameters or buffers here: the attention op
(:func:`cdism_fast.ops.window_attention`) builds them from the window size and the token grid,
once per size.

Any input size works: the input is padded at the bottom and right by reflection to a
multiple of the window size (as BasicSR's SwinIR test does; the official SwinIR test script
mirrors by concatenating a flipped copy and pads even sizes that are already multiples,
which changes border pixels only), and the output is cropped back to ``scale·H × scale·W``.
Input and output are RGB in [0, 1]; inside, ``(x − DIV2K mean)·img_range`` as the official
model (img_range = 1 for the released SR models).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..ops import BACKEND_NAMES, relative_position_index, shift_window_mask, window_attention
from .common import (
    DIV2K_RGB_MEAN,
    MeanShift,
    check_positive_float,
    check_positive_int,
    check_rgb,
    check_rgb_mean,
    check_shuffle_scale,
    construct,
    reflect_pad_to_multiple,
    shuffle_upsampler,
    upsampler_scale,
)
from .family import (
    CheckpointFormat,
    CheckpointMismatch,
    Preset,
    SRModel,
    Structure,
    check_rgb_input,
    indices,
    register_family,
)

UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect")
ATTENTION_BACKENDS = ("auto",) + BACKEND_NAMES
#: Channels of the classical upsampler (the official ``num_feat``).
CLASSICAL_UPSAMPLE_CHANNELS = 64
#: Buffers of the official SwinIR files that are recomputed, never loaded.
RECOMPUTED_BUFFERS = ("relative_position_index", "attn_mask")
#: The training patch whose shifted-window masks :meth:`SwinIR.official_state_dict` writes, as the released
#: lightweight files hold them (``..._s64w8_SwinIR-S_x2.pth``): the official model and spandrel build their
#: masks for it (rounded up to a multiple of the window, at least two windows) and recompute them for other sizes.
OFFICIAL_PATCH_SIZE = 64
#: The window size of the official JPEG models, which spandrel takes to mean img_range 255 (else 1).
SPANDREL_RANGE_255_WINDOW = 7


def _check_backend(backend) -> str:
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    return backend


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws×ws windows with a learned relative-position bias table."""

    def __init__(self, dim: int, heads: int, window_size: int, qkv_bias: bool, backend: str):
        super().__init__()
        self.heads = heads
        self.window_size = window_size
        self.backend = backend
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, heads))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, windows: torch.Tensor, shift_size: int, hw: tuple[int, int]) -> torch.Tensor:
        count, tokens, dim = windows.shape
        q, k, v = self.qkv(windows).view(count, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        table, ws, scale = self.relative_position_bias_table, self.window_size, (dim // self.heads) ** -0.5
        out = window_attention(q, k, v, table, ws, shift_size, hw, scale, backend=self.backend)
        return self.proj(out.transpose(1, 2).reshape(count, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B·nW, ws², C), windows row-major per image."""
    b, h, w, c = x.shape
    return x.view(b, h // ws, ws, w // ws, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)


def _merge(windows: torch.Tensor, ws: int, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_partition`."""
    return windows.view(b, h // ws, w // ws, ws, ws, -1).transpose(2, 3).reshape(b, h, w, -1)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016) on a residual branch: in training, each sample's
    branch is dropped with probability ``rate`` and kept ones are scaled by 1 / (1 − rate), so
    the expectation is the branch itself; in eval it is the identity."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return branch
        keep = 1.0 - self.rate
        per_sample = (branch.shape[0],) + (1,) * (branch.ndim - 1)
        return branch * torch.empty(per_sample, dtype=branch.dtype, device=branch.device).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate:g}"


class SwinLayer(nn.Module):
    """Pre-norm (shifted-)window attention and pre-norm MLP, each with a residual connection
    (its branch under stochastic depth at ``drop_path``)."""

    def __init__(self, dim: int, heads: int, window_size: int, shift_size: int, mlp_ratio: float,
                 qkv_bias: bool, backend: str, drop_path: float = 0.0):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window_size, qkv_bias, backend)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, length, c = tokens.shape
        h, w = hw
        ws, shift = self.window_size, self.shift_size
        x = self.norm1(tokens).view(b, h, w, c)
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        x = _merge(self.attn(_partition(x, ws), shift, hw), ws, b, h, w)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        tokens = tokens + self.drop_path(x.reshape(b, length, c))
        return tokens + self.drop_path(self.mlp(self.norm2(tokens)))


class SwinLayers(nn.Module):
    """The official ``residual_group``: the Swin layers of one RSTB, shifted every other one;
    layer i's stochastic-depth rate is ``drop_paths[i]``."""

    def __init__(self, dim: int, heads: int, window_size: int, mlp_ratio: float, qkv_bias: bool,
                 backend: str, drop_paths: Sequence[float]):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinLayer(dim, heads, window_size, window_size // 2 if i % 2 else 0, mlp_ratio, qkv_bias, backend, rate)
            for i, rate in enumerate(drop_paths))

    def forward(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens, hw)
        return tokens


def _to_image(tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *hw)


def _to_tokens(image: torch.Tensor) -> torch.Tensor:
    return image.flatten(2).transpose(1, 2)


class RSTB(nn.Module):
    """Residual Swin transformer block: tokens + conv3x3(Swin layers(tokens))."""

    def __init__(self, dim: int, heads: int, window_size: int, mlp_ratio: float, qkv_bias: bool,
                 backend: str, drop_paths: Sequence[float]):
        super().__init__()
        self.residual_group = SwinLayers(dim, heads, window_size, mlp_ratio, qkv_bias, backend, drop_paths)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return _to_tokens(self.conv(_to_image(self.residual_group(tokens, hw), hw))) + tokens


class PatchEmbed(nn.Module):
    """Image to tokens (patch size 1), with the official optional LayerNorm ``patch_embed.norm``."""

    def __init__(self, dim: int, norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens = _to_tokens(image)
        return self.norm(tokens) if self.norm is not None else tokens


def _from_official(state: dict, source: str):
    """The official files use our names; their ``relative_position_index`` and ``attn_mask`` buffers
    are dropped (the attention op rebuilds them from the window size and the image size)."""
    native = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in RECOMPUTED_BUFFERS}
    return native, {k: k for k in native}, {}


def _infer_swinir(state: dict, source: str, scale=None) -> dict:
    channels = check_rgb_input(state, "conv_first.weight", source)
    upsample_convs = [state[f"upsample.{i}.weight"].shape[0] for i in indices(state, r"upsample\.(\d+)\.weight$")]
    layers = indices(state, r"layers\.(\d+)\.")
    if not layers:
        raise KeyError("layers.0.residual_group.blocks.0.attn.relative_position_bias_table")
    depths = [len(indices(state, rf"layers\.{i}\.residual_group\.blocks\.(\d+)\.")) for i in layers]
    tables = [state[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"] for i in layers]
    window = (math.isqrt(tables[0].shape[0]) + 1) // 2
    if "conv_before_upsample.0.weight" in state:
        upsampler = "pixelshuffle"
        scale = upsampler_scale(upsample_convs, state["conv_before_upsample.0.weight"].shape[0])
    elif upsample_convs and "conv_last.weight" not in state:
        upsampler = "pixelshuffledirect"
        scale = math.isqrt(upsample_convs[0] // 3)
    else:
        raise CheckpointMismatch(f"checkpoint {source} is a SwinIR without a pixelshuffle or pixelshuffledirect "
                                 "upsampler (denoising, JPEG or real-world SR models are not supported)")
    if scale is None or scale < 2:
        raise CheckpointMismatch(f"checkpoint {source}: the upsampler convs' output channels {upsample_convs} "
                                 f"give no ×2 or more {upsampler} upsampler")
    hidden = state["layers.0.residual_group.blocks.0.mlp.fc1.weight"].shape[0]
    mlp_ratio = hidden / channels
    if int(channels * mlp_ratio) != hidden:  # the model takes int(embed_dim·mlp_ratio) hidden channels
        mlp_ratio = math.nextafter(mlp_ratio, math.inf)
    return dict(scale=scale, embed_dim=channels, depths=tuple(depths), num_heads=tuple(t.shape[1] for t in tables),
                window_size=window, mlp_ratio=mlp_ratio, upsampler=upsampler,
                qkv_bias="layers.0.residual_group.blocks.0.attn.qkv.bias" in state,
                patch_norm="patch_embed.norm.weight" in state)


@register_family
class SwinIR(SRModel):
    """SwinIR for ×``scale`` super-resolution.

    ``embed_dim`` = N_c, ``depths`` = Swin layers per RSTB (N_b = len(depths), N_l =
    depths[i]), ``num_heads`` per RSTB (each must divide ``embed_dim``). Attention runs
    through :func:`cdism_fast.ops.window_attention` with ``attention_backend``
    ("auto" or a backend name; settable on the built model). ``drop_path_rate``: stochastic
    depth in training, rising linearly from 0 at the first Swin layer to this rate at the
    last (the official schedule and default).

    >>> import torch
    >>> from cdism_fast.models import SwinIR, count_params
    >>> model = SwinIR(scale=2, embed_dim=12, depths=(2,), num_heads=(2,), window_size=4).eval()
    >>> count_params(model)
    7072
    >>> tuple(model(torch.rand(1, 3, 6, 6)).shape)  # padded to the window inside, cropped back
    (1, 3, 12, 12)
    """

    family = "swinir"
    presets = {
        "swinir_classical": Preset("swinir", "SwinIR classical SR (SwinIR-M)", dict(
            embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6, window_size=8, mlp_ratio=2.0,
            upsampler="pixelshuffle")),
        "swinir_lightweight": Preset("swinir", "SwinIR lightweight SR (SwinIR-S, the paper's SwinIR_LW)", dict(
            embed_dim=60, depths=(6,) * 4, num_heads=(6,) * 4, window_size=8, mlp_ratio=2.0,
            upsampler="pixelshuffledirect")),
        "swinir_mini": Preset("swinir", "the paper's SwinIRmini", dict(
            embed_dim=24, depths=(4,) * 3, num_heads=(6,) * 3, window_size=8, mlp_ratio=2.0,
            upsampler="pixelshuffledirect")),
    }
    # Official SwinIR / KAIR / BasicSR files (plain or under params/params_ema): conv_first,
    # patch_embed.norm, layers.i.residual_group.blocks.j.(norm1|attn.relative_position_bias_table|attn.qkv|
    # attn.proj|norm2|mlp.fc1|mlp.fc2), layers.i.conv, norm, conv_after_body and conv_before_upsample.0/
    # upsample.k/conv_last (classical) or upsample.0 (lightweight): our own names.
    checkpoint_formats = (
        CheckpointFormat("SwinIR", ("*.residual_group.*",), _infer_swinir, _from_official),
    )
    #: The patch-embedding norm, the RSTBs, the final norm and the conv after the body.
    deep_feature_modules = ("patch_embed", "layers", "norm", "conv_after_body")
    structure_keys = ("scale", "embed_dim", "depths", "num_heads")
    spandrel_architecture = "SwinIR"
    inheritance_refusal = ("its LayerNorms normalise over every channel and its attention splits the channels "
                           "into heads, so a subset of a teacher's channels is not the function of a smaller "
                           "SwinIR")

    def __init__(self, scale: int = 2, embed_dim: int = 60, depths: Sequence[int] = (6, 6, 6, 6),
                 num_heads: Sequence[int] = (6, 6, 6, 6), window_size: int = 8, mlp_ratio: float = 2.0,
                 upsampler: str = "pixelshuffledirect", img_range: float = 1.0, qkv_bias: bool = True,
                 patch_norm: bool = True, rgb_mean=DIV2K_RGB_MEAN, attention_backend: str = "auto",
                 drop_path_rate: float = 0.1):
        super().__init__()
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {upsampler!r}")
        self.scale = (check_shuffle_scale(scale, upsampler) if upsampler == "pixelshuffle"
                      else check_positive_int("scale", scale, 2))
        self.embed_dim = check_positive_int("embed_dim", embed_dim)
        self.depths = tuple(depths) if isinstance(depths, (list, tuple)) else depths
        self.num_heads = tuple(num_heads) if isinstance(num_heads, (list, tuple)) else num_heads
        if not isinstance(self.depths, tuple) or not self.depths:
            raise ValueError(f"depths must be a non-empty list of ints (Swin layers per RSTB), got {depths!r}")
        for i, depth in enumerate(self.depths):
            check_positive_int(f"depths[{i}]", depth)
        if not isinstance(self.num_heads, tuple) or len(self.num_heads) != len(self.depths):
            raise ValueError(f"num_heads must be a list of {len(self.depths)} ints (one per RSTB, as depths), "
                             f"got {num_heads!r}")
        for i, heads in enumerate(self.num_heads):
            check_positive_int(f"num_heads[{i}]", heads)
            if embed_dim % heads:
                raise ValueError(f"embed_dim must be divisible by every num_heads entry, got embed_dim={embed_dim} "
                                 f"and num_heads[{i}]={heads}")
        self.window_size = check_positive_int("window_size", window_size)
        self.mlp_ratio = check_positive_float("mlp_ratio", mlp_ratio)
        if int(embed_dim * mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio must give at least one hidden channel, got {mlp_ratio} "
                             f"with embed_dim={embed_dim}")
        self.upsampler = upsampler
        self.qkv_bias = bool(qkv_bias)
        self.patch_norm = bool(patch_norm)
        self.rgb_mean = check_rgb_mean(rgb_mean)
        backend = _check_backend(attention_backend)
        if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float)) \
                or not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be a number in [0, 1), got {drop_path_rate!r}")
        self.drop_path_rate = float(drop_path_rate)
        total = sum(self.depths)
        rates = [self.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = [sum(self.depths[:i]) for i in range(len(self.depths))]

        self.mean_shift = MeanShift(img_range, self.rgb_mean)
        self.conv_first = nn.Conv2d(3, embed_dim, 3, padding=1)
        self.patch_embed = PatchEmbed(embed_dim, self.patch_norm)
        self.layers = nn.ModuleList(
            RSTB(embed_dim, heads, window_size, self.mlp_ratio, self.qkv_bias, backend, rates[start:start + depth])
            for start, depth, heads in zip(starts, self.depths, self.num_heads))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(
                nn.Conv2d(embed_dim, CLASSICAL_UPSAMPLE_CHANNELS, 3, padding=1), nn.LeakyReLU(inplace=True))
            self.upsample = shuffle_upsampler(CLASSICAL_UPSAMPLE_CHANNELS, scale)
            self.conv_last = nn.Conv2d(CLASSICAL_UPSAMPLE_CHANNELS, 3, 3, padding=1)
        else:
            self.upsample = nn.Sequential(nn.Conv2d(embed_dim, 3 * scale * scale, 3, padding=1),
                                          nn.PixelShuffle(scale))
        self.apply(_init_weights)

    @property
    def img_range(self) -> float:
        return self.mean_shift.value_range

    @property
    def attention_backend(self) -> str:
        return self._attention_modules()[0].backend

    @attention_backend.setter
    def attention_backend(self, backend: str) -> None:
        backend = _check_backend(backend)
        for module in self._attention_modules():
            module.backend = backend

    def _attention_modules(self) -> list[WindowAttention]:
        return [m for m in self.modules() if isinstance(m, WindowAttention)]

    @classmethod
    def from_structure(cls, n_b: int, n_l: int, n_c: int, scale: int = 2, num_heads: int = 6,
                       **options) -> SwinIR:
        """SwinIR with embed_dim N_c and N_b RSTBs of N_l Swin layers, ``num_heads`` heads in each;
        ``options``: the constructor's others (defaults: the lightweight model's window 8, MLP
        ratio 2, ``pixelshuffledirect``)."""
        check_positive_int("n_b", n_b)
        check_positive_int("num_heads", num_heads)
        return construct(cls, "from_structure", options, scale=scale, embed_dim=n_c, depths=(n_l,) * n_b,
                         num_heads=(num_heads,) * n_b)

    def config(self) -> dict:
        """The constructor's arguments: ``SwinIR(**model.config())`` builds the same architecture."""
        return dict(scale=self.scale, embed_dim=self.embed_dim, depths=self.depths, num_heads=self.num_heads,
                    window_size=self.window_size, mlp_ratio=self.mlp_ratio, upsampler=self.upsampler,
                    img_range=self.img_range, qkv_bias=self.qkv_bias, patch_norm=self.patch_norm,
                    rgb_mean=self.rgb_mean, attention_backend=self.attention_backend,
                    drop_path_rate=self.drop_path_rate)

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        """The deep-feature module without its closing conv: RSTBs on the tokens, then ``norm``."""
        hw = (features.shape[-2], features.shape[-1])
        tokens = self.patch_embed(features)
        for layer in self.layers:
            tokens = layer(tokens, hw)
        return _to_image(self.norm(tokens), hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_rgb(x)
        height, width = x.shape[-2:]
        x = self.mean_shift.subtract(reflect_pad_to_multiple(x, self.window_size))
        features = self.conv_first(x)
        features = self.conv_after_body(self.forward_features(features)) + features
        if self.upsampler == "pixelshuffle":
            out = self.conv_last(self.upsample(self.conv_before_upsample(features)))
        else:
            out = self.upsample(features)
        return self.mean_shift.add(out)[..., :height * self.scale, :width * self.scale]

    # --- the official files ----------------------------------------------------------------------------------

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict plus the buffers the official files hold (and the official model and spandrel load
        strictly): every block's ``attn.relative_position_index`` and every shifted block's ``attn_mask``, for
        an :data:`OFFICIAL_PATCH_SIZE` patch. Every block shares one index tensor and one mask tensor, which
        ``torch.save`` stores once."""
        state = dict(self.state_dict())
        ws = self.window_size
        size = ws * max(2, -(-OFFICIAL_PATCH_SIZE // ws))
        index = relative_position_index(ws)
        mask = shift_window_mask((size, size), ws, ws // 2) if ws // 2 else None
        for i, layer in enumerate(self.layers):
            for j, block in enumerate(layer.residual_group.blocks):
                prefix = f"layers.{i}.residual_group.blocks.{j}"
                state[f"{prefix}.attn.relative_position_index"] = index
                if block.shift_size:
                    state[f"{prefix}.attn_mask"] = mask
        return state

    def spandrel_mismatch(self) -> str | None:
        """The options spandrel does not read from an official file and sets otherwise: the range (255 for
        window 7, else 1), the DIV2K mean, the qkv bias, the patch-embedding norm, the MLP width from the ratio."""
        reasons = []
        expected_range = 255.0 if self.window_size == SPANDREL_RANGE_255_WINDOW else 1.0
        if self.img_range != expected_range:
            reasons.append(f"img_range {self.img_range:g} (spandrel takes {expected_range:g} for window_size "
                           f"{self.window_size})")
        if self.rgb_mean != DIV2K_RGB_MEAN:
            reasons.append(f"rgb_mean {self.rgb_mean} (spandrel subtracts the DIV2K mean {DIV2K_RGB_MEAN})")
        if not self.qkv_bias:
            reasons.append("qkv_bias False (spandrel builds the qkv bias)")
        if not self.patch_norm:
            reasons.append("patch_norm False (spandrel builds the patch-embedding norm)")
        hidden = int(self.embed_dim * self.mlp_ratio)
        if int(self.embed_dim * (hidden / self.embed_dim)) != hidden:
            reasons.append(f"{hidden} MLP channels (spandrel's ratio {hidden}/{self.embed_dim} gives fewer)")
        return "; ".join(reasons) or None

    # --- the family contract's structure ----------------------------------------------------------------------

    def _uniform(self, name: str, values: tuple) -> int:
        if len(set(values)) != 1:
            raise ValueError(f"the compression protocol needs equal {name} in every RSTB, got {name}={values}")
        return values[0]

    def structure(self) -> Structure:
        return Structure(len(self.depths), self._uniform("depths", self.depths), self.embed_dim)

    def with_structure(self, n_b: int, n_l: int, n_c: int) -> SwinIR:
        return SwinIR.from_structure(n_b, n_l, n_c, self.scale, self._uniform("num_heads", self.num_heads),
                                     **self.inherited_options())

    def channel_multiple(self) -> int:
        return math.lcm(*self.num_heads)

    def extra_repr(self) -> str:
        return (f"scale={self.scale}, embed_dim={self.embed_dim}, depths={list(self.depths)}, "
                f"num_heads={list(self.num_heads)}, window_size={self.window_size}, mlp_ratio={self.mlp_ratio:g}, "
                f"upsampler={self.upsampler!r}, img_range={self.img_range:g}, drop_path_rate={self.drop_path_rate:g}")


def _init_weights(module: nn.Module) -> None:
    """The official initialisation: truncated normal (std 0.02) for linear weights and the bias
    tables, zero linear biases, unit LayerNorms; convolutions keep PyTorch's default."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, WindowAttention):
        nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)

