"""The compression rule (eqs. 5-7 with the square root), its required results, overrides, bad input,
and a third model family that only implements the protocol."""
import math

import pytest
import torch
from torch import nn

from cdism_fast import models
from cdism_fast.compress import Compressible, Structure, compact_model, compress_config


def meta_preset(name, **overrides):
    with torch.device("meta"):
        return models.build(name, **overrides)


def rule(n_b, n_l, n_c, d, multiple):
    """Eqs. (5)-(7) in float64, with round-half-up written as the rounding of the integer part."""
    r = math.exp(math.log(d) / 6)
    new_b = max(1, int(n_b * r + 0.5))
    new_l = max(2, int((n_l + 1) * r + 0.5)) - 1
    channels = n_c * (d * n_b * (n_l + 1) / (new_b * (new_l + 1))) ** 0.5
    return Structure(new_b, new_l, multiple * max(1, int(channels / multiple + 0.5)))


# --- the paper's results -----------------------------------------------------------------------------------------

def test_swinir_lightweight_to_swinir_mini():
    teacher = meta_preset("swinir_lightweight")
    assert compress_config(teacher, 0.089) == Structure(n_b=3, n_l=4, n_c=24)


def test_edsr_baseline_to_edsr_mini():
    teacher = meta_preset("edsr_baseline")
    assert compress_config(teacher, 0.03) == Structure(n_b=9, n_l=1, n_c=16)  # the paper chose n_b = 8
    assert compress_config(teacher, 0.03, n_b=8) == Structure(8, 1, 16) == meta_preset("edsr_mini").structure()


def test_cube_root_would_not_give_the_papers_table():
    """Eq. (7) as printed (cube root) gives 30 channels for SwinIRmini, not the paper's 24."""
    channels = 60 * (0.089 * 4 * 7 / (3 * 5)) ** (1 / 3)
    assert 6 * round(channels / 6) == 30


@pytest.mark.parametrize("name", list(models.PRESETS))
@pytest.mark.parametrize("d", [1.0, 0.5, 0.2, 0.089, 0.03, 0.01, 1e-4])
def test_rule_against_float64_formulation(name, d):
    teacher = meta_preset(name)
    s = teacher.structure()
    assert compress_config(teacher, d) == rule(s.n_b, s.n_l, s.n_c, d, teacher.channel_multiple())


def test_density_one_keeps_the_structure():
    for name in models.PRESETS:
        teacher = meta_preset(name)
        assert compress_config(teacher, 1) == teacher.structure()


def test_compressed_weight_count_meets_the_density():
    """With a fine channel grid, N̂_b(N̂_l + 1)N̂_c² / (N_b(N_l + 1)N_c²) is d up to the channel rounding."""
    with torch.device("meta"):
        teacher = models.EDSR(n_c=4096, n_b=64, n_l=3)
    for d in (0.5, 0.1, 0.03):
        s = compress_config(teacher, d, channel_multiple=1)
        ratio = s.n_b * (s.n_l + 1) * s.n_c ** 2 / (64 * 4 * 4096 ** 2)
        assert abs(ratio / d - 1) < 2 / s.n_c


# --- options -----------------------------------------------------------------------------------------------------

def test_rounding_modes():
    teacher = meta_preset("swinir_lightweight")
    # r·N_b = 2.67, r·(N_l + 1) = 4.68
    down = compress_config(teacher, 0.089, rounding="down")
    assert down == Structure(2, 3, 6 * math.floor(60 * math.sqrt(0.089 * 28 / (2 * 4)) / 6)) == Structure(2, 3, 30)
    up = compress_config(teacher, 0.089, rounding="up")
    assert up == Structure(3, 4, 6 * math.ceil(60 * math.sqrt(0.089 * 28 / 15) / 6)) == Structure(3, 4, 30)


def test_channel_multiple_and_overrides():
    teacher = meta_preset("swinir_lightweight")
    assert compress_config(teacher, 0.089, channel_multiple=1) == Structure(3, 4, 24)
    assert compress_config(teacher, 0.089, channel_multiple=4) == Structure(3, 4, 24)
    assert compress_config(teacher, 0.089, channel_multiple=10) == Structure(3, 4, 20)
    # overriding n_b and n_l recomputes n_c so that the density still holds
    assert compress_config(teacher, 0.089, n_b=2, n_l=2) == Structure(2, 2, 6 * round(
        60 * math.sqrt(0.089 * 28 / 6) / 6))
    assert compress_config(teacher, 0.089, n_c=30) == Structure(3, 4, 30)
    # at tiny densities every count stays at its minimum
    assert compress_config(teacher, 1e-9) == Structure(1, 1, 6)


def test_compact_model():
    teacher = models.build("swinir_lightweight", scale=3, attention_backend="reference").double()
    student = compact_model(teacher, 0.089)
    assert student.config() == models.build("swinir_mini", scale=3, attention_backend="reference").config()
    assert next(student.parameters()).dtype == torch.float64
    edsr = compact_model(models.build("edsr_baseline", scale=4), 0.03, n_b=8)
    assert edsr.config() == models.build("edsr_mini", scale=4).config()
    assert models.count_params(edsr) == models.count_params(models.build("edsr_mini", scale=4))


# --- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("density", [0, -0.1, 1.5, float("nan"), float("inf"), "0.5", True, None])
def test_density_outside_range(density):
    with pytest.raises(ValueError, match="density must be a number in \\(0, 1\\]"):
        compress_config(meta_preset("edsr_mini"), density)
    with pytest.raises(ValueError, match="density"):
        compact_model(meta_preset("edsr_mini"), density)


@pytest.mark.parametrize("kwargs,match", [(dict(rounding="floor"), "rounding must be one of"),
                                          (dict(channel_multiple=0), "channel_multiple"),
                                          (dict(n_b=0), "n_b"), (dict(n_l=1.5), "n_l"), (dict(n_c=-8), "n_c")])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compress_config(meta_preset("edsr_mini"), 0.5, **kwargs)


def test_model_without_protocol():
    with pytest.raises(ValueError, match="compression protocol.*Conv2d lacks structure, with_structure"):
        compress_config(nn.Conv2d(3, 3, 3), 0.5)


def test_student_channels_must_suit_heads():
    with pytest.raises(ValueError, match="embed_dim must be divisible"):
        compact_model(meta_preset("swinir_lightweight"), 0.089, n_c=25)


# --- a third family ----------------------------------------------------------------------------------------------

class PlainNet(nn.Module):
    """VDSR-like: N_b blocks of N_l conv-ReLU layers, a conv after them, a pixel-shuffle tail."""

    def __init__(self, n_b=4, n_l=3, n_c=32, scale=2):
        super().__init__()
        self.scale = scale
        self.head = nn.Conv2d(3, n_c, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(*[m for _ in range(n_l) for m in (nn.Conv2d(n_c, n_c, 3, padding=1), nn.ReLU())]
                          + [nn.Conv2d(n_c, n_c, 1)]) for _ in range(n_b))
        self.tail = nn.Sequential(nn.Conv2d(n_c, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x):
        y = self.head(x)
        for block in self.blocks:
            y = y + block(y)
        return self.tail(y)

    def structure(self):
        return Structure(len(self.blocks), (len(self.blocks[0]) - 1) // 2, self.head.out_channels)

    def with_structure(self, n_b, n_l, n_c):
        return PlainNet(n_b, n_l, n_c, self.scale)

    def deep_feature_parameters(self):
        return self.blocks.parameters()

    def channel_multiple(self):
        return 4


def test_third_family_through_the_protocol():
    teacher = PlainNet(n_b=4, n_l=3, n_c=32, scale=2)
    assert isinstance(teacher, Compressible)
    structure = compress_config(teacher, 0.25)
    assert structure == rule(4, 3, 32, 0.25, 4) == Structure(3, 2, 20)
    student = compact_model(teacher, 0.25)
    assert isinstance(student, PlainNet) and student.structure() == structure
    assert student(torch.rand(1, 3, 5, 6)).shape == (1, 3, 10, 12)
    n_c = 20
    assert models.count_params(student) == (
        3 * 9 * n_c + n_c + 3 * (2 * (9 * n_c * n_c + n_c) + n_c * n_c + n_c) + 9 * n_c * 12 + 12)
    macs = models.count_flops(student, (20, 24))
    assert macs["conv"] == 10 * 12 * (27 * n_c + 3 * (2 * 9 * n_c * n_c + n_c * n_c) + 9 * n_c * 12)
    assert macs["linear"] == macs["attention"] == 0
