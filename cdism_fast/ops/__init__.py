"""The ops of cdism_fast, each with a reference and faster backends.

Every public op takes ``backend="auto"`` (or a backend name); see
:mod:`cdism_fast.ops._dispatch` for how one is chosen.
"""
from ._dispatch import AUTO_ORDER, BackendUnavailable, available_backends, registered_ops, unavailable_backends
from .charbonnier import charbonnier

__all__ = [
    "AUTO_ORDER",
    "BackendUnavailable",
    "available_backends",
    "registered_ops",
    "unavailable_backends",
    "charbonnier",
]
