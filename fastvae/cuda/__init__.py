"""Host side of the compiled extension ``fastvae._C``: the ``cuda`` backend and the ``cpu`` backend.

One module per op family (``gaussian``, ``iwae``, ``vq``) holds the host functions
``<op>_fwd`` / ``<op>_bwd`` with the signatures of the matching functions in :mod:`fastvae.kernels`:
they take the outputs, empty inputs and workspaces from :mod:`fastvae.plan` (the planning the triton
backend shares), and pass pointers, sizes, dtype codes and the current CUDA stream to the extension,
which checks them, chooses its tiles and launches. ``gaussian`` and ``iwae`` serve both devices: the
extension's submodule ``fastvae._C.cpu`` has the same functions for host memory (:func:`run_kernel`
picks by the tensor's device), so one host layer serves both backends' calls. The op
modules in :mod:`fastvae.ops` register these modules as the ``cuda`` and ``cpu`` backends; they are
imported only when a backend first needs them. This package holds the helpers they share.
"""

from __future__ import annotations

import types

import torch

from fastvae import _extension

__all__ = ["DTYPE_CODES", "dtype_code", "extension", "run_kernel", "stream"]

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


#: ``fastvae._C`` once :func:`_load` has found it (read first on every launch).
_loaded: types.ModuleType | None = None


def _load() -> types.ModuleType:
    global _loaded
    _loaded = extension()
    return _loaded


def run_kernel(t: torch.Tensor, kernel: str, *args: object) -> None:
    """Run ``fastvae._C``'s ``kernel`` for ``t``'s device with ``args`` and a stream argument.

    For a CUDA tensor: ``fastvae._C.<kernel>`` with ``t``'s device current and its current stream.
    For a CPU tensor: ``fastvae._C.cpu.<kernel>`` (same name and arguments), with stream 0, which the
    CPU kernels ignore; no context is entered, since this path decides the cost of user-sized calls.
    """
    module = _loaded or _load()
    if t.is_cuda:
        with torch.cuda.device(t.device):
            getattr(module, kernel)(*args, torch.cuda.current_stream(t.device).cuda_stream)
    else:
        getattr(module.cpu, kernel)(*args, 0)


def dtype_code(t: torch.Tensor, name: str) -> int:
    """The csrc/dispatch.cuh code of ``t``'s dtype; ``name`` names the argument in the error.

    Raises:
        TypeError: the dtype is not float32, float16, bfloat16 or float64.
    """
    try:
        return DTYPE_CODES[t.dtype]
    except KeyError:
        raise TypeError(
            f"{name} must be float32, float16, bfloat16 or float64 for fastvae._C, got {t.dtype}"
        ) from None


def stream(t: torch.Tensor) -> int:
    """The handle of the current CUDA stream on ``t``'s device, as the int ``fastvae._C`` takes; 0
    (ignored) for a CPU tensor."""
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0
