"""Ranking the compiled backends per op from a benchmark report (fastvae.bench.preference)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from fastvae.bench import preference


def _row(op: str, shape: str, dtype: str, mode: str, backend: str, ms: float | None, status: str = "ok") -> dict:
    return {"op": op, "shape": {"name": shape, "dims": {}}, "dtype": dtype, "mode": mode, "backend": backend,
            "median_ms": ms, "status": status}


def test_faster_backend_by_geometric_mean_comes_first_for_every_covered_op() -> None:
    rows = [
        # reparameterize: cuda 2x faster on one row, 1.5x slower on the other -> geomean favours cuda
        _row("reparameterize", "a", "fp32", "fwd", "cuda", 1.0), _row("reparameterize", "a", "fp32", "fwd", "triton", 2.0),
        _row("reparameterize", "b", "bf16", "fwd", "cuda", 3.0), _row("reparameterize", "b", "bf16", "fwd", "triton", 2.0),
        # vq_nearest: triton faster
        _row("vq_nearest", "a", "bf16", "fwd", "cuda", 5.0), _row("vq_nearest", "a", "bf16", "fwd", "triton", 4.0),
        # iwae: only one backend measured ok -> not ranked
        _row("iwae", "a", "fp32", "fwd", "cuda", 1.0), _row("iwae", "a", "fp32", "fwd", "triton", None, "oom"),
        # eager/compile rows are ignored
        _row("gaussian_kl", "a", "fp32", "fwd", "eager", 0.1), _row("gaussian_kl", "a", "fp32", "fwd", "cuda", 1.0),
    ]
    ranking = preference.rank({"rows": rows})
    assert ranking["reparameterize_fwd"] == ranking["reparameterize_bwd"] == ("cuda", "triton")
    assert ranking["vq_nearest_fwd"] == ("triton", "cuda")
    assert "iwae_bound" not in ranking and "gaussian_kl" not in ranking


def test_generated_module_round_trips(tmp_path: Path) -> None:
    report = {"date": "d", "commit": "c", "rows": [
        _row("vector_quantize", "a", "bf16", "fwd+bwd", "cuda", 1.0),
        _row("vector_quantize", "a", "bf16", "fwd+bwd", "triton", 3.0),
    ]}
    path = preference.write_module(report, "bench.json", tmp_path / "_measured.py")
    spec = importlib.util.spec_from_file_location("_measured_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PREFERENCE["vq_code_stats_fwd"] == ("cuda", "triton")
    assert module.PROVENANCE["commit"] == "c" and module.SOURCE == "bench.json"
    assert json.dumps(module.PROVENANCE)
