"""Run a function on two (or more) CPU processes joined by a gloo process group, for the DDP tests.

A test module defines ``work(rank) -> object`` at module level (spawned processes import it by name);
:func:`run` starts one process per rank, each of which joins the group, runs ``work``, saves its
result, waits at a barrier and tears the group down, and returns every rank's result in rank order.
Both ranks reach teardown together: a rank that tears down while its peer still talks to the store
was seen to abort in gloo ("terminate called without an active exception").
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

#: Seconds the ranks may take together before the test fails as hung.
TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(work: Callable[[int], object], rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.save(work(rank), Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run(work: Callable[[int], object], out_dir: Path, *, world_size: int = 2) -> list:
    """``work(rank)`` on ``world_size`` gloo ranks; their results, rank 0 first (skips without
    ``torch.distributed``; fails if a rank hangs past :data:`TIMEOUT_S` or exits non-zero)."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    port = _free_port()
    context = mp.get_context("spawn")
    processes = [
        context.Process(target=_rank, args=(work, rank, world_size, port, str(out_dir)), daemon=True)
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=TIMEOUT_S)
    hung = [process for process in processes if process.is_alive()]
    for process in hung:
        process.kill()
        process.join(timeout=10)
    assert not hung, f"DDP ranks did not finish within {TIMEOUT_S} s"
    assert [process.exitcode for process in processes] == [0] * world_size
    return [torch.load(Path(out_dir) / f"rank{rank}.pt") for rank in range(world_size)]
