"""Model files of every kind through load_pretrained: the workflow's model.pt and its record, the
wrappers and prefixes, files that do not fit, files of no known layout (each family's own layouts:
tests/test_<family>.py)."""
import pytest
import torch

from cdism_fast import models
from cdism_fast.models import CheckpointMismatch, load_pretrained
from cdism_fast.models.checkpoints import checkpoint_formats
from cdism_fast.training.artifacts import save_model

from model_references import save, to_edsr_pytorch

# --- files that do not fit ---------------------------------------------------------------------------------------

def test_another_architecture_by_name(tmp_path):
    path = save(tmp_path, {"params": models.build("swinir_mini").state_dict()})
    with pytest.raises(CheckpointMismatch, match=r"does not fit edsr_mini ×2: missing keys \(first 8 of \d+\): "
                                                 r"body.0.conv1.weight.*unexpected keys.*patch_embed.norm.weight.*"
                                                 r"mis-shaped keys: conv_first.weight: file \(24, 3, 3, 3\)"):
        load_pretrained(path, name="edsr_mini")


def test_wrong_scale_and_size(tmp_path):
    path = save(tmp_path, models.build("edsr_mini").state_dict())
    with pytest.raises(CheckpointMismatch, match=r"edsr_mini ×3: mis-shaped keys.*upsample.0.weight: "
                                                 r"file \(64, 16, 3, 3\), model \(144, 16, 3, 3\)"):
        load_pretrained(path, scale=3)
    with pytest.raises(CheckpointMismatch, match=r"edsr_baseline ×2: missing keys \(first 8 of 32\): "
                                                 r"body.8.conv1.weight.*; mis-shaped keys \(first 8 of 39\)"):
        load_pretrained(path, name="edsr_baseline")


def test_missing_and_unexpected_keys(tmp_path):
    state = models.build("edsr_mini").state_dict()
    state.pop("conv_last.weight")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatch, match="missing keys: conv_last.weight; unexpected keys: extra.weight"):
        load_pretrained(save(tmp_path, state))
    file = to_edsr_pytorch(models.build("edsr_mini").state_dict(), n_b=8)
    file["body.3.body.1.weight"] = torch.zeros(16)  # a batch norm EDSR has not: named as in the file
    file.pop("tail.1.bias")
    with pytest.raises(CheckpointMismatch, match=r"missing \(EDSR names\) keys: conv_last.bias; "
                                                 r"unexpected keys: body.3.body.1.weight"):
        load_pretrained(save(tmp_path, file))


def test_nothing_is_loaded_on_mismatch(tmp_path, monkeypatch):
    loads = []
    original_load = torch.nn.Module.load_state_dict
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", lambda self, *a, **k: loads.append(self)
                        or original_load(self, *a, **k))
    state = models.build("edsr_mini").state_dict()
    state["body.0.conv1.weight"] = state["body.0.conv1.weight"][:8]
    with pytest.raises(CheckpointMismatch, match="body.0.conv1.weight: file \\(8, 16, 3, 3\\)"):
        load_pretrained(save(tmp_path, state))
    assert loads == []


def test_unrecognised_files(tmp_path):
    # every format is named, whichever family's comes first
    with pytest.raises(CheckpointMismatch, match="is neither .*EDSR-PyTorch \\(head.0.weight\\).*first keys are "
                                                 "\\['conv1.weight'\\]"):
        load_pretrained(save(tmp_path, {"conv1.weight": torch.zeros(1)}))
    with pytest.raises(ValueError, match="must hold a state dict.*Tensor"):
        load_pretrained(save(tmp_path, torch.zeros(3)))
    with pytest.raises(ValueError, match="must map names to tensors; \\['epoch'\\] are not tensors"):
        load_pretrained(save(tmp_path, {"epoch": 3, "conv_first.weight": torch.zeros(1)}))
    with pytest.raises(ValueError, match="params_key must name a state dict.*'params_emma'"):
        load_pretrained(save(tmp_path, {"params": {}}), params_key="params_emma")
    gray = models.build("edsr_mini").state_dict()
    gray["conv_first.weight"] = gray["conv_first.weight"][:, :1]
    with pytest.raises(CheckpointMismatch, match="1 input channels"):
        load_pretrained(save(tmp_path, gray))
    denoiser = models.build("swinir_mini").state_dict()
    denoiser["conv_last.weight"] = torch.zeros(3, 24, 3, 3)
    with pytest.raises(CheckpointMismatch, match="denoising"):
        load_pretrained(save(tmp_path, denoiser))


def test_a_file_of_no_family_names_every_format(tmp_path):
    # An RCAN-like layout (no family reads it): the error names every format it was compared against.
    described = [fmt.describe() for _, fmt in checkpoint_formats()]
    expected = (f"is neither {', '.join(described[:-1])} nor {described[-1]}; its first keys are "
                "['sub_mean.weight', 'head.1.weight'")
    rcan = {"sub_mean.weight": torch.zeros(3, 3, 1, 1), "head.1.weight": torch.zeros(8, 3, 3, 3),
            "body.0.body.0.body.0.body.0.weight": torch.zeros(8, 8, 3, 3)}
    with pytest.raises(CheckpointMismatch) as refused:
        load_pretrained(save(tmp_path, rcan))
    assert expected in str(refused.value)
    assert "IMDN (fea_conv.weight, IMDB<i>.c1.weight)" in described


def test_model_file_records_are_kept_and_checked(tmp_path):
    model = models.from_structure("edsr", 2, 2, 8, 2, res_scale=0.5, rgb_range=1.0)
    save_model(tmp_path / "m.pt", model)
    assert load_pretrained(tmp_path / "m.pt").config() == model.config()
    with pytest.raises(ValueError, match="holds a ×2 model, not ×3"):
        load_pretrained(tmp_path / "m.pt", scale=3)
    swin = models.from_structure("swinir", 2, 2, 12, 2, num_heads=3, window_size=4, attention_backend="reference")
    save_model(tmp_path / "s.pt", swin)
    assert load_pretrained(tmp_path / "s.pt", attention_backend="auto").attention_backend == "auto"


def test_a_layout_is_detected_by_its_key_patterns():
    layout = models.CheckpointFormat("Demo", ("head.weight", "blocks.<i>.conv.weight", "*.attn.*"), lambda *a: {})
    assert layout.detect({"head.weight": 0, "blocks.12.conv.weight": 0, "layers.0.attn.qkv": 0})
    assert not layout.detect({"head.weight": 0, "blocks.x.conv.weight": 0, "layers.0.attn.qkv": 0})  # <i>: digits
    assert not layout.detect({"head.weight": 0, "blocks.1.conv.weight": 0})  # every pattern must match a key
    assert not layout.detect({"head.weight.extra": 0, "blocks.1.conv.weight": 0, "a.attn.b": 0})  # whole keys
    assert layout.describe() == "Demo (head.weight, blocks.<i>.conv.weight, *.attn.*)"
    with pytest.raises(TypeError, match="keys of checkpoint format 'Demo' must be a non-empty tuple"):
        models.CheckpointFormat("Demo", "head.weight", lambda *a: {})


def test_safetensors_model_files_are_read_as_tensors_and_damaged_ones_refused(tmp_path):
    from safetensors.torch import save_file

    model = models.build("edsr_mini")
    save_file(model.state_dict(), tmp_path / "edsr_mini.safetensors")
    loaded = load_pretrained(tmp_path / "edsr_mini.safetensors")
    assert loaded.structure() == model.structure()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    (tmp_path / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="cannot read checkpoint .*broken.safetensors .*not a safetensors file"):
        load_pretrained(tmp_path / "broken.safetensors")
