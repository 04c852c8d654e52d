"""The Python half of ``benchmarks/gpu_proof.sh``: test selection, JUnit reading and the summary.

Subcommands (each prints to stdout; the shell script decides what runs when):

* ``sanitize-tests TOOL``: the node ids compute-sanitizer runs under ``TOOL`` (``memcheck``: about
  40 cuda-backend tests that reach every CUDA kernel at tails, misaligned pointers and odd sizes;
  ``racecheck``: about 8 VQ and IWAE tests whose kernels share memory across threads), chosen from
  the collected suite so a renamed parameter cannot silently empty the list.
* ``failed JUNIT``: the node ids that failed or errored in a JUnit XML file, one per line.
* ``merge-junit OUT IN...``: one JUnit file holding every test suite of the inputs that exist.
* ``check PROOF_JSON``: exit status 1, naming them, if any stage failed or was skipped for any
  reason but "no GPU" (what CI requires of the rehearsal).
* ``summary WORK OUT``: reads what the stages left (``WORK/stages.tsv``, the smoke rows, the
  JUnit files, the sanitizer logs, ``bench.json``, the training and quantiser rows), writes ``OUT/proof.json``
  and ``OUT/summary.md``, and prints the summary table: the last thing the proof prints.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

#: Op test files the proof runs on the GPU.
OP_TEST_FILES: tuple[str, ...] = (
    "tests/test_gaussian.py",
    "tests/test_iwae.py",
    "tests/test_vq.py",
    "tests/test_vector_quantizer.py",
    "tests/test_rvq.py",
    "tests/test_fsq.py",
    "tests/test_noise_accuracy.py",
    "tests/test_custom_ops.py",
    "tests/test_extension.py",
    "tests/test_backend.py",
    "tests/test_fuzz.py",
    "tests/test_kernel_devices.py",
)

#: compute-sanitizer selections: test function -> how many of its cuda parametrisations (spread over
#: the parameter list, so dtypes and tile cases differ). Together they launch every CUDA kernel.
SANITIZE: dict[str, dict[str, int]] = {
    "memcheck": {
        "tests/test_gaussian.py::test_odd_row_lengths": 2,
        "tests/test_gaussian.py::test_misaligned_inputs": 2,
        "tests/test_gaussian.py::test_outputs_are_written_everywhere": 2,
        "tests/test_gaussian.py::test_strided_incoming_gradients": 2,
        "tests/test_gaussian.py::test_row_sums_and_gradients_across_tiles": 2,
        "tests/test_gaussian.py::test_gaussian_kl_with_prior_matches_torch_distributions": 1,
        "tests/test_gaussian.py::test_gaussian_log_prob_matches_torch_distributions": 1,
        "tests/test_iwae.py::test_iwae_log_weights_block_edges": 2,
        "tests/test_iwae.py::test_iwae_log_weights_grad_block_edges": 2,
        "tests/test_iwae.py::test_iwae_bound_block_edges": 2,
        "tests/test_iwae.py::test_miwae_bound_block_edges": 2,
        "tests/test_iwae.py::test_misaligned_inputs": 1,
        "tests/test_iwae.py::test_outputs_are_written_everywhere": 1,
        "tests/test_iwae.py::test_log_weights_backward_work_split": 2,
        "tests/test_vq.py::test_odd_dims_and_tile_edges_match_brute_force": 2,
        "tests/test_vq.py::test_unaligned_base_pointers": 2,
        "tests/test_vq.py::test_every_output_element_is_written": 2,
        "tests/test_vq.py::test_small_tiles_and_codebook_splits_match_brute_force": 2,
        "tests/test_vq.py::test_vq_code_stats_match_one_hot": 1,
        "tests/test_vq.py::test_gradients_match_one_hot_formula_with_strided_upstream": 1,
        "tests/test_vq.py::test_duplicate_codes_at_tile_and_split_edges_go_to_lowest_index": 1,
        "tests/test_vq.py::test_vector_quantize_loss_gradients_match_float64_autograd": 2,
        "tests/test_vq.py::test_vq_nearest_matches_brute_force": 4,
    },
    "racecheck": {
        "tests/test_vq.py::test_small_tiles_and_codebook_splits_match_brute_force": 2,
        "tests/test_vq.py::test_vq_nearest_matches_brute_force": 2,
        "tests/test_vq.py::test_vq_code_stats_match_one_hot": 1,
        "tests/test_iwae.py::test_iwae_log_weights_grad_block_edges": 1,
        # The log-weights backward folds its slices across warps in shared memory.
        "tests/test_iwae.py::test_log_weights_backward_work_split": 2,
        "tests/test_iwae.py::test_iwae_bound_block_edges": 1,
        "tests/test_iwae.py::test_miwae_bound_block_edges": 1,
    },
}


def _collect(python: str, files: list[str]) -> list[str]:
    """Node ids of the cuda-backend tests in ``files``, as pytest collects them (no GPU needed)."""
    result = subprocess.run(
        [python, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-k", "cuda", *files],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return [line for line in result.stdout.splitlines() if "::" in line and "[" in line]


def _spread(items: list[str], count: int) -> list[str]:
    """``count`` items spread evenly over ``items`` (first and last included when count >= 2)."""
    if count >= len(items):
        return items
    if count == 1:
        return items[:1]
    step = (len(items) - 1) / (count - 1)
    return [items[round(i * step)] for i in range(count)]


def sanitize_tests(tool: str, python: str) -> list[str]:
    """The node ids compute-sanitizer's ``tool`` runs (see :data:`SANITIZE`)."""
    wanted = SANITIZE[tool]
    files = sorted({name.split("::")[0] for name in wanted})
    collected = _collect(python, files)
    chosen = []
    for function, count in wanted.items():
        params = [node for node in collected if node.split("[")[0] == function]
        chosen += _spread(params, count)
    return chosen


def _cases(path: Path) -> list[ET.Element]:
    return list(ET.parse(path).getroot().iter("testcase"))


def _node_id(case: ET.Element) -> str:
    """``tests/test_x.py::test_name[params]`` from a JUnit ``testcase`` (classname ``tests.test_x``)."""
    module = case.get("classname", "").replace(".", "/")
    return f"{module}.py::{case.get('name')}"


def failed(junit: Path) -> list[str]:
    """Node ids that failed or errored in ``junit``."""
    return [_node_id(c) for c in _cases(junit) if c.find("failure") is not None or c.find("error") is not None]


def junit_counts(junit: Path) -> dict[str, int]:
    """passed / failed / errors / skipped counts of the test cases in ``junit``."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for case in _cases(junit):
        if case.find("failure") is not None:
            counts["failed"] += 1
        elif case.find("error") is not None:
            counts["errors"] += 1
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def merge_junit(out: Path, inputs: list[Path]) -> None:
    """Write to ``out`` one ``testsuites`` element holding every ``testsuite`` of the existing ``inputs``."""
    merged = ET.Element("testsuites")
    for path in inputs:
        if not path.is_file():
            continue
        root = ET.parse(path).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        for suite in suites:
            suite.set("name", f"{suite.get('name', 'pytest')}:{path.stem}")
            merged.append(suite)
    ET.ElementTree(merged).write(out, encoding="utf-8", xml_declaration=True)


def _sanitizer_errors(log: Path) -> str:
    """compute-sanitizer's verdict line(s) in ``log``: its ERROR SUMMARY, or why there is none."""
    if not log.is_file():
        return "no log"
    text = log.read_text(errors="replace")
    summaries = re.findall(r"ERROR SUMMARY: (\d+) errors?", text)
    if not summaries:
        return "no ERROR SUMMARY line (did not finish)"
    total = sum(int(n) for n in summaries)
    return f"{total} errors over {len(summaries)} processes"


def _stages(work: Path) -> list[dict[str, Any]]:
    rows = []
    path = work / "stages.tsv"
    if path.is_file():
        for line in path.read_text().splitlines():
            name, status, seconds, detail = (line.split("\t") + ["", "", ""])[:4]
            rows.append({"stage": name, "status": status, "seconds": float(seconds or 0), "detail": detail})
    return rows


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _format_ms(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _bench_lines(bench: dict[str, Any] | None) -> list[str]:
    """The measured fastvae rows of the core benchmark, one table line each (graph: CUDA-graph replay)."""
    if not bench:
        return ["(no bench.json)"]
    lines = []
    for row in bench.get("rows", []):
        if row.get("backend") not in ("triton", "cuda") or row.get("status") != "ok":
            continue
        shape = row.get("shape")
        name = shape.get("name") if isinstance(shape, dict) else shape
        dtype = f"{row.get('dtype')}{'/' + row['precision'] if row.get('precision') else ''}"
        speed, fraction = row.get("speedup_vs_eager"), row.get("fraction_of_ceiling")
        graph = row.get("cuda_graph") or {}
        graph_ms = graph.get("median_ms") if graph.get("status") == "ok" else None
        cells = [
            str(row.get("op")), str(name), dtype, str(row.get("mode")), str(row.get("backend")),
            _format_ms(row.get("median_ms")) + (" (noisy)" if row.get("noisy") else ""),
            _format_ms(graph_ms),
            "-" if fraction is None else f"{100 * fraction:.0f}%",
            "-" if speed is None else f"{speed:.3g}x",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines or ["(no measured triton/cuda rows)"]


def summary(work: Path, out: Path) -> str:
    """Gather every stage's results into ``out/proof.json`` and ``out/summary.md``; return the markdown."""
    stages = _stages(work)
    smoke = _json(work / "smoke.json") or []
    tests = {name: junit_counts(work / f"{name}.xml") for name in ("tests", "slow", "rerun") if (work / f"{name}.xml").is_file()}
    skipped = {s["stage"]: s["detail"] for s in stages if s["status"] == "skipped"}
    sanitizer = {tool: skipped.get(tool) or _sanitizer_errors(work / f"{tool}.log") for tool in ("memcheck", "racecheck")}
    bench = _json(out / "bench.json")
    training = _json(work / "training" / "training.json")
    quantisers = (_json(work / "quantisers" / "bench.json") or {}).get("peer", [])
    proof = {"stages": stages, "smoke": smoke, "tests": tests, "sanitizer": sanitizer, "training": training,
             "quantisers": quantisers}
    (out / "proof.json").write_text(json.dumps(proof, indent=1))

    smoke_counts = {s: sum(r.get("status") == s for r in smoke) for s in ("ok", "fail", "skipped")}
    lines = ["## GPU proof", "", "| stage | status | seconds | detail |", "| --- | --- | --- | --- |"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']:.0f} | {s['detail']} |" for s in stages]
    lines += ["", f"smoke: {smoke_counts['ok']} ok, {smoke_counts['fail']} failed, {smoke_counts['skipped']} skipped"]
    for row in smoke:
        if row.get("status") == "fail":
            lines.append(f"  FAIL {row['op']} {row['backend']} {row['dtype']} {row['shape']}: {row.get('error') or row.get('errors')}")
    for name, counts in tests.items():
        lines.append(f"{name}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    lines += [f"{tool}: {verdict}" for tool, verdict in sanitizer.items()]
    lines += ["", "| op | shape | dtype | mode | backend | median ms | graph ms | of ceiling | vs eager |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += _bench_lines(bench)
    if quantisers:
        lines += ["", "| quantiser | shape | dtype | impl | backend | median ms | peak MiB | status |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [
            f"| {row['op']} | {row['shape']['name']} | {row['dtype']} | {row['impl']} | {row['backend'] or '-'} | "
            f"{_format_ms(row['median_ms'])} | "
            f"{'-' if row['peak_memory_bytes'] is None else format(row['peak_memory_bytes'] / 2**20, '.4g')} | "
            f"{row['status']} |"
            for row in quantisers
        ]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def check(proof_json: Path) -> list[str]:
    """The stages of ``proof_json`` that failed or were skipped for a reason other than "no GPU"."""
    stages = json.loads(Path(proof_json).read_text())["stages"]
    return [f"{s['stage']}: {s['status']} ({s['detail']})" for s in stages
            if s["status"] != "ok" and s["detail"] != "skipped: no GPU"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sanitize = commands.add_parser("sanitize-tests")
    sanitize.add_argument("tool", choices=tuple(SANITIZE))
    commands.add_parser("failed").add_argument("junit", type=Path)
    merge = commands.add_parser("merge-junit")
    merge.add_argument("out", type=Path)
    merge.add_argument("inputs", type=Path, nargs="+")
    commands.add_parser("check").add_argument("proof_json", type=Path)
    gather = commands.add_parser("summary")
    gather.add_argument("work", type=Path)
    gather.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "sanitize-tests":
        print("\n".join(sanitize_tests(args.tool, sys.executable)))
    elif args.command == "failed":
        print("\n".join(failed(args.junit)))
    elif args.command == "check":
        bad = check(args.proof_json)
        for line in bad:
            print(f"gpu_proof: stage {line}", file=sys.stderr)
        return 1 if bad else 0
    elif args.command == "merge-junit":
        merge_junit(args.out, args.inputs)
    else:
        print(summary(args.work, args.out), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
