"""Reference (pure PyTorch) finite scalar quantisation: the ``torch`` backend and the ground truth.

Canonical layout (what :mod:`fastvae.ops.fsq` passes): ``x (R, d)`` contiguous, one column per level.
Arithmetic runs in float32 (float64 for float64 inputs) with the float32 per-level constants of
:mod:`fastvae.plan.fsq`, in the order of the paper's reference code and vector-quantize-pytorch's
``FSQ``, so that on the same device the results are the peer's bit for bit:

    bounded   = tanh(x + shift) * half_l - offset
    quantized = round(bounded) / half_width          (round half to even, as torch.round)
    index     = sum_i (round(bounded_i) + half_width_i) * basis_i

Backward is the straight-through gradient of the rounding, with the peer's order of operations:
``grad_x = grad / half_width * half_l * (1 - tanh(x + shift)^2)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastvae.plan import accumulation_dtype
from fastvae.plan.fsq import constants


def fsq_fwd(x: torch.Tensor, levels: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantised codes and their indices. ``x (R, d)`` -> ``(quantized (R, d) in x's dtype, indices (R,) int64)``."""
    c = constants(levels, x.device)
    bounded = torch.tanh(x.to(accumulation_dtype(x.dtype)) + c.shift) * c.half_l - c.offset
    rounded = torch.round(bounded)
    indices = ((rounded.to(torch.int64) + c.half_width) * c.basis).sum(-1)
    return (rounded / c.half_width).to(x.dtype), indices


def fsq_bwd(grad: torch.Tensor, x: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """Gradient of :func:`fsq_fwd`'s ``quantized`` for ``x``: ``grad / half_width * half_l * (1 - tanh^2)``. (R, d)."""
    c = constants(levels, x.device)
    acc = accumulation_dtype(x.dtype)
    tanh = torch.tanh(x.to(acc) + c.shift)
    return (grad.to(acc) / c.half_width * c.half_l * (1 - tanh * tanh)).to(x.dtype)
