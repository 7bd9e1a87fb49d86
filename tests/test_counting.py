"""The counting machinery: parameters and buffers, MACs under the flop counter and the window-attention formula,
bad arguments, the `cdism-fast models` table (each family's hand counts: tests/test_<family>.py; the counts of
every preset: tests/test_family_contract.py)."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cdism_fast import models
from cdism_fast.models.counting import _window_attention_flops
from cdism_fast.ops import available_backends
from cdism_fast.ops.window_attention import window_attention_reference

from model_references import meta_preset

# --- parameters --------------------------------------------------------------------------------------------------


def test_mean_shift_is_a_buffer():
    model = models.build("edsr_mini")
    assert "mean_shift.mean" in dict(model.named_buffers())
    assert not any("mean" in name for name, _ in model.named_parameters())
    assert not any("mean" in name for name in model.state_dict())


# --- multiply-accumulates ----------------------------------------------------------------------------------------


def test_counting_a_real_model_leaves_it_unchanged():
    model = models.build("swinir_mini", scale=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    macs = models.count_flops(model, (96, 96))
    assert macs == models.count_flops(meta_preset("swinir_mini", 3), (96, 96))
    assert all(torch.equal(before[k], v) and v.device.type == "cpu" for k, v in model.state_dict().items())
    model(torch.rand(1, 3, 8, 8))


def test_window_attention_formula_matches_the_counted_reference():
    q, k, v = (torch.rand(6, 3, 16, 5) for _ in range(3))
    table = torch.rand(49, 3)
    with FlopCounterMode(display=False) as counter:
        window_attention_reference(q, k, v, table, 4, 2, (8, 12), 5 ** -0.5)
    expected = 2 * 2 * 6 * 3 * 16 * 16 * 5  # FLOPs (2 per MAC) of q·kᵀ and attn·v
    assert counter.get_total_flops() == _window_attention_flops(q.shape, k.shape, v.shape) == expected


@pytest.mark.skipif("cpp" not in available_backends("window_attention"), reason="no compiled window_attention")
def test_compiled_attention_is_counted_by_torch():
    model = models.build("swinir_mini", attention_backend="cpp").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, 16, 16))
    expected = models.count_flops(model, (32, 32))
    assert counter.get_total_flops() == 2 * expected["total"]


# --- bad input ---------------------------------------------------------------------------------------------------

def test_bad_counting_arguments():
    model = meta_preset("edsr_mini")
    with pytest.raises(ValueError, match="divisible by the scale 2"):
        models.count_flops(model, (721, 1280))
    with pytest.raises(ValueError, match="out_hw"):
        models.count_flops(model, (720,))
    with pytest.raises(ValueError, match="out_hw"):
        models.count_flops(model, (0, 1280))
    with pytest.raises(ValueError, match="scale 3 does not match"):
        models.count_flops(model, (720, 1281), scale=3)
    with pytest.raises(ValueError, match="scale must be a positive int"):
        models.count_flops(torch.nn.Conv2d(3, 3, 3), (8, 8))
    assert models.count_flops(torch.nn.Conv2d(3, 3, 3, padding=1), (8, 8), scale=1)["conv"] == 64 * 27 * 3


def test_cli_table(capsys):
    from cdism_fast.cli import main

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()[3:]
    presets = lines[: lines.index("")] if "" in lines else lines  # the shipped trained models follow a blank line
    rows = {line.split()[0]: line.split() for line in presets}
    assert list(rows) == list(models.ARCHITECTURES)
    assert rows["swinir_lightweight"][2:] == ["4", "6", "60", "910,152", "877,752", "240.9", "198.4"]
    assert rows["edsr_mini"][2:] == ["8", "1", "16", "49,603", "49,603", "11.6", "11.6"]
    assert main(["models", "--scale", "4", "--size", "64x48"]) == 0
    assert "swinir_mini" in capsys.readouterr().out
    assert main(["models", "--scale", "3", "--size", "64x48"]) == 2
    assert "divisible by --scale 3" in capsys.readouterr().err
