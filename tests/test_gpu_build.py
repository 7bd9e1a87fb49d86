"""The CUDA extension compiles and links against CUDA builds of torch, without a GPU.

``make cuda-build-check``: it creates the CUDA-torch virtual environment
outside the clone if missing (``~/.cache/cdism-fast/venv-cuda``, about 5 GB),
builds cdism_fast._C and _C_cuda with ``setup.py build_ext`` for
``TORCH_CUDA_ARCH_LIST="8.6;9.0"`` out of the tree, loads both with that torch and
checks the CUDA kernels are registered and hold sm_86 and sm_90 machine code,
then runs the Triton interpreter suite and compiles on the Triton it pins (3.8).
``make gpu-stack-check``: the same on the oldest supported GPU stack (below).
Both are ``build_check`` tests: ``make build-checks`` runs them (and ``.ci/run`` after ``make test``).
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _nvcc():
    home = os.environ.get("CUDA_HOME")
    candidates = [Path(home) / "bin" / "nvcc"] if home else []
    candidates += [Path("/usr/local/cuda/bin/nvcc"), Path(shutil.which("nvcc") or "/nonexistent")]
    return next((c for c in candidates if c.is_file()), None)


def _make(target: str) -> str:
    """``make -s target`` in the checkout; its output, or the test fails with the output's end."""
    if _nvcc() is None:
        pytest.skip("no CUDA toolkit (nvcc) on this machine: set CUDA_HOME or install the toolkit")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(["make", "-s", target], cwd=REPO_ROOT, capture_output=True, text=True, timeout=3600)
    output = (result.stdout + result.stderr)[-12000:]
    assert result.returncode == 0, f"make {target} failed:\n{output}"
    return result.stdout


@pytest.mark.build_check
def test_cuda_extension_builds_for_sm86_and_sm90():
    output = _make("cuda-build-check")
    assert "cuda build check: torch 2.14.1" in output, output[-12000:]


@pytest.mark.build_check
def test_gpu_machine_stack_builds_and_passes():
    """``make gpu-stack-check``: the oldest supported GPU stack: Python 3.12, torch 2.11.0+cu130 and
    Triton 3.6.0 (a venv outside the clone, about 3 GB from PyPI): gpu_check.sh's build of
    both extensions for sm_86/sm_90, then the op, optimizer, model and Triton tests on it."""
    output = _make("gpu-stack-check")
    assert "cuda build check: torch 2.11.0" in output and "gpu stack check:" in output, output[-12000:]


def test_gpu_backends_are_registered_and_say_why_they_cannot_run():
    import torch

    import cdism_fast.ops as ops
    from cdism_fast.ops import BackendUnavailable, registered_ops

    expected = {"window_attention": "triton", "laplacian_loss": "triton", "distillation_loss": "triton",
                "obproxsg_step": "cuda", "gaussian_blur": "cuda", "gaussian_highpass": "cuda"}
    for name, backend in expected.items():
        assert backend in registered_ops()[name].backends, name
        if not torch.cuda.is_available():
            assert backend in ops.unavailable_backends(name, "cuda"), name
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(BackendUnavailable, match="runs on cuda tensors"):
        ops.laplacian_loss(x, x, 2, backend="triton")
    with pytest.raises(BackendUnavailable, match="runs on cuda tensors"):
        ops.gaussian_highpass(x, backend="cuda")
