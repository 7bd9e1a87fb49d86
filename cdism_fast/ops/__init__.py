"""The ops of cdism_fast, each with a reference and faster backends.

Every public op takes ``backend="auto"`` (or a backend name); see
:mod:`cdism_fast.ops._dispatch` for how one is chosen.
"""
from .._extension import on_load as on_extension_load
from ._checks import check_image, check_nonnegative, check_reduction
from ._dispatch import (
    AUTO_ORDER,
    BACKEND_NAMES,
    BackendUnavailable,
    available_backends,
    registered_ops,
    unavailable_backends,
)
from .charbonnier import CHARBONNIER_EPS, charbonnier
from .distillation import STUDENT_LOSSES, distillation_loss, distillation_min_size
from .gaussian import gaussian_blur, gaussian_highpass
from .laplacian import check_levels, laplacian_loss, laplacian_pyramid
from .obproxsg import obproxsg_step
from .triton import import_kernels as _import_triton_kernels
from .window_attention import relative_position_index, shift_window_mask, window_attention

_import_triton_kernels()  # last: the Triton kernels' host code builds on the op modules above

__all__ = [
    "AUTO_ORDER",
    "BackendUnavailable",
    "available_backends",
    "registered_ops",
    "unavailable_backends",
    "CHARBONNIER_EPS",
    "charbonnier",
    "obproxsg_step",
    "gaussian_blur",
    "gaussian_highpass",
    "laplacian_pyramid",
    "laplacian_loss",
    "STUDENT_LOSSES",
    "distillation_loss",
    "distillation_min_size",
    "window_attention",
    "relative_position_index",
    "shift_window_mask",
    # for the layers above (models, nn, optim): backend names, argument checks, extension-load hooks
    "BACKEND_NAMES",
    "check_image",
    "check_levels",
    "check_nonnegative",
    "check_reduction",
    "on_extension_load",
]
