"""fastvae's noise stream: counter-based Philox4x32-10 with Box-Muller, in plain PyTorch ops.

Every sampling op of every backend draws its standard normals from this one stream, so that the
torch, Triton and CUDA backends produce the same samples (to the rounding of ``log``/``cos``/``sin``)
from the same seed, and backward passes regenerate the noise instead of storing it.

The stream, for a noise tensor of shape ``(..., D)`` viewed as ``R`` rows of ``D`` elements
(row-major), and a seed ``s`` (an integer in ``[0, 2**63)``):

1. Element ``(r, d)`` belongs to Philox call ``g = d // 4`` of row ``r``, lane ``d % 4``. Each row
   starts a fresh group, so a row's last group may be partly unused when ``D % 4 != 0``.
2. That call is Philox4x32 with 10 rounds (Salmon et al., SC'11; Random123's constants) on
   counter ``(g, r mod 2**32, r div 2**32, 0)`` and key ``(s mod 2**32, s div 2**32)``, giving four
   32-bit words ``w0..w3``. The last counter word is reserved for further sub-streams.
3. Each word becomes a uniform in the open interval (0, 1), exact in float32:
   ``u = ((w >> 9) + 0.5) * 2**-23``.
4. Box-Muller on both pairs, in float32:
   ``n0 = sqrt(-2 ln u0) cos(2 pi u1)``, ``n1 = sqrt(-2 ln u0) sin(2 pi u1)``,
   ``n2 = sqrt(-2 ln u2) cos(2 pi u3)``, ``n3 = sqrt(-2 ln u2) sin(2 pi u3)``;
   lane ``k`` takes ``n_k``.

So one Philox call yields four normals, which keeps fused kernels memory-bound. The reference below
emulates the 32-bit multiply-high/low with 16-bit halves in int64 arithmetic, which every PyTorch
device supports.
"""

from __future__ import annotations

import math

import torch

__all__ = ["philox4x32", "normal_stream", "MAX_SEED"]

#: Seeds are integers in ``[0, MAX_SEED)``.
MAX_SEED = 2**63

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF
_ROUNDS = 10


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * m`` for ``a`` holding uint32 values in an int64 tensor."""
    low_part = a * (m & 0xFFFF)
    high_part = a * (m >> 16)
    t = low_part + ((high_part & 0xFFFF) << 16)
    return (high_part >> 16) + (t >> 32), t & _MASK32


def philox4x32(
    counter: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    key: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 of ``counter`` under ``key``.

    Args:
        counter: four int64 tensors of one shape holding 32-bit words (values in ``[0, 2**32)``).
        key: two 32-bit words.

    Returns:
        Four int64 tensors of the counter's shape holding the output words.
    """
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(_ROUNDS):
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def _uniform(word: torch.Tensor) -> torch.Tensor:
    return ((word >> 9).to(torch.float32) + 0.5) * (2.0**-23)


def normal_stream(rows: int, dim: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The first ``dim`` normals of rows ``0 .. rows - 1`` of the stream for ``seed``.

    Args:
        rows: number of rows ``R`` (>= 0).
        dim: elements per row ``D`` (>= 0).
        seed: integer in ``[0, 2**63)``.
        device: where to compute.

    Returns:
        float32 tensor of shape ``(rows, dim)``.
    """
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed}")
    groups = (dim + 3) // 4
    row = torch.arange(rows, dtype=torch.int64, device=device).unsqueeze(1).expand(rows, groups)
    group = torch.arange(groups, dtype=torch.int64, device=device).unsqueeze(0).expand(rows, groups)
    w0, w1, w2, w3 = philox4x32(
        (group, row & _MASK32, row >> 32, torch.zeros_like(row)),
        (seed & _MASK32, seed >> 32),
    )
    radius01 = torch.sqrt(-2.0 * torch.log(_uniform(w0)))
    radius23 = torch.sqrt(-2.0 * torch.log(_uniform(w2)))
    angle1 = (2.0 * math.pi) * _uniform(w1)
    angle3 = (2.0 * math.pi) * _uniform(w3)
    normals = torch.stack(
        (radius01 * torch.cos(angle1), radius01 * torch.sin(angle1), radius23 * torch.cos(angle3), radius23 * torch.sin(angle3)),
        dim=-1,
    )
    return normals.reshape(rows, groups * 4)[:, :dim]
