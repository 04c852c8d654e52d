"""Lazy access to ``fastvae._C``, the compiled extension built from csrc/.

The extension holds CPU kernels (the submodule ``fastvae._C.cpu``, always built with it) and, when a
CUDA toolkit existed at install time, the CUDA kernels. It is optional: a pure-Python install
(``FASTVAE_NO_EXTENSION=1``, or no C++ compiler) runs the ``torch`` reference. It is imported on first
use, once; the ``cuda`` backend asks :func:`is_available` (and the ``cpu`` backend
:func:`cpu_unavailable_reason`) before using it and reports the reason when it cannot.
"""

from __future__ import annotations

import functools
import importlib
import types

NOT_BUILT = (
    "fastvae._C was not built (FASTVAE_NO_EXTENSION=1, or its build failed at install time; "
    "reinstall with a C++ compiler, and a CUDA toolkit on PATH for the CUDA kernels)"
)
NO_CUDA = (
    "fastvae._C was built without its CUDA kernels (no CUDA toolkit at install time, or "
    "FASTVAE_NO_CUDA=1; reinstall with a CUDA toolkit on PATH)"
)
NO_DEVICE = "no CUDA device is visible"


@functools.cache
def _import() -> tuple[types.ModuleType | None, str | None]:
    """Import fastvae._C once; return (module, None) or (None, why it could not be imported)."""
    try:
        return importlib.import_module("fastvae._C"), None
    except ModuleNotFoundError as exc:
        if exc.name == "fastvae._C":
            return None, NOT_BUILT
        return None, f"fastvae._C failed to import: {exc}"
    except ImportError as exc:
        return None, f"fastvae._C failed to import: {exc}"


def load() -> types.ModuleType | None:
    """The extension module ``fastvae._C``, or None if it was not built or does not import.

    Importing needs no GPU; calling its device functions does.
    """
    return _import()[0]


def unavailable_reason() -> str | None:
    """Why the extension's CUDA kernels cannot be used now, or None if they can.

    Either the import failure (not built, or the import error's text), or :data:`NO_CUDA` for a
    module built without them (its ``has_cuda`` is False; a module that does not say has them), or
    ``"no CUDA device is visible"`` if PyTorch sees no CUDA device.
    """
    module, reason = _import()
    if module is None:
        return reason
    if not getattr(module, "has_cuda", True):
        return NO_CUDA
    import torch

    if not torch.cuda.is_available():
        return NO_DEVICE
    return None


def is_available() -> bool:
    """Whether the extension imported with its CUDA kernels and a CUDA device is visible."""
    return unavailable_reason() is None


def cpu_unavailable_reason() -> str | None:
    """Why the extension's CPU kernels (``fastvae._C.cpu``) cannot be used, or None if they can:
    the import failure, or a module without the ``cpu`` submodule."""
    module, reason = _import()
    if module is None:
        return reason
    if not hasattr(module, "cpu"):
        return "fastvae._C has no CPU kernels (built from an older fastvae; reinstall)"
    return None
