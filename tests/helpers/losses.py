"""Assertions every pairwise loss op's tests make (charbonnier, laplacian_loss)."""
import torch

import float64_references as ref
from tolerances import assert_close


def assert_gradients_in_every_layout(loss, x: torch.Tensor, y: torch.Tensor, backend: str) -> None:
    """``loss(a, b, backend)`` gives the reference's gradients of both inputs in every layout of
    ``float64_references.layouts`` (alike, then x contiguous against each layout of y), and of y alone."""
    x_ref, y_ref = x.clone().requires_grad_(), y.clone().requires_grad_()
    loss(x_ref, y_ref, "reference").backward()
    x_layouts, y_layouts = ref.layouts(x), ref.layouts(y)
    pairs = [(name, x_layouts[name], y_layouts[name]) for name in x_layouts]
    pairs += [(f"contiguous/{name}", x.clone(), yl) for name, yl in ref.layouts(y).items()]
    for name, xl, yl in pairs:
        xl.requires_grad_(), yl.requires_grad_()
        loss(xl, yl, backend).backward()
        assert_close(xl.grad, x_ref.grad, msg=name)
        assert_close(yl.grad, y_ref.grad, msg=name)
    # Only y requiring a gradient (a target that is itself trained).
    y_only = y.clone().requires_grad_()
    loss(x, y_only, backend).backward()
    assert_close(y_only.grad, y_ref.grad)


def assert_half_inputs_compute_in_float32(loss, x: torch.Tensor, y: torch.Tensor, expected: torch.Tensor) -> None:
    """``loss(x, y)`` of fp16/bf16 inputs is in their dtype, as close to the float64 ``expected`` as the dtype
    allows (the sums run in fp32), and so is x's gradient."""
    x.requires_grad_()
    out = loss(x, y)
    assert out.dtype == x.dtype
    assert_close(out, expected)
    out.backward()
    assert x.grad.dtype == x.dtype
