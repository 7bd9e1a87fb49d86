"""Kernel fuzzing against the reference: random shapes, layouts and dtypes, forward and gradient.

A few cases by default; ``CDISM_FUZZ=N`` runs N per op.
"""
import os

import numpy as np
import pytest
import torch

from cdism_fast.ops import available_backends

from tolerances import TOLERANCES

FUZZ_CASES = int(os.environ.get("CDISM_FUZZ", "3"))


def fast_backends(op: str) -> list:
    """The backends of ``op`` other than the reference that can run here (the test skips without one)."""
    backends = [b for b in available_backends(op) if b != "reference"]
    if not backends:
        pytest.skip(f"{op} has no backend other than the reference here")
    return backends


def _layout(tensor: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "channels_last":
        return tensor.contiguous(memory_format=torch.channels_last)
    if kind == "strided":  # every other column of a wider buffer
        wide = torch.empty(*tensor.shape[:-1], tensor.shape[-1] * 2, dtype=tensor.dtype)
        wide[..., ::2] = tensor
        return wide[..., ::2]
    return tensor


def fuzz_inputs(rng: np.random.Generator, count: int, dtype):
    """``count`` random images of one random shape and layout, and a line describing them."""
    channels = int(rng.integers(1, 6))
    height, width = (int(v) for v in rng.integers(17, 98, size=2))
    layout = ("contiguous", "channels_last", "strided")[int(rng.integers(0, 3))]
    seed = int(rng.integers(0, 2 ** 31))
    generator = torch.Generator().manual_seed(seed)
    tensors = [_layout(torch.rand(2, channels, height, width, generator=generator, dtype=dtype), layout)
               for _ in range(count)]
    return tensors, f"seed={seed} shape=(2, {channels}, {height}, {width}) layout={layout} dtype={dtype}"


def assert_as_accurate(actual, reference, exact, dtype, msg):
    """``actual`` is within ``dtype``'s tolerance of the float64 ``exact`` result, or no further from it than
    twice the same-dtype ``reference`` is (an L1 term's gradient jumps where a difference changes sign, and
    fp32 and fp64 see some of those signs differently: the reference then misses as much)."""
    tol = TOLERANCES[dtype]
    exact = exact.double()
    allowed = tol["atol"] + tol["rtol"] * exact.abs() + 2 * (reference.double() - exact).abs()
    excess = ((actual.double() - exact).abs() - allowed).nan_to_num(nan=0.0)
    assert excess.max() <= 0, f"{msg}: off the float64 result by up to {float(excess.max()):.3g} more than allowed " \
                              f"at {int((excess > 0).sum())} of {excess.numel()} elements"


def _exact(function, inputs, grad_out):
    """The reference in float64 (the standard each backend is held to), and its gradient for inputs[0]."""
    leaves = [inputs[0].detach().double().requires_grad_(), *(t.double() for t in inputs[1:])]
    out = function(*leaves)
    return out, torch.autograd.grad(out, leaves[0], grad_out.double())[0]


def _run(function, inputs, grad_out, backend):
    leaf = inputs[0].detach().clone().requires_grad_()
    out = function(leaf, *inputs[1:], backend)
    return out, torch.autograd.grad(out, leaf, grad_out)[0]


def fuzz_image_op(op: str, count: int, function) -> None:
    """Every fast backend of image op ``op`` against the reference: ``function(*count images, backend)``,
    forward and the gradient of the first image."""
    backends = fast_backends(op)
    rng = np.random.default_rng(sum(map(ord, op)))
    for case in range(FUZZ_CASES):
        dtype = (torch.float32, torch.float64)[case % 2]
        inputs, described = fuzz_inputs(rng, count, dtype)
        shape = function(*inputs, "reference").shape
        grad_out = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(case))
        expected, expected_grad = _exact(lambda *t: function(*t, "reference"), inputs, grad_out)
        reference, reference_grad = _run(function, inputs, grad_out, "reference")
        for backend in backends:
            actual, grad = _run(function, inputs, grad_out, backend)
            assert_as_accurate(actual, reference, expected, dtype, f"{op} {backend} forward, {described}")
            assert_as_accurate(grad, reference_grad, expected_grad, dtype, f"{op} {backend} gradient, {described}")
