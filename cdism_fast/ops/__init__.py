"""The ops of cdism_fast, each with a reference and faster backends.

Every public op takes ``backend="auto"`` (or a backend name); see
:mod:`cdism_fast.ops._dispatch` for how one is chosen.
"""
from ._dispatch import AUTO_ORDER, BackendUnavailable, available_backends, registered_ops, unavailable_backends
from .charbonnier import charbonnier
from .obproxsg import obproxsg_step
from .distillation import distillation_loss
from .gaussian import gaussian_blur, gaussian_highpass
from .laplacian import laplacian_loss, laplacian_pyramid
from .window_attention import relative_position_index, shift_window_mask, window_attention
from . import cuda as _cuda_backends  # noqa: E402,F401  registers the "cuda" backends
from . import triton as _triton_backends  # noqa: E402,F401  registers the "triton" backends

__all__ = [
    "AUTO_ORDER",
    "BackendUnavailable",
    "available_backends",
    "registered_ops",
    "unavailable_backends",
    "charbonnier",
    "obproxsg_step",
    "gaussian_blur",
    "gaussian_highpass",
    "laplacian_pyramid",
    "laplacian_loss",
    "distillation_loss",
    "window_attention",
    "relative_position_index",
    "shift_window_mask",
]
