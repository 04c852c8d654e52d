"""Planning of residual vector quantisation's stage-by-stage search, shared by the triton backend
(rows too long for its fused kernel) and the cuda and cpu backends (which have no fused kernel)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastvae.plan import accumulation_dtype

__all__ = ["stage_by_stage"]


def stage_by_stage(
    x: torch.Tensor, codebooks: torch.Tensor, nearest: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One nearest-code search per stage on the residual, carried in the accumulation dtype.

    Args:
        x: ``(N, D)``. codebooks: ``(Q, K, D)``, same dtype.
        nearest: ``(residual (N, D), codebook (K, D)) -> indices (N,)`` int64, both in the accumulation
            dtype (float32; float64 for float64): a backend's exact search.

    Returns:
        ``(indices (N, Q) int64, quantized (N, D))``, ``quantized`` in ``x``'s dtype.
    """
    acc = accumulation_dtype(x.dtype)
    residual = x.to(acc, copy=True)
    quantized = torch.zeros_like(residual)
    indices = torch.empty((x.shape[0], codebooks.shape[0]), dtype=torch.int64, device=x.device)
    for stage in range(codebooks.shape[0]):
        codebook = codebooks[stage].to(acc).contiguous()
        chosen = nearest(residual, codebook)
        indices[:, stage] = chosen
        codes = codebook[chosen]
        residual -= codes
        quantized += codes
    return indices, quantized.to(x.dtype)
