"""Helpers for the tests of what compiled kernels special-case: poisoned outputs, misaligned inputs,
and checks of an op's values and gradients against a float64 formula.

Ops allocate their outputs with ``torch.empty``, ``torch.empty_like`` or ``Tensor.new_empty``, whose
contents are whatever the allocator hands back: often zeros or an earlier result, on which a kernel
that skips elements can pass. Under :func:`poison_allocations` those calls return floating tensors
filled with NaN, so every element a kernel leaves unwritten stays NaN and fails the comparison.

:func:`misaligned` gives a tensor's values in a contiguous tensor whose data starts one element into
its buffer, so its address is not 16-byte aligned: kernels that move 16-byte vectors must notice and
fall back to scalar access.

:func:`check_op` runs an op forward and backward on inputs and incoming gradients exactly as given
(layouts, addresses and strides reach the op unchanged) and compares both with a float64 formula.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from tolerances import assert_close

__all__ = ["check_op", "misaligned", "poison_allocations"]


def _poisoned(allocate: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def allocate_poisoned(*args: object, **kwargs: object) -> torch.Tensor:
        out = allocate(*args, **kwargs)
        if out.is_floating_point():
            out.fill_(math.nan)
        return out

    return allocate_poisoned


def poison_allocations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``torch.empty``, ``torch.empty_like`` and ``Tensor.new_empty`` return NaN-filled floating
    tensors until the test ends."""
    monkeypatch.setattr(torch, "empty", _poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", _poisoned(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", _poisoned(torch.Tensor.new_empty))


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values (shape, dtype, device) in a contiguous tensor starting one element into its buffer.

    The result is a leaf that does not require grad; its ``data_ptr()`` is not a multiple of 16.
    """
    buffer = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = buffer[1:].view(t.shape)
    view.copy_(t.detach())
    assert view.is_contiguous() and view.data_ptr() % 16 != 0
    return view


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def _as_tuple(value: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return value if isinstance(value, tuple) else (value,)


def check_op(
    op: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    formula: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    inputs: tuple[torch.Tensor, ...],
    grads: tuple[torch.Tensor, ...],
) -> None:
    """Check ``op(*inputs)`` and its gradients for the incoming ``grads`` against ``formula``.

    Args:
        op: the op under test; returns one tensor or a tuple.
        formula: the same function written in differentiable float64 torch code.
        inputs: the op's tensor arguments, all of one dtype; each reaches the op as a detached view
            (same address and strides) that requires grad.
        grads: one incoming gradient per output, handed to autograd as given (strides included).

    Every output and input gradient must have the inputs' dtype and match the formula's float64
    value within that dtype's tolerance (tests/tolerances.py).
    """
    dtype = inputs[0].dtype
    leaves = [t.detach().requires_grad_() for t in inputs]
    references = [_f64(t).requires_grad_() for t in inputs]
    outputs, expected = _as_tuple(op(*leaves)), _as_tuple(formula(*references))
    assert len(outputs) == len(expected) == len(grads)
    for got, want in zip(outputs, expected):
        assert got.dtype == dtype and got.shape == want.shape
        assert_close(got.cpu(), want, dtype)
    got_grads = torch.autograd.grad(outputs, leaves, grads)
    want_grads = torch.autograd.grad(expected, references, [_f64(g) for g in grads])
    for got, want in zip(got_grads, want_grads):
        assert got.dtype == dtype and got.shape == want.shape
        assert_close(got.cpu(), want, dtype)
