"""The op layer: backend selection, reasons, overrides and the missing-extension fallback."""
import subprocess
import sys

import pytest
import torch

from cdism_fast import _extension, ops
from cdism_fast.ops import _dispatch
from cdism_fast.ops.charbonnier import OP as CHARBONNIER

from op_targets import CUDA, DEVICE, require


def _select(backend="auto", reduction="mean"):
    x = torch.randn(2, 3, 4, 4)
    return CHARBONNIER.select(backend, x, x, x, 1e-3, reduction).name


def test_auto_prefers_cpp_on_cpu():
    assert ops.available_backends("charbonnier") == ["cpp", "reference"]
    assert _select() == "cpp"


def test_auto_skips_backend_whose_check_refuses_the_call():
    assert _select(reduction="none") == "reference"
    with pytest.raises(ops.BackendUnavailable, match="reduction='none' is not fused"):
        _select("cpp", reduction="none")


def test_backend_of_another_device_says_why():
    with pytest.raises(ops.BackendUnavailable, match="has no 'cuda' backend"):
        _select("cuda")
    reasons = ops.unavailable_backends("charbonnier", "cuda")
    assert "runs on cpu tensors, not cuda" in reasons["cpp"]


def test_unknown_names_are_value_errors(monkeypatch):
    with pytest.raises(ValueError, match="backend='fastest' is unknown"):
        _select("fastest")
    with pytest.raises(ValueError, match="unknown op 'conv'"):
        ops.available_backends("conv")
    monkeypatch.setenv("CDISM_BACKEND", "gpu")
    with pytest.raises(ValueError, match="CDISM_BACKEND='gpu' is not a backend"):
        _select()


def test_environment_forces_a_backend(monkeypatch):
    monkeypatch.setenv("CDISM_BACKEND", "reference")
    assert _select() == "reference"
    # An op without the forced backend keeps choosing by itself.
    monkeypatch.setenv("CDISM_BACKEND", "triton")
    assert _select() == "cpp"


def test_onnx_export_uses_the_reference(monkeypatch):
    monkeypatch.setattr(_dispatch, "_exporting", lambda: True)
    assert _select() == "reference"


def test_missing_extension_falls_back_and_keeps_the_error(monkeypatch, capsys):
    broken = _extension.ExtensionStatus("cdism_fast._C", error="prebuilt cdism_fast._C: ImportError: boom")
    monkeypatch.setitem(_extension._status, "cpp", broken)
    assert ops.available_backends("charbonnier") == ["reference"]
    assert _select() == "reference"
    with pytest.raises(ops.BackendUnavailable, match="ImportError: boom"):
        _select("cpp")
    x, y = torch.randn(3, 5), torch.randn(3, 5)
    torch.testing.assert_close(ops.charbonnier(x, y), torch.sqrt((x - y) ** 2 + 1e-6).mean())

    from cdism_fast.cli import main
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cdism_fast._C" in out and "MISSING" in out and "ImportError: boom" in out


def test_registering_a_backend_twice_is_an_error():
    op = _dispatch.Op("probe")
    op.implementation("reference", devices=("cpu",))(lambda x: x)
    with pytest.raises(ValueError, match="op 'probe' already has a 'reference' backend"):
        op.implementation("reference", devices=("cpu",))
    with pytest.raises(ValueError, match="unknown backend name 'fast'"):
        op.implementation("fast", devices=("cpu",))
    with pytest.raises(ValueError, match="op 'charbonnier' is registered twice"):
        _dispatch.new_op("charbonnier")


def test_every_backend_is_registered_with_its_own_requirement():
    # One function may serve two backends (CPU and CUDA kernels of one compiled op),
    # but each registration says why it cannot run for its own reason.
    blur = ops.registered_ops()["gaussian_blur"].backends
    assert blur["cuda"].fn is blur["cpp"].fn and blur["cuda"].requirement is not blur["cpp"].requirement
    assert blur["cuda"].devices == {"cuda"} and blur["cpp"].devices == {"cpu"}
    for name, backend in (("window_attention", "triton"), ("laplacian_loss", "triton"),
                          ("distillation_loss", "triton"), ("obproxsg_step", "cuda")):
        assert backend in ops.registered_ops()[name].backends, name
    assert ops.registered_ops()["window_attention"].backends["triton"].check is not None


def test_every_registered_op_has_a_reference():
    for name, op in ops.registered_ops().items():
        assert "reference" in op.backends, name
        assert op.backends["reference"].devices >= {"cpu", "cuda"}, name


def test_extension_check_is_marked_constant_as_the_public_decorator_does():
    def probe():
        return None

    public = torch.compiler.assume_constant_result(probe).__dict__.copy()
    assert public and _extension.missing_reason.__dict__.items() >= public.items()


def test_import_does_not_load_dynamo():
    # Dynamo costs over a second of start-up to every CLI call; only torch.compile needs it.
    code = "import sys, cdism_fast.cli, cdism_fast.training; print('torch._dynamo' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_auto_picks_the_gpu_backends():
    for name, backend in (("gaussian_highpass", "cuda"), ("laplacian_loss", "triton"),
                          ("window_attention", "triton"), ("obproxsg_step", "cuda")):
        require(name, backend)
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    q = torch.randn(4, 2, 64, 10, device=DEVICE)
    table = torch.randn(225, 2, device=DEVICE)
    chosen = {
        "gaussian_highpass": ops.registered_ops()["gaussian_highpass"].select("auto", x, x).name,
        "laplacian_loss": ops.registered_ops()["laplacian_loss"].select("auto", x, x, x, 5, "mean").name,
        "window_attention": ops.registered_ops()["window_attention"].select(
            "auto", q, q, q, q, table, 8, 0, None, 0.3).name,
        "obproxsg_step": ops.registered_ops()["obproxsg_step"].select("auto", x, [x], [x], 0.1, 0.1, False,
                                                                       0.0).name,
    }
    assert chosen == {"gaussian_highpass": "cuda", "laplacian_loss": "triton", "window_attention": "triton",
                      "obproxsg_step": "cuda"}
