"""The GPU proof's plumbing, on the CPU: JUnit reading and merging, the summary, and the second call
(``gpu_proof.sh --rehearse --rerun``) rerunning exactly the failed tests and the stages skipped for
lack of time. The whole first call is rehearsed by ``.ci/run``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_proof  # noqa: E402

#: A cheap real test, named as failed in the synthetic JUnit file the rerun reads.
CHEAP_TEST = ("tests.test_cli", "test_unknown_backend_is_rejected_by_the_parser")


def _junit(path: Path, cases: list[tuple[str, str, str | None]]) -> Path:
    """A pytest-style JUnit file: ``(classname, name, outcome)`` with outcome None, failure, error, skipped."""
    body = "".join(
        f'<testcase classname="{cls}" name="{name}">' + (f"<{outcome} message='x'/>" if outcome else "") + "</testcase>"
        for cls, name, outcome in cases
    )
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{body}</testsuite></testsuites>')
    return path


def test_failed_lists_failures_and_errors_as_node_ids(tmp_path: Path) -> None:
    junit = _junit(tmp_path / "t.xml", [
        ("tests.test_vq", "test_a[cuda-torch.float32]", "failure"),
        ("tests.test_vq", "test_b", None),
        ("tests.test_iwae", "test_c[triton]", "error"),
        ("tests.test_iwae", "test_d", "skipped"),
    ])  # fmt: skip
    assert gpu_proof.failed(junit) == ["tests/test_vq.py::test_a[cuda-torch.float32]", "tests/test_iwae.py::test_c[triton]"]
    assert gpu_proof.junit_counts(junit) == {"passed": 1, "failed": 1, "errors": 1, "skipped": 1}


def test_merge_junit_keeps_every_suite_and_ignores_missing_inputs(tmp_path: Path) -> None:
    first = _junit(tmp_path / "tests.xml", [("tests.test_vq", "test_a", None)])
    second = _junit(tmp_path / "slow.xml", [("tests.test_vq", "test_b", "failure")])
    out = tmp_path / "merged.xml"
    gpu_proof.merge_junit(out, [first, tmp_path / "absent.xml", second])
    assert gpu_proof.junit_counts(out) == {"passed": 1, "failed": 1, "errors": 0, "skipped": 0}
    assert gpu_proof.failed(out) == ["tests/test_vq.py::test_b"]


def test_summary_reports_every_stage_and_the_measured_rows(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "stages.tsv").write_text("env\tok\t2\tdate\nbench\tskipped\t0\tskipped: no time left\n")
    (work / "smoke.json").write_text(json.dumps([
        {"op": "vq_nearest", "backend": "cuda", "dtype": "bf16", "shape": "7x3", "status": "fail", "error": "NaN left"},
        {"op": "vq_nearest", "backend": "triton", "dtype": "bf16", "shape": "7x3", "status": "ok"},
    ]))  # fmt: skip
    _junit(work / "tests.xml", [("tests.test_vq", "test_a", None), ("tests.test_vq", "test_b", "failure")])
    (work / "memcheck.log").write_text("========= ERROR SUMMARY: 0 errors\n========= ERROR SUMMARY: 2 errors\n")
    (out / "bench.json").write_text(json.dumps({"rows": [
        {"op": "vector_quantize", "shape": {"name": "user"}, "dtype": "fp32", "mode": "fwd", "backend": "cuda",
         "status": "ok", "median_ms": 0.125, "noisy": True, "cuda_graph": {"status": "ok", "median_ms": 0.0625},
         "fraction_of_ceiling": 0.5, "speedup_vs_eager": 3.0},
        {"op": "vector_quantize", "shape": {"name": "user"}, "dtype": "fp32", "mode": "fwd", "backend": "eager",
         "status": "ok", "median_ms": 0.375},
    ]}))  # fmt: skip
    text = gpu_proof.summary(work, out)
    proof = json.loads((out / "proof.json").read_text())
    assert [s["stage"] for s in proof["stages"]] == ["env", "bench"]
    assert proof["tests"]["tests"] == {"passed": 1, "failed": 1, "errors": 0, "skipped": 0}
    assert proof["sanitizer"]["memcheck"] == "2 errors over 2 processes"
    assert proof["sanitizer"]["racecheck"] == "no log"
    assert "| bench | skipped | 0 | skipped: no time left |" in text
    assert "smoke: 1 ok, 1 failed, 0 skipped" in text and "FAIL vq_nearest cuda bf16 7x3: NaN left" in text
    assert "| vector_quantize | user | fp32 | fwd | cuda | 0.125 (noisy) | 0.0625 | 50% | 3x |" in text
    assert "| eager |" not in text  # only fastvae's compiled backends are listed
    assert proof["quantisers"] == [] and "| quantiser |" not in text  # that stage left nothing
    assert (out / "summary.md").read_text() == text


def test_summary_carries_the_quantiser_rows(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "quantisers").mkdir(parents=True)
    out.mkdir()
    (work / "stages.tsv").write_text("quantisers\tok\t40\tdone\n")
    rows = [
        {"op": "lfq", "shape": {"name": "N1048576xD16", "dims": {"N": 1048576, "D": 16}}, "dtype": "bf16",
         "impl": "fastvae.nn.LFQ", "backend": "torch", "status": "ok", "median_ms": 12.5,
         "peak_memory_bytes": 3 * 2**20},
        {"op": "lfq", "shape": {"name": "N1048576xD16", "dims": {"N": 1048576, "D": 16}}, "dtype": "bf16",
         "impl": "vector-quantize-pytorch", "backend": None, "status": "OOM", "median_ms": None,
         "peak_memory_bytes": None},
    ]  # fmt: skip
    (work / "quantisers" / "bench.json").write_text(json.dumps({"rows": [], "peer": rows}))
    text = gpu_proof.summary(work, out)
    assert json.loads((out / "proof.json").read_text())["quantisers"] == rows
    assert "| lfq | N1048576xD16 | bf16 | fastvae.nn.LFQ | torch | 12.5 | 3 | ok |" in text
    assert "| lfq | N1048576xD16 | bf16 | vector-quantize-pytorch | - | - | - | OOM |" in text


@pytest.mark.slow
def test_rerun_runs_the_failed_tests_and_the_stages_skipped_for_time(tmp_path: Path) -> None:
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    junit = _junit(earlier / "tests.xml", [(*CHEAP_TEST, "failure"), ("tests.test_cli", "test_other", None)])
    (earlier / "proof.json").write_text(json.dumps({"stages": [
        {"stage": "slow", "status": "skipped", "seconds": 0, "detail": "skipped: no time left before the 540s deadline"},
        {"stage": "racecheck", "status": "skipped", "seconds": 0, "detail": "skipped: no GPU"},
        {"stage": "bench", "status": "ok", "seconds": 100, "detail": "done"},
    ]}))  # fmt: skip
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", "benchmarks/gpu_proof.sh", "--rehearse", "--rerun", str(junit)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    stages = [s["stage"] for s in json.loads((out / "proof.json").read_text())["stages"]]
    assert stages == ["env", "rerun", "slow"]  # not bench (it ran), not racecheck (no GPU then either)
    assert gpu_proof.junit_counts(out / "tests.xml") == {"passed": 1, "failed": 0, "errors": 0, "skipped": 0}
    assert result.stdout.rstrip().splitlines()[-1].startswith("gpu_proof (rerun, rehearsal): ")
    assert len(list(out.iterdir())) <= 8


def test_check_accepts_ok_and_no_gpu_and_names_everything_else(tmp_path: Path) -> None:
    proof = tmp_path / "proof.json"
    proof.write_text(json.dumps({"stages": [
        {"stage": "env", "status": "ok", "seconds": 1, "detail": ""},
        {"stage": "memcheck", "status": "skipped", "seconds": 0, "detail": "skipped: no GPU"},
    ]}))  # fmt: skip
    assert gpu_proof.check(proof) == [] and gpu_proof.main(["check", str(proof)]) == 0
    proof.write_text(json.dumps({"stages": [
        {"stage": "bench", "status": "skipped", "seconds": 170, "detail": "skipped: did not finish within its 170s budget"},
        {"stage": "smoke", "status": "failed", "seconds": 3, "detail": "exit 1: boom"},
    ]}))  # fmt: skip
    assert gpu_proof.check(proof) == [
        "bench: skipped (skipped: did not finish within its 170s budget)", "smoke: failed (exit 1: boom)"
    ]
    assert gpu_proof.main(["check", str(proof)]) == 1
