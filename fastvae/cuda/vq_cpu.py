"""Host functions of the ``cpu`` backend for vector quantisation: PyTorch's BLAS for the scores,
``fastvae._C.cpu.vq_select`` for the exact decision.

The functions and signatures are those of :mod:`fastvae.reference.vq` (the ``torch`` backend), and so
are the results: the same chunks (:data:`fastvae.reference.vq.CHUNK_BYTES`, read at each call), the
same scores ``|e_k|^2 - 2 x_n.e_k`` from one ``torch.addmm`` per chunk, the same candidate bound
(:func:`fastvae.reference.vq.candidate_scale`) and the same exact decision: the lowest index among
the least recomputed ``|x_n - e_k|^2`` of the candidates, whatever the BLAS. What differs is how the
decision runs. The reference ranks each chunk with ``topk`` and collects near-ties with
``nonzero``, ``scatter_reduce`` and gathers, several passes over the ``(rows, K)`` scores and many
small ops; here one compiled call (csrc/cpu/vq.cpp) scans each row of scores twice (its least score,
then the candidates within reach of it) and recomputes only near-ties. The product runs on
PyTorch's threads, and so does the selection once a chunk holds enough rows.

Inputs come in the canonical layouts of :mod:`fastvae.ops.vq`: ``x (N, D)`` and ``codebook (K, D)``
(``K >= 1``) of one dtype on the CPU. Arithmetic is in float32 (float64 for float64 inputs), as in
the reference. ``precision`` is ignored, as by the reference: float32 products are PyTorch's as the
process configured them, exact unless ``torch.set_float32_matmul_precision`` lowered them, which the
bound accounts for.

``vector_quantize_bwd`` and ``vq_code_stats_fwd`` are the reference's own functions: segment sums by
``index_add_`` and ``bincount``, PyTorch's compiled kernels already, with nothing to fuse at the
sizes where a CPU runs them.
"""

from __future__ import annotations

import torch

from fastvae.cuda import DTYPE_CODES, extension
from fastvae.reference import vq as reference
from fastvae.reference.gaussian import compute_dtype

__all__ = ["vector_quantize_bwd", "vector_quantize_fwd", "vq_code_stats_fwd", "vq_nearest_fwd"]

vector_quantize_bwd = reference.vector_quantize_bwd
vq_code_stats_fwd = reference.vq_code_stats_fwd


def _nearest(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (N,) int64 and squared distances (N,) of the nearest codes, and the codebook as
    ``(K, D)`` contiguous in the compute dtype."""
    acc = compute_dtype(x.dtype)
    codes = codebook.to(acc).contiguous()
    num_rows, dim = x.shape
    num_codes = codes.shape[0]
    indices = torch.empty(num_rows, dtype=torch.int64)
    distances = torch.empty(num_rows, dtype=acc)
    if num_rows == 0 or dim == 0:
        # Zero-width rows are all at distance 0 from every code: code 0 wins (the lowest index).
        return indices.zero_(), distances.zero_(), codes
    code_sq = (codes * codes).sum(-1)
    tau_scale = reference.candidate_scale(dim, acc, x.device)
    rows_per_chunk = max(1, reference.CHUNK_BYTES // (num_codes * codes.element_size()))
    select, code = extension().cpu.vq_select, DTYPE_CODES[acc]
    index_ptr, distance_ptr = indices.data_ptr(), distances.data_ptr()
    for start in range(0, num_rows, rows_per_chunk):
        chunk = x[start : start + rows_per_chunk].to(acc).contiguous()
        scores = torch.addmm(code_sq, chunk, codes.T, alpha=-2.0)
        select(
            code, chunk.data_ptr(), codes.data_ptr(), code_sq.data_ptr(), scores.data_ptr(),
            index_ptr + start * indices.element_size(), distance_ptr + start * distances.element_size(),
            chunk.shape[0], num_codes, dim, tau_scale,
        )  # fmt: skip
    return indices, distances, codes


def vq_nearest_fwd(x: torch.Tensor, codebook: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest code of each row of ``x (N, D)`` in ``codebook (K, D)`` (lowest on ties)
    and its squared distance: ``((N,) int64, (N,) in x's dtype)``. ``precision`` is ignored (module
    docstring)."""
    indices, distances, _ = _nearest(x, codebook)
    return indices, distances.to(x.dtype)


def vector_quantize_fwd(
    x: torch.Tensor, codebook: torch.Tensor, precision: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest codes and the VQ statistics of ``x (N, D)``, as
    :func:`fastvae.reference.vq.vector_quantize_fwd` returns them: ``(quantized (N, D), indices (N,)
    int64, commitment_loss, codebook_loss, perplexity)``. ``precision`` is ignored (module docstring)."""
    indices, distances, codes = _nearest(x, codebook)
    return reference.quantize_outputs(x, codes.shape[0], indices, distances, codes[indices])
