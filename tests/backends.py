"""The backends the op tests run under: every test that takes a backend fixture runs once per backend.

Each op test file declares a fixture that calls :func:`forced` with the ops it exercises, so a
backend that cannot run one of them here is skipped with the reason, not silently passed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import pytest
import torch

import fastvae
from fastvae import backend

#: Where test tensors live: the GPU when there is one, else the CPU (Triton runs there under
#: TRITON_INTERPRET=1).
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

#: One pytest parameter per backend (torch, triton, cuda); one that cannot run here is skipped by
#: :func:`forced` with the reason (e.g. the cuda backend without a GPU), never silently dropped.
PARAMS = [pytest.param(name, id=name) for name in backend.BACKENDS if name != "auto"]


@contextlib.contextmanager
def forced(name: str, ops: Sequence[str]) -> Iterator[str]:
    """Force backend ``name`` for the test; skip it if that backend cannot run one of ``ops`` on DEVICE."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(fastvae.use_backend(name))
            for op in ops:
                backend.resolve(op, DEVICE)
        except fastvae.BackendUnavailableError as error:
            pytest.skip(str(error))
        yield name


def dtype_id(dtype: torch.dtype) -> str:
    """A test id for ``dtype``: ``float32`` rather than ``torch.float32``."""
    return str(dtype).removeprefix("torch.")


def randn(
    *shape: int, dtype: torch.dtype = torch.float32, seed: int = 0, scale: float = 1.0, shift: float = 0.0
) -> torch.Tensor:
    """``shift + scale * N(0, 1)`` drawn reproducibly in float64, then rounded to ``dtype`` on DEVICE."""
    generator = torch.Generator().manual_seed(seed)
    return (shift + scale * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype).to(DEVICE)
