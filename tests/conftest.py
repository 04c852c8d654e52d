"""Shared pytest configuration.

On a machine without a CUDA device the Triton kernels run on CPU tensors through Triton's
interpreter, so the op tests exercise the triton backend everywhere: TRITON_INTERPRET=1 is set here,
before any test module imports fastvae's kernels (an explicit TRITON_INTERPRET in the environment
wins). Tests marked ``gpu`` are skipped when no CUDA device is visible.

Under the interpreter every kernel launch also records its Triton specialisation key
(tests/jit_variants.py); the run ends with the number of distinct JIT variants a GPU run of the same
tests would compile, per kernel in JSON with ``--jit-variants PATH``.
"""

from __future__ import annotations

import os
from pathlib import Path

import jit_variants
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
COUNTING_VARIANTS = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") and jit_variants.install()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--jit-variants", type=Path, metavar="PATH",
                     help="write the distinct Triton JIT variants launched, per kernel, as JSON (interpreter runs)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """One line: the distinct Triton JIT variants the run launched (what a GPU run compiles cold)."""
    if not COUNTING_VARIANTS or not jit_variants.VARIANTS:
        return
    terminalreporter.write_line(
        f"Triton JIT variants launched: {jit_variants.total()} over {len(jit_variants.VARIANTS)} kernels"
    )
    path = config.getoption("--jit-variants")
    if path is not None:
        jit_variants.write(path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every test marked ``@pytest.mark.gpu`` when torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)
