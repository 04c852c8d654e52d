"""Host side of the ``cuda`` backend: the launchers of the kernels in csrc/ (extension ``fastvae._C``).

One module per op family (``gaussian``, ``iwae``, ``vq``) holds the host functions
``<op>_fwd`` / ``<op>_bwd`` with the signatures of the matching functions in :mod:`fastvae.kernels`:
they allocate the outputs with PyTorch's caching allocator, and pass device pointers, sizes, dtype
codes and the current CUDA stream to ``fastvae._C``, which checks them and launches. The op modules
in :mod:`fastvae.ops` register these modules as the ``cuda`` backend; they are imported only when that
backend is first used. This package holds the helpers they share.
"""

from __future__ import annotations

import types

import torch

from fastvae import _extension

__all__ = ["DTYPE_CODES", "dtype_code", "extension", "stream"]

#: The dtype codes of csrc/dispatch.cuh (enum class DType).
DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float64: 3,
}


def extension() -> types.ModuleType:
    """The loaded ``fastvae._C`` module.

    Raises:
        RuntimeError: the extension was not built or does not import (the message says why).
    """
    module = _extension.load()
    if module is None:
        raise RuntimeError(f"the cuda backend needs fastvae._C: {_extension.unavailable_reason()}")
    return module


def dtype_code(t: torch.Tensor, name: str) -> int:
    """The csrc/dispatch.cuh code of ``t``'s dtype; ``name`` names the argument in the error.

    Raises:
        TypeError: the dtype is not float32, float16, bfloat16 or float64.
    """
    try:
        return DTYPE_CODES[t.dtype]
    except KeyError:
        raise TypeError(
            f"{name} must be float32, float16, bfloat16 or float64 for the cuda backend, got {t.dtype}"
        ) from None


def stream(t: torch.Tensor) -> int:
    """The handle of the current CUDA stream on ``t``'s device, as the int ``fastvae._C`` takes."""
    return torch.cuda.current_stream(t.device).cuda_stream
