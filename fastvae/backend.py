"""Backend selection: which implementation of each op runs.

Three backends implement every op (see DESIGN.md):

``torch``
    The pure-PyTorch reference in :mod:`fastvae.reference`: the ground truth, and the path for CPU
    tensors. Always available.
``triton``
    Fused Triton kernels from :mod:`fastvae.kernels`. Runs on CUDA tensors, and on CPU tensors
    under ``TRITON_INTERPRET=1`` (how CI tests it).
``cuda``
    Hand-written CUDA kernels from the extension ``fastvae._C``. CUDA tensors only.

The backend is chosen, from strongest to weakest, by :func:`use_backend` (a context manager), by
:func:`set_backend`, and by the environment variable ``FASTVAE_BACKEND`` read at import. The default,
``auto``, picks per op the fastest compiled backend measured for a CUDA tensor and ``torch``
otherwise. Forcing a backend that cannot run raises :class:`BackendUnavailableError` naming what is
missing.

Op modules register the reference implementations with :func:`register` and the compiled ones with
:func:`register_kernels`, which imports a kernel module only when a backend first needs it (so
``import fastvae`` never imports Triton, and ``TRITON_INTERPRET`` may be set after it).
:func:`resolve` is called inside each custom op at run time, so the choice also applies to code
compiled with ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
from typing import Callable, Iterator

import torch

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "get_backend",
    "register",
    "resolve",
    "set_backend",
    "use_backend",
]

#: Every backend name :func:`set_backend` accepts, ``auto`` first.
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton", "cuda")

#: Compiled backends in the order ``auto`` prefers them for an op with no measured ranking.
_COMPILED: tuple[str, ...] = ("triton", "cuda")

#: Per op, the compiled backends fastest first, from the committed benchmark results. Ops absent
#: here fall back to ``_COMPILED``'s order. Filled in from benchmarks/results/ as kernels land.
_MEASURED_PREFERENCE: dict[str, tuple[str, ...]] = {}

_IMPLS: dict[str, dict[str, Callable[..., object]]] = {}

#: Kernel modules not yet imported: backend -> [(module name, op names)].
_PENDING: dict[str, list[tuple[str, tuple[str, ...]]]] = {}

#: Why a backend's kernel modules failed to import, if one did.
_IMPORT_ERRORS: dict[str, str] = {}


class BackendUnavailableError(RuntimeError):
    """A backend was forced that cannot run here; the message says what is missing."""


def _check_name(name: object, argument: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"{argument} must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    return name


def _from_environment() -> str:
    value = os.environ.get("FASTVAE_BACKEND", "auto").strip().lower() or "auto"
    return _check_name(value, "the environment variable FASTVAE_BACKEND")


_default: str = _from_environment()
# A process-wide override rather than a context variable: autograd runs backward ops on its own
# threads (one per CUDA device), which do not see the caller's context variables.
_override: str | None = None


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernel_name(op: str) -> str:
    """The host function implementing ``op`` in a kernel module: ``<op>_fwd``, or ``<op>_bwd`` for
    an op named ``<op>_backward``."""
    return op.removesuffix("_backward") + ("_bwd" if op.endswith("_backward") else "_fwd")


def register_kernels(backend: str, module: str, ops: tuple[str, ...]) -> None:
    """Register ``module``'s host functions (see :func:`kernel_name`) as ``backend``'s ``ops``.

    The module is imported on first use; if that fails the backend reports the import error.
    """
    if backend not in _COMPILED:
        raise ValueError(f"backend must be one of {', '.join(map(repr, _COMPILED))}, got {backend!r}")
    _PENDING.setdefault(backend, []).append((module, ops))


def _load_kernels(backend: str) -> None:
    for module_name, ops in _PENDING.pop(backend, []):
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            _IMPORT_ERRORS[backend] = f"importing {module_name} failed: {error}"
            continue
        for op in ops:
            register(op, backend, getattr(module, kernel_name(op)))


def _has_kernels(backend: str) -> bool:
    _load_kernels(backend)
    return any(backend in impls for impls in _IMPLS.values())


def _missing(backend: str, device: torch.device | None = None) -> str | None:
    """Why ``backend`` cannot run (on ``device`` when given), or None when it can."""
    if backend == "torch":
        return None
    if backend == "triton":
        if not _triton_installed():
            return "the triton package is not installed (pip install triton)"
        if not _has_kernels("triton"):
            if "triton" in _IMPORT_ERRORS:
                return _IMPORT_ERRORS["triton"]
            return "this version of fastvae has no Triton kernels yet"
        if device is not None and device.type != "cuda" and not _triton_interpreted():
            return (
                f"Triton kernels need CUDA tensors, got tensors on {device.type}; "
                "set TRITON_INTERPRET=1 before importing triton to run them on the CPU"
            )
        if device is None and not torch.cuda.is_available() and not _triton_interpreted():
            return "no CUDA device is visible and TRITON_INTERPRET=1 is not set"
        return None
    if backend == "cuda":
        from fastvae import _extension

        reason = _extension.unavailable_reason()
        if reason is not None:
            return reason
        if not _has_kernels("cuda"):
            return "this version of fastvae has no CUDA kernels yet"
        if device is not None and device.type != "cuda":
            return f"the cuda backend needs CUDA tensors, got tensors on {device.type}"
        return None
    raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine, ``torch`` first.

    Returns:
        A list drawn from ``"torch"``, ``"triton"`` and ``"cuda"``. ``"torch"`` is always present.
    """
    return [name for name in BACKENDS[1:] if _missing(name) is None]


def _ensure_available(name: str) -> None:
    if name == "auto":
        return
    reason = _missing(name)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} is not available: {reason}")


def set_backend(name: str) -> None:
    """Choose the backend for every op from now on (outside any :func:`use_backend` block).

    Args:
        name: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``.

    Raises:
        ValueError: ``name`` is not a backend name.
        BackendUnavailableError: the backend cannot run here; the message says what is missing.
    """
    global _default
    name = _check_name(name, "name")
    _ensure_available(name)
    _default = name


def get_backend() -> str:
    """The backend name in force: the innermost :func:`use_backend`, else :func:`set_backend`'s."""
    return _default if _override is None else _override


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager that runs the ops inside it on backend ``name``, then restores the previous one.

    The choice is process-wide while the block runs (so autograd's backward threads see it too),
    not per thread.

    Args:
        name: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``.

    Raises:
        ValueError: ``name`` is not a backend name.
        BackendUnavailableError: the backend cannot run here; the message says what is missing.
    """
    global _override
    name = _check_name(name, "name")
    _ensure_available(name)
    previous, _override = _override, name
    try:
        yield
    finally:
        _override = previous


def register(op: str, backend: str, impl: Callable[..., object]) -> None:
    """Register ``impl`` as ``backend``'s implementation of ``op`` (called by op modules at import)."""
    if backend not in BACKENDS[1:]:
        raise ValueError(f"backend must be one of 'torch', 'triton', 'cuda', got {backend!r}")
    _IMPLS.setdefault(op, {})[backend] = impl


def resolve(op: str, device: torch.device) -> Callable[..., object]:
    """The implementation of ``op`` to run for tensors on ``device`` under the backend in force.

    Raises:
        BackendUnavailableError: a forced backend cannot run ``op`` on ``device``.
    """
    impls = _IMPLS[op]
    name = get_backend()
    if name == "auto":
        if device.type == "cuda":
            for candidate in _MEASURED_PREFERENCE.get(op, _COMPILED):
                if _missing(candidate, device) is None and candidate in impls:
                    return impls[candidate]
        return impls["torch"]
    reason = _missing(name, device)
    if reason is None and name not in impls:
        reason = f"it has no implementation of {op}"
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run {op}: {reason}")
    return impls[name]
