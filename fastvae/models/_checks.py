"""Argument checks shared by the zoo's models: errors that name the hyper-parameter."""

from __future__ import annotations

import math
import operator

__all__ = ["check_int", "check_step", "check_weight"]


def check_int(value: object, name: str, low: int) -> int:
    """``value`` as an int ``>= low``; ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def check_step(step: object) -> int | None:
    """``step`` (the 0-based training step, or None for "every schedule finished") as an int or None.

    Raises:
        ValueError: a negative, non-integer or boolean ``step``.
    """
    if step is None:
        return None
    try:
        if isinstance(step, bool):
            raise TypeError
        value = operator.index(step)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"step must be None or a non-negative int, got {step!r}") from None
    if value < 0:
        raise ValueError(f"step must be None or a non-negative int, got {step!r}")
    return value


def check_weight(name: str, value: object) -> float:
    """A loss weight as a float; ValueError naming ``name`` unless it is a non-negative finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)
