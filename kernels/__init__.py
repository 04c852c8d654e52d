"""Triton kernels of fastvae, installed as ``fastvae.kernels``.

One module per op family (``gaussian``, ``iwae``, ``vq``). Each holds the ``@triton.jit`` kernels
first, named ``_<op>_fwd_kernel`` / ``_<op>_bwd_kernel``, then the host functions
``<op>_fwd(...)`` / ``<op>_bwd(...)`` that choose block sizes, warps and the grid and allocate
outputs. Kernels know nothing of autograd: ``fastvae.ops`` registers the ops and calls these host
functions.

Triton launches on the *current* CUDA device, so every host function runs under
:func:`on_input_device`: a tensor on ``cuda:1`` is processed on ``cuda:1`` whatever device is
current, as the cuda backend does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["on_input_device"]

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
