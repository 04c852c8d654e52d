"""Planning of the FSQ op: its per-level constants, shared by every backend, and its outputs.

The constants are the numbers the bound of finite scalar quantisation needs per latent dim
(Mentzer et al. 2023, appendix A.1), computed exactly as the paper's reference code and
vector-quantize-pytorch's ``FSQ`` compute them: from the levels as an int32 tensor, in float32, on
the device of the input. Every backend reads these same float32 numbers, so every backend (and the
peer) rounds at the same points.

Pure PyTorch: this module imports neither triton nor ``fastvae._C``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = ["BOUND_EPS", "LevelConstants", "constants", "fsq_bwd", "fsq_fwd"]

#: The ``eps`` of the bound: ``half_l = (L - 1) (1 + eps) / 2`` (the reference code's 1e-3).
BOUND_EPS = 1e-3


class LevelConstants(NamedTuple):
    """The per-dim constants of the bound for levels ``L``, on the input's device, as two tables.

    Attributes:
        floats: float32 ``(3, d)``, rows ``half_l = (L - 1) (1 + 1e-3) / 2``,
            ``shift = atanh(offset / half_l)`` and ``offset`` (``0.5`` where ``L`` is even, else 0).
        ints: int64 ``(2, d)``, rows ``half_width = L // 2`` and ``basis = cumprod([1] + levels[:-1])``
            (the weight of each dim's level in an index: the first dim is the least significant).
    """

    floats: torch.Tensor
    ints: torch.Tensor

    @property
    def half_l(self) -> torch.Tensor:
        return self.floats[0]

    @property
    def shift(self) -> torch.Tensor:
        return self.floats[1]

    @property
    def offset(self) -> torch.Tensor:
        return self.floats[2]

    @property
    def half_width(self) -> torch.Tensor:
        return self.ints[0]

    @property
    def basis(self) -> torch.Tensor:
        return self.ints[1]


@functools.lru_cache(maxsize=64)
def _constants(levels: tuple[int, ...], device: torch.device) -> LevelConstants:
    # The reference code's expressions, on an int32 tensor: float32 results, computed on the device.
    level = torch.tensor(levels, dtype=torch.int32, device=device)
    half_l = ((level - 1) * (1 + BOUND_EPS) / 2).to(torch.float32)
    offset = torch.where(level % 2 == 0, 0.5, 0.0).to(torch.float32)
    shift = torch.atanh(offset / half_l)
    basis = torch.tensor([1, *levels[:-1]], dtype=torch.int64).cumprod(0).to(device)
    return LevelConstants(torch.stack([half_l, shift, offset]), torch.stack([(level // 2).to(torch.int64), basis]))


def constants(levels: Sequence[int], device: torch.device) -> LevelConstants:
    """The :class:`LevelConstants` of ``levels`` (checked ints ``>= 2``) on ``device``.

    Cached per levels and device: the returned tensors are shared, and must not be modified.
    """
    return _constants(tuple(levels), device)


def fsq_fwd(x: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], bool]:
    """``(quantized (R, d) like x, indices (R,) int64)`` for ``x (R, d)``, and whether to launch
    (``R > 0``; ``d >= 1`` always, one dim per level)."""
    quantized = torch.empty_like(x, memory_format=torch.contiguous_format)
    indices = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    return (quantized, indices), x.shape[0] > 0


def fsq_bwd(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``grad_x (R, d)`` like ``x``, and whether to launch (``R > 0``)."""
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.shape[0] > 0
