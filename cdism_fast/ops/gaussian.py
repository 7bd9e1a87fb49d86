"""5x5 Gaussian blur and the high-pass filter HF(x) = x - blur(x) of the paper.

The blur is depthwise with k = outer(b, b) / 256, b = [1, 4, 6, 4, 1], and
reflect padding of 2 on each side (no edge repeat), so the output has the input's
size; reflect padding needs images at least 3x3. Computed in fp32 (fp64 for
fp64 inputs), returned in the input's dtype.
Backends: ``reference`` (PyTorch conv2d), ``cpp`` (separable, one pass, CPU) and
``cuda`` (the same op's CUDA kernel, csrc/cuda/gaussian.cu).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _extension
from ._checks import accumulation_dtype, check_image
from ._dispatch import new_op

#: Binomial taps of one axis; the 2-D kernel is their outer product over 256.
BINOMIAL_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)
#: Smallest height and width reflect padding of 2 accepts.
MIN_SIZE = 3

BLUR_OP = new_op("gaussian_blur")
HIGHPASS_OP = new_op("gaussian_highpass")


def gaussian_kernel(dtype=torch.float32, device=None) -> torch.Tensor:
    """The 5x5 kernel outer(b, b) / 256."""
    b = torch.tensor(BINOMIAL_TAPS, dtype=dtype, device=device)
    return torch.outer(b, b) / 256


def blur_reference(x: torch.Tensor) -> torch.Tensor:
    """Depthwise 5x5 Gaussian with reflect padding, in ``x``'s dtype (no casts)."""
    channels = x.shape[1]
    weight = gaussian_kernel(x.dtype, x.device).expand(channels, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), weight, groups=channels)


@BLUR_OP.implementation("reference", devices=("cpu", "cuda"))
def gaussian_blur_reference(x):
    return blur_reference(x.to(accumulation_dtype(x.dtype))).to(x.dtype)


@HIGHPASS_OP.implementation("reference", devices=("cpu", "cuda"))
def gaussian_highpass_reference(x):
    acc = x.to(accumulation_dtype(x.dtype))
    return (acc - blur_reference(acc)).to(x.dtype)


def _cpp_requirement():
    return _extension.missing_reason("cpp")


def _cuda_requirement():
    return _extension.missing_reason("cuda")


# One compiled op, two kernels: CPU (cdism_fast._C) and CUDA (cdism_fast._C_cuda).
@BLUR_OP.implementation("cuda", devices=("cuda",), requirement=_cuda_requirement)
@BLUR_OP.implementation("cpp", devices=("cpu",), requirement=_cpp_requirement)
def gaussian_blur_compiled(x):
    return torch.ops.cdism_fast.gaussian_filter(x, False)


@HIGHPASS_OP.implementation("cuda", devices=("cuda",), requirement=_cuda_requirement)
@HIGHPASS_OP.implementation("cpp", devices=("cpu",), requirement=_cpp_requirement)
def gaussian_highpass_compiled(x):
    return torch.ops.cdism_fast.gaussian_filter(x, True)


@_extension.on_load("cpp")
def _register_cpp_op():
    @torch.library.register_fake("cdism_fast::gaussian_filter")
    def _(x, highpass):
        return torch.empty_like(x)

    @torch.library.register_fake("cdism_fast::gaussian_filter_backward")
    def _(grad, highpass):
        return torch.empty_like(grad)

    # Both ops are linear, and each is the other's adjoint: the backward of one
    # is the other applied to the incoming gradient (double backward included).
    def setup_context(ctx, inputs, output):
        ctx.highpass = inputs[1]

    def filter_backward(ctx, grad):
        return torch.ops.cdism_fast.gaussian_filter_backward(grad, ctx.highpass), None

    def adjoint_backward(ctx, grad):
        return torch.ops.cdism_fast.gaussian_filter(grad, ctx.highpass), None

    torch.library.register_autograd("cdism_fast::gaussian_filter", filter_backward, setup_context=setup_context)
    torch.library.register_autograd("cdism_fast::gaussian_filter_backward", adjoint_backward,
                                    setup_context=setup_context)


def gaussian_blur(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Depthwise 5x5 Gaussian blur of the NCHW batch ``x`` (k = outer(b, b)/256,
    b = [1, 4, 6, 4, 1]) with reflect padding of 2: same size out, ``x``'s dtype.

    ``x`` must be at least 3x3 (reflect padding of 2).

    >>> import torch
    >>> from cdism_fast.ops import gaussian_blur
    >>> impulse = torch.zeros(1, 1, 9, 9)
    >>> impulse[0, 0, 4, 4] = 256.0
    >>> gaussian_blur(impulse)[0, 0, 4, 2:7]  # the middle row of the kernel, times 256
    tensor([ 6., 24., 36., 24.,  6.])
    >>> tuple(gaussian_blur(torch.rand(2, 3, 5, 7)).shape)
    (2, 3, 5, 7)
    """
    check_image("x", x, MIN_SIZE)
    return BLUR_OP(backend, x, x)


def gaussian_highpass(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """High-pass filter ``x - gaussian_blur(x)``, the paper's HF(x).

    >>> import torch
    >>> from cdism_fast.ops import gaussian_highpass
    >>> gaussian_highpass(torch.full((1, 3, 6, 6), 0.5)).abs().max().item()  # a flat image has no high frequencies
    0.0
    >>> _ = torch.manual_seed(0)
    >>> x = torch.rand(1, 3, 16, 16)
    >>> round(gaussian_highpass(x).mean().item(), 2)
    0.0
    """
    check_image("x", x, MIN_SIZE)
    return HIGHPASS_OP(backend, x, x)
