"""Argument checks shared by the metrics: every error names the argument and what was expected."""

from __future__ import annotations

import torch

__all__ = ["as_codes", "as_factors", "check_fraction_split", "check_int", "check_same_rows", "make_generator"]


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
