"""Triton kernels of fastvae, installed as ``fastvae.kernels``.

One module per op family (``gaussian``, ``iwae``, ``vq``). Each holds the ``@triton.jit`` kernels
first, named ``_<op>_fwd_kernel`` / ``_<op>_bwd_kernel``, then the host functions
``<op>_fwd(...)`` / ``<op>_bwd(...)`` that choose block sizes, warps and the grid and allocate
outputs. Kernels know nothing of autograd: ``fastvae.ops`` registers the ops and calls these host
functions.

Triton launches on the *current* CUDA device, so every host function runs under
:func:`on_input_device`: a tensor on ``cuda:1`` is processed on ``cuda:1`` whatever device is
current, as the cuda backend does.

Kernels over contiguous rows take their alignment as one ``ALIGNED`` constexpr (from
:func:`aligned_rows`) instead of letting the JIT specialise on every pointer's alignment and on the row
length: with :func:`_row_length` and :func:`_block_base` the compiler knows what the specialisation
would have told it (the same 16-byte vector loads), and one compiled variant per dtype and tile serves
every aligned call, one every other call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import triton
import triton.language as tl

__all__ = ["aligned_rows", "on_input_device"]

F = TypeVar("F", bound=Callable[..., object])


def on_input_device(host: F) -> F:
    """Run the host function ``host`` with its first argument's CUDA device current (CPU tensors, which
    only the interpreter runs, as they are)."""

    @functools.wraps(host)
    def launch(first: torch.Tensor, *args: object, **kwargs: object) -> object:
        if first.is_cuda:
            with torch.cuda.device(first.device):
                return host(first, *args, **kwargs)
        return host(first, *args, **kwargs)

    return launch  # type: ignore[return-value]


def aligned_rows(dim: int, *rows: torch.Tensor) -> bool:
    """A row kernel's ``ALIGNED``: ``dim % 16 == 0`` and every contiguous ``(R, D)`` tensor in ``rows``
    starts 16-byte aligned, so that every row of every block does."""
    return dim % 16 == 0 and all(t.data_ptr() % 16 == 0 for t in rows)


@triton.jit
def _row_length(dim, ALIGNED: tl.constexpr):
    """``dim``, which with ALIGNED the compiler knows to be a multiple of 16 (``dim // 16 * 16`` is
    ``dim`` then): rows of a block start 16-byte aligned, so their loads vectorise."""
    if ALIGNED:
        dim = dim // 16 * 16
    return dim


@triton.jit
def _block_base(ptr, start, ALIGNED: tl.constexpr):
    """``ptr + start``, the first element of this program's rows, marked 16-byte aligned with ALIGNED.

    With ALIGNED the caller guarantees it (:func:`aligned_rows`). The hint must be applied here, to
    the result of an addition: Triton ignores ``tl.multiple_of`` on a kernel's own arguments.
    """
    ptr = ptr + start
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr

