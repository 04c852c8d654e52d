"""Reference (pure PyTorch) vector quantisation: nearest-code search, VQ losses, code statistics.

Canonical layouts, as :mod:`fastvae.ops.vq` passes them: ``x (N, D)``, ``codebook (K, D)`` of one
dtype and device, ``indices (N,)`` int64. Distances are squared Euclidean (the cosine metric is the
Euclidean one on L2-normalised inputs, applied by the op). Arithmetic in float32 (float64 for float64
inputs).

The search scores rows in chunks as ``s_nk = |e_k|^2 - 2 x_n.e_k`` (the ``|x_n|^2`` term is the same
for every code) by one matrix product per chunk. Its rounding depends on the BLAS, the CPU and the
thread count, and may differ between columns, so two copies of one code need not score alike. The
scores therefore only choose candidates; the winner is decided exactly (see :func:`_nearest`):

* Rounding bound. With unit roundoff ``u`` of the compute dtype and ``gamma_m = m u / (1 - m u)``,
  any summation order (FMA or not, blocked or not) computes ``|e_k|^2`` within ``gamma_D |e_k|^2``
  and ``|e_k|^2 - 2 x.e_k`` (a dot product of length ``D + 1``) within
  ``gamma_{D+1} (|e_k|^2 + 2 sum_i |x_i e_ki|)``, so with Cauchy-Schwarz every computed score is
  within ``E_n = 2 gamma_{D+1} (1 + gamma_D) (C + |x_n| sqrt(C))`` of the exact one, ``C = max_k
  |e_k|^2``. Every exact minimiser of row ``n`` thus scores at most ``min_k s_nk + 2 E_n``. The
  search takes as candidates the codes within ``tau_n = 8 gamma_{D+2} (C + |x_n| sqrt(C))`` of the
  row minimum: twice ``2 E_n``, which absorbs the rounding of ``C``, ``|x_n|`` and ``tau_n``
  themselves. ``u`` is that of bfloat16 when float32 products may be reduced
  (``torch.set_float32_matmul_precision`` other than ``"highest"``, or TF32 on CUDA).
* Exact decision. Each candidate's ``|x_n - e_k|^2`` is recomputed directly, elementwise in the
  compute dtype; the lowest index among the candidates of equal (least) recomputed distance wins. Two
  copies of one code give bitwise identical recomputed distances, so ties go to the lowest index on
  any CPU, BLAS and thread count.

Memory: a chunk holds at most :data:`CHUNK_BYTES` for its ``(rows, K)`` scores, candidate mask and,
at worst (every code a candidate, e.g. a codebook of copies), the candidate list; candidates are
recomputed in pieces of the same budget. The candidate list is sized by the device, which costs one
host synchronisation per chunk. Without near-ties there is about one candidate per row, and the
exact decision costs ``O(N D)`` beside the ``O(N K D)`` product.

The search functions take the op's ``precision`` (``"ieee"``, ``"tf32"`` or ``"3xtf32"``) and ignore
it: the reference is the ground truth and changes no global setting, so its float32 search runs
PyTorch's float32 matmul as the process has configured it -- exact IEEE products unless TF32 was
enabled with ``torch.backends.cuda.matmul`` or ``torch.set_float32_matmul_precision`` (off by
default). ``"tf32"`` and ``"3xtf32"`` are speed options of the compiled backends, and the exact search
is at least as accurate as either promises.

The losses are means over the ``N D`` elements of ``(x - e)^2``, as ``F.mse_loss`` gives.
"""

from __future__ import annotations

import torch

from fastvae.reference.gaussian import compute_dtype

#: Bytes one search chunk may hold: its ``(rows, K)`` scores, candidate mask and candidate list.
CHUNK_BYTES = 64 * 2**20

#: Bytes per (row, code) pair of a chunk beyond its score, at worst: a copy of the score (float64 at
#: most), the candidate mask (bool) and the pair's entry in the candidate list (two int64).
_PAIR_BYTES = 8 + 1 + 2 * 8


def _unit_roundoff(acc: torch.dtype, device: torch.device) -> float:
    """``u`` of the search's products in ``acc``: bfloat16's when float32 matmuls may be reduced."""
    reduced = acc == torch.float32 and (
        torch.get_float32_matmul_precision() != "highest"
        or (device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)
    )
    return torch.finfo(torch.bfloat16 if reduced else acc).eps / 2


def _gamma(m: int, u: float) -> float:
    """``gamma_m = m u / (1 - m u)``, the classic bound on the relative error of an ``m``-term sum."""
    return m * u / (1.0 - m * u) if m * u < 1.0 else float("inf")


def candidate_scale(dim: int, acc: torch.dtype, device: torch.device) -> float:
    """``8 gamma_{D+2}`` of the search's products in ``acc`` on ``device``: a row's candidates are the
    codes scoring within ``candidate_scale * (C + |x_n| sqrt(C))`` of its least score (module docstring)."""
    return 8.0 * _gamma(dim + 2, _unit_roundoff(acc, device))


def _lowest_exact_minimum(
    rows: torch.Tensor, codes: torch.Tensor, pair_rows: torch.Tensor, pair_codes: torch.Tensor
) -> torch.Tensor:
    """Per row of ``rows (R, D)``, the lowest code index among its candidate pairs of least ``|x - e|^2``.

    ``pair_rows``/``pair_codes`` (M,) int64 list the candidate pairs, at least one per row. Returns
    (R,) int64. The distances are recomputed in pieces of :data:`CHUNK_BYTES`.
    """
    num_rows, dim = rows.shape
    num_codes = codes.shape[0]
    distances = torch.empty(pair_rows.shape, dtype=rows.dtype, device=rows.device)
    piece = max(1, CHUNK_BYTES // (3 * max(dim, 1) * rows.element_size()))
    for start in range(0, pair_rows.numel(), piece):
        diff = rows[pair_rows[start : start + piece]] - codes[pair_codes[start : start + piece]]
        distances[start : start + piece] = (diff * diff).sum(-1)
    least = torch.full((num_rows,), float("inf"), dtype=rows.dtype, device=rows.device)
    least.scatter_reduce_(0, pair_rows, distances, "amin")
    winners = distances == least[pair_rows]
    lowest = torch.full((num_rows,), num_codes, dtype=torch.int64, device=rows.device)
    return lowest.scatter_reduce_(0, pair_rows[winners], pair_codes[winners], "amin")


def _nearest(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (N,) int64, squared distances (N,) and the gathered codes (N, D), in the compute dtype.

    Ties go to the lowest index whatever the BLAS (see the module docstring for the candidates' bound).
    A row whose two lowest scores are further apart than the bound has one candidate, its lowest
    score; only the other rows go through the exact decision. A row with NaN scores (non-finite
    inputs) takes the code ``torch.topk`` ranks first.
    """
    acc = compute_dtype(x.dtype)
    codes = codebook.to(acc)
    code_sq = (codes * codes).sum(-1)
    num_rows, dim = x.shape
    num_codes = codes.shape[0]
    tau_scale = candidate_scale(dim, acc, x.device)
    largest_sq = code_sq.max()
    largest_norm = largest_sq.sqrt()
    rows_per_chunk = max(1, CHUNK_BYTES // (num_codes * (codes.element_size() + _PAIR_BYTES)))
    indices = torch.empty(num_rows, dtype=torch.int64, device=x.device)
    for start in range(0, num_rows, rows_per_chunk):
        chunk = x[start : start + rows_per_chunk].to(acc)
        scores = torch.addmm(code_sq, chunk, codes.T, alpha=-2.0)
        lowest_two, order = scores.topk(min(2, num_codes), dim=1, largest=False)
        reach = lowest_two[:, 0] + tau_scale * (largest_sq + chunk.norm(dim=1) * largest_norm)
        near_tie = (lowest_two[:, -1] <= reach).nonzero().squeeze(1)
        pair_rows, pair_codes = (scores[near_tie] <= reach[near_tie, None]).nonzero().unbind(1)
        del scores
        chosen = order[:, 0]
        chosen[near_tie] = _lowest_exact_minimum(chunk[near_tie], codes, pair_rows, pair_codes)
        indices[start : start + rows_per_chunk] = chosen
    nearest = codes[indices]
    diff = x.to(acc) - nearest
    return indices, (diff * diff).sum(-1), nearest


def vq_nearest_fwd(x: torch.Tensor, codebook: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest code of each row (lowest on ties) and its squared distance. Returns ((N,) int64, (N,)).

    ``precision`` is ignored (see the module docstring).
    """
    indices, distances, _ = _nearest(x, codebook)
    return indices, distances.to(x.dtype)


def vector_quantize_fwd(
    x: torch.Tensor, codebook: torch.Tensor, precision: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest codes and the VQ statistics of a batch; ``precision`` is ignored (see the module docstring).

    Returns:
        ``(quantized (N, D), indices (N,) int64, commitment_loss, codebook_loss, perplexity)``, the last
        three 0-dim: both losses are ``sum_n |x_n - e_{k(n)}|^2 / (N D)``, the mean over elements
        (they differ only in their gradients), and perplexity is ``exp(-sum_k p_k log p_k)`` with
        ``p_k`` the fraction of rows assigned to code ``k``. All in the dtype of ``x``. ``N = 0``
        gives NaN losses and perplexity; ``D = 0`` gives NaN losses (a mean over no elements).
    """
    indices, distances, nearest = _nearest(x, codebook)
    return quantize_outputs(x, codebook.shape[0], indices, distances, nearest)


def quantize_outputs(
    x: torch.Tensor, num_codes: int, indices: torch.Tensor, distances: torch.Tensor, nearest: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The outputs of :func:`vector_quantize_fwd` from a search's results.

    Args:
        x: ``(N, D)`` the rows searched. num_codes: ``K``.
        indices: ``(N,)`` int64 nearest codes. distances: ``(N,)`` their ``|x_n - e_k|^2`` and
            nearest: ``(N, D)`` the codes themselves, both in the compute dtype.

    Returns:
        As :func:`vector_quantize_fwd`.
    """
    mean_sq = distances.sum() / x.numel()
    usage = torch.bincount(indices, minlength=num_codes).to(distances.dtype) / x.shape[0]
    perplexity = torch.exp(torch.special.entr(usage).sum())
    return (
        nearest.to(x.dtype),
        indices,
        mean_sq.to(x.dtype),
        mean_sq.clone().to(x.dtype),
        perplexity.to(x.dtype),
    )


def vector_quantize_bwd(
    grad_quantized: torch.Tensor,
    grad_commitment: torch.Tensor,
    grad_codebook_loss: torch.Tensor,
    x: torch.Tensor,
    codebook: torch.Tensor,
    indices: torch.Tensor,
) -> list[torch.Tensor]:
    """Gradients ``[d x, d codebook]`` of :func:`vector_quantize_fwd`.

    ``d x = grad_quantized + grad_commitment * 2 (x - e) / (N D)`` (straight-through plus commitment);
    ``d codebook[k] = -grad_codebook_loss * 2 / (N D) * sum_{n: k(n) = k} (x_n - e_k)``, a segment sum.
    """
    acc = compute_dtype(x.dtype)
    scale = 2.0 / max(x.numel(), 1)
    diff = x.to(acc) - codebook.to(acc)[indices]
    grad_x = grad_quantized.to(acc) + (scale * grad_commitment.to(acc)) * diff
    segment_sums = torch.zeros(codebook.shape, dtype=acc, device=x.device).index_add_(0, indices, diff)
    grad_codes = (-scale * grad_codebook_loss.to(acc)) * segment_sums
    return [grad_x.to(x.dtype), grad_codes.to(codebook.dtype)]


def vq_code_stats_fwd(x: torch.Tensor, indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code row counts (K,) and row sums (K, D) by segment reduction, no one-hot; in the compute dtype."""
    acc = compute_dtype(x.dtype)
    counts = torch.zeros(num_codes, dtype=acc, device=x.device)
    counts.index_add_(0, indices, torch.ones(indices.shape, dtype=acc, device=x.device))
    sums = torch.zeros((num_codes, x.shape[1]), dtype=acc, device=x.device).index_add_(0, indices, x.to(acc))
    return counts, sums
