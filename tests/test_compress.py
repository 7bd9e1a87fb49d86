"""The compression rule (eqs. 5-7 with the square root; N̂_c by exact weight count or by eq. 7), its
required results, overrides, bad input, a third model family through the protocol and the stages, and the
compress command."""
import json
import math

import pytest
import torch
from torch import nn

from cdism_fast import models
from cdism_fast.cli import main
from cdism_fast.compress import (
    MEASURES,
    Compressible,
    Structure,
    achieved_density,
    closest_structure,
    compact_model,
    compress_config,
    deep_feature_weights,
    family_reference,
    student_of_size,
    weight_count,
)
from cdism_fast.training.artifacts import save_model

from model_references import meta_preset


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


@pytest.mark.parametrize("name", list(models.ARCHITECTURES))
@pytest.mark.parametrize("d", [1.0, 0.5, 0.2, 0.089, 0.03, 0.01, 1e-4])
def test_rule_against_float64_formulation(name, d):
    teacher = meta_preset(name)
    s = teacher.structure()
    assert compress_config(teacher, d, channels="eq7") == rule(s.n_b, s.n_l, s.n_c, d, teacher.channel_multiple())


def test_density_one_keeps_the_structure():
    for name in models.ARCHITECTURES:
        teacher = meta_preset(name)
        assert compress_config(teacher, 1) == teacher.structure()


def test_compressed_weight_count_meets_the_density():
    """With a fine channel grid, N̂_b(N̂_l + 1)N̂_c² / (N_b(N_l + 1)N_c²) is d up to the channel rounding."""
    with torch.device("meta"):
        teacher = models.EDSR(n_c=4096, n_b=64, n_l=3)
    for d in (0.5, 0.1, 0.03):
        s = compress_config(teacher, d, channel_multiple=1, channels="eq7")
        ratio = s.n_b * (s.n_l + 1) * s.n_c ** 2 / (64 * 4 * 4096 ** 2)
        assert abs(ratio / d - 1) < 2 / s.n_c


# --- options -----------------------------------------------------------------------------------------------------

def test_rounding_modes():
    teacher = meta_preset("swinir_lightweight")
    # r·N_b = 2.67, r·(N_l + 1) = 4.68
    down = compress_config(teacher, 0.089, rounding="down", channels="eq7")
    assert down == Structure(2, 3, 6 * math.floor(60 * math.sqrt(0.089 * 28 / (2 * 4)) / 6)) == Structure(2, 3, 30)
    up = compress_config(teacher, 0.089, rounding="up", channels="eq7")
    assert up == Structure(3, 4, 6 * math.ceil(60 * math.sqrt(0.089 * 28 / 15) / 6)) == Structure(3, 4, 30)


def test_channel_multiple_and_overrides():
    teacher = meta_preset("swinir_lightweight")
    assert compress_config(teacher, 0.089, channel_multiple=1) == Structure(3, 4, 24)
    assert compress_config(teacher, 0.089, channel_multiple=4) == Structure(3, 4, 24)
    assert compress_config(teacher, 0.089, channel_multiple=10, channels="eq7") == Structure(3, 4, 20)
    # overriding n_b and n_l recomputes n_c so that the density still holds
    assert compress_config(teacher, 0.089, n_b=2, n_l=2, channels="eq7") == Structure(2, 2, 6 * round(
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


# --- N̂_c by exact count (for every preset: tests/test_family_contract.py) -----------------------------------------


def test_count_rounding_modes_bracket_the_target():
    teacher = meta_preset("imdn")
    target = 0.1 * deep_feature_weights(teacher)
    down, up = (compress_config(teacher, 0.1, rounding=mode) for mode in ("down", "up"))
    with torch.device("meta"):
        below = deep_feature_weights(teacher.with_structure(*down))
        above = deep_feature_weights(teacher.with_structure(*up))
        assert below <= target < deep_feature_weights(teacher.with_structure(down.n_b, down.n_l, down.n_c + 4))
        assert above >= target > deep_feature_weights(teacher.with_structure(up.n_b, up.n_l, up.n_c - 4))


def test_achieved_density():
    teacher = meta_preset("edsr_baseline")
    with torch.device("meta"):
        student = teacher.with_structure(9, 1, 16)
    # (9·2 + 1) convs of 16² against (16·2 + 1) of 64², 3x3 each
    assert achieved_density(teacher, student) == pytest.approx(19 * 16 ** 2 / (33 * 64 ** 2))


def test_channel_rule_is_checked():
    with pytest.raises(ValueError, match="channels must be one of \\('count', 'eq7'\\), got 'eq2'"):
        compress_config(meta_preset("edsr_mini"), 0.5, channels="eq2")


# --- a third family ----------------------------------------------------------------------------------------------

def test_third_family_through_the_protocol(tmp_path):
    """PAN, a family whose blocks are not plain stacks, compressed, counted, pruned and distilled."""
    from cdism_fast.training.stages import PruneOptions, StageSettings, distill, prune

    teacher = models.from_structure("pan", 4, 1, 16, 2, unf=8)
    assert isinstance(teacher, Compressible) and teacher.family == "pan"
    structure = compress_config(teacher, 0.25)
    assert structure[:2] == (3, 1) == rule(4, 1, 16, 0.25, 2)[:2]
    student = compact_model(teacher, 0.25)
    assert isinstance(student, models.PAN) and student.structure() == structure and student.unf == 8
    assert student(torch.rand(1, 3, 5, 6)).shape == (1, 3, 10, 12)
    n_c, half, unf = structure.n_c, structure.n_c // 2, 8
    block = 2 * n_c * half + 9 * half * half + (half * half + half) + 2 * 9 * half * half + n_c * n_c
    assert deep_feature_weights(student) == 3 * block - 3 * half + 9 * n_c * n_c
    assert models.count_params(student) == (
        27 * n_c + n_c + 3 * block + 9 * n_c * n_c + n_c + 9 * n_c * unf + unf + unf * unf + unf
        + 9 * unf * unf + unf + 27 * unf + 3)
    settings = StageSettings(iterations=2, batch_size=2, patch_size=12, checkpoint_every=0, log_every=1,
                             progress=False)
    pruned = prune(teacher, tmp_path / "prune", settings, PruneOptions(lam=1e-3))
    assert pruned.status == "completed" and 0 < pruned.extra["density"]["density"] <= 1
    distilled = distill(pruned.model, student, tmp_path / "distill", settings)
    assert distilled.status == "completed" and distilled.model.structure() == structure


def test_compress_command_prints_the_achieved_ratio_and_refuses_bad_densities(tmp_path, capsys):
    teacher = models.build("imdn", scale=2)
    save_model(tmp_path / "imdn.pt", teacher)
    assert main(["compress", "--teacher", str(tmp_path / "imdn.pt"), "--density", "0.1",
                 "--out", str(tmp_path / "c")]) == 0
    record = json.loads((tmp_path / "c" / "student.json").read_text())
    from cdism_fast.compress import compress_config

    assert record["student"]["family"] == "imdn" and record["structure"] == compress_config(teacher, 0.1)._asdict()
    assert f"density d = 0.1; achieved (the student's deep-feature weights over the teacher's) = " \
           f"{record['achieved_density']:.4g}" in capsys.readouterr().out
    assert abs(record["achieved_density"] - 0.1) < 0.01
    for bad in ("nan", "1.5", "0", "-0.2"):
        assert main(["compress", "--teacher", str(tmp_path / "imdn.pt"), "--density", bad,
                     "--out", str(tmp_path / "refused")]) == 2
        assert f"density must be a number in (0, 1], got {float(bad)}" in capsys.readouterr().err
        assert not (tmp_path / "refused").exists()


def test_compress_quotes_a_binary_or_odd_density_file_in_one_short_line(tmp_path, capsys):
    from helpers.runs import one_error_line, tree_hash

    save_model(tmp_path / "imdn.pt", models.build("imdn", scale=2))
    image = tmp_path / "baby.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4000)
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps({"density": list(range(10000))}))
    before = tree_hash(tmp_path)
    fix = "pass the density.json that `cdism-fast prune` wrote, unedited, or a number"
    assert main(["compress", "--teacher", str(tmp_path / "imdn.pt"), "--density", str(image),
                 "--out", str(tmp_path / "c")]) == 2
    assert one_error_line(capsys, "compress") == (f"cdism-fast compress: error: density file {image} is not valid "
                                                  f"JSON (it is not UTF-8 text: invalid start byte at byte 0); {fix}")
    assert main(["compress", "--teacher", str(tmp_path / "imdn.pt"), "--density", str(listed),
                 "--out", str(tmp_path / "c")]) == 2
    line = one_error_line(capsys, "compress")
    assert line.startswith(f"cdism-fast compress: error: {listed} is not a density file written by `cdism-fast "
                           "prune` (TypeError(\"'density' is [0, 1, 2") and line.endswith(fix)
    assert len(line.replace(str(listed), "")) < 250  # the 10,000 numbers are cut short (the path's length varies)
    assert tree_hash(tmp_path) == before


# --- a student of another family (or of a teacher of no family): the structure closest to a size -----------------

@pytest.mark.parametrize("family", sorted(models.FAMILIES))
@pytest.mark.parametrize("measure, target", [("params", 40_000), ("params", 700_000), ("weights", 3_000_000)])
def test_closest_structure_has_no_channel_neighbour_closer_to_the_target(family, measure, target):
    size = MEASURES[measure]
    reference = family_reference(family, target, scale=4, measure=measure)
    chosen = closest_structure(family, target, measure, scale=4)
    ratio = target / size(reference)
    expected = rule(*reference.structure(), ratio, reference.channel_multiple())
    assert chosen[:2] == expected[:2]  # N_b and N_l by eq. (6) from the reference preset at the size ratio

    def gap(n_c):
        with torch.device("meta"):
            return abs(size(reference.with_structure(chosen.n_b, chosen.n_l, n_c)) - target)

    for neighbour in (chosen.n_c - reference.channel_multiple(), chosen.n_c + reference.channel_multiple()):
        try:
            assert gap(neighbour) >= gap(chosen.n_c), (family, neighbour)
        except ValueError:  # a channel count the family refuses (heads, halves)
            pass
    student = student_of_size(family, target, measure, scale=4)
    assert student.structure() == chosen and student.scale == 4 and student.family == family


def test_the_reference_is_the_smallest_preset_at_least_the_target_else_the_largest():
    counts = {name: MEASURES["params"](meta_preset(name)) for name, p in models.ARCHITECTURES.items()
              if p.family == "edsr"}
    assert counts["edsr_mini"] < 1_000_000 < counts["edsr_baseline"] < counts["edsr"]
    assert family_reference("edsr", 1_000_000, measure="params").structure() == \
        meta_preset("edsr_baseline").structure()
    assert family_reference("edsr", 1e9, measure="params").structure() == meta_preset("edsr").structure()


@pytest.mark.parametrize("name, d", [("edsr_baseline", 0.03), ("swinir_lightweight", 0.089), ("imdn", 0.07)])
def test_closest_structure_from_the_teacher_by_its_deep_weights_is_the_density_rule(name, d):
    teacher = meta_preset(name)
    assert closest_structure(teacher, d * deep_feature_weights(teacher), "deep") == compress_config(teacher, d)


def test_closest_structure_refuses_bad_targets_and_measures():
    with pytest.raises(ValueError, match="target size must be a positive number"):
        closest_structure("edsr", 0)
    with pytest.raises(ValueError, match="measure must be one of"):
        closest_structure("edsr", 1000, "flops")
    with pytest.raises(ValueError, match="family must be one of"):
        closest_structure("esrgan", 1000)


def test_compress_stage_gives_another_family_the_weights_of_d_times_the_teachers(tmp_path):
    from cdism_fast.training.stages import CompressOptions, compress

    teacher = models.build("imdn")
    result = compress(teacher, 0.07, tmp_path / "c", CompressOptions(student_family="edsr"))
    target = 0.07 * weight_count(teacher)
    assert result.extra["size_rule"]["target"] == pytest.approx(target)
    assert result.model.structure() == closest_structure("edsr", target, "weights")
    own = compress(teacher, 0.07, tmp_path / "own", CompressOptions(params=100_000))
    assert own.model.family == "imdn" and own.model.structure() == closest_structure(teacher, 100_000, "params")
    assert own.extra["size_rule"]["student_size"] == sum(p.numel() for p in own.model.parameters())


def test_compress_command_takes_params_without_a_density(tmp_path, capsys):
    teacher = tmp_path / "imdn.pt"
    save_model(teacher, models.build("imdn"))
    assert main(["compress", "--teacher", str(teacher), "--params", "50000", "--student-family", "pan",
                 "--out", str(tmp_path / "c")]) == 0
    student = json.loads((tmp_path / "c" / "student.json").read_text())
    assert student["student"]["family"] == "pan"
    assert tuple(student["structure"].values()) == closest_structure("pan", 50_000, "params")
    assert "the pan structure whose params are closest to the target: target 50,000" in capsys.readouterr().out
    assert main(["compress", "--teacher", str(teacher), "--out", str(tmp_path / "d")]) == 2
    assert "pass --density" in capsys.readouterr().err and not (tmp_path / "d").exists()
