"""Host side of the ``cuda`` and ``cpu`` backends' residual vector quantisation: one ``vq_nearest``
search per stage, that of :mod:`fastvae.cuda.vq` for CUDA tensors and of :mod:`fastvae.cuda.vq_cpu`
for CPU tensors.

The residual is carried in the accumulation dtype (float32; float64 for float64), as the other
backends carry it, so each stage searches a float32 (or float64) codebook copy of ``K x D`` elements;
its exact IEEE search decides near-ties. The backward is the reference's per-stage ``index_add``.
"""

from __future__ import annotations

import torch

from fastvae.cuda import vq, vq_cpu
from fastvae.plan import rvq as plan
from fastvae.reference.rvq import rvq_nearest_bwd

__all__ = ["rvq_nearest_bwd", "rvq_nearest_fwd"]


def rvq_nearest_fwd(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual search, stage by stage. ``x (N, D)``, ``codebooks (Q, K, D)`` -> ``(indices (N, Q)
    int64, quantized (N, D))``, ``quantized`` in ``x``'s dtype."""
    search = vq.vq_nearest_fwd if x.is_cuda else vq_cpu.vq_nearest_fwd
    return plan.stage_by_stage(x, codebooks, lambda residual, codebook: search(residual, codebook, "ieee")[0])
