"""The pytest-benchmark suites of the fastvae ops: one module per op family, one table of shapes.

Each suite module names its ops in ``OPS`` and has one test taking the ``case`` and ``run_case``
fixtures; :func:`pytest_generate_tests` parametrises ``case`` over the entries of
:func:`fastvae.bench.shapes.plan` for those ops (op x shape x dtype x precision x mode) x backend
(eager, compile where the entry compares with it, torch, triton, cuda), with the shapes and the
calls taken from :mod:`fastvae.bench` -- the same ones ``fastvae bench`` measures.

Small mode (the default, what CI runs): the ``quick`` selection (quick shapes, fp32 and bf16, with
``torch.compile``) and the ``user`` selection (every op at the user shapes, fp32, against eager
PyTorch, inputs not rotated). ``FASTVAE_BENCH_FULL=1``: the ``full`` selection (every shape of the
table on a GPU, the CPU-sized ones without). The triton and cuda backends are skipped without a GPU
(Triton's interpreter is not a performance path), as are unavailable backends and, on the CPU,
cases estimated to need more than half the RAM. CUDA graph replays are timed by ``fastvae bench``
only.

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
SELECTIONS = ("full",) if FULL else ("quick", "user")


def _params(ops: tuple[str, ...]) -> list[pytest.param]:
    """Every case of ``ops`` in the :data:`SELECTIONS`, as parameters carrying the entry's flags."""
    params = []
    for selection in SELECTIONS:
        for entry in shapes.plan(selection, cuda=DEVICE.type == "cuda", ops=ops):
            backends = [name for name in shapes.BACKENDS if name != "compile" or entry.compile]
            for dtype in entry.dtypes:
                for precision in shapes.precisions_for(entry.op, dtype, entry.precisions):
                    for mode in entry.modes:
                        for backend in backends:
                            case = cases.Case(entry.op, entry.shape, dtype, mode, backend, precision)
                            params.append(pytest.param((case, entry.user_sized), id=case.id))
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``case`` with every case of the ops the module lists in ``OPS``: ``(Case, user_sized)``."""
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", _params(metafunc.module.OPS))


@pytest.fixture
def run_case(benchmark) -> Callable[[tuple[cases.Case, bool]], None]:
    """``run_case((case, user_sized))``: benchmark one case with pytest-benchmark (or skip it, saying why).

    Each round is one call on the next input set of the case's rotating pool (a single set for a
    user-sized case), followed on a GPU by a device synchronisation; warm-up rounds come first.
    ``extra_info`` records the case and the bytes moved or flops of one call, to turn the timings
    into GB/s or TFLOP/s.
    """

    def run(param: tuple[cases.Case, bool]) -> None:
        case, user_sized = param
        reason = cases.skip_reason(case, DEVICE, cpu_budget_bytes=cases.default_cpu_budget_bytes())
        if reason is not None:
            pytest.skip(reason)
        rotation = 0 if user_sized else timing.rotation_bytes(DEVICE)
        step = cases.build(case, DEVICE, rotation_bytes=rotation)
        spec = cases.OP_SPECS[case.op]
        dims = case.shape.dims
        precision = f" {case.precision}" if case.precision else ""
        benchmark.group = f"{case.op} {case.shape.name} {case.dtype}{precision} {case.mode}"
        benchmark.extra_info.update(
            op=case.op, shape=case.shape.name, dtype=case.dtype, precision=case.precision, mode=case.mode,
            backend=case.backend, user_sized=user_sized,
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
                rounds=timing.default_repeats(DEVICE, quick=not FULL, user_sized=user_sized),
                warmup_rounds=timing.default_warmup(DEVICE, quick=not FULL, user_sized=user_sized),
                iterations=1,
            )

    return run
