"""Timing and peak-memory measurement of a benchmark call.

On a CUDA device a call is timed with CUDA events recorded around it on the current stream (after
warm-up calls, the median over the repeats), and its inputs come from a rotating pool larger than
twice the L2 cache (see :func:`rotation_bytes`), so each call reads data that is not cached. Peak
memory is ``torch.cuda.max_memory_allocated`` during one call, above what was allocated before it.

On the CPU a call is timed with ``time.perf_counter`` (the median over the repeats) and inputs are
not rotated: a server CPU's last-level cache holds hundreds of MiB, and the CPU numbers are for
comparing the torch paths' time and memory, not cache-cold bandwidth. Peak memory is the highest
total of live tensor bytes above the start of the call, replayed from the allocation and free
events that ``torch.profiler`` records with ``profile_memory=True``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

__all__ = ["default_repeats", "default_warmup", "median_ms", "peak_memory_bytes", "rotation_bytes"]


def default_warmup(device: torch.device, *, quick: bool) -> int:
    """Warm-up calls per case unless told otherwise: 1 in quick mode, else 10 on CUDA and 2 on the CPU."""
    return 1 if quick else 10 if device.type == "cuda" else 2


def default_repeats(device: torch.device, *, quick: bool) -> int:
    """Timed calls per case unless told otherwise: 5 in quick mode, else 50 on CUDA and 10 on the CPU."""
    return 5 if quick else 50 if device.type == "cuda" else 10


def rotation_bytes(device: torch.device) -> int:
    """Bytes the input pool of a timed call must exceed: twice the L2 cache on CUDA, 0 (no rotation) on the CPU."""
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).L2_cache_size
    return 0


def median_ms(fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> float:
    """The median time of ``fn()`` in milliseconds over ``repeats`` calls, after ``warmup`` calls.

    Args:
        fn: the call; it must leave no work queued that belongs to the next call.
        device: where ``fn`` runs: CUDA events time each call on the current stream there, else
            ``time.perf_counter``.
        warmup: untimed calls first (compiles, autotuning, allocator warm-up), ``>= 0``.
        repeats: timed calls, ``>= 1``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return statistics.median(start.elapsed_time(end) for start, end in events)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


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
