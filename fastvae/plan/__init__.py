"""Host planning shared by the compiled backends: what a host function decides before it launches.

One module per op family (``gaussian``, ``iwae``, ``vq``), called by the triton backend's host
functions (:mod:`fastvae.kernels`) and by the cuda and cpu backends' (:mod:`fastvae.cuda`) alike: which
inputs are empty and what their outputs are then, the accumulation dtype, the codebook splits of the
nearest-code search, and the allocation of outputs and workspaces. Each ``<op>_fwd`` / ``<op>_bwd``
here takes the host function's inputs and returns ``(outputs, launch)``: the outputs allocated on the
input's device (already final when ``launch`` is False, i.e. there is nothing to compute) and whether a
kernel must run to fill them. How a kernel is tiled stays with its backend: Triton block sizes in
``kernels/``, CUDA tiles in C++ next to the launch (csrc/).

Pure PyTorch: this package imports neither triton nor ``fastvae._C``.
"""

from __future__ import annotations

import torch

__all__ = ["accumulation_dtype", "cdiv"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate in for inputs of ``dtype``: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for ``a >= 0``, ``b >= 1``."""
    return -(-a // b)
