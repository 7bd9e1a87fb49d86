"""export: safetensors, BasicSR .pth and ONNX (checked against PyTorch with onnxruntime)."""
import argparse
import errno
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cdism_fast.cli import add_command
from cdism_fast.export import export, spandrel_note, written_by_export

from helpers.runs import one_error_line, tree_hash

HAS_MODELS = importlib.util.find_spec("cdism_fast.models") is not None
HAS_ONNXRUNTIME = all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnxscript"))
needs_onnxruntime = pytest.mark.skipif(not HAS_ONNXRUNTIME, reason="onnxruntime/onnxscript are not installed")
needs_models = pytest.mark.skipif(not HAS_MODELS, reason="cdism_fast.models is not available yet")
FAMILY_NAMES = list(importlib.import_module("cdism_fast.models").FAMILIES) if HAS_MODELS else []


class ShiftedWindowSR(nn.Module):
    """Conv features, a cyclic shift and window partition as in Swin, pixel-shuffle upsampling."""

    def __init__(self, scale=2, channels=8, window=4):
        super().__init__()
        self.window, self.scale = window, scale
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.mix = nn.Linear(channels, channels)
        self.tail = nn.Sequential(nn.Conv2d(channels, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))
        self.register_buffer("offset", torch.full((1, 3, 1, 1), 0.5))

    def forward(self, x):
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % self.window, (-width) % self.window
        features = self.head(F.pad(x, (0, pad_w, 0, pad_h), mode="reflect"))
        shifted = torch.roll(features, shifts=(-(self.window // 2),) * 2, dims=(2, 3))
        n, c, h, w = shifted.shape
        windows = shifted.view(n, c, h // self.window, self.window, w // self.window, self.window)
        windows = windows.permute(0, 2, 4, 3, 5, 1)
        mixed = windows + self.mix(windows).softmax(dim=-1)
        back = mixed.permute(0, 5, 1, 3, 2, 4).reshape(n, c, h, w)
        features = torch.roll(back, shifts=(self.window // 2,) * 2, dims=(2, 3))[..., :height, :width]
        return self.tail(features) + self.offset


def _onnx_output(path, x):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"lr": x.numpy()})[0]


def _assert_onnx_matches(model, path, shapes):
    for shape in shapes:
        x = torch.rand(shape)
        with torch.no_grad():
            expected = model(x).numpy()
        got = _onnx_output(path, x)
        assert got.shape == expected.shape
        difference = np.abs(got - expected).max()
        print(f"\n{path.name} {shape}: max abs difference {difference:.2e}")
        assert difference < 1e-4, (shape, difference)


def test_safetensors_and_pth(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    model = ShiftedWindowSR()
    state = model.state_dict()
    path = export(model, tmp_path / "model.safetensors", scale=2)
    loaded = load_file(path)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"format": "pt", "arch": "ShiftedWindowSR", "scale": "2",
                                     "written_by": "cdism-fast export"}
    path = export(model, tmp_path / "model.pth")
    params = torch.load(path, weights_only=True)["params"]
    fresh = ShiftedWindowSR()
    fresh.load_state_dict(params)
    assert all(torch.equal(fresh.state_dict()[k], state[k]) for k in state)


@needs_onnxruntime
def test_onnx_with_cyclic_shift_and_free_size(tmp_path):
    model = ShiftedWindowSR().eval()
    path = export(model, tmp_path / "model.onnx", input_size=(32, 40))
    _assert_onnx_matches(model, path, [(1, 3, 32, 40), (2, 3, 27, 45)])


class FixedWidthSR(nn.Module):
    """Branches on its input width, which fixes the width while tracing."""

    def forward(self, x):
        mode = "nearest" if x.shape[3] == 16 else "bilinear"
        return F.interpolate(x, scale_factor=2, mode=mode)


@needs_onnxruntime
def test_onnx_refuses_to_fix_the_size_silently(tmp_path):
    with pytest.raises(RuntimeError, match="cannot be exported with a free size; export a fixed input size"):
        export(FixedWidthSR(), tmp_path / "fixed.onnx", input_size=(16, 16))
    path = export(FixedWidthSR(), tmp_path / "fixed.onnx", input_size=(20, 16), dynamic=False)
    _assert_onnx_matches(FixedWidthSR(), path, [(1, 3, 20, 16)])


@needs_onnxruntime
@needs_models
def test_onnx_of_the_presets(tmp_path):
    from cdism_fast.models import build

    edsr = build("edsr_mini", scale=2)
    _assert_onnx_matches(edsr.eval(), export(edsr, tmp_path / "edsr.onnx"), [(1, 3, 64, 64), (2, 3, 37, 53)])
    # SwinIR with one shifted and one plain layer, through the package's window attention. Exported from
    # training mode: the graph is the eval-mode model (no stochastic depth), and the mode is restored.
    swinir = build("swinir_mini", scale=2, depths=(2,), num_heads=(6,))
    path = export(swinir, tmp_path / "swinir.onnx", input_size=(40, 56))
    assert swinir.training
    # Any size: padded (37x53), a multiple of the window already (64x72), smaller than a window (5x19).
    _assert_onnx_matches(swinir.eval(), path, [(1, 3, 40, 56), (2, 3, 37, 53), (1, 3, 64, 72), (1, 3, 5, 19)])
    fixed = export(swinir, tmp_path / "swinir_fixed.onnx", input_size=(40, 56), dynamic=False)
    _assert_onnx_matches(swinir, fixed, [(3, 3, 40, 56)])


@needs_models
def test_pth_export_loads_back_with_load_pretrained(tmp_path):
    from cdism_fast.models import build, load_pretrained

    model = build("edsr_mini", scale=3)
    loaded = load_pretrained(export(model, tmp_path / "edsr.pth"))
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


@needs_models
def test_pth_holds_the_official_layout_and_pth_native_the_state_dict(tmp_path, capsys):
    """SwinIR's official files hold index and mask buffers (which spandrel needs); pth-native keeps what .pth
    wrote before: the model's own state dict. Both carry the mark and load back."""
    from cdism_fast.models import SwinIR, load_pretrained
    from cdism_fast.training.artifacts import save_model

    model = SwinIR(embed_dim=8, depths=(2,), num_heads=(2,), window_size=4).eval()
    model_file = str(save_model(tmp_path / "model.pt", model))
    x = torch.rand(1, 3, 9, 7)
    for format, expected in (("pth", model.official_state_dict()), ("pth-native", model.state_dict())):
        out = tmp_path / f"{format}.pth"
        for _ in range(2):  # the second time replaces its own file, without --force
            args = _parse(["export", model_file, str(out), "--format", format])
            assert args.func(args) == 0
        params = torch.load(out, weights_only=True)["params"]
        assert set(params) == set(expected) and all(torch.equal(params[k], v) for k, v in expected.items())
        assert written_by_export(out) and written_by_export(out, format)
        with torch.no_grad():
            assert torch.equal(load_pretrained(out)(x), model(x))
    assert "attn_mask" in "".join(model.official_state_dict()) and "attn_mask" not in "".join(model.state_dict())
    printed = capsys.readouterr().out.splitlines()
    assert printed[-3] == f"wrote {tmp_path / 'pth.pth'}; spandrel (chaiNNer, ComfyUI) opens it as SwinIR ×2"
    assert printed[-1] == (f"wrote {tmp_path / 'pth-native.pth'}; spandrel cannot open it: it lacks the buffers of "
                           "the official SwinIR files (--format pth writes them)")


@needs_models
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_the_spandrel_note_of_every_family(family):
    """What the command prints beside a .pth follows the family's declaration (tests/test_spandrel_export.py
    checks the declarations against spandrel itself)."""
    from cdism_fast.models import FAMILIES

    from model_references import meta_preset, presets_of

    cls = FAMILIES[family]
    teacher = meta_preset(presets_of(family)[0])
    model = teacher.with_structure(1, 1, 2 * teacher.channel_multiple())
    note = spandrel_note(model, "pth")
    if cls.spandrel_architecture is None:
        assert note == (f"spandrel does not know {cls.__name__} models (chaiNNer and ComfyUI cannot open it); "
                        "cdism_fast.models.load_pretrained can")
    else:
        assert note == f"spandrel (chaiNNer, ComfyUI) opens it as {cls.spandrel_architecture} ×2"
    assert spandrel_note(model, "onnx") is None and spandrel_note(ShiftedWindowSR(), "pth") is None


def _parse(argv):
    parser = argparse.ArgumentParser(prog="cdism-fast")
    add_command(parser.add_subparsers(dest="command"), "export")
    return parser.parse_args(argv)


@needs_models
def test_export_command(tmp_path, capsys):
    from cdism_fast.models import SwinIR
    from cdism_fast.training.artifacts import save_model

    # A small shifted-window model, read by the command's own loader from a model.pt.
    model_file = str(save_model(tmp_path / "model.pt", SwinIR(embed_dim=8, depths=(2,), num_heads=(2,),
                                                              window_size=4)))
    args = _parse(["export", model_file, str(tmp_path / "out.safetensors")])
    assert args.func(args) == 0 and (tmp_path / "out.safetensors").is_file()
    assert "wrote" in capsys.readouterr().out
    args = _parse(["export", model_file, str(tmp_path / "out.bin"), "--format", "pth"])
    assert args.func(args) == 0 and "params" in torch.load(tmp_path / "out.bin", weights_only=True)
    args = _parse(["export", model_file, str(tmp_path / "out.bin")])
    with pytest.raises(ValueError, match="cannot tell the export format"):
        args.func(args)


@needs_models
def test_export_command_with_a_preset(tmp_path):
    args = _parse(["export", "edsr_mini", str(tmp_path / "edsr.safetensors"), "--scale", "4"])
    with pytest.warns(UserWarning, match="random"):
        assert args.func(args) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "edsr.safetensors"), "pt") as handle:
        assert handle.metadata()["scale"] == "4"


def test_bad_format(tmp_path):
    with pytest.raises(ValueError, match="unknown export format"):
        export(ShiftedWindowSR(), tmp_path / "x.onnx", format="tflite")


@pytest.fixture
def model_file(tmp_path):
    """A small model as cdism-fast export writes it."""
    from cdism_fast.models import build

    folder = tmp_path / "models"
    folder.mkdir()
    return export(build("edsr_mini", scale=2), folder / "model.pth")


def _main(argv, capsys):
    from cdism_fast.cli import main

    code = main(argv)
    return code, one_error_line(capsys, "export") if code else None


@needs_models
def test_export_refuses_to_overwrite_its_input_by_any_name(tmp_path, model_file, capsys):
    twin = tmp_path / "twin.pth"
    os.link(model_file, twin)
    before = tree_hash(tmp_path)
    spellings = [str(model_file), str(model_file.parent / ".." / "models" / "model.pth"), str(twin)]
    for target in spellings:
        code, line = _main(["export", str(model_file), target, "--force"], capsys)
        assert code == 2 and f"OUT {target} is an input of this command" in line, line
        assert line.endswith("; writing it would overwrite the input: choose another path (nothing was written)")
    assert tree_hash(tmp_path) == before


@needs_models
def test_export_replaces_its_own_files_and_others_only_with_force(tmp_path, model_file, capsys):
    out = tmp_path / "out.pth"
    out.write_bytes(b"someone's file")
    code, line = _main(["export", str(model_file), str(out)], capsys)
    assert code == 2 and line == (f"cdism-fast export: error: OUT {out} exists and was not written by this command; "
                                  "pass --force to replace it, or choose another path (nothing was written)")
    assert out.read_bytes() == b"someone's file"
    assert _main(["export", str(model_file), str(out), "--force"], capsys)[0] == 0
    assert _main(["export", str(model_file), str(out)], capsys)[0] == 0  # its own file: no --force needed


@needs_models
@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".onnx"])
def test_export_never_writes_through_a_link_and_makes_umask_modes(tmp_path, model_file, suffix, capsys):
    if suffix == ".onnx" and not HAS_ONNXRUNTIME:
        pytest.skip("onnxscript is not installed")
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious")
    out = tmp_path / f"out{suffix}"
    out.symlink_to(victim)
    code, line = _main(["export", str(model_file), str(out)], capsys)
    assert code == 2 and "exists and was not written by this command" in line  # a link is not the command's
    previous = os.umask(0o022)
    try:
        assert _main(["export", str(model_file), str(out), "--force"], capsys)[0] == 0
    finally:
        os.umask(previous)
    assert victim.read_bytes() == b"precious" and not out.is_symlink()
    assert out.stat().st_mode & 0o777 == 0o644
    assert {p.name for p in tmp_path.iterdir()} == {"models", "victim.bin", out.name}


@needs_models
def test_export_checks_the_target_before_loading_the_model(tmp_path, model_file, capsys, monkeypatch):
    import cdism_fast.evaluation

    monkeypatch.setattr(cdism_fast.evaluation, "load_model", lambda *a: pytest.fail("the model was loaded"))
    missing = tmp_path / "nonexist" / "dir" / "x.pth"
    code, line = _main(["export", str(model_file), str(missing)], capsys)
    assert code == 2 and line == (f"cdism-fast export: error: OUT {missing}: the folder {missing.parent} does not "
                                  "exist; create it first or choose another path (nothing was written)")
    assert not (tmp_path / "nonexist").exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / "stage.json").write_text(json.dumps({"stage": "train", "status": "completed"}))
    code, line = _main(["export", str(model_file), str(run / "model.pth"), "--force"], capsys)
    assert code == 2 and f"lies in the run folder {run}, whose files only its stage writes" in line
    os.mkfifo(tmp_path / "fifo.pth")
    code, line = _main(["export", str(model_file), str(tmp_path / "fifo.pth"), "--force"], capsys)
    assert code == 2 and "is a FIFO, socket or device, not a regular file" in line
    monkeypatch.setattr("cdism_fast.cli.outputs.os.access", lambda path, mode: False)
    code, line = _main(["export", str(model_file), str(tmp_path / "new.pth")], capsys)
    assert code == 2 and line.endswith(f"the folder {tmp_path} is not writable; choose another path or change its "
                                       "permissions (nothing was written)")


@needs_models
def test_a_full_disk_names_the_output_and_leaves_nothing(tmp_path, model_file, capsys, monkeypatch):
    import safetensors.torch

    def full(model, filename, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(safetensors.torch, "save_model", full)
    out = tmp_path / "out.safetensors"
    code, line = _main(["export", str(model_file), str(out)], capsys)
    assert code == 2 and line.startswith(f"cdism-fast export: error: cannot write {out}: No space left on device; "
                                         "free space on its disk or write it elsewhere (nothing of it was written; "
                                         "it is made in ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
    monkeypatch.setattr(os, "fsync", lambda descriptor: full(None, None))
    code, line = _main(["export", str(model_file), str(tmp_path / "out.pth")], capsys)
    assert code == 2 and line == (f"cdism-fast export: error: cannot write {tmp_path / 'out.pth'}: No space left on "
                                  "device; free space on its disk or write it elsewhere (nothing of it was written)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


@needs_models
@pytest.mark.parametrize("options, line", [
    (["--input-size", "0", "0"], "--input-size must be a height and width of at least 2 pixels (1 only for a fixed "
                                 "size), got 0 0"),
    (["--input-size", "-5", "5", "--static"], "--input-size must be a height and width of at least 1 pixels, got -5 5"),
    (["--opset", "99999"], "--opset must be an ONNX opset from 7 to 23 (what this torch exports), got 99999"),
    (["--opset", "1"], "--opset must be an ONNX opset from 7 to 23 (what this torch exports), got 1"),
])
def test_export_refuses_onnx_settings_before_loading_the_model(tmp_path, model_file, capsys, monkeypatch, options,
                                                              line):
    import cdism_fast.evaluation
    from cdism_fast.export import onnx_opsets

    monkeypatch.setattr(cdism_fast.evaluation, "load_model", lambda *a: pytest.fail("the model was loaded"))
    line = line.replace("7 to 23", f"{onnx_opsets().start} to {onnx_opsets().stop - 1}")
    before = tree_hash(tmp_path)
    code, printed = _main(["export", str(model_file), str(tmp_path / "z.onnx"), *options], capsys)
    assert code == 2 and printed == f"cdism-fast export: error: {line}"
    assert tree_hash(tmp_path) == before


def test_unknown_suffix_names_the_format_option(tmp_path, capsys):
    code, line = _main(["export", "edsr_mini", str(tmp_path / "out.weird")], capsys)
    assert code == 2 and line == ("cdism-fast export: error: cannot tell the export format from out.weird; name the "
                                  "file *.safetensors, *.pth or *.onnx, or pass --format (one of safetensors, pth, "
                                  "pth-native, onnx)")


@needs_models
@needs_onnxruntime
def test_onnx_export_prints_no_torch_deprecation_noise(tmp_path, model_file, capsys):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _main(["export", str(model_file), str(tmp_path / "z.onnx")], capsys)[0] == 0
    assert not [str(warning.message) for warning in caught if warning.category is FutureWarning]


@needs_models
@needs_onnxruntime
def test_an_opset_the_converter_cannot_reach_is_one_error_and_no_file(tmp_path, caplog):
    from cdism_fast.export import onnx_opsets
    from cdism_fast.models import build

    with pytest.raises(ValueError) as caught:
        export(build("imdn", scale=2), tmp_path / "imdn.onnx", input_size=(16, 16), opset=8)
    assert str(caught.value) == (f"the ONNX converter cannot turn IMDN into opset 8 (torch exported opset 18); ask "
                                 f"for an opset from 18 to {onnx_opsets().stop - 1} (nothing was written)")
    assert list(tmp_path.iterdir()) == [] and "Traceback" not in caplog.text
