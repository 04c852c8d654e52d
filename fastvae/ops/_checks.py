"""The argument checks of fastvae, in one module: the ops' (every bad input is rejected before any
kernel runs), the models' hyper-parameters and the metrics' inputs.

Errors name the argument and say what was expected: ``TypeError`` for wrong types and dtypes,
``ValueError`` for wrong shapes, devices and option values (the models' and metrics' checks raise
``ValueError`` for bad values of any kind, as their callers document).
"""

from __future__ import annotations

import math
import operator
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
    if value.shape == shape:
        return value  # the common case, without torch.broadcast_shapes' Python (several us)
    try:
        if torch.broadcast_shapes(value.shape, shape) == shape:
            return value.expand(shape)
    except RuntimeError:
        pass
    raise ValueError(f"{name} must broadcast to the shape of {target} {tuple(shape)}, got {tuple(value.shape)}")


def channels_last(value: object, name: str, channels: int, channel_dim: int) -> torch.Tensor:
    """``value``, a floating tensor with ``channels`` entries along ``channel_dim``, with that dim moved last."""
    value = tensor(value, name, min_dim=1)
    index = dim_index(channel_dim, "channel_dim", value.dim())
    if value.shape[index] != channels:
        raise ValueError(
            f"{name} must have dim={channels} channels along channel_dim={channel_dim}, got shape {tuple(value.shape)}"
        )
    return value.movedim(index, -1)


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


# --- hyper-parameters of the models and arguments of the metrics ------------------------------------


def check_int(value: object, name: str, low: int = 1) -> int:
    """``value`` as an int ``>= low``; ``ValueError`` naming ``name`` otherwise (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def make_generator(seed: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (an int >= 0)."""
    return torch.Generator().manual_seed(check_int(seed, "seed", low=0))


def as_codes(codes: object, name: str = "codes") -> torch.Tensor:
    """``codes`` (tensor or array ``(N, L)``, real) as float64 ``(N, L)`` on the CPU; finite, ``N >= 2``, ``L >= 1``."""
    tensor = torch.as_tensor(codes)
    if tensor.dtype == torch.bool or tensor.dtype.is_complex:
        raise TypeError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    if tensor.dim() != 2 or tensor.shape[0] < 2 or tensor.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, L) with N >= 2 and L >= 1, got {tuple(tensor.shape)}")
    tensor = tensor.detach().to("cpu", torch.float64)
    if not bool(tensor.isfinite().all()):
        raise ValueError(f"{name} must be finite, got {int((~tensor.isfinite()).sum())} non-finite values")
    return tensor


def as_factors(factors: object, name: str = "factors", *, integer: bool = True) -> torch.Tensor:
    """``factors`` (tensor or array ``(N, K)``) as int64 (``integer``) or float64 ``(N, K)`` on the CPU.

    With ``integer`` the values must be integers (the factor classes); otherwise any finite reals.
    """
    tensor = torch.as_tensor(factors)
    if tensor.dtype == torch.bool or tensor.dtype.is_complex:
        raise TypeError(f"{name} must hold {'integer factor classes' if integer else 'real numbers'}, got dtype {tensor.dtype}")
    if integer and tensor.dtype.is_floating_point:
        raise TypeError(f"{name} must hold integer factor classes, got dtype {tensor.dtype}")
    if tensor.dim() != 2 or tensor.shape[0] < 2 or tensor.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, K) with N >= 2 and K >= 1, got {tuple(tensor.shape)}")
    tensor = tensor.detach().to("cpu", torch.int64 if integer else torch.float64)
    if not integer and not bool(tensor.isfinite().all()):
        raise ValueError(f"{name} must be finite, got {int((~tensor.isfinite()).sum())} non-finite values")
    return tensor


def check_same_rows(codes: torch.Tensor, factors: torch.Tensor, names: tuple[str, str] = ("codes", "factors")) -> None:
    """``ValueError`` unless ``codes`` and ``factors`` have the same number of rows."""
    if codes.shape[0] != factors.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have one row per example each, got {codes.shape[0]} and {factors.shape[0]} rows"
        )


def check_fraction_split(num_train: object, n: int) -> int:
    """The train size of a split of ``n`` rows: ``num_train`` (an int in ``[2, n - 2]``) or, for None, ``2n // 3``."""
    if num_train is None:
        num_train = (2 * n) // 3
    if isinstance(num_train, bool) or not isinstance(num_train, int) or not 2 <= num_train <= n - 2:
        raise ValueError(f"num_train must be None or an int in [2, {n - 2}] for {n} rows (both parts need 2 rows), got {num_train!r}")
    return num_train


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
