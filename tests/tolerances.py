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
#: Largest absolute difference allowed between one of our models and another package's implementation of the
#: same network on the same weights (spandrel's, for an exported file): the two order their sums differently.
INTEROP_MAX_ABS = {torch.float32: 1e-5}


def assert_compiles_like_eager(loss_fn, leaf: torch.Tensor, *rest, backend: str):
    """``torch.compile(fullgraph=True)`` of the scalar ``loss_fn(leaf, *rest)`` gives eager's value
    and gradient with respect to ``leaf``. Inductor for the kernels; the reference's many small
    ops take minutes to generate code for on two cores, so it is traced with aot_eager."""
    compiler = "aot_eager" if backend == "reference" else "inductor"
    leaf = leaf.detach().requires_grad_()
    loss = torch.compile(loss_fn, fullgraph=True, backend=compiler)(leaf, *rest)
    (grad,) = torch.autograd.grad(loss, leaf)
    eager_leaf = leaf.detach().requires_grad_()
    eager = loss_fn(eager_leaf, *rest)
    eager.backward()
    assert_close(loss, eager)
    assert_close(grad, eager_leaf.grad)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = None, msg: str = ""):
    """``actual`` equals ``expected`` within the tolerance of ``dtype`` (default: actual's dtype)."""
    tol = TOLERANCES[dtype or actual.dtype]
    torch.testing.assert_close(actual.double(), expected.double(), **tol, equal_nan=True,
                               msg=(lambda m: f"{msg}\n{m}") if msg else None)
