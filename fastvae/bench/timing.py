"""Timing, its spread, CUDA graph replays and peak-memory measurement of benchmark calls.

Calls compared with each other (the backends of one op at one shape) are timed round-robin: after
their warm-up, each round times every call once, so that load on the machine falls on all of them
alike rather than on whichever ran while it lasted. The rounds' orders form a Williams design
(:func:`balanced_orders`): within them every call follows every other call equally often, so a call
that leaves the caches cold slows its successors alike instead of always the same one (a plain rotation A B C, B C A, C A B puts C after B in two
rounds of three and B after C in none). Every timed call is kept: :func:`spread` turns them into the min, quartiles,
median and max of a row, and a row whose interquartile range exceeds :data:`NOISY_IQR_FRACTION` of
its median is ``noisy``.

On a CUDA device a call is timed with CUDA events recorded around it on the current stream (the
caller rotates its inputs through a pool larger than twice the L2 cache, see
:func:`rotation_bytes`, so each call reads data that is not cached). Peak memory is
``torch.cuda.max_memory_allocated`` during one call, above what was allocated before it. A call can
also be captured into a CUDA graph (:func:`capture_graph`) and its replays timed the same way: the
difference between a call and a replay is the host's share of the call.

On the CPU a call is timed with ``time.perf_counter`` and inputs are not rotated: a server CPU's
last-level cache holds hundreds of MiB, and the CPU numbers are for comparing the torch paths' time
and memory, not cache-cold bandwidth. Peak memory is the highest total of live tensor bytes above
the start of the call, replayed from the allocation and free events that ``torch.profiler`` records
with ``profile_memory=True``. CUDA graphs do not exist there (:class:`GraphUnavailableError`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

__all__ = [
    "NOISY_IQR_FRACTION",
    "GraphUnavailableError",
    "Spread",
    "balanced_orders",
    "capture_graph",
    "default_repeats",
    "default_warmup",
    "peak_memory_bytes",
    "rotation_bytes",
    "spread",
    "time_round_robin",
]

#: A row is ``noisy`` when its interquartile range (q75 - q25) exceeds this fraction of its median.
NOISY_IQR_FRACTION = 0.10

Scope = Callable[[], contextlib.AbstractContextManager[None]]


def default_warmup(device: torch.device, *, quick: bool, user_sized: bool = False) -> int:
    """Warm-up calls per case unless told otherwise: 1 in quick mode, 20 for a user-sized call, else
    10 on CUDA and 2 on the CPU."""
    if quick:
        return 1
    if user_sized:
        return 20
    return 10 if device.type == "cuda" else 2


def default_repeats(device: torch.device, *, quick: bool, user_sized: bool = False) -> int:
    """Timed calls per case unless told otherwise: 5 in quick mode, 200 for a user-sized call (each
    takes microseconds), else 50 on CUDA and 10 on the CPU."""
    if quick:
        return 5
    if user_sized:
        return 200
    return 50 if device.type == "cuda" else 10


def rotation_bytes(device: torch.device) -> int:
    """Bytes the input pool of a timed call must exceed: twice the L2 cache on CUDA, 0 (no rotation) on the CPU."""
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).L2_cache_size
    return 0


@dataclass(frozen=True)
class Spread:
    """The distribution of a call's timed repeats, in milliseconds.

    Quartiles interpolate linearly between the sorted times (NumPy's default ``"linear"`` method):
    the ``p`` quantile of ``n`` sorted times sits at position ``p (n - 1)``.
    """

    min_ms: float
    q25_ms: float
    median_ms: float
    q75_ms: float
    max_ms: float

    @property
    def iqr_fraction(self) -> float:
        """The interquartile range over the median, ``(q75 - q25) / median``."""
        return (self.q75_ms - self.q25_ms) / self.median_ms if self.median_ms > 0 else math.inf

    @property
    def noisy(self) -> bool:
        """Whether :attr:`iqr_fraction` exceeds :data:`NOISY_IQR_FRACTION`."""
        return self.iqr_fraction > NOISY_IQR_FRACTION

    def to_json(self) -> dict[str, float | bool]:
        """``min_ms``, ``q25_ms``, ``median_ms``, ``q75_ms``, ``max_ms``, ``iqr_fraction`` and ``noisy``."""
        return {
            "min_ms": self.min_ms, "q25_ms": self.q25_ms, "median_ms": self.median_ms, "q75_ms": self.q75_ms,
            "max_ms": self.max_ms, "iqr_fraction": self.iqr_fraction, "noisy": self.noisy,
        }


def _quantile(ordered: list[float], p: float) -> float:
    position = p * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(times_ms: Sequence[float]) -> Spread:
    """The :class:`Spread` of ``times_ms`` (at least one time).

    Raises:
        ValueError: ``times_ms`` is empty.
    """
    if not times_ms:
        raise ValueError("times_ms: give at least one time")
    ordered = sorted(times_ms)
    return Spread(ordered[0], _quantile(ordered, 0.25), _quantile(ordered, 0.5), _quantile(ordered, 0.75), ordered[-1])


def balanced_orders(n: int) -> list[list[int]]:
    """The call orders of a Williams design for ``n`` calls: ``n`` rows for even ``n``, ``2 n`` for odd.

    Each row is a permutation of ``range(n)``; over the rows, every ordered pair ``(a, b)`` of
    distinct calls has ``b`` directly after ``a`` equally often, and every call runs first equally
    often. Rows are the cyclic shifts of ``0, 1, n-1, 2, n-2, ...``, and for odd ``n`` also their
    reverses.

    Raises:
        ValueError: ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    first = [0]
    low, high = 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    rows = [[(value + shift) % n for value in first] for shift in range(n)]
    return rows + [row[::-1] for row in rows] if n % 2 and n > 1 else rows


def time_round_robin(
    calls: Sequence[Callable[[], object]],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    scopes: Sequence[Scope] | None = None,
) -> list[list[float]]:
    """Time ``calls`` interleaved: ``warmup`` untimed rounds, then ``repeats`` timed rounds, each
    calling every call once, in the orders of :func:`balanced_orders` taken in turn.

    Args:
        calls: zero-argument callables; each must leave no work queued that belongs to its next call.
        device: where they run: CUDA events time each call on the current stream there (synchronised
            once, at the end), else ``time.perf_counter``.
        warmup: untimed rounds first (compiles, autotuning, allocator warm-up), ``>= 0``.
        repeats: timed rounds, ``>= 1``.
        scopes: per call, a context-manager factory entered around it (outside the timed span), e.g.
            the fastvae backend a call forces; None: none.

    Returns:
        Per call, its ``repeats`` times in milliseconds, in the order they were taken.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if scopes is not None and len(scopes) != len(calls):
        raise ValueError(f"scopes: need one per call ({len(calls)}), got {len(scopes)}")
    scopes = scopes or [contextlib.nullcontext] * len(calls)
    order = balanced_orders(len(calls))
    for round_index in range(warmup):
        for index in order[round_index % len(order)]:
            with scopes[index]():
                calls[index]()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events: list[list[tuple[torch.cuda.Event, torch.cuda.Event]]] = [[] for _ in calls]
        for round_index in range(repeats):
            for index in order[round_index % len(order)]:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                with scopes[index]():
                    start.record()
                    calls[index]()
                    end.record()
                events[index].append((start, end))
        torch.cuda.synchronize(device)
        return [[start.elapsed_time(end) for start, end in pairs] for pairs in events]
    times: list[list[float]] = [[] for _ in calls]
    for round_index in range(repeats):
        for index in order[round_index % len(order)]:
            with scopes[index]():
                start_s = time.perf_counter()
                calls[index]()
                times[index].append((time.perf_counter() - start_s) * 1e3)
    return times


class GraphUnavailableError(RuntimeError):
    """A call cannot be replayed as a CUDA graph here (the message says why)."""


def capture_graph(fn: Callable[[], object], device: torch.device, *, warmup: int = 3) -> torch.cuda.CUDAGraph:
    """Capture one call of ``fn`` into a CUDA graph, after ``warmup`` calls on a side stream (as
    ``torch.cuda.graphs`` asks: lazy initialisation, autotuning and allocator pools settle outside the
    capture).

    A replay repeats the captured call on the same input and output memory, without the host: no
    Python, no dispatch, one launch.

    Raises:
        GraphUnavailableError: ``device`` is not a CUDA device, or ``fn`` cannot be captured (a host
            synchronisation, a CPU tensor, ...; the message names the error).
    """
    if device.type != "cuda":
        raise GraphUnavailableError(f"CUDA graphs need a CUDA device, this run is on {device.type}")
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        torch.cuda.synchronize(device)
        return graph
    except Exception as error:  # any capture failure is a reason, recorded in the row
        with contextlib.suppress(Exception):
            torch.cuda.synchronize(device)
        message = str(error).strip().splitlines()
        raise GraphUnavailableError(
            f"capture failed with {type(error).__name__}: {message[0] if message else ''}".rstrip(": ")
        ) from error


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """The most tensor memory ``fn()`` holds at once on ``device``, above what was live before the call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - baseline)
    # Kineto logs every profiler start and stop to stderr at its highest level; unless the user chose
    # a level, silence its log (read when the profiler first starts) so that it does not flood the progress.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Allocation events carry +bytes, frees -bytes; their running sum is the live total above the start.
    events = sorted(
        (event for event in prof.profiler.kineto_results.events()
         if event.name() == "[memory]" and event.device_type() == DeviceType.CPU),
        key=lambda event: event.start_ns(),
    )
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak
