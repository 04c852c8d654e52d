"""Shared pytest configuration.

On a machine without a CUDA device the Triton kernels run on CPU tensors through Triton's
interpreter, so the op tests exercise the triton backend everywhere: TRITON_INTERPRET=1 is set here,
before any test module imports fastvae's kernels (an explicit TRITON_INTERPRET in the environment
wins). Tests marked ``gpu`` are skipped when no CUDA device is visible.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every test marked ``@pytest.mark.gpu`` when torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)
