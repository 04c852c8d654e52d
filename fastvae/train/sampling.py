"""What each training step reads: data positions as a pure function of ``(seed, step, rank)``.

The training stream is the concatenation of per-epoch permutations of the data set, epoch ``e``
shuffled by a generator seeded from ``(seed, e)``. Step ``s`` of a run with ``world_size`` processes
of ``batch_size`` examples each takes the global slice starting at ``(s * world_size + rank) *
batch_size``, so the ranks read disjoint shards, each epoch sees every example once (the last step
of an epoch may straddle two), and a resumed run reads exactly what the uninterrupted one would have,
with no sampler state to save.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.utils.data

__all__ = ["BatchFetcher", "StepSampler", "class_labels", "derive_seed", "num_classes_of", "step_positions"]

_MASK64 = (1 << 64) - 1


def derive_seed(*values: int) -> int:
    """A 63-bit seed mixed from integers (SplitMix64 over each value in turn): equal inputs, equal seed."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (int(value) & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1


#: Salts that keep the seeds drawn for different purposes apart.
DATA_SALT = 0xDA7A
MODEL_SALT = 0x30DE1
RANK_SALT = 0x8A4C


class StepSampler:
    """The positions each step of one rank reads (see the module docstring), as an iterable for a
    ``DataLoader`` with ``batch_size=None``: each element is int64 ``(batch_size,)``.

    Args:
        length: the data set's size.
        batch_size: examples per step on this rank.
        seed: the run's seed.
        rank, world_size: this process and the number of processes.
        start, stop: the steps to yield, ``start <= s < stop``.
    """

    def __init__(
        self, length: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1, start: int = 0,
        stop: int,
    ) -> None:
        if length < 1:
            raise ValueError(f"length must be >= 1 (the data set is empty), got {length}")
        self.length = length
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start
        self.stop = stop
        self._epochs: dict[int, torch.Tensor] = {}

    def _epoch(self, epoch: int) -> torch.Tensor:
        if epoch not in self._epochs:
            if len(self._epochs) >= 2:
                self._epochs.pop(min(self._epochs))
            generator = torch.Generator().manual_seed(derive_seed(DATA_SALT, self.seed, epoch))
            self._epochs[epoch] = torch.randperm(self.length, generator=generator)
        return self._epochs[epoch]

    def positions(self, step: int) -> torch.Tensor:
        """Positions read by this rank at ``step``: int64 ``(batch_size,)``."""
        first = (step * self.world_size + self.rank) * self.batch_size
        offsets = torch.arange(first, first + self.batch_size)
        epochs, within = offsets // self.length, offsets % self.length
        out = torch.empty_like(offsets)
        for epoch in range(int(epochs[0]), int(epochs[-1]) + 1):
            chosen = epochs == epoch
            out[chosen] = self._epoch(epoch)[within[chosen]]
        return out

    def __iter__(self) -> Iterator[torch.Tensor]:
        for step in range(self.start, self.stop):
            yield self.positions(step)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def step_positions(
    step: int, *, length: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """Positions that ``rank`` reads at ``step``: int64 ``(batch_size,)`` (see the module docstring)."""
    sampler = StepSampler(length, batch_size, seed=seed, rank=rank, world_size=world_size, stop=step + 1)
    return sampler.positions(step)


class BatchFetcher(torch.utils.data.Dataset):
    """A map-style view of ``dataset`` whose items are whole batches: ``fetcher[positions]`` with
    positions int64 ``(B,)`` returns ``(x (B, ...), y (B, ...))``.

    Uses the data set's batched ``batch(positions)`` path when it has one (every fastvae data set
    does), else stacks its items. Used with a ``DataLoader(batch_size=None, sampler=StepSampler)``
    so that workers render whole batches.
    """

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = getattr(self.dataset, "batch", None)
        if batch is not None:
            return batch(positions)
        items = [self.dataset[int(i)] for i in positions]
        return torch.utils.data.default_collate(items)


def _is_dsprites(dataset: object) -> bool:
    from fastvae.data import DSprites

    return isinstance(dataset, DSprites)


def num_classes_of(dataset: object) -> int | None:
    """How many class labels ``dataset`` has: its ``num_classes``, or the 3 shapes for dSprites
    (factor 0, the documented class label); None for data without class labels."""
    classes = getattr(dataset, "num_classes", None)
    if classes is not None:
        return int(classes)
    if _is_dsprites(dataset):
        from fastvae.data import DSprites

        return DSprites.FACTOR_SIZES[0]
    return None


def class_labels(dataset: object, y: torch.Tensor) -> torch.Tensor:
    """The class labels of a batch, int64 ``(B,)``, from its ``y``: the label itself for labelled
    data, the shape factor (column 0 of the ``(B, 5)`` factors) for dSprites.

    Raises:
        ValueError: ``dataset`` has no class labels.
    """
    if getattr(dataset, "num_classes", None) is not None:
        return y.reshape(y.shape[0]).long()
    if _is_dsprites(dataset):
        return y[:, 0].long()
    raise ValueError(f"the data set {dataset!r} has no class labels, which a conditional model needs")
