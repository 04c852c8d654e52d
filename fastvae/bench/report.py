"""Writing a benchmark report: ``bench.json``, ``bench.md`` and, on request, ``bench.png``.

The report is the dictionary :func:`fastvae.bench.run` returns; its layout is documented in
``benchmarks/README.md``. The markdown has a header (date, commit, device, versions, ceilings,
settings, the noise threshold) and one table per op -- each row with its spread, ``noisy`` rows and
speed-ups that involve one marked as such, user-sized rows with their CUDA graph replay time --
then the peer comparison and the memory scaling when they ran. The
chart (matplotlib, imported only when asked for) has one panel per op: median time per backend for
each shape, dtype and mode, on a log scale.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fastvae.bench.shapes import FSQ_LEVELS
from fastvae.train.checkpoint import atomic_write, write_json

__all__ = ["JSON_NAME", "MARKDOWN_NAME", "PLOT_NAME", "markdown", "plot", "write_report"]

JSON_NAME = "bench.json"
MARKDOWN_NAME = "bench.md"
PLOT_NAME = "bench.png"


def _number(value: float | None, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits (no exponent for ordinary sizes), ``-`` for None."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def _speedup(value: float | None, noisy: bool | None = None) -> str:
    """``1.23x``; ``1.23x (noisy)`` when a row it compares is noisy; ``-`` for None."""
    if value is None:
        return "-"
    return f"{_number(value)}x" + (" (noisy)" if noisy else "")


def _spread(row: dict[str, Any]) -> str:
    """``min-max`` of the timed calls in ms, ``-`` when not measured."""
    return "-" if row["min_ms"] is None else f"{_number(row['min_ms'])}-{_number(row['max_ms'])}"


def _iqr(row: dict[str, Any]) -> str:
    """The interquartile range as a percentage of the median, ``noisy`` appended past the threshold."""
    if row["iqr_fraction"] is None:
        return "-"
    return f"{100 * row['iqr_fraction']:.0f}%" + (" noisy" if row["noisy"] else "")


def _graph(graph: dict[str, Any] | None) -> str:
    """A user-sized row's CUDA graph replay: ``median (host per-call minus replay)``; ``n/a`` when not measured."""
    if graph is None:
        return "-"
    if graph["status"] != "ok":
        return "n/a"
    return (f"{_number(graph['median_ms'])} (host {_number(graph['host_overhead_ms'])}"
            + (", noisy)" if graph["noisy"] else ")"))


def _mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else _number(nbytes / 2**20)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
        *("| " + " | ".join(line) + " |" for line in lines),
    ]


def _device_line(device: dict[str, Any]) -> str:
    if device["kind"] == "cuda":
        return f"{device['name']} (driver {device['driver'] or 'unknown'}, CUDA {device['cuda']})"
    return f"CPU: {device['name']} ({device.get('threads', '?')} threads)"


def _header(report: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{name} {version}" for name, version in report["versions"].items() if version)
    commit = report["commit"] + (" (with uncommitted changes)" if report.get("commit_dirty") else "")
    settings = report["settings"]
    rotation = settings["rotation_bytes"]
    counts = dict.fromkeys((row["repeats"], row["warmup"]) for row in report["rows"] if row["repeats"])
    lines = [
        "# fastvae benchmark",
        "",
        f"- date: {report['date']}",
        f"- commit: {commit}",
        f"- device: {_device_line(report['device'])}",
        f"- versions: {versions}",
        f"- selection: {settings['selection']}; {settings['compiled_graphs']} torch.compile graphs",
        "- timing: the median of each row's timed calls ("
        + ", ".join(f"{repeats} after {warmup} warm-up" for repeats, warmup in counts)
        + "); the backends of one op, shape, dtype and mode timed round-robin"
        + (f"; inputs rotated through more than {rotation / 2**20:.0f} MiB (user-sized rows: not rotated)"
           if rotation else ""),
        f"- spread: min-max of the timed calls, and the interquartile range over the median (IQR); a row is noisy "
        f"when its IQR exceeds {100 * settings['noisy_iqr_fraction']:.0f}% of its median, and a speed-up involving a "
        "noisy row says (noisy)",
        "- graph ms: user-sized rows replayed as CUDA graphs (host = per-call median minus replay median)",
    ]
    copy = report["ceilings"]["copy"]
    if copy is not None:
        lines.append(
            f"- copy ceiling: {_number(copy['gbps'])} GB/s "
            f"({copy['bytes_moved'] / 2**20:.0f} MiB read + written per copy; {copy['status']})"
        )
    for matmul in report["ceilings"]["matmul"]:
        lines.append(
            f"- matmul ceiling {matmul['shape']['name']} {matmul['dtype']}: {_number(matmul['tflops'])} TFLOP/s "
            f"(x[:{matmul['rows']}] @ E.T; {matmul['status']})"
        )
    lines += [f"- note: {note}" for note in report["notes"]]
    return lines


def _op_table(rows: list[dict[str, Any]]) -> list[str]:
    header = ["shape", "dtype", "mode", "backend", "median ms", "min-max ms", "IQR", "throughput", "of ceiling",
              "vs eager", "vs compile", "graph ms", "graph vs eager", "peak MiB", "status"]
    lines = []
    for row in rows:
        if row["gbps"] is not None:
            throughput = f"{_number(row['gbps'])} GB/s"
        elif row["tflops"] is not None:
            throughput = f"{_number(row['tflops'])} TFLOP/s"
        else:
            throughput = "-"
        graph = row["cuda_graph"]
        lines.append([
            row["shape"]["name"], row["dtype"] + (f" {row['precision']}" if row["precision"] else ""), row["mode"],
            row["backend"], _number(row["median_ms"]), _spread(row), _iqr(row), throughput,
            _percent(row["fraction_of_ceiling"]), _speedup(row["speedup_vs_eager"], row["speedup_vs_eager_noisy"]),
            _speedup(row["speedup_vs_compile"], row["speedup_vs_compile_noisy"]), _graph(graph),
            "-" if graph is None else _speedup(graph["speedup_vs_eager"], graph["speedup_vs_eager_noisy"]),
            _mib(row["peak_memory_bytes"]), row["status"],
        ])
    return _table(header, lines)


#: The peer comparison's layers, by the ``op`` of their rows.
_PEER_LAYERS = {
    "vector_quantize_ema": "VectorQuantize with EMA",
    "fsq": f"FSQ, levels {FSQ_LEVELS}",
    "lfq": "LFQ, one codebook of 2^D codes",
    "residual_vq": "ResidualVQ with EMA, Q codebooks of K codes",
}


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the header, one table per op, the peer comparison and memory scaling."""
    lines = _header(report)
    for op in dict.fromkeys(row["op"] for row in report["rows"]):
        lines += ["", f"## {op}", "", *_op_table([row for row in report["rows"] if row["op"] == op])]
    for op in dict.fromkeys(row["op"] for row in report["peer"]):
        lines += ["", f"## peer: {_PEER_LAYERS.get(op, op)}, forward + backward", ""]
        lines += _table(
            ["shape", "dtype", "impl", "backend", "median ms", "min-max ms", "IQR", "peak MiB", "vs peer", "status"],
            [[row["shape"]["name"], row["dtype"], row["impl"], row["backend"] or "-", _number(row["median_ms"]),
              _spread(row), _iqr(row), _mib(row["peak_memory_bytes"]),
              _speedup(row["speedup_vs_peer"], row["speedup_vs_peer_noisy"]),
              row["status"]]
             for row in report["peer"] if row["op"] == op],
        )
    if report["memory_scaling"]:
        lines += ["", "## memory scaling: largest N for vector_quantize forward + backward", ""]
        lines += _table(
            ["impl", "backend", "dtype", "K", "D", "largest N", "first N out of memory", "resolution", "status"],
            [[row["impl"], row["backend"] or "-", row["dtype"], str(row["K"]), str(row["D"]),
              "-" if row["max_n"] is None else f"{row['max_n']:,}",
              "-" if row["first_oom_n"] is None else f"{row['first_oom_n']:,}", f"{row['resolution']:,}", row["status"]]
             for row in report["memory_scaling"]],
        )
    return "\n".join(lines) + "\n"


def _plot_group(row: dict[str, Any]) -> str:
    return f"{row['shape']['name']}\n{row['dtype']} {row['mode']}"


def plot(report: dict[str, Any], path: Path) -> None:
    """Write a PNG chart of the median times: one panel per op, bars per backend, log scale.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'fastvae[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plotting needs matplotlib: pip install 'fastvae[plot]'") from error
    ops = list(dict.fromkeys(row["op"] for row in report["rows"]))
    figure, axes = plt.subplots(len(ops) or 1, 1, figsize=(12, 3.2 * max(len(ops), 1)), squeeze=False)
    for axis, op in zip(axes[:, 0], ops, strict=False):
        rows = [row for row in report["rows"] if row["op"] == op and row["status"] == "ok"]
        groups = list(dict.fromkeys(_plot_group(row) for row in rows))
        backends = list(dict.fromkeys(row["backend"] for row in rows))
        width = 0.8 / max(len(backends), 1)
        for index, backend in enumerate(backends):
            times = {_plot_group(row): row["median_ms"] for row in rows if row["backend"] == backend}
            positions = [group_index + index * width for group_index, group in enumerate(groups) if group in times]
            axis.bar(positions, [times[group] for group in groups if group in times], width, label=backend)
        axis.set_xticks([group_index + 0.4 - width / 2 for group_index in range(len(groups))], groups, fontsize=7)
        axis.set_yscale("log")
        axis.set_ylabel("median ms")
        axis.set_title(op)
        axis.legend(fontsize=7)
    title = f"fastvae bench: {_device_line(report['device'])}, {report['date']}, {report['commit'][:12]}"
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)


def write_report(report: dict[str, Any], out: Path, *, plot_chart: bool = False) -> list[Path]:
    """Write ``bench.json`` and ``bench.md`` (and ``bench.png`` with ``plot_chart``) into ``out``, created if needed;
    each file appears whole or not at all (written beside it, then moved onto it).

    Returns:
        The paths written.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / JSON_NAME, out / MARKDOWN_NAME]
    write_json(paths[0], report)
    atomic_write(paths[1], lambda tmp: tmp.write_text(markdown(report)))
    if plot_chart:
        paths.append(out / PLOT_NAME)
        atomic_write(paths[-1], lambda tmp: plot(report, tmp))
    return paths
