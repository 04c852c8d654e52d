"""Reference (pure PyTorch) finite scalar quantisation: the ``torch`` backend and the ground truth.

Canonical layout (what :mod:`fastvae.ops.fsq` passes): ``x (R, d)`` contiguous, one column per level.
Arithmetic runs in float32 (float64 for float64 inputs) with the float32 per-level constants of
:mod:`fastvae.plan.fsq`, in the order of the paper's reference code and vector-quantize-pytorch's
``FSQ``, so that on the same device the results are the peer's bit for bit:

    bounded   = tanh(x + shift) * half_l - offset
    quantized = round(bounded) / half_width          (round half to even, as torch.round)
    index     = sum_i (round(bounded_i) + half_width_i) * basis_i

Backward is the straight-through gradient of the rounding:
``grad_x = half_l (1 - tanh(x + shift)^2) / half_width * grad``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastvae.plan import accumulation_dtype
from fastvae.plan.fsq import constants


def fsq_fwd(x: torch.Tensor, levels: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantised codes and their indices. ``x (R, d)`` -> ``(quantized (R, d) in x's dtype, indices (R,) int64)``.

    Each step after the first runs in place on the tensor the first made (the same kernels as the
    out-of-place ops, so the same bits): beside its outputs a call holds one ``(R, d)`` float and
    one ``(R, d)`` int64 temporary.
    """
    c = constants(levels, x.device)
    rounded = x.to(accumulation_dtype(x.dtype)) + c.shift
    rounded.tanh_().mul_(c.half_l).sub_(c.offset).round_()
    indices = rounded.to(torch.int64).add_(c.half_width).mul_(c.basis).sum(-1)
    return rounded.div_(c.half_width).to(x.dtype), indices


def fsq_bwd(grad: torch.Tensor, x: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """Gradient of :func:`fsq_fwd`'s ``quantized`` for ``x``: ``half_l (1 - tanh^2) / half_width * grad``. (R, d).

    ``tanh`` is recomputed from ``x``, and the rest computed in place on it: one ``(R, d)`` temporary.
    """
    c = constants(levels, x.device)
    tanh = x.to(accumulation_dtype(x.dtype)) + c.shift
    tanh.tanh_()
    return tanh.mul_(tanh).neg_().add_(1).mul_(c.half_l).div_(c.half_width).mul_(grad).to(x.dtype)
