"""Triton kernels: window attention and the Laplacian-pyramid loss, forward and backward.

This package holds what the op modules need to register their ``triton``
backend without importing Triton's kernels (devices, dtypes, the reason Triton
cannot run here); the kernel modules themselves (``laplacian``,
``window_attention``) import triton and are imported once by
:func:`import_kernels`, after every op module (see docs/DEVELOPING.md, "Writing
an op").

Kernels are written for Triton 3.6 through 3.9 (3.6 being the oldest supported,
the CUDA build of torch pinning 3.8, PyPI serving 3.9): plain pointer arithmetic with
masks (block pointers are gone in 3.9), no libdevice calls, fp16/bf16 converted
to fp32 right after every load (the interpreter computes bf16 wrongly
otherwise), and one fixed launch configuration per kernel (the interpreter
cannot run multi-config autotuning). Each launch is wrapped in a
``torch.library.custom_op`` with fake and autograd registrations, so
``torch.compile(fullgraph=True)`` traces through it.

The backends run on CUDA tensors. With ``TRITON_INTERPRET=1`` in the
environment *before cdism_fast is imported* (``@triton.jit`` reads it when the
kernels are defined), they run on CPU tensors in Triton's interpreter instead:
slow, for checking the kernels on machines without a GPU.
"""
from __future__ import annotations

import os
import re
from typing import Optional

import torch

#: Oldest Triton the kernels are written for.
MIN_TRITON = (3, 6)

#: Kernels were defined for the Triton interpreter (CPU tensors) rather than for a GPU.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

#: Device types the Triton backends accept.
DEVICES = ("cuda", "cpu") if INTERPRET else ("cuda",)


def _find_missing_reason() -> Optional[str]:
    try:
        import triton
    except Exception as exc:  # ImportError, or a broken install failing in its own import
        return (f"triton is not importable ({type(exc).__name__}: {exc}); "
                "install it with pip install 'cdism_fast[triton]'")
    version = tuple(int(part) for part in re.findall(r"\d+", triton.__version__)[:2])
    if version < MIN_TRITON:
        return f"triton {triton.__version__} is older than {'.'.join(map(str, MIN_TRITON))}"
    return None


_MISSING = _find_missing_reason()


def missing_reason() -> Optional[str]:
    """``None`` when the Triton kernels can be defined here, else why not."""
    return _MISSING


#: Dtypes the Triton backends accept (the kernels compute in fp32).
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: Largest head dim of the window-attention kernel (one tile of D columns per program).
MAX_HEAD_DIM = 64


def import_kernels() -> None:
    """Define the kernels and their custom ops, where Triton is usable (``cdism_fast.ops`` calls
    this once, after every op module: the kernels' host code builds on those modules)."""
    if _MISSING is None:
        from . import laplacian, window_attention  # noqa: F401
