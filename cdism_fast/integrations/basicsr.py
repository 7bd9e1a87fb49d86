"""The losses of :mod:`cdism_fast.nn` in BasicSR's loss registry (BasicSR stays optional).

BasicSR builds each loss from the options by class name, passing the other keys
as keyword arguments, and calls it as ``loss(pred, gt)``::

    import cdism_fast.integrations.basicsr as cdism_basicsr
    cdism_basicsr.register()
    # options:  pixel_opt: {type: CdismLaplacianPyramidLoss, levels: 5, loss_weight: 1.0}

BasicSR has a ``CharbonnierLoss`` of its own, so every loss is registered under
its name with the prefix ``Cdism`` (subclasses named so, since the registry keys
objects by ``__name__``). ``CdismDistillationLoss`` is called as
``loss(student_output, teacher_output, gt)`` from a model of one's own.
"""
from __future__ import annotations

from ..nn import losses

#: Prefix of the registered names.
PREFIX = "Cdism"


def _registered_class(cls: type) -> type:
    return type(PREFIX + cls.__name__, (cls,), {"__doc__": cls.__doc__, "__module__": __name__})


#: The classes register() adds, by registered name.
LOSSES: dict[str, type] = {c.__name__: c for c in map(_registered_class, (
    losses.CharbonnierLoss, losses.LaplacianPyramidLoss, losses.DistillationLoss))}


def register() -> dict[str, type]:
    """Add the losses to ``basicsr.utils.registry.LOSS_REGISTRY``; returns them by name.

    Calling it again is harmless. Raises ImportError when BasicSR is not
    installed, and RuntimeError when another object already holds one of the names.
    """
    try:
        from basicsr.utils.registry import LOSS_REGISTRY
    except ImportError as exc:
        raise ImportError("cdism_fast.integrations.basicsr.register() needs BasicSR "
                          f"(pip install basicsr); importing basicsr.utils.registry failed: {exc}") from exc
    taken = [name for name, cls in LOSSES.items() if name in LOSS_REGISTRY and LOSS_REGISTRY.get(name) is not cls]
    if taken:  # checked before registering anything, so that a failed call changes nothing
        raise RuntimeError(f"BasicSR's loss registry already holds another object named {taken[0]!r}")
    for name, cls in LOSSES.items():
        if name not in LOSS_REGISTRY:
            LOSS_REGISTRY.register(cls)
    return dict(LOSSES)
