"""Data-parallel training under ``torchrun``: process group, device, DDP wrapping, collectives.

``torchrun`` (``python -m torch.distributed.run``) sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
when ``WORLD_SIZE > 1`` the trainer initialises the default process group (``nccl`` for CUDA, ``gloo``
for the CPU), puts each process on ``cuda:LOCAL_RANK``, and wraps the model in
:class:`~torch.nn.parallel.DistributedDataParallel`. Models with a discriminator back-propagate two
losses from one forward into disjoint parameter sets; DDP averages each parameter's gradient when it
is produced, so the two restricted backward passes together reduce every gradient exactly once.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Distributed", "all_gather_objects", "all_reduce_sum", "barrier", "find_unused", "setup", "wrap"]


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job.

    Attributes:
        rank: global rank, 0 for a single process.
        world_size: number of processes.
        local_rank: rank on this machine (the CUDA device index).
        owns_group: whether this object initialised the process group (and :meth:`close` ends it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """Whether more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs, checkpoints and images (rank 0)."""
        return self.rank == 0

    def close(self) -> None:
        """Destroy the process group if :func:`setup` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"the environment variable {name} must be an int, got {value!r}") from None


def setup(device_type: str) -> Distributed:
    """Join the ``torchrun`` job described by the environment, if ``WORLD_SIZE > 1``.

    Args:
        device_type: ``"cuda"`` (backend nccl, device ``cuda:LOCAL_RANK``) or ``"cpu"`` (gloo).

    Returns:
        The process's :class:`Distributed`; a single process when ``WORLD_SIZE`` is unset or 1.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return Distributed()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=False)
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return Distributed(rank, world_size, local_rank, owns_group=True)


def all_reduce_sum(tensor: torch.Tensor, job: Distributed) -> torch.Tensor:
    """Sum ``tensor`` over the ranks in place (a no-op for one process); returns it."""
    if job.enabled:
        dist.all_reduce(tensor)
    return tensor


def barrier(job: Distributed) -> None:
    """Wait for every rank (a no-op for one process)."""
    if job.enabled:
        dist.barrier()


def all_gather_objects(obj: Any, job: Distributed) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order: ``[obj]`` for one process."""
    if not job.enabled:
        return [obj]
    gathered: list[Any] = [None] * job.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def find_unused(module: nn.Module, run: Callable[[nn.Module], list[tuple[torch.Tensor, list[nn.Parameter]]]]) -> bool:
    """Whether one training step leaves some trainable parameter out of the autograd graph, which
    DDP must then be told (``find_unused_parameters=True``, which costs a graph walk every step).

    ``run(copy)`` performs a step's forward on a deep copy of ``module`` (so the real module's
    buffers, e.g. EMA codebooks, are untouched) and returns ``(loss, parameters)`` pairs: each loss
    and the parameters of the copy it trains. Random-generator state is restored afterwards.
    """
    probe = copy.deepcopy(module)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        for loss, parameters in run(probe):
            trainable = [p for p in parameters if p.requires_grad]
            grads = torch.autograd.grad(loss, trainable, allow_unused=True, retain_graph=True)
            if any(g is None for g in grads):
                return True
    return False


def wrap(module: nn.Module, device: torch.device, *, find_unused_parameters: bool) -> nn.Module:
    """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel` on ``device``."""
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )
