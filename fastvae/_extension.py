"""Lazy access to ``fastvae._C``, the compiled CUDA extension built from csrc/.

The extension is optional: it is built only when a CUDA toolkit exists at install time. It is
imported on first use, once; the ``cuda`` backend asks :func:`is_available` before using it and
reports :func:`unavailable_reason` when it cannot.
"""

from __future__ import annotations

import functools
import importlib
import types

NOT_BUILT = (
    "fastvae._C was not built (no CUDA toolkit at install time, or FASTVAE_NO_CUDA=1; "
    "reinstall with a CUDA toolkit on PATH)"
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
    """Why the CUDA extension cannot be used now, or None if it can.

    Either the import failure (not built, or the import error's text) or, when the module imports,
    ``"no CUDA device is visible"`` if PyTorch sees no CUDA device.
    """
    module, reason = _import()
    if module is None:
        return reason
    import torch

    if not torch.cuda.is_available():
        return NO_DEVICE
    return None


def is_available() -> bool:
    """Whether the extension imported and a CUDA device is visible."""
    return unavailable_reason() is None
