"""The backends each op's tests run on, as pytest parameters that say why one cannot run here.

Every tests/test_<op>.py parametrizes its assertions with these lists:

- :func:`cpu_backends`: ``cpp`` and ``reference`` on CPU tensors and, with
  ``triton=True``, the op's Triton backend on CPU tensors in Triton's
  interpreter. ``@triton.jit`` reads ``TRITON_INTERPRET`` when the kernels are
  defined (when cdism_fast is imported), so those cases carry the
  ``interpreter`` marker and run only in the process that
  tests/test_triton_interpret.py starts with ``TRITON_INTERPRET=1``.
- :func:`gpu_backends`: the op's CUDA and Triton backends on CUDA tensors
  (``gpu`` marker, what benchmarks/gpu_check.sh runs). Skipped without a CUDA
  device; with one, a backend that cannot run fails the test (a broken build
  there is an error, not a missing feature).
"""
import os

import pytest
import torch

from cdism_fast import ops

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda") if CUDA else None

_NOT_INTERPRETING = ("Triton on CPU tensors runs in Triton's interpreter: tests/test_triton_interpret.py runs "
                     "these cases in a process started with TRITON_INTERPRET=1")


def _backends(op_name: str) -> dict:
    return ops.registered_ops()[op_name].backends


def cpu_backends(op_name: str, triton: bool = False) -> list:
    """``[triton,] cpp, reference`` of ``op_name`` on CPU tensors, in ``backend="auto"``'s order."""
    params = []
    if triton and "triton" in _backends(op_name):
        params.append(pytest.param("triton", id="triton", marks=(
            pytest.mark.interpreter, pytest.mark.skipif(not INTERPRETING, reason=_NOT_INTERPRETING))))
    if "cpp" in _backends(op_name):
        reason = ops.unavailable_backends(op_name, "cpu").get("cpp")
        params.append(pytest.param("cpp", id="cpp", marks=pytest.mark.skipif(reason is not None,
                                                                            reason=f"cpp: {reason}")))
    params.append(pytest.param("reference", id="reference"))
    return params


def skip_without_cpp(op_name: str):
    """A skipif mark for tests of the C++ op itself (opcheck of its registrations)."""
    reason = ops.unavailable_backends(op_name, "cpu").get("cpp")
    return pytest.mark.skipif(reason is not None, reason=f"the C++ extension is not available: {reason}")


def interpreter_backends(op_name: str) -> list:
    """The Triton backend of ``op_name`` alone, for assertions about its own custom ops."""
    return [p for p in cpu_backends(op_name, triton=True) if p.values == ("triton",)]


def gpu_backends(op_name: str, names=("cuda", "triton")) -> list:
    """The CUDA-tensor backends of ``op_name`` among ``names``."""
    return [pytest.param(name, id=f"{name}-gpu", marks=(
        pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="no CUDA device")))
        for name in names if name in _backends(op_name)]


def require(op_name: str, backend: str) -> None:
    """Fail (on a CUDA machine) when ``backend`` of ``op_name`` cannot run on CUDA tensors."""
    reason = ops.unavailable_backends(op_name, "cuda").get(backend)
    if reason is not None:
        pytest.fail(f"backend unavailable on a CUDA machine: {reason}")


def float64_reference(op, *tensors, **kwargs):
    """op(backend="reference") on float64 copies of the tensors, and those copies (the leaves
    to take the reference's input gradients with respect to)."""
    leaves = [t.detach().double().requires_grad_(t.requires_grad) for t in tensors]
    out = op(*leaves, backend="reference", **kwargs)
    return out, leaves


def loss_scale(dtype):
    """An incoming gradient of 2^14, as loss scaling does: a mean over millions of pixels has
    gradients near 1e-7, below fp16's normal range."""
    return torch.tensor(2.0 ** 14, device=DEVICE, dtype=dtype)


def relative(tensor, scale_of):
    """tensor / (max |scale_of|): compares sums of many terms relative to their size."""
    return tensor.double() / scale_of.double().abs().max().clamp_min(1e-30)

