"""Tolerances per dtype, for every comparison of a backend against a reference.

float32: kernels reorder sums, so allow a few ulps of the values' scale.
float16/bfloat16: inputs are rounded to 11/8 significant bits and the outputs
are rounded once more; accumulation is in fp32 on every backend.
"""
import torch

TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=5e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=3e-2, atol=1e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = None, msg: str = ""):
    """``actual`` equals ``expected`` within the tolerance of ``dtype`` (default: actual's dtype)."""
    tol = TOLERANCES[dtype or actual.dtype]
    torch.testing.assert_close(actual.double(), expected.double(), **tol, equal_nan=True,
                               msg=(lambda m: f"{msg}\n{m}") if msg else None)
