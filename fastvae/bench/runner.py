"""The benchmark run behind ``fastvae bench``: which cases, the ceilings, the rows of the report.

:func:`run` measures every case of the selected plan (:func:`fastvae.bench.shapes.plan`: op x shape x
dtype x precision x mode, each against its backends of :mod:`fastvae.bench.cases`), the hardware
ceilings of the same run (a device-to-device copy for the memory-bound ops, ``torch.matmul`` of the
same shape for the VQ search), optionally the peer comparison against vector-quantize-pytorch (its
``VectorQuantize`` with EMA at the selection's VQ shapes, its ``FSQ``, ``LFQ`` and ``ResidualVQ`` at
:func:`~fastvae.bench.shapes.peer_shapes`: time and peak memory of forward + backward) and the memory scaling of ``vector_quantize``, and
returns the report (the JSON document described in ``benchmarks/README.md``).

The backends of one op at one shape, dtype, precision and mode are built and warmed up one after
the other, then timed round-robin (:func:`fastvae.bench.timing.time_round_robin`), so that the
speed-ups between them are not an artefact of load that came and went; the ``torch`` reference is
timed alone after them (``Run._time_live`` says why). Each row carries the spread
of its times and is ``noisy`` past :data:`~fastvae.bench.timing.NOISY_IQR_FRACTION`. User-sized
rows are also timed as CUDA graph replays where there is a CUDA device (and say why not elsewhere).
A case that runs out of memory is recorded as ``"OOM"`` and the run goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import importlib.metadata
import importlib.util
import platform
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

import fastvae
from fastvae.bench import cases, timing
from fastvae.bench.shapes import (
    BACKENDS,
    DTYPES,
    FSQ_LEVELS,
    MODES,
    OPS,
    PEER_SHAPES,
    SELECTIONS,
    SHAPES,
    Entry,
    Shape,
    peer_shapes,
    plan,
    precisions_for,
)
from fastvae.ops.fsq import OP_NAMES as FSQ_OP_NAMES
from fastvae.ops.rvq import OP_NAMES as RVQ_OP_NAMES
from fastvae.ops.vq import OP_NAMES as VQ_OP_NAMES

__all__ = ["BenchConfig", "SCHEMA", "default_selection", "largest_fitting", "run", "validate"]

#: Version of the JSON report's layout.
SCHEMA = 2

#: Bytes of the buffer the copy ceiling copies (twice this is moved per copy).
COPY_BYTES = 512 * 2**20

#: Memory scaling: the codebook (K codes of D), the resolution in rows (also the first N tried),
#: and the largest N tried.
SCALING_K, SCALING_D = 16384, 64
SCALING_RESOLUTION = 65536
SCALING_LIMIT = 2**31

_PEER = "vector-quantize-pytorch"
_CPU_NOTICE = "no CUDA device: measuring the torch paths on the CPU"
_GRAPH_FIELDS = ("min_ms", "q25_ms", "median_ms", "q75_ms", "max_ms", "iqr_fraction", "noisy")


@dataclass(frozen=True)
class BenchConfig:
    """What ``fastvae bench`` measures; each field is the command-line option of the same name.

    Attributes:
        ops: ops to run (:data:`~fastvae.bench.shapes.OPS`): the selection's entries of these ops.
        shapes: shape names to run instead of the selection's (fp32 and bf16, both modes, every
            backend); None: the selection's.
        dtypes: ``"fp32"``, ``"bf16"`` (``"fp16"`` too) to run every entry in; None: each entry's.
        backends: ``"eager"``, ``"compile"``, ``"torch"``, ``"triton"``, ``"cuda"``, ``"cpu"`` to run
            every entry on; None: ``eager``, ``torch``, the compiled backends available for the device
            (``triton`` and ``cuda`` on CUDA, ``cpu`` on the CPU), and ``compile`` for the entries
            that compare with it.
        modes: ``"fwd"``, ``"fwd+bwd"`` to run every entry in; None: each entry's.
        selection: one of :data:`~fastvae.bench.shapes.SELECTIONS` (``--quick``, ``--user``,
            ``--full``); None: :func:`default_selection`.
        device: ``"cuda"`` or ``"cpu"``; None: CUDA when a device is visible.
        warmup: untimed calls before timing, ``>= 1``; None: per row, :func:`~fastvae.bench.timing.default_warmup`.
        repeats: timed calls, ``>= 1``; None: per row, :func:`~fastvae.bench.timing.default_repeats`.
        peer: also compare with vector-quantize-pytorch's ``VectorQuantize`` (EMA on), ``FSQ``, ``LFQ``
            and ``ResidualVQ`` (EMA on).
        memory_scaling: also find the largest N that fits for ``vector_quantize`` fwd+bwd (CUDA only).
        scaling_dtype: the dtype of the memory scaling.
        cpu_memory_gb: on the CPU, cases estimated to need more are skipped; None: half the RAM.
        plot: the caller will plot the report (checked here so that a missing matplotlib fails
            before the run, not after).
    """

    ops: tuple[str, ...] = OPS
    shapes: tuple[str, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    backends: tuple[str, ...] | None = None
    modes: tuple[str, ...] | None = None
    selection: str | None = None
    device: str | None = None
    warmup: int | None = None
    repeats: int | None = None
    peer: bool = False
    memory_scaling: bool = False
    scaling_dtype: str = "bf16"
    cpu_memory_gb: float | None = None
    plot: bool = False


def _choices(values: tuple[str, ...], allowed: tuple[str, ...], option: str) -> None:
    if not values:
        raise ValueError(f"{option}: give at least one of {', '.join(allowed)}")
    unknown = [value for value in values if value not in allowed]
    if unknown:
        raise ValueError(f"{option}: unknown {', '.join(map(repr, unknown))} (choose from {', '.join(allowed)})")


def default_selection(device: str) -> str:
    """The selection of a plain ``fastvae bench``: ``core`` on a CUDA device, ``user`` on the CPU
    (the rows a CPU finishes in a minute or two, and where fastvae's CPU target lives)."""
    return "core" if device == "cuda" else "user"


def validate(config: BenchConfig) -> BenchConfig:
    """Check ``config`` and fill in its defaults (device, selection, CPU memory budget).

    Raises:
        ValueError: the message names the offending option (``--ops``, ``--shapes``, ...).
    """
    _choices(config.ops, OPS, "--ops")
    if config.dtypes is not None:
        _choices(config.dtypes, tuple(DTYPES), "--dtypes")
    if config.backends is not None:
        _choices(config.backends, BACKENDS, "--backends")
    if config.modes is not None:
        _choices(config.modes, MODES, "--modes")
    if config.selection is not None:
        _choices((config.selection,), SELECTIONS, "--selection")
    _choices((config.scaling_dtype,), tuple(DTYPES), "--scaling-dtype")
    if config.shapes is not None:
        known = {shape.name for op in config.ops for shape in SHAPES[op]}
        if config.peer:
            known |= {shape.name for table in PEER_SHAPES.values() for shape in table}
        unknown = [name for name in config.shapes if name not in known]
        if unknown or not config.shapes:
            raise ValueError(
                f"--shapes: unknown {', '.join(map(repr, unknown)) or 'empty list'} for ops {', '.join(config.ops)} "
                f"(choose from {', '.join(sorted(known))})"
            )
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"--device: must be 'cuda' or 'cpu', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: 'cuda' was asked for but torch sees no CUDA device")
    for option, value in (("--warmup", config.warmup), ("--repeats", config.repeats)):
        if value is not None and value < 1:
            raise ValueError(f"{option}: must be >= 1, got {value}")
    if config.cpu_memory_gb is not None and config.cpu_memory_gb <= 0:
        raise ValueError(f"--cpu-memory-gb: must be > 0, got {config.cpu_memory_gb}")
    if config.plot and importlib.util.find_spec("matplotlib") is None:
        raise ValueError("--plot: needs matplotlib, which is not installed (pip install 'fastvae[plot]')")
    return dataclasses.replace(
        config,
        device=device,
        selection=config.selection or default_selection(device),
        cpu_memory_gb=config.cpu_memory_gb or cases.default_cpu_budget_bytes() / 1e9,
    )


# --- the run's environment ---------------------------------------------------------------------------


def _run_text(command: list[str], cwd: Path | None = None) -> str | None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _commit() -> tuple[str, bool | None]:
    """``git rev-parse HEAD`` of the checkout fastvae is imported from, and whether it has uncommitted changes."""
    root = Path(fastvae.__file__).resolve().parent.parent
    top = _run_text(["git", "rev-parse", "--show-toplevel"], cwd=root)
    commit = _run_text(["git", "rev-parse", "HEAD"], cwd=root)
    if top is None or commit is None or Path(top).resolve() != root:
        return "unknown", None
    status = _run_text(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root)
    return commit, None if status is None else bool(status)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _device_info(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        props = torch.cuda.get_device_properties(index)
        driver = _run_text(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={index}"])
        return {
            "kind": "cuda",
            "name": props.name,
            "driver": driver,
            "cuda": torch.version.cuda,
            "capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 1e9, 1),
            "l2_cache_mb": round(props.L2_cache_size / 2**20, 1),
        }
    return {"kind": "cpu", "name": _cpu_name(), "driver": None, "cuda": None, "threads": torch.get_num_threads()}


def _unavailable(backend: str) -> str | None:
    """Why fastvae ``backend`` cannot run here (the error :func:`fastvae.use_backend` raises), or None."""
    try:
        with fastvae.use_backend(backend):
            return None
    except fastvae.BackendUnavailableError as error:
        return str(error)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- measuring -----------------------------------------------------------------------------------------


class _Progress:
    """Progress on ``stream`` (stderr): a tqdm bar on a terminal, one line per case otherwise."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self._stream = stream
        self._total = total
        self._done = 0
        self._bar = None
        if stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, file=stream, unit="case", dynamic_ncols=True, leave=False)

    def start(self, label: str) -> None:
        """Announce the case about to run."""
        if self._bar is not None:
            self._bar.set_description_str(label)
        else:
            print(f"[{self._done + 1}/{self._total}] {label}", file=self._stream, flush=True)

    def advance(self) -> None:
        """Count one case done."""
        self._done += 1
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()


def _release(device: torch.device) -> None:
    """Return a finished case's memory to the device (on the CPU, dropping the last reference did)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _failure(error: BaseException) -> str:
    """The row status of a failed case: ``"OOM"`` when an out-of-memory caused it (also one that
    ``torch.compile`` wrapped in its own error), else ``"skipped: failed with ..."``."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, torch.OutOfMemoryError):
            return "OOM"
        cause = cause.__cause__ or cause.__context__
    message = str(error).strip().splitlines()
    return f"skipped: failed with {type(error).__name__}: {message[0] if message else ''}".rstrip(": ")


@dataclass
class _Measured:
    status: str
    spread: timing.Spread | None = None
    peak_bytes: int | None = None


def _measure(make: Callable[[], cases.Step], device: torch.device, warmup: int, repeats: int) -> _Measured:
    """Build a step and time it alone, catching an out-of-memory (``"OOM"``) or any other failure."""
    step = None
    try:
        step = make()
        with step.active():
            (times,) = timing.time_round_robin([step], device, warmup=warmup, repeats=repeats)
            peak = timing.peak_memory_bytes(step, device)
        return _Measured("ok", timing.spread(times), peak)
    except Exception as error:  # one failing case must not end a long GPU run
        return _Measured(_failure(error))
    finally:
        del step
        _release(device)


def _spread_json(spread: timing.Spread | None) -> dict[str, Any]:
    """The spread fields of a row: measured, or all None."""
    return spread.to_json() if spread is not None else dict.fromkeys(_GRAPH_FIELDS)


def _shape_json(shape: Shape) -> dict[str, Any]:
    return {"name": shape.name, "dims": dict(shape.dims)}


def _graph_json(status: str, spread: timing.Spread | None = None) -> dict[str, Any]:
    """The ``cuda_graph`` entry of a user-sized row."""
    return {"status": status, **_spread_json(spread), "host_overhead_ms": None, "speedup_vs_eager": None,
            "speedup_vs_eager_noisy": None}


def _row(case: cases.Case, status: str, *, user_sized: bool = False) -> dict[str, Any]:
    return {
        "op": case.op,
        "shape": _shape_json(case.shape),
        "dtype": case.dtype,
        "precision": case.precision,
        "mode": case.mode,
        "backend": case.backend,
        "user_sized": user_sized,
        "status": status,
        "warmup": None,
        "repeats": None,
        **_spread_json(None),
        "gbps": None,
        "tflops": None,
        "fraction_of_ceiling": None,
        "speedup_vs_eager": None,
        "speedup_vs_eager_noisy": None,
        "speedup_vs_compile": None,
        "speedup_vs_compile_noisy": None,
        "peak_memory_bytes": None,
        "cuda_graph": _graph_json("skipped: the call did not run") if user_sized else None,
    }


class _Ceilings:
    """The run's hardware ceilings, measured once each: copy bandwidth and matmul per VQ shape and dtype."""

    def __init__(self, device: torch.device, config: BenchConfig) -> None:
        self._device = device
        self._warmup = config.warmup or timing.default_warmup(device, quick=config.selection == "quick")
        self._repeats = config.repeats or timing.default_repeats(device, quick=config.selection == "quick")
        self._cpu_memory_gb = config.cpu_memory_gb
        self.copy: dict[str, Any] | None = None
        self.matmul: dict[tuple[str, str], dict[str, Any]] = {}

    def copy_gbps(self) -> float | None:
        """Copy bandwidth in GB/s (bytes read + written), measured on first use; None if it failed."""
        if self.copy is None:
            measured = _measure(lambda: cases.copy_step(COPY_BYTES, self._device), self._device,
                                self._warmup, self._repeats)
            median = measured.spread.median_ms if measured.spread else None
            self.copy = {"bytes_moved": 2 * COPY_BYTES, "status": measured.status, **_spread_json(measured.spread),
                         "gbps": 2 * COPY_BYTES / (median * 1e6) if median else None}
        return self.copy["gbps"]

    def matmul_tflops(self, shape: Shape, dtype: str) -> float | None:
        """``torch.matmul`` throughput in TFLOP/s at a VQ shape and dtype, measured on first use; None if it failed."""
        key = (shape.name, dtype)
        if key not in self.matmul:
            if self._device.type == "cuda":
                max_output = torch.cuda.mem_get_info(self._device)[0] // 4
            else:
                max_output = int(self._cpu_memory_gb * 1e9) // 4
            dims = {**shape.dims, "N": cases.matmul_rows(shape.dims, dtype, max_output_bytes=max_output)}
            measured = _measure(
                lambda: cases.matmul_step(dims, dtype, self._device,
                                          rotation_bytes=timing.rotation_bytes(self._device)),
                self._device, self._warmup, self._repeats,
            )
            median = measured.spread.median_ms if measured.spread else None
            self.matmul[key] = {
                "shape": _shape_json(shape),
                "dtype": dtype,
                "rows": dims["N"],
                "status": measured.status,
                **_spread_json(measured.spread),
                "tflops": cases.OP_SPECS["vq_nearest"].flops(dims) / (median * 1e9) if median else None,
            }
        return self.matmul[key]["tflops"]

    def to_json(self) -> dict[str, Any]:
        """The ``ceilings`` entry of the report."""
        return {"copy": self.copy, "matmul": list(self.matmul.values())}


def _fill_throughput(row: dict[str, Any], case: cases.Case, ceilings: _Ceilings) -> None:
    spec = cases.OP_SPECS[case.op]
    seconds = row["median_ms"] / 1e3
    if spec.elements_moved is not None:
        row["gbps"] = spec.elements_moved(case.shape.dims, case.mode) * DTYPES[case.dtype].itemsize / seconds / 1e9
        ceiling = ceilings.copy_gbps()
        row["fraction_of_ceiling"] = row["gbps"] / ceiling if ceiling else None
    else:
        row["tflops"] = spec.flops(case.shape.dims) / seconds / 1e12
        ceiling = ceilings.matmul_tflops(case.shape, case.dtype)
        row["fraction_of_ceiling"] = row["tflops"] / ceiling if ceiling else None


def _fill_speedups(rows: list[dict[str, Any]]) -> None:
    """Per row that ran, against the ``eager`` and ``compile`` rows of the same op, shape, dtype,
    precision and mode: ``speedup_vs_<baseline>`` = that row's median over this row's, and
    ``speedup_vs_<baseline>_noisy`` = either row is noisy; the same against eager for CUDA graph replays."""

    def key(row: dict[str, Any], backend: str) -> tuple[Any, ...]:
        return row["op"], row["shape"]["name"], row["dtype"], row["precision"], row["mode"], backend

    baselines = {key(row, row["backend"]): row for row in rows
                 if row["status"] == "ok" and row["backend"] in ("eager", "compile")}
    for row in rows:
        if row["status"] != "ok":
            continue
        for name in ("eager", "compile"):
            baseline = baselines.get(key(row, name))
            if baseline is not None:
                row[f"speedup_vs_{name}"] = baseline["median_ms"] / row["median_ms"]
                row[f"speedup_vs_{name}_noisy"] = baseline["noisy"] or row["noisy"]
        graph = row["cuda_graph"]
        eager = baselines.get(key(row, "eager"))
        eager_graph = None if eager is None else eager["cuda_graph"]
        if graph and graph["status"] == "ok" and eager_graph and eager_graph["status"] == "ok":
            graph["speedup_vs_eager"] = eager_graph["median_ms"] / graph["median_ms"]
            graph["speedup_vs_eager_noisy"] = eager_graph["noisy"] or graph["noisy"]


def _groups(
    entries: list[Entry], backends: Callable[[Entry], tuple[str, ...]]
) -> Iterator[tuple[Entry, list[cases.Case]]]:
    """Per entry, per dtype, precision and mode: the entry and its cases, one per backend."""
    for entry in entries:
        for dtype in entry.dtypes:
            for precision in precisions_for(entry.op, dtype, entry.precisions):
                for mode in entry.modes:
                    yield entry, [cases.Case(entry.op, entry.shape, dtype, mode, backend, precision)
                                  for backend in backends(entry)]


def _peer_available() -> bool:
    return importlib.util.find_spec("vector_quantize_pytorch") is not None


def _peer_module(shape: Shape) -> torch.nn.Module:
    from vector_quantize_pytorch import VectorQuantize

    return VectorQuantize(dim=shape.dims["D"], codebook_size=shape.dims["K"], decay=0.99, commitment_weight=0.25)


def _fastvae_module(shape: Shape) -> torch.nn.Module:
    return fastvae.nn.VectorQuantizer(shape.dims["K"], shape.dims["D"], ema=True, decay=0.99, beta=0.25)


class _OneSequence(torch.nn.Module):
    """A vector-quantize-pytorch layer that takes ``(batch, n, d)`` (its FSQ, LFQ and ResidualVQ) on
    the benchmark's ``(N, D)`` as one sequence (views only: nothing is copied). Returns the layer's
    tuple with ``quantized`` and ``indices`` back in the benchmark's shape, the loss as it comes."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        quantized, indices, *rest = self.layer(x.unsqueeze(0))
        return (quantized.squeeze(0), indices.squeeze(0), *rest)


def _peer_fsq(shape: Shape) -> torch.nn.Module:
    from vector_quantize_pytorch import FSQ

    return _OneSequence(FSQ(list(FSQ_LEVELS)))


def _fastvae_fsq(shape: Shape) -> torch.nn.Module:
    return fastvae.nn.FSQ(FSQ_LEVELS)


#: The LFQ layer of the peer comparison: D bits, one codebook of 2^D codes of +-1 (no projections),
#: the entropy and commitment weights of both libraries' defaults.
_LFQ_WEIGHTS = {"entropy": 0.1, "commitment": 0.25, "diversity_gamma": 1.0}


def _peer_lfq(shape: Shape) -> torch.nn.Module:
    from vector_quantize_pytorch import LFQ

    return _OneSequence(LFQ(dim=shape.dims["D"], entropy_loss_weight=_LFQ_WEIGHTS["entropy"],
                            commitment_loss_weight=_LFQ_WEIGHTS["commitment"],
                            diversity_gamma=_LFQ_WEIGHTS["diversity_gamma"], num_codebooks=1, codebook_scale=1.0))


def _fastvae_lfq(shape: Shape) -> torch.nn.Module:
    return fastvae.nn.LFQ(shape.dims["D"], entropy_weight=_LFQ_WEIGHTS["entropy"],
                          commitment_weight=_LFQ_WEIGHTS["commitment"], diversity_gamma=_LFQ_WEIGHTS["diversity_gamma"])


def _peer_rvq(shape: Shape) -> torch.nn.Module:
    from vector_quantize_pytorch import ResidualVQ

    return _OneSequence(ResidualVQ(dim=shape.dims["D"], num_quantizers=shape.dims["Q"],
                                   codebook_size=shape.dims["K"], decay=0.99, commitment_weight=0.25))


def _fastvae_rvq(shape: Shape) -> torch.nn.Module:
    return fastvae.nn.ResidualVQ(shape.dims["Q"], shape.dims["K"], shape.dims["D"], ema=True, decay=0.99, beta=0.25)


def _over_budget(needs: int, device: torch.device, cpu_budget: int) -> str | None:
    """Why a layer estimated to need ``needs`` bytes is not run: on the CPU, over the budget."""
    if device.type == "cpu" and needs > cpu_budget:
        return f"needs {needs / 1e9:.1f} GB, over the CPU memory budget of {cpu_budget / 1e9:.1f} GB"
    return None


def _vq_skip_reason(
    shape: Shape, dtype: str, backend: str | None, device: torch.device, cpu_budget: int
) -> str | None:
    # The peer builds the naive distance matrix as eager code does; fastvae's layer runs the op on its
    # backend: the equivalent vector_quantize case's guard and availability.
    case = cases.Case("vector_quantize", shape, dtype, "fwd+bwd", backend or "eager")
    return cases.skip_reason(case, device, cpu_budget_bytes=cpu_budget)


def _fsq_skip_reason(
    shape: Shape, dtype: str, backend: str | None, device: torch.device, cpu_budget: int
) -> str | None:
    # fastvae's backend must run the FSQ ops here; on the CPU, 8 float32 tensors of N x D (the input,
    # outputs and gradient, and the peer's temporaries) must fit the budget.
    if backend is not None:
        reason = cases.backend_cannot_run(backend, FSQ_OP_NAMES, device)
        if reason is not None:
            return reason
    return _over_budget(8 * shape.dims["N"] * shape.dims["D"] * 4, device, cpu_budget)


def _lfq_skip_reason(
    shape: Shape, dtype: str, backend: str | None, device: torch.device, cpu_budget: int
) -> str | None:
    # fastvae's LFQ calls no backend op (its factorised entropy is PyTorch code): one row, under torch.
    if backend not in (None, "torch"):
        return "fastvae.nn.LFQ calls no backend op: measured once, under the torch backend"
    n, dim = shape.dims["N"], shape.dims["D"]
    # The peer: its N x 2^D code logits, probabilities and their gradients (4 float32 matrices);
    # fastvae: 8 float32 tensors of N x D and a few of 2^D.
    needs = 4 * n * 2**dim * 4 if backend is None else 8 * n * dim * 4 + 8 * 2**dim * 4
    return _over_budget(needs, device, cpu_budget)


def _rvq_skip_reason(
    shape: Shape, dtype: str, backend: str | None, device: torch.device, cpu_budget: int
) -> str | None:
    if backend is not None:
        reason = cases.backend_cannot_run(backend, RVQ_OP_NAMES + VQ_OP_NAMES, device)
        if reason is not None:
            return reason
    n, codes, dim = shape.dims["N"], shape.dims["K"], shape.dims["D"]
    # The peer: a stage's N x K distances and their temporaries (3 float32 matrices); fastvae: 16
    # float32 tensors of N x D (input, residuals, codes and their gradients).
    needs = 3 * n * codes * 4 if backend is None else 16 * n * dim * 4
    return _over_budget(needs, device, cpu_budget)


@dataclass(frozen=True)
class _PeerLayer:
    """A quantiser layer of the peer comparison: fastvae's against vector-quantize-pytorch's.

    Attributes:
        op: the rows' ``op``.
        impl: fastvae's layer, the ``impl`` of its rows.
        peer: shape -> the peer's layer.
        fastvae: shape -> fastvae's layer.
        skip_reason: ``(shape, dtype, fastvae backend or None for the peer, device, CPU budget in
            bytes) -> why that row is not run``, or None.
    """

    op: str
    impl: str
    peer: Callable[[Shape], torch.nn.Module]
    fastvae: Callable[[Shape], torch.nn.Module]
    skip_reason: Callable[[Shape, str, str | None, torch.device, int], str | None]


#: ``VectorQuantize`` with EMA updates against ``fastvae.nn.VectorQuantizer(ema=True)``.
_VQ_LAYER = _PeerLayer("vector_quantize_ema", "fastvae.nn.VectorQuantizer", _peer_module, _fastvae_module,
                       _vq_skip_reason)
#: ``FSQ(levels)`` against ``fastvae.nn.FSQ(levels)``, levels :data:`~fastvae.bench.shapes.FSQ_LEVELS`.
_FSQ_LAYER = _PeerLayer("fsq", "fastvae.nn.FSQ", _peer_fsq, _fastvae_fsq, _fsq_skip_reason)
#: ``LFQ(dim=D)`` (one codebook of 2^D codes) against ``fastvae.nn.LFQ(D)``.
_LFQ_LAYER = _PeerLayer("lfq", "fastvae.nn.LFQ", _peer_lfq, _fastvae_lfq, _lfq_skip_reason)
#: ``ResidualVQ`` with EMA codebooks against ``fastvae.nn.ResidualVQ(ema=True)``.
_RVQ_LAYER = _PeerLayer("residual_vq", "fastvae.nn.ResidualVQ", _peer_rvq, _fastvae_rvq, _rvq_skip_reason)
#: The layers with shapes of their own (:data:`~fastvae.bench.shapes.PEER_SHAPES`).
_SHAPED_LAYERS = (_FSQ_LAYER, _LFQ_LAYER, _RVQ_LAYER)


def _peer_row(layer: _PeerLayer, shape: Shape, dtype: str, impl: str, backend: str | None,
              status: str) -> dict[str, Any]:
    return {
        "op": layer.op,
        "shape": _shape_json(shape),
        "dtype": dtype,
        "mode": "fwd+bwd",
        "impl": impl,
        "backend": backend,
        "status": status,
        **_spread_json(None),
        "peak_memory_bytes": None,
        "speedup_vs_peer": None,
        "speedup_vs_peer_noisy": None,
    }


def _compiled_backends(device: torch.device) -> tuple[str, ...]:
    """fastvae's compiled backends that are benchmarked here, where available: ``triton`` and ``cuda``
    on a CUDA device, ``cpu`` (the extension's CPU kernels) on the CPU."""
    names = ("triton", "cuda") if device.type == "cuda" else ("cpu",)
    return tuple(name for name in names if name in fastvae.available_backends())


def _memory_scaling_impls(config: BenchConfig, device: torch.device) -> list[tuple[str, str | None]]:
    compiled = [name for name in _compiled_backends(device) if config.backends is None or name in config.backends]
    return [("fastvae", name) for name in compiled or ["auto"]] + [("eager", None), (_PEER, None)]


def largest_fitting(
    fits: Callable[[int], bool], *, start: int, resolution: int, limit: int
) -> tuple[int | None, int | None]:
    """The largest ``n`` for which ``fits(n)``, assuming that fitting is monotone in ``n``.

    Doubles from ``start`` until ``fits`` fails or ``2 n`` would pass ``limit``, then bisects between
    the last size that fitted and the first that did not, in steps of ``resolution``.

    Returns:
        ``(largest fitting, smallest failing)``: the first None when even ``start`` fails, the second
        None when ``limit`` was reached without a failure. Both are multiples of ``resolution`` when
        ``start`` is.
    """
    if not fits(start):
        return None, start
    low, high = start, None
    while high is None:
        if 2 * low > limit:
            return low, None
        if fits(2 * low):
            low *= 2
        else:
            high = 2 * low
    while high - low > resolution:
        middle = low + (high - low) // 2 // resolution * resolution
        if fits(middle):
            low = middle
        else:
            high = middle
    return low, high


class _Runner:
    def __init__(self, config: BenchConfig, out: TextIO, err: TextIO) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.out = out
        self.err = err
        self.notes: list[str] = []
        self.ceilings = _Ceilings(self.device, config)
        self.rotation = timing.rotation_bytes(self.device)
        self.cpu_budget = int(config.cpu_memory_gb * 1e9)
        self.compiled = _compiled_backends(self.device)
        self.entries = plan(config.selection, cuda=self.device.type == "cuda", ops=config.ops, names=config.shapes,
                            dtypes=config.dtypes, modes=config.modes)

    def note(self, message: str) -> None:
        self.notes.append(message)
        print(message, file=self.out, flush=True)

    def backends(self, entry: Entry) -> tuple[str, ...]:
        """The backends ``entry`` runs on: ``--backends``, else eager (and compile where the entry asks), torch
        and the available compiled backends that implement the op (the cpu backend has no FSQ)."""
        if self.config.backends is not None:
            return self.config.backends
        fastvae_ops = cases.OP_SPECS[entry.op].fastvae_ops
        compiled = tuple(name for name in self.compiled if cases.backend_cannot_run(name, fastvae_ops, self.device) is None)
        return ("eager", *(("compile",) if entry.compile else ()), "torch", *compiled)

    def _timing_counts(self, *, user_sized: bool) -> tuple[int, int]:
        """Warm-up calls and timed calls of a case: the options', else the defaults of the device and selection."""
        quick = self.config.selection == "quick"
        warmup = self.config.warmup or timing.default_warmup(self.device, quick=quick, user_sized=user_sized)
        repeats = self.config.repeats or timing.default_repeats(self.device, quick=quick, user_sized=user_sized)
        return warmup, repeats

    def _prepare(self, case: cases.Case, row: dict[str, Any], rotation: int, warmup: int) -> cases.Step | None:
        """Build ``case``'s step and run its warm-up calls; on a failure set the row's status and return None."""
        step = None
        try:
            step = cases.build(case, self.device, rotation_bytes=rotation)
            with step.active():
                for _ in range(warmup):
                    step()
            return step
        except Exception as error:  # one failing case must not end a long GPU run
            row["status"] = _failure(error)
            del step
            _release(self.device)
            return None

    def _group_rows(self, entry: Entry, group: list[cases.Case], progress: _Progress) -> list[dict[str, Any]]:
        """The rows of one op at one shape, dtype, precision and mode: every backend built and warmed
        up, then timed round-robin, then its peak memory; user-sized ones also as CUDA graph replays."""
        warmup, repeats = self._timing_counts(user_sized=entry.user_sized)
        rotation = 0 if entry.user_sized else self.rotation
        rows = [_row(case, "ok", user_sized=entry.user_sized) for case in group]
        live: list[tuple[dict[str, Any], cases.Step]] = []
        for case, row in zip(group, rows, strict=True):
            progress.start(f"{case.op} {case.shape.name} {case.dtype}{f' {case.precision}' if case.precision else ''} "
                           f"{case.mode} {case.backend}")
            row.update(warmup=warmup, repeats=repeats)
            reason = cases.skip_reason(case, self.device, cpu_budget_bytes=self.cpu_budget)
            if reason is not None:
                row["status"] = f"skipped: {reason}"
            else:
                step = self._prepare(case, row, rotation, warmup)
                if step is not None:
                    live.append((row, step))
            progress.advance()
        try:
            live = self._time_live(live, repeats)
            if entry.user_sized:
                self._time_graphs(live, warmup, repeats)
        finally:
            del live
            _release(self.device)
        for case, row in zip(group, rows, strict=True):
            if row["status"] == "ok":
                _fill_throughput(row, case, self.ceilings)
        return rows

    def _time_live(self, live: list[tuple[dict[str, Any], cases.Step]], repeats: int
                   ) -> list[tuple[dict[str, Any], cases.Step]]:
        """Time the warmed-up steps round-robin and measure each one's peak memory; returns those still ok.

        The ``torch`` backend (the reference: the ground truth, not a fast path) is timed on its own
        after the others. Interleaved, its hundreds of small ops leave the caches cold for whichever
        call follows, and that does not fall alike on the contenders even in a balanced order: eager
        PyTorch runs much of the same code, a compiled backend's is evicted (measured on the CPU at
        B64xD16: the cpu backend's kernels 5.6 -> 24 us after a reference call).
        """
        if not live:
            return live
        reference = [i for i, (row, _) in enumerate(live) if row["backend"] == "torch"]
        contenders = [i for i in range(len(live)) if i not in reference]
        times: list[list[float]] = [[] for _ in live]
        try:
            for group in (contenders, reference):
                steps = [live[i][1] for i in group]
                if steps:
                    group_times = timing.time_round_robin(steps, self.device, warmup=0, repeats=repeats,
                                                          scopes=[step.active for step in steps])
                    for i, call_times in zip(group, group_times, strict=True):
                        times[i] = call_times
        except Exception as error:  # a failure after the warm-up: none of the interleaved times stands
            for row, _ in live:
                row["status"] = _failure(error)
            return []
        still = []
        for (row, step), row_times in zip(live, times, strict=True):
            row.update(_spread_json(timing.spread(row_times)))
            try:
                with step.active():
                    row["peak_memory_bytes"] = timing.peak_memory_bytes(step, self.device)
                still.append((row, step))
            except Exception as error:  # e.g. out of memory with the other backends' inputs still held
                row["status"] = _failure(error)
        return still

    def _time_graphs(self, live: list[tuple[dict[str, Any], cases.Step]], warmup: int, repeats: int) -> None:
        """Capture each step as a CUDA graph and time the replays round-robin, into the rows' ``cuda_graph``."""
        graphs = []
        for row, step in live:
            try:
                with step.active():
                    graphs.append((row, timing.capture_graph(step, self.device)))
            except timing.GraphUnavailableError as error:
                row["cuda_graph"] = _graph_json(f"unavailable: {error}")
        if not graphs:
            return
        rows = [row for row, _ in graphs]
        replays = [graph.replay for _, graph in graphs]
        del graphs
        try:
            times = timing.time_round_robin(replays, self.device, warmup=warmup, repeats=repeats)
        except Exception as error:  # a replay failed: record it, the per-call rows stand
            for row in rows:
                row["cuda_graph"] = _graph_json(_failure(error))
            return
        finally:
            del replays  # the graphs and their memory pools
        for row, row_times in zip(rows, times, strict=True):
            spread = timing.spread(row_times)
            row["cuda_graph"] = {**_graph_json("ok", spread), "host_overhead_ms": row["median_ms"] - spread.median_ms}

    def _peer_rows(self, layer: _PeerLayer, shapes: list[Shape], dtypes: list[str],
                   progress: _Progress) -> list[dict[str, Any]]:
        """vector-quantize-pytorch's ``layer`` and fastvae's, fwd+bwd per shape and dtype (the peer's
        rows skipped where it is not installed)."""
        rows = []
        backends = self.config.backends or ("torch", *self.compiled)
        fastvae_backends = [name for name in backends if name in cases.FASTVAE_BACKENDS]
        for shape in shapes:
            for dtype in dtypes:
                peer = self._module_row(layer, shape, dtype, None, progress)
                rows.append(peer)
                for name in fastvae_backends:
                    row = self._module_row(layer, shape, dtype, name, progress)
                    if row["median_ms"] and peer["median_ms"]:
                        row["speedup_vs_peer"] = peer["median_ms"] / row["median_ms"]
                        row["speedup_vs_peer_noisy"] = peer["noisy"] or row["noisy"]
                    rows.append(row)
        return rows

    def _module_row(self, layer: _PeerLayer, shape: Shape, dtype: str, backend: str | None,
                    progress: _Progress) -> dict[str, Any]:
        """One peer-comparison row of ``layer``: the peer's (``backend`` None) or fastvae's on ``backend``."""
        impl = _PEER if backend is None else layer.impl
        row = _peer_row(layer, shape, dtype, impl, backend, "ok")
        progress.start(f"peer {shape.name} {dtype} {impl}" + (f" [{backend}]" if backend else ""))
        if backend is None and not _peer_available():
            reason = f"{_PEER} not installed"
        else:
            reason = layer.skip_reason(shape, dtype, backend, self.device, self.cpu_budget)
        if reason is not None:
            row["status"] = f"skipped: {reason}"
        else:
            module = layer.peer if backend is None else layer.fastvae
            warmup, repeats = self._timing_counts(user_sized=False)
            measured = _measure(
                lambda: cases.module_step(module(shape), shape.dims, dtype, self.device,
                                          rotation_bytes=self.rotation, backend=backend),
                self.device, warmup, repeats,
            )
            row.update(status=measured.status, **_spread_json(measured.spread), peak_memory_bytes=measured.peak_bytes)
        progress.advance()
        return row

    def _fits(self, impl: str, backend: str | None, n: int) -> bool:
        """Whether one ``vector_quantize`` fwd+bwd of ``impl`` at ``N = n`` runs without running out of memory.

        Raises:
            RuntimeError: it failed otherwise (the message is the row status).
        """
        shape = Shape(f"N{n}xK{SCALING_K}xD{SCALING_D}", {"N": n, "K": SCALING_K, "D": SCALING_D})
        dtype = self.config.scaling_dtype

        def make() -> cases.Step:
            if impl == _PEER:
                return cases.module_step(_peer_module(shape), shape.dims, dtype, self.device)
            case = cases.Case("vector_quantize", shape, dtype, "fwd+bwd", "eager" if impl == "eager" else backend)
            return cases.build(case, self.device)

        status = _measure(make, self.device, warmup=0, repeats=1).status
        if status not in ("ok", "OOM"):
            raise RuntimeError(status)
        return status == "ok"

    def _memory_scaling(self) -> list[dict[str, Any]]:
        impls = _memory_scaling_impls(self.config, self.device)
        dtype = self.config.scaling_dtype
        base = {"dtype": dtype, "K": SCALING_K, "D": SCALING_D, "resolution": SCALING_RESOLUTION}
        if self.device.type != "cuda":
            self.note("memory scaling: not measured on the CPU (it would exhaust host memory)")
            return [{"impl": impl, "backend": name, **base, "status": "skipped: not measured on the CPU",
                     "max_n": None, "first_oom_n": None} for impl, name in impls]
        rows = []
        for impl, name in impls:
            row = {"impl": impl, "backend": name, **base, "status": "ok", "max_n": None, "first_oom_n": None}
            rows.append(row)
            if impl == _PEER and not _peer_available():
                row["status"] = f"skipped: {_PEER} not installed"
                continue
            print(f"memory scaling: {impl}{f' [{name}]' if name else ''} ...", file=self.err, flush=True)

            try:
                row["max_n"], row["first_oom_n"] = largest_fitting(
                    lambda n, impl=impl, name=name: self._fits(impl, name, n),
                    start=SCALING_RESOLUTION, resolution=SCALING_RESOLUTION, limit=SCALING_LIMIT,
                )
            except RuntimeError as error:
                row["status"] = str(error)
        return rows

    def run(self) -> dict[str, Any]:
        config, device = self.config, self.device
        date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        # The code that runs is the tree at the start: a commit made during a long run is not it.
        commit, dirty = _commit()
        if device.type == "cpu":
            kernels = " and fastvae's cpu kernels" if "cpu" in self.compiled else ""
            if torch.cuda.is_available():
                self.note(f"measuring on the CPU (--device cpu): the torch paths{kernels}")
            else:
                self.note(_CPU_NOTICE + kernels)
            self.note(
                "the triton and cuda backends are not benchmarked on the CPU "
                "(Triton's interpreter is not a performance path)"
            )
            if config.shapes is None and config.selection == "user":
                self.note("on the CPU the default is the user-sized rows (--user); --full runs the CPU-sized table, "
                          "--shapes names others")
        else:
            self.note(f"measuring on {torch.cuda.get_device_name(device)}")
            for name in ("triton", "cuda"):
                reason = _unavailable(name)
                if name not in self.compiled and reason is not None:
                    self.note(f"left out: {reason}")
        groups = list(_groups(self.entries, self.backends))
        vq_entries = [entry for entry in self.entries if entry.op in ("vq_nearest", "vector_quantize")]
        vq_shapes = list({entry.shape.name: entry.shape for entry in vq_entries}.values()) if config.peer else []
        vq_dtypes = list(dict.fromkeys(dtype for entry in vq_entries for dtype in entry.dtypes))
        # The quantiser layers with shapes of their own run in the selection's dtypes (--dtypes, else
        # its entries'); fp32 when it has none (--shapes naming only their shapes).
        layer_dtypes = list(dict.fromkeys(config.dtypes or [dtype for entry in self.entries for dtype in entry.dtypes]
                                          or ["fp32"]))
        peer_plan = [(_VQ_LAYER, vq_shapes, vq_dtypes)] + [
            (layer, peer_shapes(layer.op, config.selection, config.shapes, cpu=device.type == "cpu"), layer_dtypes)
            for layer in _SHAPED_LAYERS
        ] if config.peer else []
        peer_backends = self.config.backends or ("torch", *self.compiled)
        layers = 1 + sum(name in cases.FASTVAE_BACKENDS for name in peer_backends)
        peer_count = sum(len(shapes) * len(dtypes) * layers for _, shapes, dtypes in peer_plan)
        progress = _Progress(sum(len(group) for _, group in groups) + peer_count, self.err)
        rows = []
        try:
            self.ceilings.copy_gbps()
            for entry, group in groups:
                rows += self._group_rows(entry, group, progress)
            _fill_speedups(rows)
            if config.peer and not _peer_available():
                self.note(f"{_PEER} is not installed: its rows of the peer comparison are skipped, fastvae's "
                          "layers are measured alone (pip install 'fastvae[peer]')")
            peer_rows: list[dict[str, Any]] = []
            for layer, shapes, dtypes in peer_plan:
                peer_rows += self._peer_rows(layer, shapes, dtypes, progress)
        finally:
            progress.close()
        graph_reasons = sorted({row["cuda_graph"]["status"] for row in rows
                                if row["cuda_graph"] and row["cuda_graph"]["status"].startswith("unavailable: ")})
        for reason in graph_reasons:
            self.note(f"CUDA graph replays {reason}")
        memory_scaling = self._memory_scaling() if config.memory_scaling else []
        return {
            "schema": SCHEMA,
            "date": date,
            "commit": commit,
            "commit_dirty": dirty,
            "device": _device_info(device),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "triton": _version("triton"),
                "fastvae": fastvae.__version__,
                "vector_quantize_pytorch": _version(_PEER),
            },
            "settings": {
                "selection": config.selection,
                "warmup": config.warmup,
                "repeats": config.repeats,
                "rotation_bytes": self.rotation,
                "noisy_iqr_fraction": timing.NOISY_IQR_FRACTION,
                "compiled_graphs": sum(row["backend"] == "compile" and not row["status"].startswith("skipped")
                                       for row in rows),
                "cpu_memory_budget_gb": round(config.cpu_memory_gb, 1) if device.type == "cpu" else None,
            },
            "notes": self.notes,
            "ceilings": self.ceilings.to_json(),
            "rows": rows,
            "peer": peer_rows,
            "memory_scaling": memory_scaling,
        }


def run(config: BenchConfig, *, out: TextIO | None = None, err: TextIO | None = None) -> dict[str, Any]:
    """Run the benchmarks ``config`` selects and return the report (see ``benchmarks/README.md``).

    Args:
        config: what to run; validated here (see :func:`validate`).
        out: where notices go (default ``sys.stdout``).
        err: where progress goes (default ``sys.stderr``).

    Raises:
        ValueError: an invalid ``config``, naming the option.
    """
    return _Runner(validate(config), sys.stdout if out is None else out, sys.stderr if err is None else err).run()
