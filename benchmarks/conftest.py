"""The pytest-benchmark suites of the fastvae ops: one module per op family, one table of shapes.

Each suite module names its ops in ``OPS`` and has one test taking the ``case`` and ``run_case``
fixtures; :func:`pytest_generate_tests` parametrises ``case`` over every op x shape x dtype (fp32,
bf16) x mode (fwd, fwd+bwd) x backend (eager, compile, torch, triton, cuda), with the shapes and the
calls taken from :mod:`fastvae.bench` -- the same ones ``fastvae bench`` measures.

Small mode (the default, what CI runs): the quick shapes only. ``FASTVAE_BENCH_FULL=1``: every shape
of the table on a GPU, the CPU-sized ones without. The triton and cuda backends are skipped without
a GPU (Triton's interpreter is not a performance path), as are unavailable backends and, on the CPU,
cases estimated to need more than half the RAM.

Run: ``pytest benchmarks/ --benchmark-only``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

from fastvae.bench import cases, shapes, timing

FULL = os.environ.get("FASTVAE_BENCH_FULL", "0") not in ("", "0")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = ("fp32", "bf16")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``case`` with every case of the ops the module lists in ``OPS``."""
    if "case" not in metafunc.fixturenames:
        return
    params = [
        cases.Case(op, shape, dtype, mode, backend)
        for op in metafunc.module.OPS
        for shape in shapes.shapes_for(op, quick=not FULL, cpu=DEVICE.type == "cpu")
        for dtype in DTYPES
        for mode in shapes.MODES
        for backend in shapes.BACKENDS
    ]
    metafunc.parametrize("case", params, ids=[case.id for case in params])


@pytest.fixture
def run_case(benchmark) -> Callable[[cases.Case], None]:
    """``run_case(case)``: benchmark one case with pytest-benchmark (or skip it, saying why).

    Each round is one call on the next input set of the case's rotating pool, followed on a GPU by a
    device synchronisation; warm-up rounds come first. ``extra_info`` records the case and the bytes
    moved or flops of one call, to turn the timings into GB/s or TFLOP/s.
    """

    def run(case: cases.Case) -> None:
        reason = cases.skip_reason(case, DEVICE, cpu_budget_bytes=cases.default_cpu_budget_bytes())
        if reason is not None:
            pytest.skip(reason)
        step = cases.build(case, DEVICE, rotation_bytes=timing.rotation_bytes(DEVICE))
        spec = cases.OP_SPECS[case.op]
        dims = case.shape.dims
        benchmark.group = f"{case.op} {case.shape.name} {case.dtype} {case.mode}"
        benchmark.extra_info.update(
            op=case.op, shape=case.shape.name, dtype=case.dtype, mode=case.mode, backend=case.backend,
            bytes_moved=None if spec.elements_moved is None
            else spec.elements_moved(dims, case.mode) * shapes.DTYPES[case.dtype].itemsize,
            flops=None if spec.flops is None else spec.flops(dims),
        )

        def call() -> None:
            step()
            if DEVICE.type == "cuda":
                torch.cuda.synchronize(DEVICE)

        with step.active():
            benchmark.pedantic(
                call,
                rounds=timing.default_repeats(DEVICE, quick=not FULL),
                warmup_rounds=timing.default_warmup(DEVICE, quick=not FULL),
                iterations=1,
            )

    return run
