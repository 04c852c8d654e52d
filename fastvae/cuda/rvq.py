"""Host side of the ``cuda`` backend's residual vector quantisation: one ``vq_nearest`` search per stage.

The residual is carried in the accumulation dtype (float32; float64 for float64), as the other
backends carry it, so each stage searches a float32 (or float64) codebook copy of ``K x D`` elements;
its exact IEEE search decides near-ties. The backward is the reference's per-stage ``index_add``.
"""

from __future__ import annotations

import torch

from fastvae.cuda import vq
from fastvae.plan import accumulation_dtype
from fastvae.reference.rvq import rvq_nearest_bwd

__all__ = ["rvq_nearest_bwd", "rvq_nearest_fwd"]


def rvq_nearest_fwd(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual search, stage by stage. ``x (N, D)``, ``codebooks (Q, K, D)`` -> ``(indices (N, Q)
    int64, quantized (N, D))``, ``quantized`` in ``x``'s dtype."""
    acc = accumulation_dtype(x.dtype)
    residual = x.to(acc, copy=True)
    quantized = torch.zeros_like(residual)
    indices = torch.empty((x.shape[0], codebooks.shape[0]), dtype=torch.int64, device=x.device)
    for stage in range(codebooks.shape[0]):
        codebook = codebooks[stage].to(acc).contiguous()
        chosen, _ = vq.vq_nearest_fwd(residual, codebook, "ieee")
        indices[:, stage] = chosen
        codes = codebook[chosen]
        residual -= codes
        quantized += codes
    return indices, quantized.to(x.dtype)
