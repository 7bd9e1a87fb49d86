"""CUDA C++ backends (``cdism_fast._C_cuda``, csrc/cuda/): the OBProx-SG step and the Gaussian filters.

These ops share their schemas with the C++ CPU kernels (csrc/registration.cpp)
and their fake and autograd registrations (in each op's module): only the
dispatch key differs, so each "cuda" backend calls the same ``torch.ops`` entry
as the "cpp" one, with CUDA tensors, and requires the CUDA library instead.
"""
from __future__ import annotations

from .. import _extension
from ._dispatch import Backend
from .gaussian import BLUR_OP, HIGHPASS_OP
from .obproxsg import OP as OBPROXSG_OP


def missing_reason():
    return _extension.missing_reason("cuda")


def _register() -> None:
    for op in (OBPROXSG_OP, BLUR_OP, HIGHPASS_OP):
        cpp = op.backends["cpp"]
        op.register(Backend("cuda", cpp.fn, frozenset({"cuda"}), cpp.dtypes, missing_reason))


_register()
