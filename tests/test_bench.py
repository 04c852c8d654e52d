"""``fastvae bench``: the quick run writes the documented JSON and markdown, peak memory is measured
correctly, the naive VQ search holds more memory than the chunked one, options are validated, the
selections (default, ``--user``, ``--full``, ``--quick``) hold the rows they promise, timings carry
their spread and noisy rows are marked, CUDA graph replays say why they are unavailable, and the
benchmark's eager code computes what fastvae's ops compute.

No assertion here is about speed (performance is shown by benchmarks, never by timed tests); the
memory assertions are about allocations, which are deterministic.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from tolerances import BENCH_NORMAL_MOMENTS_ATOL, FLOAT64_RECOMPUTED

import fastvae
from fastvae import cli
from fastvae.bench import cases, preference, report, runner, shapes, timing

SPREAD_FIELDS = {"min_ms", "q25_ms", "median_ms", "q75_ms", "max_ms", "iqr_fraction", "noisy"}
ROW_FIELDS = {
    "op", "shape", "dtype", "precision", "mode", "backend", "user_sized", "status", "warmup", "repeats",
    *SPREAD_FIELDS, "gbps", "tflops", "fraction_of_ceiling", "speedup_vs_eager", "speedup_vs_eager_noisy",
    "speedup_vs_compile", "speedup_vs_compile_noisy", "peak_memory_bytes", "cuda_graph",
}
ON_CPU = not torch.cuda.is_available()


def _bench(argv: list[str]) -> tuple[int, str, str]:
    """Run ``fastvae bench argv``; returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["bench", *argv])
    return status, out.getvalue(), err.getvalue()


def _small(out: Path, *extra: str) -> list[str]:
    """A seconds-long run: gaussian_kl at its quick shape, fp32, eager and torch."""
    return ["--quick", "--ops", "gaussian_kl", "--dtypes", "fp32", "--backends", "eager", "torch",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``fastvae bench --quick`` run shared by the tests that read its output."""
    out = tmp_path_factory.mktemp("bench")
    status, stdout, stderr = _bench(["--quick", "--out", str(out)])
    return {"status": status, "stdout": stdout, "stderr": stderr, "out": out}


# --- the quick run -----------------------------------------------------------------------------------


def test_quick_run_exits_zero_and_writes_json_and_markdown(quick):
    assert quick["status"] == 0, quick["stderr"]
    assert (quick["out"] / "bench.json").is_file()
    assert (quick["out"] / "bench.md").is_file()
    assert f"wrote {quick['out'] / 'bench.json'}" in quick["stdout"]


@pytest.mark.skipif(not ON_CPU, reason="the notice is for machines without a GPU")
def test_quick_run_says_there_is_no_gpu(quick):
    first_line = quick["stdout"].splitlines()[0]
    kernels = " and fastvae's cpu kernels" if "cpu" in fastvae.available_backends() else ""
    assert first_line == "no CUDA device: measuring the torch paths on the CPU" + kernels
    assert "not benchmarked on the CPU" in quick["stdout"]


def test_quick_run_reports_progress_on_stderr(quick):
    # Not a terminal here: one line per case, "[i/n] op shape dtype mode backend".
    lines = [line for line in quick["stderr"].splitlines() if line.startswith("[")]
    rows = json.loads((quick["out"] / "bench.json").read_text())["rows"]
    assert len(lines) == len(rows)
    assert lines[-1].startswith(f"[{len(rows)}/{len(rows)}] ")


def test_json_has_the_documented_schema(quick):
    data = json.loads((quick["out"] / "bench.json").read_text())
    assert data["schema"] == 2
    assert data["settings"]["selection"] == "quick"
    assert data["settings"]["noisy_iqr_fraction"] == timing.NOISY_IQR_FRACTION
    date = datetime.datetime.fromisoformat(data["date"])
    assert date.tzinfo is not None and date.utcoffset() == datetime.timedelta(0)
    assert data["commit"] == "unknown" or len(data["commit"]) == 40
    assert set(data["device"]) >= {"kind", "name", "driver", "cuda"}
    assert data["device"]["kind"] == ("cpu" if ON_CPU else "cuda")
    assert set(data["versions"]) >= {"python", "torch", "triton", "fastvae"}
    assert data["versions"]["torch"] == torch.__version__ and data["versions"]["fastvae"] == fastvae.__version__
    assert data["ceilings"]["copy"]["status"] == "ok" and data["ceilings"]["copy"]["gbps"] > 0
    (vq_shape,) = shapes.shapes_for("vq_nearest", quick=True)
    matmuls = {(m["shape"]["name"], m["dtype"]): m for m in data["ceilings"]["matmul"]}
    assert set(matmuls) == {(vq_shape.name, "fp32"), (vq_shape.name, "bf16")}  # one per VQ shape and dtype
    assert all(m["status"] == "ok" and m["rows"] == vq_shape.dims["N"] and m["tflops"] > 0 for m in matmuls.values())
    assert data["peer"] == [] and data["memory_scaling"] == []
    rows = data["rows"]
    for row in rows:
        assert set(row) == ROW_FIELDS, row
        assert set(row["shape"]) == {"name", "dims"}
        assert row["cuda_graph"] is None and not row["user_sized"]  # no user-sized rows in the quick set
    expected = {
        (op, shape.name, dtype, mode, backend)
        for op in shapes.OPS
        for shape in shapes.shapes_for(op, quick=True)
        for dtype in ("fp32", "bf16")
        for mode in shapes.MODES
        for backend in ("eager", "compile", "torch")
    }
    assert expected <= {(r["op"], r["shape"]["name"], r["dtype"], r["mode"], r["backend"]) for r in rows}


@pytest.mark.skipif(not ON_CPU, reason="CPU run: every eager/compile/torch case fits and runs")
def test_every_cpu_row_ran_and_has_its_numbers(quick):
    rows = json.loads((quick["out"] / "bench.json").read_text())["rows"]
    # No triton/cuda on the CPU; the cpu backend where fastvae._C is built, for the ops it implements.
    cpu = "cpu" in fastvae.available_backends()
    assert {row["backend"] for row in rows} == {"eager", "compile", "torch", *(["cpu"] if cpu else [])}
    assert {row["op"] for row in rows if row["backend"] == "cpu"} == (
        {"reparameterize", "reparameterize_kl", "gaussian_kl", "gaussian_log_prob", "iwae", "vq_nearest", "vector_quantize"}
        if cpu
        else set()
    )
    for row in rows:
        assert row["status"] == "ok", row
        assert row["median_ms"] > 0 and row["peak_memory_bytes"] >= 0 and row["fraction_of_ceiling"] > 0
        assert row["min_ms"] <= row["q25_ms"] <= row["median_ms"] <= row["q75_ms"] <= row["max_ms"]
        assert row["noisy"] == (row["iqr_fraction"] > timing.NOISY_IQR_FRACTION)
        assert (row["warmup"], row["repeats"]) == (1, 5)
        compute_bound = cases.OP_SPECS[row["op"]].flops is not None
        assert (row["tflops"] is not None, row["gbps"] is None) == (compute_bound, compute_bound)
        assert row["speedup_vs_eager"] > 0 and row["speedup_vs_compile"] > 0
        if row["backend"] == "eager":
            assert row["speedup_vs_eager"] == 1.0


@pytest.mark.skipif(not ON_CPU, reason="the profiler-measured CPU peak of the naive and chunked searches")
@pytest.mark.parametrize("op", ("vq_nearest", "vector_quantize"))
@pytest.mark.parametrize("mode", shapes.MODES)
def test_naive_vq_holds_more_memory_than_the_chunked_search(quick, op, mode):
    rows = json.loads((quick["out"] / "bench.json").read_text())["rows"]
    (shape,) = shapes.shapes_for(op, quick=True)
    n, k, d = shape.dims["N"], shape.dims["K"], shape.dims["D"]
    assert n * k >= 16 * n * d  # the distance matrix is large relative to x
    peak = {
        row["backend"]: row["peak_memory_bytes"]
        for row in rows
        if row["op"] == op and row["shape"]["name"] == shape.name and row["dtype"] == "fp32" and row["mode"] == mode
    }
    matrix = n * k * 4
    assert peak["eager"] >= matrix  # the naive search materialises N x K distances ...
    assert peak["torch"] < peak["eager"]  # ... which fastvae's chunked search does not hold twice


def test_markdown_has_the_header_and_one_table_per_op(quick):
    data = json.loads((quick["out"] / "bench.json").read_text())
    text = (quick["out"] / "bench.md").read_text()
    assert text.startswith("# fastvae benchmark\n")
    for field in (f"- date: {data['date']}", f"- commit: {data['commit']}", "- device: ", "- versions: ",
                  "copy ceiling"):
        assert field in text
    for op in shapes.OPS:
        assert f"\n## {op}\n" in text
    assert text.count("| shape | dtype | mode | backend | median ms |") == len(shapes.OPS)
    table_rows = [
        line for line in text.splitlines() if line.startswith("| ") and not line.startswith(("| shape", "| ---"))
    ]
    assert len(table_rows) == len(data["rows"])
    assert text in quick["stdout"]  # the tables are printed too


# --- peer comparison and memory scaling --------------------------------------------------------------


def test_peer_rows_are_skipped_without_vector_quantize_pytorch(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vector_quantize_pytorch", None)  # find_spec() now says: absent
    status, stdout, _ = _bench(
        ["--quick", "--ops", "vq_nearest", "--dtypes", "fp32", "--modes", "fwd", "--backends", "torch", "--peer",
         "--out", str(tmp_path)]
    )
    assert status == 0
    assert "vector-quantize-pytorch is not installed" in stdout
    peer = json.loads((tmp_path / "bench.json").read_text())["peer"]
    theirs = [row for row in peer if row["impl"] == "vector-quantize-pytorch"]
    ours = [row for row in peer if row["impl"] != "vector-quantize-pytorch"]
    assert theirs and all(row["status"] == "skipped: vector-quantize-pytorch not installed" for row in theirs)
    # fastvae's layers are still measured (a GPU machine without the peer records their memory).
    assert {row["op"] for row in ours} == {"vector_quantize_ema", "fsq", "lfq", "residual_vq"}
    assert all(row["status"] == "ok" and row["peak_memory_bytes"] > 0 and row["speedup_vs_peer"] is None
               for row in ours)


def test_peer_comparison_runs_when_vector_quantize_pytorch_is_installed(tmp_path):
    pytest.importorskip("vector_quantize_pytorch")
    status, _, _ = _bench(
        ["--quick", "--ops", "vq_nearest", "--dtypes", "fp32", "--modes", "fwd", "--backends", "torch", "--peer",
         "--out", str(tmp_path)]
    )
    assert status == 0
    peer = json.loads((tmp_path / "bench.json").read_text())["peer"]
    for row in peer:
        assert row["status"] == "ok" and row["mode"] == "fwd+bwd" and row["median_ms"] > 0
        assert row["peak_memory_bytes"] > 0 and row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    # Each layer against the peer's, on the selection's shapes: VectorQuantize with EMA at the VQ
    # shape, FSQ, LFQ and ResidualVQ at their quick shapes.
    layers = {"vector_quantize_ema": ("fastvae.nn.VectorQuantizer", "N4096xK1024xD64"),
              "fsq": ("fastvae.nn.FSQ", "N4096xD4"),
              "lfq": ("fastvae.nn.LFQ", "N256xD10"),
              "residual_vq": ("fastvae.nn.ResidualVQ", "N256xQ8xK1024xD128")}
    assert [row["op"] for row in peer] == [op for op in layers for _ in range(2)]
    for op, (fastvae_impl, shape) in layers.items():
        impls = {row["impl"]: row for row in peer if row["op"] == op}
        assert set(impls) == {"vector-quantize-pytorch", fastvae_impl}
        assert all(row["shape"]["name"] == shape for row in impls.values())
        ours = impls[fastvae_impl]
        assert ours["backend"] == "torch"
        assert ours["speedup_vs_peer"] == pytest.approx(impls["vector-quantize-pytorch"]["median_ms"] / ours["median_ms"])
    markdown = (tmp_path / "bench.md").read_text()
    for title in ("FSQ, levels (8, 5, 5, 5)", "LFQ, one codebook of 2^D codes", "ResidualVQ with EMA, Q codebooks of K codes"):
        assert f"## peer: {title}, forward + backward" in markdown
    # fastvae's FSQ holds fewer temporaries than the peer's (the reference computes in place); its
    # LFQ never forms the N x 2^D code probabilities: less than one such float32 matrix.
    peak = {(row["op"], row["impl"]): row["peak_memory_bytes"] for row in peer}
    for op, fastvae_impl in (("fsq", "fastvae.nn.FSQ"), ("lfq", "fastvae.nn.LFQ")):
        assert peak[op, fastvae_impl] < peak[op, "vector-quantize-pytorch"], op
    assert peak["lfq", "fastvae.nn.LFQ"] < 256 * 2**10 * 4
    # ResidualVQ's extra memory is O(N Q + Q K D), no N x K distances: at this small N its EMA
    # statistics (a few Q x K x D tensors) are most of it, within 4 codebooks' and 32 inputs' worth.
    n, q, k, d = 256, 8, 1024, 128
    assert peak["residual_vq", "fastvae.nn.ResidualVQ"] < 4 * q * k * d * 4 + 32 * n * d * 4


def test_peer_shapes_follow_the_selection():
    def names(layer: str, selection: str, chosen: tuple[str, ...] | None = None, cpu: bool = False) -> list[str]:
        return [shape.name for shape in shapes.peer_shapes(layer, selection, chosen, cpu=cpu)]

    assert names("fsq", "quick") == names("fsq", "user") == ["N4096xD4"]
    # The issue's N = 2^20, and a CPU-sized N, everywhere else (both fit a CPU).
    assert names("fsq", "full") == names("fsq", "core") == ["N4096xD4", "N65536xD4", "N1048576xD4"]
    assert names("fsq", "full", cpu=True) == names("fsq", "full")
    assert names("fsq", "full", ("N1048576xD4", "N4096xK1024xD64")) == ["N1048576xD4"]
    assert names("lfq", "quick") == ["N256xD10"] and names("lfq", "user") == ["N1024xD16"]
    assert names("lfq", "full")[-1] == "N1048576xD16"
    # ResidualVQ at N = 2^20 is a GPU's shape: left out of a CPU's full run, named it still runs.
    assert names("residual_vq", "full") == ["N256xQ8xK1024xD128", "N1024xQ8xK1024xD128", "N16384xQ8xK1024xD128",
                                            "N1048576xQ8xK1024xD128"]
    assert "N1048576xQ8xK1024xD128" not in names("residual_vq", "full", cpu=True)
    assert names("residual_vq", "full", ("N1048576xQ8xK1024xD128",), cpu=True) == ["N1048576xQ8xK1024xD128"]


def test_shapes_names_peer_shapes_only_with_peer():
    for name in ("N1048576xD4", "N1048576xD16", "N1048576xQ8xK1024xD128"):
        assert runner.validate(runner.BenchConfig(shapes=(name,), peer=True)).shapes == (name,)
        with pytest.raises(ValueError, match=f"^--shapes: unknown '{name}'"):
            runner.validate(runner.BenchConfig(shapes=(name,)))


@pytest.mark.skipif(not ON_CPU, reason="on the CPU memory scaling is recorded as not measured")
def test_memory_scaling_is_not_measured_on_the_cpu(tmp_path):
    status, stdout, _ = _bench(_small(tmp_path, "--memory-scaling"))
    assert status == 0
    assert "memory scaling: not measured on the CPU" in stdout
    rows = json.loads((tmp_path / "bench.json").read_text())["memory_scaling"]
    assert {row["impl"] for row in rows} == {"fastvae", "eager", "vector-quantize-pytorch"}
    assert all(row["status"].startswith("skipped: ") and row["max_n"] is None for row in rows)


def test_largest_fitting_doubles_then_bisects_to_the_resolution():
    tried = []

    def fits(n: int) -> bool:
        tried.append(n)
        return n <= 1_000_000

    assert runner.largest_fitting(fits, start=65536, resolution=65536, limit=2**31) == (983040, 1048576)
    assert tried[:5] == [65536, 131072, 262144, 524288, 1048576]
    assert all(n % 65536 == 0 for n in tried)
    assert runner.largest_fitting(lambda n: False, start=65536, resolution=65536, limit=2**31) == (None, 65536)
    assert runner.largest_fitting(lambda n: True, start=65536, resolution=65536, limit=2**20) == (2**20, None)


# --- out of memory, CPU memory guard, backends that do not run here, plot ----------------------------


def test_out_of_memory_is_recorded_as_oom_and_the_run_goes_on(tmp_path, monkeypatch):
    build = cases.build

    def eager_runs_out_of_memory(case: cases.Case, device: torch.device, **kwargs: Any) -> cases.Step:
        if case.backend != "eager":
            return build(case, device, **kwargs)
        if case.mode == "fwd":
            raise torch.OutOfMemoryError("out of memory")
        try:  # as torch.compile reports it: its own error, caused by the out-of-memory
            raise torch.OutOfMemoryError("out of memory")
        except torch.OutOfMemoryError as error:
            raise RuntimeError("compilation failed") from error

    monkeypatch.setattr(cases, "build", eager_runs_out_of_memory)
    status, _, _ = _bench(_small(tmp_path))
    assert status == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert {row["mode"]: row["status"] for row in rows if row["backend"] == "eager"} == {"fwd": "OOM", "fwd+bwd": "OOM"}
    for row in rows:
        if row["backend"] == "torch":
            assert row["status"] == "ok" and row["median_ms"] > 0 and row["speedup_vs_eager"] is None




def test_the_torch_reference_is_timed_alone_and_the_contenders_together(tmp_path, monkeypatch):
    # Interleaved, the reference's many small ops leave the caches cold for whichever call follows,
    # unevenly between eager and a compiled backend; the runner times it in a group of its own.
    build, time_round_robin = cases.build, timing.time_round_robin
    backend_of: dict[int, str] = {}
    groups: list[list[str]] = []

    def tagged_build(case: cases.Case, device: torch.device, **kwargs: Any) -> cases.Step:
        step = build(case, device, **kwargs)
        backend_of[id(step)] = case.backend
        return step

    def recorded(calls, device, **kwargs):
        groups.append([backend_of.get(id(call), "?") for call in calls])
        return time_round_robin(calls, device, **kwargs)

    monkeypatch.setattr(cases, "build", tagged_build)
    monkeypatch.setattr(timing, "time_round_robin", recorded)
    backends = ["eager", "torch", *(["cpu"] if "cpu" in fastvae.available_backends() else [])]
    status, _, _ = _bench(["--quick", "--ops", "gaussian_kl", "--dtypes", "fp32", "--backends", *backends,
                           "--out", str(tmp_path)])
    assert status == 0
    # Per mode (fwd, fwd+bwd): the contenders in one round-robin, then the reference alone (the
    # other timings, of the ceilings, time no case).
    contenders = sorted(name for name in backends if name != "torch")
    case_groups = sorted(sorted(group) for group in groups if "?" not in group)
    assert case_groups == sorted([contenders, ["torch"]] * 2)


def test_cases_over_the_cpu_memory_budget_are_skipped_not_run(tmp_path):
    status, _, _ = _bench(
        ["--quick", "--ops", "vq_nearest", "--dtypes", "fp32", "--modes", "fwd", "--backends", "eager", "torch",
         "--device", "cpu", "--cpu-memory-gb", "0.001", "--out", str(tmp_path)]
    )
    assert status == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert rows and all(row["status"].startswith("skipped: needs ") and row["median_ms"] is None for row in rows)


@pytest.mark.skipif(not ON_CPU, reason="triton is benchmarked on the GPU")
def test_triton_asked_for_on_the_cpu_is_recorded_as_skipped(tmp_path):
    status, _, _ = _bench(_small(tmp_path, "--backends", "triton"))
    assert status == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    reason = "skipped: the triton backend is benchmarked on CUDA devices only"
    assert rows and all(row["status"] == reason for row in rows)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    status, stdout, _ = _bench(_small(tmp_path, "--plot"))
    assert status == 0
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(tmp_path / "bench.png") in stdout


def test_plot_without_matplotlib_fails_before_running(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status, _, stderr = _bench(_small(tmp_path, "--plot"))
    assert status == 2
    assert "--plot" in stderr and "matplotlib" in stderr
    assert not (tmp_path / "bench.json").exists()


def _must_not_run(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the benchmark ran; the check of --out should have stopped it first")


@pytest.mark.parametrize(("argv", "name"), [([], "bench.md"), (["--plot"], "bench.png"),
                                             (["--training"], "training.json")])
def test_results_of_an_earlier_run_stop_the_run_before_it_measures(tmp_path, monkeypatch, argv, name):
    monkeypatch.setattr(cli.bench, "run", _must_not_run)
    monkeypatch.setattr(cli.bench_training, "run", _must_not_run)
    (tmp_path / name).write_text("the user's earlier results")
    (tmp_path / "notes.txt").write_text("the user's own file")
    status, _, stderr = _bench([*_small(tmp_path), *argv])
    assert status == 2
    assert stderr.startswith(f"fastvae bench: --out: {tmp_path} already holds {name}")
    assert "--overwrite" in stderr
    assert (tmp_path / name).read_text() == "the user's earlier results"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([name, "notes.txt"])


def test_other_files_in_out_do_not_stop_the_run_and_are_kept(tmp_path):
    (tmp_path / "notes.txt").write_text("the user's own file")
    (tmp_path / "bench.png").write_text("not written without --plot")
    status, _, stderr = _bench(_small(tmp_path, "--modes", "fwd"))
    assert status == 0, stderr
    assert json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert (tmp_path / "notes.txt").read_text() == "the user's own file"
    assert (tmp_path / "bench.png").read_text() == "not written without --plot"


def test_overwrite_replaces_the_results_of_an_earlier_run(tmp_path):
    (tmp_path / "bench.json").write_text("the user's earlier results")
    status, _, stderr = _bench(_small(tmp_path, "--modes", "fwd", "--overwrite"))
    assert status == 0, stderr
    assert json.loads((tmp_path / "bench.json").read_text())["rows"]
    # Written beside the target, then moved onto it: no temporary file is left behind.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bench.json", "bench.md"]


def test_out_that_is_a_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cli.bench, "run", _must_not_run)
    out = tmp_path / "results"
    out.write_text("a file")
    status, _, stderr = _bench(_small(out))
    assert status == 2
    assert stderr.startswith(f"fastvae bench: --out: {out} is a file")


def test_python_dash_m_fastvae_bench_works(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fastvae", "bench", *_small(tmp_path, "--modes", "fwd")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "bench.json").read_text())["rows"]


# --- option validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--repeats", "0"], "--repeats"),
        (["--warmup", "0"], "--warmup"),
        (["--shapes", "N1x1"], "--shapes"),
        (["--ops", "gaussian_kl", "--shapes", "N4096xK1024xD64"], "--shapes"),
        (["--cpu-memory-gb", "-1"], "--cpu-memory-gb"),
    ],
)
def test_invalid_values_exit_2_naming_the_option(tmp_path, argv, option):
    status, _, stderr = _bench([*argv, "--out", str(tmp_path)])
    assert status == 2
    assert stderr.startswith(f"fastvae bench: {option}")
    assert not (tmp_path / "bench.json").exists()


@pytest.mark.skipif(not ON_CPU, reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu_is_an_error(tmp_path):
    status, _, stderr = _bench(["--device", "cuda", "--out", str(tmp_path)])
    assert status == 2 and "--device" in stderr


@pytest.mark.parametrize(
    ("argv", "option"),
    [(["--ops", "conv2d"], "--ops"), (["--dtypes", "fp8"], "--dtypes"), (["--backends", "tpu"], "--backends"),
     (["--modes", "bwd"], "--modes"), (["--device", "mps"], "--device")],
)
def test_unknown_choices_are_rejected_by_the_parser(capsys, argv, option):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", *argv])
    assert exit_info.value.code == 2
    assert f"argument {option}: invalid choice" in capsys.readouterr().err


def test_validate_fills_defaults():
    config = runner.validate(runner.BenchConfig(device="cpu"))
    assert config.selection == "user"  # a plain `fastvae bench` on the CPU: the user-sized rows
    assert config.backends is None and config.dtypes is None and config.modes is None  # each entry's own
    assert (config.warmup, config.repeats) == (None, None)  # per row: timing.default_warmup/default_repeats
    assert config.cpu_memory_gb > 0
    assert runner.validate(runner.BenchConfig(selection="quick", device="cpu")).selection == "quick"
    assert runner.default_selection("cuda") == "core"


# --- timing and peak memory --------------------------------------------------------------------------


def test_peak_memory_of_a_known_allocation():
    mib = 2**20

    def allocate_64_mib() -> None:
        torch.ones(16 * mib, dtype=torch.float32)  # 64 MiB, freed at once

    def two_in_sequence() -> None:
        allocate_64_mib()
        allocate_64_mib()  # the first is gone: still 64 MiB at peak

    def two_at_once() -> None:
        first = torch.ones(16 * mib)
        second = torch.ones(16 * mib)
        del first, second

    device = torch.device("cpu")
    for fn, expected in ((allocate_64_mib, 64), (two_in_sequence, 64), (two_at_once, 128)):
        peak = timing.peak_memory_bytes(fn, device)
        assert expected * mib <= peak < (expected + 1) * mib, (fn.__name__, peak / mib)


def test_peak_memory_does_not_count_what_was_live_before():
    held = torch.ones(16 * 2**20)
    assert timing.peak_memory_bytes(lambda: held.sum(), torch.device("cpu")) < 2**20


def test_round_robin_warms_up_then_interleaves_the_calls_and_times_each():
    log: list[str] = []
    scopes: list[str] = []

    def call(name: str, seconds: float):
        def run() -> None:
            log.append(name)
            time.sleep(seconds)
        return run

    @contextlib.contextmanager
    def scope(name: str):
        scopes.append(name)
        yield

    times = timing.time_round_robin(
        [call("a", 0.002), call("b", 0.0), call("c", 0.0)], torch.device("cpu"), warmup=1, repeats=3,
        scopes=[lambda: scope("a"), lambda: scope("b"), lambda: scope("c")],
    )
    # One warm-up round, then three timed rounds, each starting one call further: ABC, BCA, CAB.
    assert log == list("abc") + list("abc") + list("bca") + list("cab")
    assert scopes == log  # each call ran inside its own scope
    assert [len(t) for t in times] == [3, 3, 3]
    assert min(times[0]) >= 2.0  # a's 2 ms sleep is in a's times ...
    assert max(times[1]) < 2.0  # ... and not in b's


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7])
def test_round_robin_orders_put_every_call_after_every_other_equally_often(n):
    # A call that leaves the caches cold must not always precede the same call (a plain rotation
    # A B C, B C A, C A B puts C after B twice and B after C never).
    rows = timing.balanced_orders(n)
    assert all(sorted(row) == list(range(n)) for row in rows)
    follows = collections.Counter((row[i], row[i + 1]) for row in rows for i in range(n - 1))
    assert set(follows) == {(a, b) for a in range(n) for b in range(n) if a != b}
    assert len(set(follows.values())) <= 1
    assert len(set(collections.Counter(row[0] for row in rows).values())) == 1


def test_round_robin_checks_its_arguments():
    with pytest.raises(ValueError, match="repeats"):
        timing.time_round_robin([lambda: None], torch.device("cpu"), warmup=0, repeats=0)
    with pytest.raises(ValueError, match="scopes"):
        timing.time_round_robin([lambda: None], torch.device("cpu"), warmup=0, repeats=1, scopes=[])


# --- spread and noisy rows (synthetic timings) ----------------------------------------------------------


def test_spread_of_known_times():
    # Sorted 1..5: the quartiles sit at positions 1, 2 and 3 (p (n - 1)).
    five = timing.spread([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (five.min_ms, five.q25_ms, five.median_ms, five.q75_ms, five.max_ms) == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert five.iqr_fraction == pytest.approx(2.0 / 3.0)
    # Four times: positions 0.75, 1.5 and 2.25 interpolate between neighbours.
    four = timing.spread([1.0, 2.0, 3.0, 4.0])
    assert (four.q25_ms, four.median_ms, four.q75_ms) == (1.75, 2.5, 3.25)
    one = timing.spread([7.0])
    assert (one.min_ms, one.q25_ms, one.median_ms, one.q75_ms, one.max_ms) == (7.0,) * 5
    with pytest.raises(ValueError, match="times_ms"):
        timing.spread([])


def test_a_row_is_noisy_only_past_the_stated_interquartile_range():
    assert timing.NOISY_IQR_FRACTION == 0.10
    steady = timing.spread([10.0, 10.0, 10.0, 10.0, 30.0])  # one outlier moves max, not the quartiles
    assert steady.max_ms == 30.0 and steady.iqr_fraction == 0.0 and not steady.noisy
    at_threshold = timing.spread([9.5, 9.5, 10.0, 10.5, 10.5])  # IQR 1.0 = 10% of the median: not past it
    assert at_threshold.iqr_fraction == pytest.approx(0.10) and not at_threshold.noisy
    loaded = timing.spread([1.0, 2.0, 3.0, 4.0, 5.0])  # IQR 2.0 = 67% of the median
    assert loaded.noisy
    assert loaded.to_json() == {"min_ms": 1.0, "q25_ms": 2.0, "median_ms": 3.0, "q75_ms": 4.0, "max_ms": 5.0,
                                "iqr_fraction": pytest.approx(2.0 / 3.0), "noisy": True}


def _synthetic_row(backend: str, median: float, noisy: bool, *, graph: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    case = cases.Case("gaussian_kl", shapes.find_shape("gaussian_kl", "B64xD16"), "fp32", "fwd", backend)
    row = runner._row(case, "ok", user_sized=graph is not None)
    row.update(median_ms=median, min_ms=median, max_ms=median, iqr_fraction=0.5 if noisy else 0.0, noisy=noisy)
    if graph is not None:
        row["cuda_graph"] = graph
    return row


def test_speedups_say_when_a_row_they_compare_is_noisy():
    rows = [_synthetic_row("eager", 4.0, False), _synthetic_row("compile", 2.0, True),
            _synthetic_row("torch", 1.0, False)]
    runner._fill_speedups(rows)
    torch_row = rows[2]
    assert torch_row["speedup_vs_eager"] == 4.0 and torch_row["speedup_vs_eager_noisy"] is False
    assert torch_row["speedup_vs_compile"] == 2.0 and torch_row["speedup_vs_compile_noisy"] is True
    assert rows[1]["speedup_vs_eager_noisy"] is True  # the compile row itself is noisy


def test_graph_replay_speedup_against_eager_replays():
    def graph(median: float) -> dict[str, Any]:
        return {**runner._graph_json("ok", timing.spread([median])), "host_overhead_ms": 0.0}

    rows = [_synthetic_row("eager", 3.0, False, graph=graph(0.5)),
            _synthetic_row("torch", 6.0, False, graph=graph(0.25))]
    runner._fill_speedups(rows)
    assert rows[1]["cuda_graph"]["speedup_vs_eager"] == 2.0 and rows[1]["cuda_graph"]["speedup_vs_eager_noisy"] is False
    assert rows[1]["speedup_vs_eager"] == 0.5


def test_step_rotates_through_a_pool_larger_than_the_rotation_bytes():
    seen = []
    x = torch.zeros(256)  # 1 KiB
    step = cases.Step(lambda t: (seen.append(t.data_ptr()) or t,), (x,), mode="fwd", rotation_bytes=3 * 1024)
    assert step.pool_size == 4  # 4 KiB > 3 KiB
    for _ in range(8):
        step()
    assert len(set(seen)) == 4 and seen[:4] == seen[4:]
    assert cases.Step(lambda t: (t,), (x,), mode="fwd").pool_size == 1


def test_fwd_bwd_step_runs_one_backward_per_call_seeded_with_ones():
    seeds = []

    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return 2 * t

        @staticmethod
        def backward(ctx, grad):
            seeds.append(grad)
            return 2 * grad

    def fn(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        assert t.requires_grad
        return Double.apply(t), t.argmax()  # the integer output takes no gradient seed

    step = cases.Step(fn, (torch.zeros(3),), mode="fwd+bwd")
    assert seeds == []  # building the step runs a forward only
    step()
    step()
    assert len(seeds) == 2 and all(torch.equal(seed, torch.ones(3)) for seed in seeds)


# --- the table and the cases -------------------------------------------------------------------------


def test_shape_table_holds_the_named_shapes():
    vq = {shape.name for shape in shapes.SHAPES["vq_nearest"]}
    assert {"N65536xK1024xD64", "N1048576xK16384xD64", "N4194304xK16384xD64"} <= vq
    assert shapes.SHAPES["vector_quantize"] == shapes.SHAPES["vq_nearest"]
    assert "B65536xD512" in {shape.name for shape in shapes.SHAPES["reparameterize_kl"]}
    assert "K64xB4096xD128" in {shape.name for shape in shapes.SHAPES["iwae"]}
    for op in shapes.OPS:
        names = [shape.name for shape in shapes.SHAPES[op]]
        assert len(names) == len(set(names))
        assert len(shapes.shapes_for(op, quick=True)) == 1
        assert all(shape.cpu for shape in shapes.shapes_for(op, quick=True))


def _inputs(op: str, dims: dict[str, int]) -> tuple[torch.Tensor, ...]:
    return cases.OP_SPECS[op].make_inputs(dims, torch.float64, torch.device("cpu"), torch.Generator().manual_seed(3))


@pytest.mark.parametrize(
    ("op", "dims"),
    [("gaussian_kl", {"B": 5, "D": 7}), ("iwae", {"K": 4, "B": 3, "D": 5}), ("vq_nearest", {"N": 33, "K": 9, "D": 4})],
)
def test_eager_code_computes_what_the_fastvae_op_computes(op, dims):
    spec = cases.OP_SPECS[op]
    inputs = _inputs(op, dims)
    with fastvae.use_backend("torch"):
        for eager, ours in zip(spec.eager(*inputs), spec.fastvae(*inputs), strict=True):
            torch.testing.assert_close(eager, ours, **FLOAT64_RECOMPUTED)


def test_eager_vector_quantize_matches_fastvae_losses_included():
    dims = {"N": 33, "K": 9, "D": 4}
    x, codebook = _inputs("vector_quantize", dims)
    quantized, loss, indices = cases.eager_vector_quantize(x, codebook)
    with fastvae.use_backend("torch"):
        ours = fastvae.vector_quantize(x, codebook, beta=cases.BETA)
    assert torch.equal(indices, ours.indices)
    torch.testing.assert_close(quantized, ours.quantized)
    # Both average the squared error over the N * D elements (F.mse_loss).
    torch.testing.assert_close(loss, ours.loss)
    codes = codebook[indices]
    torch.testing.assert_close(loss, (1 + cases.BETA) * ((x - codes) ** 2).sum() / x.numel())


def test_reparameterize_cases_sample_with_the_right_moments():
    mu, logvar = _inputs("reparameterize_kl", {"B": 4000, "D": 8})
    z_eager, kl_eager = cases.eager_reparameterize_kl(mu, logvar)
    with fastvae.use_backend("torch"):
        z_ours, kl_ours = cases.OP_SPECS["reparameterize_kl"].fastvae(mu, logvar)
    torch.testing.assert_close(kl_eager, kl_ours, **FLOAT64_RECOMPUTED)
    for z in (z_eager, z_ours):
        standardised = (z - mu) / torch.exp(0.5 * logvar)
        assert abs(standardised.mean().item()) < BENCH_NORMAL_MOMENTS_ATOL
        assert abs(standardised.std().item() - 1) < BENCH_NORMAL_MOMENTS_ATOL


def test_bytes_moved_count_each_interface_tensor_once_per_pass():
    d = {"B": 10, "D": 3}
    moved = cases.OP_SPECS["reparameterize_kl"].elements_moved
    assert moved(d, "fwd") == 3 * 30 + 10  # mu, logvar -> z, kl
    assert moved(d, "fwd+bwd") - moved(d, "fwd") == 5 * 30 + 10  # d z, d kl, mu, logvar -> d mu, d logvar
    assert cases.OP_SPECS["vq_nearest"].flops({"N": 2, "K": 3, "D": 5}) == 2 * 2 * 3 * 5


def _report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "date": "2026-01-01T00:00:00+00:00", "commit": "unknown", "commit_dirty": None,
        "device": {"kind": "cpu", "name": "test", "driver": None, "cuda": None, "threads": 1},
        "versions": {"python": "3", "torch": "2", "triton": None, "fastvae": "0"},
        "settings": {"selection": "user", "warmup": None, "repeats": None, "rotation_bytes": 0,
                     "noisy_iqr_fraction": 0.1, "compiled_graphs": 0},
        "notes": [], "ceilings": {"copy": None, "matmul": []}, "rows": rows, "peer": [], "memory_scaling": [],
    }


def test_markdown_formats_missing_values_as_dashes():
    row = {**dict.fromkeys(ROW_FIELDS), "op": "gaussian_kl", "shape": {"name": "B1xD1", "dims": {}},
           "dtype": "fp32", "mode": "fwd", "backend": "eager", "status": "OOM"}
    text = report.markdown(_report([row]))
    assert "| B1xD1 | fp32 | fwd | eager | - | - | - | - | - | - | - | - | - | - | OOM |" in text
    assert "triton" not in text  # versions that are None are left out


def test_markdown_marks_noisy_rows_their_speedups_and_prints_the_spread():
    graph = {**runner._graph_json("ok", timing.spread([0.25])), "host_overhead_ms": 0.75}
    rows = [_synthetic_row("eager", 2.0, True, graph=graph), _synthetic_row("torch", 1.0, False, graph=graph)]
    rows[0].update(min_ms=1.5, max_ms=4.0)
    runner._fill_speedups(rows)
    text = report.markdown(_report(rows))
    assert "a row is noisy when its IQR exceeds 10% of its median" in text
    lines = [line for line in text.splitlines() if line.startswith("| B64xD16 ")]
    assert lines[0].startswith("| B64xD16 | fp32 | fwd | eager | 2.00 | 1.50-4.00 | 50% noisy |")
    assert lines[1].startswith("| B64xD16 | fp32 | fwd | torch | 1.00 | 1.00-1.00 | 0% |")
    assert "| 2.00x (noisy) |" in lines[1]  # against the noisy eager row
    assert "| 0.250 (host 0.750) | 1.00x |" in lines[1]  # graph replay and its speed-up over eager's


# --- selections ----------------------------------------------------------------------------------------


def _keys(entries: list[shapes.Entry]) -> set[tuple[Any, ...]]:
    return {(e.op, e.shape.name, dtype, precision, mode, e.compile, e.user_sized)
            for e in entries for dtype in e.dtypes
            for precision in shapes.precisions_for(e.op, dtype, e.precisions) for mode in e.modes}


def test_core_selection_is_the_issue_list_plus_the_user_rows():
    core = shapes.plan("core", cuda=True)
    large_vq = "N1048576xK16384xD64"
    expected = {
        ("reparameterize_kl", "B65536xD512", "fp32", None, "fwd+bwd", True, False),
        ("reparameterize_kl", "B65536xD512", "bf16", None, "fwd+bwd", True, False),
        ("iwae", "K64xB4096xD128", "fp32", None, "fwd+bwd", True, False),
        ("iwae", "K64xB4096xD128", "bf16", None, "fwd+bwd", True, False),
        ("vq_nearest", large_vq, "bf16", None, "fwd", True, False),
        ("vq_nearest", large_vq, "fp32", "ieee", "fwd", False, False),
        ("vq_nearest", large_vq, "fp32", "tf32", "fwd", False, False),
        ("vector_quantize", large_vq, "bf16", None, "fwd+bwd", True, False),
        ("vector_quantize", large_vq, "fp32", "ieee", "fwd+bwd", False, False),
        ("vector_quantize", large_vq, "fp32", "tf32", "fwd+bwd", False, False),
        # user-sized: VQ on a 64 x 32 x 32 feature map, and reparameterize_kl at 256 x 32 and 1,024 x 128
        ("vector_quantize", "N65536xK1024xD64", "fp32", "ieee", "fwd", False, True),
        ("vector_quantize", "N65536xK1024xD64", "fp32", "ieee", "fwd+bwd", False, True),
        ("reparameterize_kl", "B256xD32", "fp32", None, "fwd+bwd", False, True),
        ("reparameterize_kl", "B1024xD128", "fp32", None, "fwd+bwd", False, True),
    }
    assert expected <= _keys(core)
    assert _keys(shapes.plan("user", cuda=True)) <= _keys(core)
    # torch.compile only where the core set compares with it: six graphs (README states the number).
    assert sum(len(e.dtypes) * len(e.modes) for e in core if e.compile) == 6
    assert all(not e.compile for e in core if e.user_sized)


def test_user_selection_covers_every_op_at_the_user_shapes_in_both_modes():
    user = _keys(shapes.plan("user", cuda=False))
    gaussian = {(op, name) for op in ("reparameterize", "reparameterize_kl", "gaussian_kl", "gaussian_log_prob")
                for name in ("B64xD16", "B256xD32", "B1024xD128")}
    others = {("iwae", "K16xB64xD16"), ("vq_nearest", "N4096xK512xD64"), ("vector_quantize", "N4096xK512xD64")}
    assert {(op, name) for op, name, *_ in user} == gaussian | others
    for op, name in gaussian | others:
        for mode in shapes.MODES:
            precision = "ieee" if op.startswith("v") else None
            assert (op, name, "fp32", precision, mode, False, True) in user
    assert len(user) == 2 * len(gaussian | others)


def test_full_and_quick_selections():
    full_gpu = shapes.plan("full", cuda=True)
    assert {(e.op, e.shape.name) for e in full_gpu} == {(op, s.name) for op in shapes.OPS for s in shapes.SHAPES[op]}
    assert all(e.compile and e.dtypes == ("fp32", "bf16") and e.modes == shapes.MODES for e in full_gpu)
    assert ("vq_nearest", "N4194304xK16384xD64", "fp32", "tf32", "fwd", True, False) in _keys(full_gpu)
    full_cpu = shapes.plan("full", cuda=False)
    assert {(e.op, e.shape.name) for e in full_cpu} == {(op, s.name) for op in shapes.OPS for s in shapes.SHAPES[op]
                                                       if s.cpu}
    assert "N1048576xK16384xD64" not in {e.shape.name for e in full_cpu}
    assert all(e.precisions == ("ieee",) for e in full_cpu)  # TF32 is a CUDA mode
    quick = shapes.plan("quick", cuda=True)
    assert {(e.op, e.shape.name) for e in quick} == {(op, s.name) for op in shapes.OPS for s in shapes.SHAPES[op]
                                                    if s.quick}
    assert not any(e.user_sized for e in quick)
    # The options narrow or replace: ops filter, dtypes and modes replace every entry's.
    narrowed = shapes.plan("core", cuda=True, ops=("iwae",), dtypes=("fp16",), modes=("fwd",))
    assert {(e.op, e.dtypes, e.modes) for e in narrowed} == {("iwae", ("fp16",), ("fwd",))}
    with pytest.raises(ValueError, match="selection"):
        shapes.plan("everything", cuda=True)


@pytest.mark.parametrize(("flag", "selection"), [([], "core" if not ON_CPU else "user"), (["--quick"], "quick"),
                                                  (["--user"], "user"), (["--full"], "full")])
def test_command_line_selections(monkeypatch, tmp_path, flag, selection):
    seen = {}

    class Stop(Exception):
        pass

    def record(config: runner.BenchConfig, **kwargs: Any) -> dict[str, Any]:
        seen["config"] = config
        raise Stop

    monkeypatch.setattr(cli.bench, "run", record)  # what `fastvae bench` calls after validating
    with pytest.raises(Stop):
        _bench([*flag, "--out", str(tmp_path)])
    assert seen["config"].selection == selection


def test_selection_flags_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--quick", "--full"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# --- user-sized rows and CUDA graph replays --------------------------------------------------------------


def test_capture_graph_is_unavailable_on_the_cpu():
    calls = []
    with pytest.raises(timing.GraphUnavailableError, match="CUDA graphs need a CUDA device"):
        timing.capture_graph(lambda: calls.append(None), torch.device("cpu"))
    assert calls == []


@pytest.mark.skipif(not ON_CPU, reason="on a GPU the replays are measured")
def test_user_rows_say_why_graph_replays_are_missing_on_the_cpu(tmp_path):
    status, stdout, _ = _bench(["--user", "--ops", "reparameterize_kl", "vq_nearest", "--modes", "fwd",
                                "--repeats", "3", "--warmup", "1", "--out", str(tmp_path)])
    assert status == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["settings"]["selection"] == "user" and data["settings"]["compiled_graphs"] == 0
    rows = data["rows"]
    assert {(row["op"], row["shape"]["name"]) for row in rows} == {
        ("reparameterize_kl", "B64xD16"), ("reparameterize_kl", "B256xD32"), ("reparameterize_kl", "B1024xD128"),
        ("vq_nearest", "N4096xK512xD64")}
    # No compile in the user rows; the cpu backend where built (it implements both ops).
    cpu = ["cpu"] if "cpu" in fastvae.available_backends() else []
    assert {(row["op"], row["backend"]) for row in rows} == {
        *((op, backend) for op in ("reparameterize_kl", "vq_nearest") for backend in ("eager", "torch", *cpu))}
    reason = "unavailable: CUDA graphs need a CUDA device, this run is on cpu"
    for row in rows:
        assert row["status"] == "ok" and row["user_sized"] and row["median_ms"] > 0 and row["repeats"] == 3
        assert row["cuda_graph"] == {**dict.fromkeys(("min_ms", "q25_ms", "median_ms", "q75_ms", "max_ms",
                                                      "iqr_fraction", "noisy", "host_overhead_ms",
                                                      "speedup_vs_eager", "speedup_vs_eager_noisy")),
                                     "status": reason}
        assert row["precision"] == ("ieee" if row["op"] == "vq_nearest" else None)
    assert f"CUDA graph replays {reason}" in stdout
    assert "| n/a |" in (tmp_path / "bench.md").read_text()


def test_tf32_cases_turn_tf32_matmuls_on_only_while_active():
    shape = shapes.find_shape("vq_nearest", "N4096xK512xD64")
    before = torch.backends.cuda.matmul.allow_tf32
    step = cases.build(cases.Case("vq_nearest", shape, "fp32", "fwd", "eager", "tf32"), torch.device("cpu"))
    with step.active():
        assert torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 == before
    ieee = cases.build(cases.Case("vq_nearest", shape, "fp32", "fwd", "eager", "ieee"), torch.device("cpu"))
    with ieee.active():
        assert torch.backends.cuda.matmul.allow_tf32 == before


def test_backend_ranking_keeps_the_precisions_apart():
    def row(precision: str, backend: str, ms: float) -> dict[str, Any]:
        return {"op": "vq_nearest", "shape": {"name": "a"}, "dtype": "fp32", "precision": precision, "mode": "fwd",
                "backend": backend, "status": "ok", "median_ms": ms}

    # ieee: cuda 4x faster; tf32: triton 2x faster. The geometric mean favours cuda -- unless one
    # precision's rows overwrite the other's.
    rows = [row("ieee", "cuda", 1.0), row("ieee", "triton", 4.0), row("tf32", "cuda", 2.0), row("tf32", "triton", 1.0)]
    assert preference.rank({"rows": rows})["vq_nearest_fwd"] == ("cuda", "triton")
