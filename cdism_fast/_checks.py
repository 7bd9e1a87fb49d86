"""The one integer-argument check of the package (models, data, evaluation and training use it).

It sits at the top of the package and imports nothing from it, so that every
sub-package may import it without a cycle.
"""
from __future__ import annotations

__all__ = ["check_int"]


def check_int(name: str, value, minimum: int = 1, *, expected: str | None = None) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``, else a ValueError naming ``name``.

    The message reads ``"{name} must be {expected}, got {value!r}"``; ``expected``
    defaults to ``"an integer >= {minimum}"`` (the models say ``"an int >= ..."``,
    the training loop ``"a positive integer"``).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be {expected or f'an integer >= {minimum}'}, got {value!r}")
    return value
