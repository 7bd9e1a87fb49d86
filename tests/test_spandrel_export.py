"""Students the SR ecosystem opens: ``cdism-fast export MODEL OUT.pth`` read back by spandrel, the model loader of
chaiNNer and ComfyUI (``spandrel.ModelLoader().load_from_file``): the architecture it detects, the scale, and its
network's output against ours (fp32, odd-sized inputs). What the command says of every family's file (its
``spandrel_architecture`` and ``spandrel_mismatch``) is checked against spandrel itself.

Every test that needs spandrel lives in a ``tests/test_spandrel_*.py`` file that skips without it."""
import contextlib

import pytest

spandrel = pytest.importorskip(
    "spandrel", reason="the spandrel tests need the [spandrel] extra: torch 2.14.1 + torchvision 0.29.1 + "
                       "spandrel 0.4.2 (pip install '.[spandrel]')")

import torch  # noqa: E402

from cdism_fast import models  # noqa: E402
from cdism_fast.cli import main  # noqa: E402
from cdism_fast.export import export, spandrel_note  # noqa: E402
from cdism_fast.training.artifacts import save_model  # noqa: E402

from model_references import meta_preset, presets_of, randomized  # noqa: E402
from tolerances import INTEROP_MAX_ABS  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

OPENS = "spandrel (chaiNNer, ComfyUI) opens it as"
#: Odd sizes; 57x61 pads to 64x64, the patch whose shifted-window masks a SwinIR file holds (spandrel uses them).
SIZES = [(19, 23), (57, 61)]


def exported_by_the_command(model, tmp_path, capsys, *options):
    """``cdism-fast export model.pt student.pth``: the file's path and the line the command printed."""
    model_file = save_model(tmp_path / "model.pt", model)
    out = tmp_path / "student.pth"
    assert main(["export", str(model_file), str(out), *options]) == 0
    return out, capsys.readouterr().out.strip()


def assert_spandrel_runs_our_network(descriptor, model, sizes=SIZES, capsys=None):
    """spandrel's network (and its call API, which clamps to [0, 1]) gives our model's output; the differences
    are printed (``pytest -s``; past ``capsys`` when a test captures the command's output)."""
    tolerance = INTEROP_MAX_ABS[torch.float32]
    for height, width in sizes:
        x = torch.rand(1, 3, height, width)
        with torch.no_grad():
            ours = model.eval()(x)
            theirs = descriptor.model.eval()(x)
            called = descriptor(x)
        assert theirs.shape == ours.shape == (1, 3, height * model.scale, width * model.scale)
        difference = (theirs - ours).abs().max().item()
        with capsys.disabled() if capsys is not None else contextlib.nullcontext():
            print(f"\n{descriptor.architecture.id} x{model.scale} {height}x{width}: max abs difference "
                  f"{difference:.2e}")
        assert difference <= tolerance, (height, width, difference)
        assert (called - ours.clamp(0, 1)).abs().max().item() <= tolerance


@pytest.mark.parametrize("scale", [2, 4])
def test_a_compact_student_opens_in_spandrel(tmp_path, capsys, scale):
    student = randomized(models.build("compact_mini", scale=scale))
    out, printed = exported_by_the_command(student, tmp_path, capsys)
    assert printed == f"wrote {out}; {OPENS} Compact ×{scale}"
    descriptor = spandrel.ModelLoader().load_from_file(out)
    assert descriptor.architecture.id == "Compact" and descriptor.scale == scale
    assert (descriptor.input_channels, descriptor.output_channels) == (3, 3)
    assert_spandrel_runs_our_network(descriptor, student, capsys=capsys)


@pytest.mark.parametrize("scale,upsampler", [(2, "pixelshuffledirect"), (3, "pixelshuffle")])
def test_a_swinir_student_opens_in_spandrel(tmp_path, capsys, scale, upsampler):
    student = randomized(models.SwinIR(scale=scale, embed_dim=24, depths=(2, 2), num_heads=(6, 6), window_size=8,
                                       upsampler=upsampler))
    out, printed = exported_by_the_command(student, tmp_path, capsys)
    assert printed == f"wrote {out}; {OPENS} SwinIR ×{scale}"
    descriptor = spandrel.ModelLoader().load_from_file(out)
    assert descriptor.architecture.id == "SwinIR" and descriptor.scale == scale
    assert_spandrel_runs_our_network(descriptor, student, capsys=capsys)
    # pth-native, the model's own state dict, lacks the official buffers: spandrel does not detect it
    native, printed = exported_by_the_command(student, tmp_path, capsys, "--format", "pth-native")
    assert "spandrel cannot open it: it lacks the buffers of the official SwinIR files" in printed
    with pytest.raises(spandrel.UnsupportedModelError):
        spandrel.ModelLoader().load_from_file(native)


def small_member(family):
    teacher = meta_preset(presets_of(family)[0])
    return randomized(teacher.with_structure(2, 1, 2 * teacher.channel_multiple()))


@pytest.mark.parametrize("format,suffix", [("pth", ".pth"), ("pth-native", ".pth"), ("safetensors", ".safetensors")])
@pytest.mark.parametrize("family", list(models.FAMILIES))
def test_what_export_says_of_every_family_is_what_spandrel_does(tmp_path, family, format, suffix):
    model = small_member(family)
    path = export(model, tmp_path / f"model{suffix}", format=format, scale=model.scale)
    note = spandrel_note(model, format)
    if note.startswith(OPENS):
        descriptor = spandrel.ModelLoader().load_from_file(path)
        assert note == f"{OPENS} {descriptor.architecture.id} ×{descriptor.scale}"
        assert descriptor.architecture.id == type(model).spandrel_architecture and descriptor.scale == model.scale
        assert_spandrel_runs_our_network(descriptor, model, sizes=SIZES[:1])
    else:
        assert note.startswith(("spandrel does not know", "spandrel cannot open it")), note
        with pytest.raises(spandrel.UnsupportedModelError):
            spandrel.ModelLoader().load_from_file(path)


@pytest.mark.parametrize("options", [dict(rgb_mean=(0.5, 0.5, 0.5)), dict(img_range=255.0),
                                     dict(window_size=7)])
def test_a_swinir_that_spandrel_would_rebuild_otherwise_is_named(tmp_path, capsys, options):
    model = randomized(models.SwinIR(scale=2, embed_dim=12, depths=(2,), num_heads=(3,), **{"window_size": 8,
                                                                                            **options}))
    out, printed = exported_by_the_command(model, tmp_path, capsys)
    assert f"spandrel detects it as SwinIR but would build another network: {model.spandrel_mismatch()}" in printed
    descriptor = spandrel.ModelLoader().load_from_file(out)
    assert descriptor.architecture.id == "SwinIR"
    x = torch.rand(1, 3, 19, 23)
    with torch.no_grad():
        assert (descriptor.model.eval()(x) - model.eval()(x)).abs().max().item() > 1e-3
