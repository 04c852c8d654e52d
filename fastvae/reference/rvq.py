"""Reference (pure PyTorch) residual vector quantisation: the nearest code of each stage's residual.

Canonical layouts, as :mod:`fastvae.ops.rvq` passes them: ``x (N, D)``, ``codebooks (Q, K, D)`` of one
dtype and device. Stage ``q`` searches codebook ``q`` for the code nearest (squared Euclidean) to the
residual ``r_q = x - sum_{j < q} e_{j, i_j}``; ties go to the lowest index at every stage. The residual
is kept in the compute dtype (float32, float64 for float64 inputs), so a float16 or bfloat16 input
loses nothing to rounding between stages. Each stage's search is the chunked, exactly decided search
of :mod:`fastvae.reference.vq`: no ``N x K`` matrix is ever held beyond its chunk budget.
"""

from __future__ import annotations

import torch

from fastvae.reference.gaussian import compute_dtype
from fastvae.reference.vq import _nearest


def rvq_nearest_fwd(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual search. ``x (N, D)``, ``codebooks (Q, K, D)`` -> ``(indices (N, Q) int64, quantized (N, D))``.

    ``quantized`` is the sum of the chosen codes, in ``x``'s dtype.
    """
    acc = compute_dtype(x.dtype)
    residual = x.to(acc, copy=True)  # a float32 x must not be the residual updated in place
    quantized = torch.zeros_like(residual)
    indices = torch.empty((x.shape[0], codebooks.shape[0]), dtype=torch.int64, device=x.device)
    for stage, codebook in enumerate(codebooks):
        chosen, _, codes = _nearest(residual, codebook)
        indices[:, stage] = chosen
        residual -= codes
        quantized += codes
    return indices, quantized.to(x.dtype)


def rvq_nearest_bwd(grad_quantized: torch.Tensor, indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Gradient of ``quantized`` with respect to the codebooks: per stage, the rows' gradients summed
    into their chosen code. ``grad_quantized (N, D)``, ``indices (N, Q)`` -> ``(Q, K, D)`` with
    ``K = num_codes``, in ``grad_quantized``'s dtype (accumulated in the compute dtype)."""
    acc = compute_dtype(grad_quantized.dtype)
    grad = grad_quantized.to(acc)
    out = torch.zeros((indices.shape[1], num_codes, grad.shape[1]), dtype=acc, device=grad.device)
    for stage in range(indices.shape[1]):
        out[stage].index_add_(0, indices[:, stage], grad)
    return out.to(grad_quantized.dtype)
