"""Reference (pure PyTorch) vector quantisation: nearest-code search, VQ losses, code statistics.

Canonical layouts, as :mod:`fastvae.ops.vq` passes them: ``x (N, D)``, ``codebook (K, D)`` of one
dtype and device, ``indices (N,)`` int64. Distances are squared Euclidean (the cosine metric is the
Euclidean one on L2-normalised inputs, applied by the op). Arithmetic in float32 (float64 for float64
inputs).

The search never holds more than :data:`CHUNK_BYTES` of distances at once: it scores rows in chunks
as ``|e|^2 - 2 x.e`` (the ``|x|^2`` term is the same for every code), keeps the first minimum (ties go
to the lowest index), then recomputes the chosen distance directly as ``|x - e|^2``, which is exact
to rounding and never negative.

The search functions take the op's ``precision`` (``"ieee"`` or ``"tf32"``) and ignore it: the
reference is the ground truth and changes no global setting, so its float32 search runs PyTorch's
float32 matmul as the process has configured it -- exact IEEE products unless TF32 was enabled with
``torch.backends.cuda.matmul`` or ``torch.set_float32_matmul_precision`` (off by default).
``"tf32"`` is a speed option of the compiled backends.
"""

from __future__ import annotations

import torch

from fastvae.reference.gaussian import compute_dtype

#: Bytes of the ``(rows, K)`` score block one search chunk may hold.
CHUNK_BYTES = 64 * 2**20


def _nearest(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (N,) int64, squared distances (N,) and the gathered codes (N, D), in the compute dtype."""
    acc = compute_dtype(x.dtype)
    codes = codebook.to(acc)
    code_sq = (codes * codes).sum(-1)
    num_rows, num_codes = x.shape[0], codes.shape[0]
    rows_per_chunk = max(1, CHUNK_BYTES // (num_codes * codes.element_size()))
    indices = torch.empty(num_rows, dtype=torch.int64, device=x.device)
    for start in range(0, num_rows, rows_per_chunk):
        chunk = x[start : start + rows_per_chunk].to(acc)
        scores = torch.addmm(code_sq, chunk, codes.T, alpha=-2.0)
        indices[start : start + rows_per_chunk] = scores.argmin(dim=1)
    nearest = codes[indices]
    diff = x.to(acc) - nearest
    return indices, (diff * diff).sum(-1), nearest


def vq_nearest(x: torch.Tensor, codebook: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest code of each row (lowest on ties) and its squared distance. Returns ((N,) int64, (N,)).

    ``precision`` is ignored (see the module docstring).
    """
    indices, distances, _ = _nearest(x, codebook)
    return indices, distances.to(x.dtype)


def vector_quantize(
    x: torch.Tensor, codebook: torch.Tensor, precision: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest codes and the VQ statistics of a batch; ``precision`` is ignored (see the module docstring).

    Returns:
        ``(quantized (N, D), indices (N,) int64, commitment_loss, codebook_loss, perplexity)``, the last
        three 0-dim: both losses are ``mean_n |x_n - e_{k(n)}|^2`` (they differ only in their
        gradients), and perplexity is ``exp(-sum_k p_k log p_k)`` with ``p_k`` the fraction of rows
        assigned to code ``k``. All in the dtype of ``x``; an empty batch gives NaN statistics.
    """
    indices, distances, nearest = _nearest(x, codebook)
    mean_sq = distances.mean()
    usage = torch.bincount(indices, minlength=codebook.shape[0]).to(distances.dtype) / x.shape[0]
    perplexity = torch.exp(torch.special.entr(usage).sum())
    return (
        nearest.to(x.dtype),
        indices,
        mean_sq.to(x.dtype),
        mean_sq.clone().to(x.dtype),
        perplexity.to(x.dtype),
    )


def vector_quantize_backward(
    grad_quantized: torch.Tensor,
    grad_commitment: torch.Tensor,
    grad_codebook_loss: torch.Tensor,
    x: torch.Tensor,
    codebook: torch.Tensor,
    indices: torch.Tensor,
) -> list[torch.Tensor]:
    """Gradients ``[d x, d codebook]`` of :func:`vector_quantize`.

    ``d x = grad_quantized + grad_commitment * 2 (x - e) / N`` (straight-through plus commitment);
    ``d codebook[k] = -grad_codebook_loss * 2 / N * sum_{n: k(n) = k} (x_n - e_k)``, a segment sum.
    """
    acc = compute_dtype(x.dtype)
    scale = 2.0 / max(x.shape[0], 1)
    diff = x.to(acc) - codebook.to(acc)[indices]
    grad_x = grad_quantized.to(acc) + (scale * grad_commitment.to(acc)) * diff
    segment_sums = torch.zeros(codebook.shape, dtype=acc, device=x.device).index_add_(0, indices, diff)
    grad_codes = (-scale * grad_codebook_loss.to(acc)) * segment_sums
    return [grad_x.to(x.dtype), grad_codes.to(codebook.dtype)]


def vq_code_stats(x: torch.Tensor, indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code row counts (K,) and row sums (K, D) by segment reduction, no one-hot; in the compute dtype."""
    acc = compute_dtype(x.dtype)
    counts = torch.zeros(num_codes, dtype=acc, device=x.device)
    counts.index_add_(0, indices, torch.ones(indices.shape, dtype=acc, device=x.device))
    sums = torch.zeros((num_codes, x.shape[1]), dtype=acc, device=x.device).index_add_(0, indices, x.to(acc))
    return counts, sums
