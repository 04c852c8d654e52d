"""The contract every fastvae data set keeps, so that the trainer can treat them all alike.

An item is a pair ``(x, y)``:

- ``x``: float32, ``(C, H, W)`` for images (``(D,)`` for flat vectors, ``(T, C, H, W)`` for
  sequences), values in ``[0, 1]``;
- ``y``: what is known about ``x``, always a tensor so that the default ``DataLoader`` collation
  works: a class label (int64, 0-dim), ground-truth factors (dSprites: int64 ``(5,)``; moving
  sprites: float32 ``(T, 5)``), or, for data without labels, the placeholder :data:`UNLABELLED`
  (``torch.tensor(-1)``, int64, 0-dim).

Every data set also has ``input_shape`` (the shape of ``x``), ``num_classes`` (the number of class
labels, or None when ``y`` is not a class label) and ``labels`` (int64 ``(N,)`` class labels of the
whole set, or None), and a ``batch(items)`` fast path returning ``(x, y)`` stacked for a tensor of
item positions. A ``DataLoader`` with a ``batch_size`` uses the fast path through
``__getitems__``.
"""

from __future__ import annotations

import operator

import torch

__all__ = ["UNLABELLED", "VAEDataset"]

#: Value of ``y`` for items of a data set without labels (int64).
UNLABELLED: int = -1


def item_positions(items: object, length: int, name: str = "items") -> torch.Tensor:
    """``items`` (ints, a list or an integer tensor of positions ``(B,)``) as int64 ``(B,)`` in ``[0, length)``.

    Negative positions count from the end, as in Python indexing. Raises ``TypeError`` for a
    non-integer input and ``IndexError`` for a position out of range, naming ``name``.
    """
    positions = torch.as_tensor(items)
    if positions.dtype.is_floating_point or positions.dtype.is_complex or positions.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer positions, got dtype {positions.dtype}")
    positions = positions.to(torch.int64).reshape(-1)
    if positions.numel() and (positions.min() < -length or positions.max() >= length):
        raise IndexError(
            f"{name} must be in [{-length}, {length}) for a data set of length {length}, "
            f"got values in [{int(positions.min())}, {int(positions.max())}]"
        )
    return positions % max(length, 1)


class VAEDataset(torch.utils.data.Dataset):
    """Base of fastvae's data sets: the attributes of the module docstring and the batched fetch.

    Subclasses set ``input_shape``, ``num_classes`` and ``labels`` and implement ``__len__`` and
    ``batch``; ``__getitem__`` and ``__getitems__`` are derived from ``batch``.
    """

    input_shape: tuple[int, ...]
    num_classes: int | None = None
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Items at positions ``items`` (int64 ``(B,)``): ``(x (B, *input_shape), y (B, ...))``."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``index`` as ``(x, y)``; ``IndexError`` past the end (so iteration stops)."""
        try:
            position = operator.index(index)
        except TypeError:
            raise TypeError(f"index must be an int, got {type(index).__name__}") from None
        x, y = self.batch(item_positions([position], len(self), "index"))
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Items at ``indices`` fetched in one ``batch`` call (what a batched ``DataLoader`` calls)."""
        x, y = self.batch(item_positions(indices, len(self), "indices"))
        return list(zip(x.unbind(0), y.unbind(0), strict=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(len={len(self)}, input_shape={self.input_shape}, num_classes={self.num_classes})"
