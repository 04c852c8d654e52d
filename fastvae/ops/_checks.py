"""Argument checks shared by the ops: every bad input is rejected here, before any kernel runs.

Errors name the argument and say what was expected: ``TypeError`` for wrong types and dtypes,
``ValueError`` for wrong shapes, devices and option values.
"""

from __future__ import annotations

from typing import Sequence

import torch

#: Floating dtypes the ops accept. float64 runs on the torch and triton backends.
FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FLOAT_DTYPE_SET: frozenset[torch.dtype] = frozenset(FLOAT_DTYPES)

REDUCTIONS: tuple[str, ...] = ("none", "sum", "mean")
METRICS: tuple[str, ...] = ("l2", "cosine")


def tensor(value: object, name: str, *, min_dim: int = 0) -> torch.Tensor:
    """Check that ``value`` is a floating-point tensor with at least ``min_dim`` dims."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPE_SET:
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), got {value.dtype}"
        )
    if value.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(value.shape)}")
    return value


def same_dtype_and_device(named: Sequence[tuple[str, torch.Tensor]]) -> None:
    """Check that every tensor shares the first one's dtype and device."""
    first_name, first = named[0]
    for name, value in named[1:]:
        if value.dtype != first.dtype:
            raise TypeError(f"{name} must have the dtype of {first_name} ({first.dtype}), got {value.dtype}")
        if value.device != first.device:
            raise ValueError(f"{name} must be on the device of {first_name} ({first.device}), got {value.device}")


def same_shape(name: str, value: torch.Tensor, expected: Sequence[int], what: str) -> None:
    """Check that ``value`` has shape ``expected``, described as ``what`` in the message."""
    if value.shape != expected and tuple(value.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({what}), got {tuple(value.shape)}")


def broadcast_to(name: str, value: torch.Tensor, shape: torch.Size, target: str) -> torch.Tensor:
    """``value`` expanded to ``shape``; it must broadcast to it without changing ``shape``."""
    try:
        if torch.broadcast_shapes(value.shape, shape) == shape:
            return value.expand(shape)
    except RuntimeError:
        pass
    raise ValueError(f"{name} must broadcast to the shape of {target} {tuple(shape)}, got {tuple(value.shape)}")


def choice(value: object, name: str, options: Sequence[str]) -> str:
    """Check that ``value`` is one of ``options``."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def dim_index(value: object, name: str, ndim: int) -> int:
    """``value`` as a non-negative dimension index of a tensor with ``ndim`` dims."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not -ndim <= value < ndim:
        raise ValueError(f"{name} must be in [{-ndim}, {ndim}) for a tensor with {ndim} dims, got {value}")
    return value % ndim


def number(value: object, name: str, *, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a float in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if (low is not None and value < low) or (high is not None and value > high) or value != value:
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ValueError(f"{name} must be in {bounds}, got {value}")
    return float(value)
