"""Throughput benchmarks of the fastvae ops: the driver behind ``fastvae bench``.

One table of shapes (:mod:`~fastvae.bench.shapes`), one set of cases (:mod:`~fastvae.bench.cases`:
inputs, the ``eager``/``compile``/``torch``/``triton``/``cuda`` callables, bytes moved and flops),
shared by ``fastvae bench`` and the pytest-benchmark suites in ``benchmarks/``; timing and peak memory
in :mod:`~fastvae.bench.timing`; the run in :mod:`~fastvae.bench.runner`; JSON, markdown and the
chart in :mod:`~fastvae.bench.report`.
"""

from fastvae.bench.report import markdown, plot, write_report
from fastvae.bench.runner import BenchConfig, run, validate

__all__ = ["BenchConfig", "markdown", "plot", "run", "validate", "write_report"]
