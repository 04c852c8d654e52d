"""Triton kernels for vector quantisation: nearest-code search, the fused VQ-VAE quantiser, code statistics.

Canonical layouts, as :mod:`fastvae.ops.vq` passes them: contiguous ``x (N, D)`` and ``codebook (K, D)``
of one dtype (float16, bfloat16, float32 or float64), int64 ``indices (N,)``. Accumulation is in float32
(float64 for float64 inputs).

The search (:func:`_vq_nearest_fwd_kernel`) scores a ``BLOCK_N x BLOCK_K`` tile of rows against codes as
``|e|^2 / 2 - x.e`` (half the squared distance minus the ``|x|^2 / 2`` every code shares), the product
by ``tl.dot`` on tensor cores (fp16/bf16 with fp32 accumulation; fp32 as exact IEEE products, one TF32
product, or three TF32 products of operands split into high and low TF32 parts, as ``precision``
says; float64 exactly, on DMMA where the GPU has it). The tile is taken as two halves whose products
and arg-mins ping-pong, so that on sm_90 the asynchronous wgmma of one half runs while the other is
reduced. Each half is reduced at once to its per-row minimum and first arg-min, and a running minimum
is kept across the codebook with a strict ``<``, so ties go to the lowest index and the ``N x K``
matrix is never written. When there are
too few row blocks to fill the GPU the codebook is split across programs, each writing one
``(score, index)`` per row; the epilogue (:func:`_vq_nearest_epilogue_kernel`) keeps the first of the
equal minima in split order (the lowest index), gathers the chosen code, and recomputes its distance
exactly as ``|x - e|^2`` -- so ``precision`` only decides which code wins a near-tie. For
``vector_quantize`` the same pass writes the quantized rows, per-block sums of squared errors (over
``D``) and the per-code usage counts (int32 atomics), and one small program turns them into the losses
(means over the ``N D`` elements, as ``F.mse_loss``) and the perplexity. Backward and the code statistics are segment sums by atomics: no one-hot matrix.

The codebook split, the outputs and workspaces and the empty inputs are planned by
:mod:`fastvae.plan.vq`, which the cuda backend shares; the tiles are :func:`search_config`'s. No host
function synchronises with the device.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fastvae.kernels import _block_base, _row_length, aligned_rows, aot, on_input_device
from fastvae.kernels.aot import AotConfig
from fastvae.plan import accumulation_dtype
from fastvae.plan import vq as plan

__all__ = ["vector_quantize_bwd", "vector_quantize_fwd", "vq_code_stats_fwd", "vq_nearest_fwd"]


# --- kernels --------------------------------------------------------------------------------------------


@triton.jit
def _tile_mask(row_mask, cols, dim, EVEN_D: tl.constexpr):
    """Mask of a (rows, BLOCK_D) tile; with EVEN_D the column test is dropped so loads vectorise."""
    if EVEN_D:
        mask = row_mask[:, None]
    else:
        mask = row_mask[:, None] & (cols[None, :] < dim)
    return mask


@triton.jit
def _code_tile_mask(code_mask, cols, dim, EVEN_D: tl.constexpr):
    """Mask of a transposed (BLOCK_D, codes) codebook tile, as :func:`_tile_mask`."""
    if EVEN_D:
        mask = code_mask[None, :]
    else:
        mask = code_mask[None, :] & (cols[:, None] < dim)
    return mask


@triton.jit
def _dot_acc(a, b, acc, PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    """``acc + a @ b`` with the products PRECISION names (fp32 inputs; fp16/bf16 always use tensor cores,
    fp64 is exact).

    The compiled ``tl.dot`` computes every element of a tile by the same instruction sequence, so two
    copies of one code score alike wherever they sit. The interpreter's ``tl.dot`` is numpy's matmul,
    whose BLAS rounds some columns differently from others (and multiplies bfloat16 as raw uint16):
    with INTERPRETED the product is a broadcast multiply and a sum over D in the accumulation dtype,
    the same arithmetic for every column.
    """
    if INTERPRETED:
        acc += tl.sum(a.to(acc.dtype)[:, :, None] * b.to(acc.dtype)[None, :, :], axis=1)
    else:
        acc = tl.dot(a, b, acc=acc, input_precision=PRECISION, out_dtype=acc.dtype)
    return acc


@triton.jit
def _tf32_round(v):
    """float32 ``v`` rounded to TF32 (10 mantissa bits), to nearest with ties away from zero, as PTX's
    ``cvt.rna.tf32.f32``: half a TF32 ulp added to the magnitude's bits, the 13 low bits cleared.
    Integer operations, so that the interpreter computes it exactly as the GPU; NaN stays NaN."""
    rounded = ((v.to(tl.uint32, bitcast=True) + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
    return tl.where(v == v, rounded, v)


@triton.jit
def _product(a, b, acc, PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    """``acc + a @ b`` as PRECISION says: ``"3xtf32"`` splits each float32 operand into ``hi``, its
    TF32 rounding, and ``lo = tf32(v - hi)`` and adds three TF32 products, small ones first:
    ``a_hi b_lo + a_lo b_hi + a_hi b_hi`` (the dropped ``a_lo b_lo`` is below ``2^-22 |a b|``). Every
    split value is exactly a TF32 number, so the tensor cores multiply them exactly, as does the
    interpreter. Any other PRECISION is one :func:`_dot_acc`."""
    if PRECISION == "3xtf32":
        a_hi = _tf32_round(a)
        b_hi = _tf32_round(b)
        a_lo = _tf32_round(a - a_hi)
        b_lo = _tf32_round(b - b_hi)
        acc = _dot_acc(a_hi, b_lo, acc, "tf32", INTERPRETED)
        acc = _dot_acc(a_lo, b_hi, acc, "tf32", INTERPRETED)
        acc = _dot_acc(a_hi, b_hi, acc, "tf32", INTERPRETED)
    else:
        acc = _dot_acc(a, b, acc, PRECISION, INTERPRETED)
    return acc


@triton.jit(
    do_not_specialize=["num_codes", "num_entries", "dim"], do_not_specialize_on_alignment=["codebook_ptr"]
)
def _vq_code_norms_kernel(
    codebook_ptr,
    half_sq_ptr,
    num_codes,
    num_entries,
    dim,
    ALIGNED: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``half_sq[k] = |e_k|^2 / 2`` in the accumulation dtype (that of ``half_sq_ptr``) for ``k < K``,
    and +inf for the ``num_entries - K`` entries that pad the search's last code tile."""
    acc_type = half_sq_ptr.dtype.element_ty
    dim = _row_length(dim, ALIGNED)
    code_start = tl.program_id(0).to(tl.int64) * BLOCK_K
    local_codes = tl.arange(0, BLOCK_K)
    code_mask = local_codes < num_codes - code_start
    cols = tl.arange(0, BLOCK_D)
    e_block = _block_base(codebook_ptr, code_start * dim, ALIGNED)
    e_offsets = local_codes[:, None] * dim + cols[None, :]
    total = tl.zeros((BLOCK_K,), acc_type)
    for d_start in range(0, dim, BLOCK_D):
        mask = _tile_mask(code_mask, cols, dim - d_start, False)
        e = tl.load(e_block + d_start + e_offsets, mask=mask, other=0.0).to(acc_type)
        total += tl.sum(e * e, axis=1)
    half_sq = tl.where(code_mask, 0.5 * total, float("inf"))
    tl.store(half_sq_ptr + code_start + local_codes, half_sq, mask=local_codes < num_entries - code_start)


@triton.jit
def _tile_dots(
    x_tile, x_block, x_offsets, e_block, e_offsets, row_mask, code_mask, cols, dim, acc_type: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, SINGLE_D: tl.constexpr,
    EVEN_D: tl.constexpr, PRECISION: tl.constexpr, INTERPRETED: tl.constexpr,
):  # fmt: skip
    """``x . e`` in ``acc_type`` of the BLOCK_N rows at ``x_block`` (SINGLE_D: the loaded ``x_tile``)
    and the BLOCK_K codes at ``e_block`` that ``code_mask`` keeps (the others' products are 0)."""
    dots = tl.zeros((BLOCK_N, BLOCK_K), acc_type)
    if SINGLE_D:
        e_tile = tl.load(e_block + e_offsets, mask=_code_tile_mask(code_mask, cols, dim, EVEN_D), other=0.0)
        dots = _product(x_tile, e_tile, dots, PRECISION, INTERPRETED)
    else:
        for d_start in range(0, dim, BLOCK_D):
            x_mask = _tile_mask(row_mask, cols, dim - d_start, EVEN_D)
            e_mask = _code_tile_mask(code_mask, cols, dim - d_start, EVEN_D)
            x_chunk = tl.load(x_block + d_start + x_offsets, mask=x_mask, other=0.0)
            e_chunk = tl.load(e_block + d_start + e_offsets, mask=e_mask, other=0.0)
            dots = _product(x_chunk, e_chunk, dots, PRECISION, INTERPRETED)
    return dots


@triton.jit
def _running_argmin(dots, half_sq_ptr, k_start, local_codes, best, best_index, INTERPRETED: tl.constexpr):
    """Fold the tile of codes ``k_start + local_codes`` with products ``dots`` into the running
    ``(best, best_index)``: scores ``|e|^2/2 - x.e``, the tile's first arg-min, and a strict ``<``
    so that an equal score in a later tile keeps the lower index. ``half_sq`` holds +inf past ``K``,
    so codes past ``K`` (whose dots are 0) never win and the load needs no mask."""
    half_sq = tl.load(half_sq_ptr + k_start + local_codes)
    scores = half_sq[None, :] - dots
    if INTERPRETED:  # numpy's arg-min rejects all-NaN rows (NaN inputs): score them +inf, code 0 wins
        scores = tl.where(scores == scores, scores, float("inf"))
    tile_best, tile_index = tl.min(scores, axis=1, return_indices=True, return_indices_tie_break_left=True)
    better = tile_best < best
    best = tl.where(better, tile_best, best)
    best_index = tl.where(better, tile_index + k_start, best_index)
    return best, best_index


@triton.jit(do_not_specialize=["num_rows", "num_codes", "tiles_per_split"])
def _vq_nearest_fwd_kernel(
    x_ptr,
    codebook_ptr,
    half_sq_ptr,
    part_score_ptr,
    part_index_ptr,
    num_rows,
    num_codes,
    dim,
    tiles_per_split,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_D: tl.constexpr,
    EVEN_D: tl.constexpr,
    PRECISION: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    """Per row of a BLOCK_N block, the lowest score ``|e|^2/2 - x.e`` over this program's codebook split
    and its first index, written to ``part_score/part_index[split, row]``.

    Grid: (row blocks, splits); split ``s`` covers codes ``[s, s + 1) * tiles_per_split * BLOCK_K``
    (never empty). SINGLE_D: D fits one BLOCK_D tile, so the x tile is loaded once; otherwise D is
    looped in chunks.

    Each iteration takes BLOCK_K codes as two halves, A and B, and overlaps B's products with an
    arg-min (a ping-pong): it multiplies A, folds in the previous iteration's B, issues B's products
    and, while they run, folds in A. The halves are folded in code order, which the strict ``<``
    needs. On sm_90 the products are wgmma: A's are waited for at once and B's stay in flight across
    A's arg-min and the loop's back edge, until the wait for the next A (Triton keeps a wgmma in
    flight across iterations only when its result is loop-carried and a synchronous product comes
    before its use, which A's is). The first pair is multiplied before the loop, so that the
    loop-carried B registers are only ever written by wgmma (ptxas serialises the wgmma otherwise).
    """
    acc_type: tl.constexpr = half_sq_ptr.dtype.element_ty
    HALF_K: tl.constexpr = BLOCK_K // 2
    row_start = tl.program_id(0).to(tl.int64) * BLOCK_N
    split = tl.program_id(1)
    # Scalar 64-bit bases plus loop-invariant 32-bit offsets within a tile keep the registers for addresses low.
    local_rows = tl.arange(0, BLOCK_N)
    local_codes = tl.arange(0, HALF_K)
    cols = tl.arange(0, BLOCK_D)
    row_mask = local_rows < num_rows - row_start
    x_block = x_ptr + row_start * dim
    x_offsets = local_rows[:, None] * dim + cols[None, :]
    # Codebook tiles are read transposed, (BLOCK_D, HALF_K): contiguous along D, the dot's inner dim.
    e_offsets = local_codes[None, :] * dim + cols[:, None]
    x_tile = None
    if SINGLE_D:
        x_tile = tl.load(x_block + x_offsets, mask=_tile_mask(row_mask, cols, dim, EVEN_D), other=0.0)

    k_begin = split * tiles_per_split * BLOCK_K
    k_end = tl.minimum(k_begin + tiles_per_split * BLOCK_K, num_codes)
    k_last = k_begin + (k_end - 1 - k_begin) // BLOCK_K * BLOCK_K
    e_block = codebook_ptr + k_begin.to(tl.int64) * dim
    dots_a = _tile_dots(
        x_tile, x_block, x_offsets, e_block, e_offsets, row_mask, local_codes < num_codes - k_begin, cols, dim,
        acc_type, BLOCK_N, HALF_K, BLOCK_D, SINGLE_D, EVEN_D, PRECISION, INTERPRETED,
    )  # fmt: skip
    dots_b = _tile_dots(
        x_tile, x_block, x_offsets, e_block + HALF_K * dim, e_offsets, row_mask,
        local_codes < num_codes - (k_begin + HALF_K), cols, dim, acc_type, BLOCK_N, HALF_K, BLOCK_D, SINGLE_D, EVEN_D,
        PRECISION, INTERPRETED,
    )  # fmt: skip
    best = tl.full((BLOCK_N,), float("inf"), acc_type)
    best_index = tl.zeros((BLOCK_N,), tl.int32)
    best, best_index = _running_argmin(dots_a, half_sq_ptr, k_begin, local_codes, best, best_index, INTERPRETED)
    e_block += BLOCK_K * dim
    for k_start in range(k_begin + BLOCK_K, k_end, BLOCK_K):
        dots_a = _tile_dots(
            x_tile, x_block, x_offsets, e_block, e_offsets, row_mask, local_codes < num_codes - k_start, cols,
            dim, acc_type, BLOCK_N, HALF_K, BLOCK_D, SINGLE_D, EVEN_D, PRECISION, INTERPRETED,
        )  # fmt: skip
        b_start = k_start - HALF_K  # the previous iteration's B
        best, best_index = _running_argmin(dots_b, half_sq_ptr, b_start, local_codes, best, best_index, INTERPRETED)
        dots_b = _tile_dots(
            x_tile, x_block, x_offsets, e_block + HALF_K * dim, e_offsets, row_mask,
            local_codes < num_codes - (k_start + HALF_K), cols, dim, acc_type, BLOCK_N, HALF_K, BLOCK_D, SINGLE_D,
            EVEN_D, PRECISION, INTERPRETED,
        )  # fmt: skip
        best, best_index = _running_argmin(dots_a, half_sq_ptr, k_start, local_codes, best, best_index, INTERPRETED)
        e_block += BLOCK_K * dim
    best, best_index = _running_argmin(dots_b, half_sq_ptr, k_last + HALF_K, local_codes, best, best_index, INTERPRETED)

    out = split.to(tl.int64) * num_rows + row_start + local_rows
    tl.store(part_score_ptr + out, best, mask=row_mask)
    tl.store(part_index_ptr + out, best_index, mask=row_mask)


@triton.jit(
    do_not_specialize=["num_rows", "dim", "num_splits"], do_not_specialize_on_alignment=["x_ptr", "quantized_ptr"]
)
def _vq_nearest_epilogue_kernel(
    x_ptr,
    codebook_ptr,
    part_score_ptr,
    part_index_ptr,
    index_ptr,
    distance_ptr,
    quantized_ptr,
    block_sum_ptr,
    usage_ptr,
    num_rows,
    dim,
    num_splits,
    ALIGNED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    QUANTIZE: tl.constexpr,
):
    """Combine the splits (first minimum in split order = lowest index), store the int64 index, and
    recompute the chosen distance exactly as ``|x - e|^2``.

    QUANTIZE=False: store the distance in x's dtype. QUANTIZE=True (vector_quantize): store the
    gathered code as the quantized row, this block's sum of squared distances divided by ``D`` to
    ``block_sum[block]``, and count the codes' usage into int32 ``usage`` by atomics.
    """
    acc_type = part_score_ptr.dtype.element_ty
    dim = _row_length(dim, ALIGNED)
    row_block = tl.program_id(0).to(tl.int64)
    row_start = row_block * BLOCK_N
    local_rows = tl.arange(0, BLOCK_N)
    row_mask = local_rows < num_rows - row_start
    score_ptrs = part_score_ptr + row_start + local_rows
    index_ptrs = part_index_ptr + row_start + local_rows
    best = tl.load(score_ptrs, mask=row_mask, other=float("inf"))
    best_index = tl.load(index_ptrs, mask=row_mask, other=0)
    for _ in range(1, num_splits):
        score_ptrs += num_rows
        index_ptrs += num_rows
        score = tl.load(score_ptrs, mask=row_mask, other=float("inf"))
        index = tl.load(index_ptrs, mask=row_mask, other=0)
        better = score < best
        best = tl.where(better, score, best)
        best_index = tl.where(better, index, best_index)
    tl.store(index_ptr + row_start + local_rows, best_index.to(tl.int64), mask=row_mask)

    cols = tl.arange(0, BLOCK_D)
    x_block = _block_base(x_ptr, row_start * dim, ALIGNED)
    quantized_block = _block_base(quantized_ptr, row_start * dim, ALIGNED)
    x_offsets = local_rows[:, None] * dim + cols[None, :]
    code_offsets = best_index.to(tl.int64)[:, None] * dim + cols[None, :]
    distance = tl.zeros((BLOCK_N,), acc_type)
    for d_start in range(0, dim, BLOCK_D):
        mask = _tile_mask(row_mask, cols, dim - d_start, False)
        x = tl.load(x_block + d_start + x_offsets, mask=mask, other=0.0)
        e = tl.load(codebook_ptr + d_start + code_offsets, mask=mask, other=0.0)
        diff = x.to(acc_type) - e.to(acc_type)
        distance += tl.sum(diff * diff, axis=1)
        if QUANTIZE:
            tl.store(quantized_block + d_start + x_offsets, e, mask=mask)
    if QUANTIZE:
        tl.store(block_sum_ptr + row_block, tl.sum(tl.where(row_mask, distance, 0.0), axis=0) / dim)
        tl.atomic_add(usage_ptr + best_index, 1, mask=row_mask)
    else:
        tl.store(distance_ptr + row_start + local_rows, distance, mask=row_mask)


@triton.jit(do_not_specialize=["num_blocks", "num_codes", "num_rows"])
def _vector_quantize_stats_kernel(
    block_sum_ptr,
    usage_ptr,
    commitment_ptr,
    codebook_loss_ptr,
    perplexity_ptr,
    num_blocks,
    num_codes,
    num_rows,
    BLOCK: tl.constexpr,
):
    """One program: both losses ``sum(block_sum) / N`` (block sums hold squared distances over ``D``:
    the mean over the ``N D`` elements) and the perplexity ``exp(-sum_k p_k log p_k)`` with
    ``p_k = usage_k / N`` and ``0 log 0 = 0``; stored in the dtype of the output pointers."""
    acc_type = block_sum_ptr.dtype.element_ty
    offsets = tl.arange(0, BLOCK)
    total = tl.zeros((BLOCK,), acc_type)
    for start in range(0, num_blocks, BLOCK):
        total += tl.load(block_sum_ptr + start + offsets, mask=start + offsets < num_blocks, other=0.0)
    mean = tl.sum(total, axis=0) / num_rows
    entropy = tl.zeros((BLOCK,), acc_type)
    for start in range(0, num_codes, BLOCK):
        count = tl.load(usage_ptr + start + offsets, mask=start + offsets < num_codes, other=0).to(acc_type)
        p = count / num_rows
        entropy -= tl.where(count > 0, p * tl.log(tl.where(count > 0, p, 1.0)), 0.0)
    tl.store(commitment_ptr, mean)
    tl.store(codebook_loss_ptr, mean)
    tl.store(perplexity_ptr, tl.exp(tl.sum(entropy, axis=0)))


@triton.jit(do_not_specialize=["num_rows"])
def _vector_quantize_bwd_kernel(
    grad_quantized_ptr,
    grad_commitment_ptr,
    grad_codebook_loss_ptr,
    x_ptr,
    codebook_ptr,
    index_ptr,
    grad_x_ptr,
    grad_codebook_ptr,
    num_rows,
    dim,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``grad_x = grad_q + grad_commitment * 2 (x - e) / (N D)``, and
    ``-grad_codebook_loss * 2 (x - e) / (N D)`` added to ``grad_codebook[k(n)]`` (accumulation dtype)
    by atomics. The 0-dim upstream gradients are read here, not on the host."""
    acc_type = grad_codebook_ptr.dtype.element_ty
    row_start = tl.program_id(0).to(tl.int64) * BLOCK_N
    local_rows = tl.arange(0, BLOCK_N)
    row_mask = local_rows < num_rows - row_start
    elements = tl.full((), 1.0, acc_type) * num_rows * dim  # N D as a float: it may pass 2**31
    two_over_elements = 2.0 / elements
    commitment_scale = tl.load(grad_commitment_ptr).to(acc_type) * two_over_elements
    codebook_scale = -tl.load(grad_codebook_loss_ptr).to(acc_type) * two_over_elements
    codes = tl.load(index_ptr + row_start + local_rows, mask=row_mask, other=0)
    cols = tl.arange(0, BLOCK_D)
    offsets = local_rows[:, None] * dim + cols[None, :]
    code_offsets = codes[:, None] * dim + cols[None, :]
    for d_start in range(0, dim, BLOCK_D):
        mask = _tile_mask(row_mask, cols, dim - d_start, False)
        start = row_start * dim + d_start
        x = tl.load(x_ptr + start + offsets, mask=mask, other=0.0).to(acc_type)
        e = tl.load(codebook_ptr + d_start + code_offsets, mask=mask, other=0.0).to(acc_type)
        grad_q = tl.load(grad_quantized_ptr + start + offsets, mask=mask, other=0.0).to(acc_type)
        diff = x - e
        tl.store(grad_x_ptr + start + offsets, grad_q + commitment_scale * diff, mask=mask)
        tl.atomic_add(grad_codebook_ptr + d_start + code_offsets, codebook_scale * diff, mask=mask)


@triton.jit(do_not_specialize=["num_rows", "dim"], do_not_specialize_on_alignment=["x_ptr"])
def _vq_code_stats_fwd_kernel(
    x_ptr,
    index_ptr,
    counts_ptr,
    sums_ptr,
    num_rows,
    dim,
    ALIGNED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``counts[k] += 1`` and ``sums[k] += x_n`` for every row ``n`` with ``k = indices[n]``, by atomics."""
    acc_type = sums_ptr.dtype.element_ty
    dim = _row_length(dim, ALIGNED)
    row_start = tl.program_id(0).to(tl.int64) * BLOCK_N
    local_rows = tl.arange(0, BLOCK_N)
    row_mask = local_rows < num_rows - row_start
    codes = tl.load(index_ptr + row_start + local_rows, mask=row_mask, other=0)
    tl.atomic_add(counts_ptr + codes, tl.full((BLOCK_N,), 1.0, acc_type), mask=row_mask)
    cols = tl.arange(0, BLOCK_D)
    x_block = _block_base(x_ptr, row_start * dim, ALIGNED)
    offsets = local_rows[:, None] * dim + cols[None, :]
    code_offsets = codes[:, None] * dim + cols[None, :]
    for d_start in range(0, dim, BLOCK_D):
        mask = _tile_mask(row_mask, cols, dim - d_start, False)
        x = tl.load(x_block + d_start + offsets, mask=mask, other=0.0).to(acc_type)
        tl.atomic_add(sums_ptr + d_start + code_offsets, x, mask=mask)


# --- launch heuristics ----------------------------------------------------------------------------------

#: Rows and columns per program of the row-wise kernels (epilogue, backward, code statistics).
ROW_BLOCK_N, ROW_BLOCK_D = 32, 64
#: Codes per program of the |e|^2 kernel; entries per iteration of the one-program statistics kernel.
NORM_BLOCK_K, STATS_BLOCK = 32, 256


class SearchConfig(NamedTuple):
    """Tile sizes and launch parameters of the nearest-code search."""

    block_n: int
    block_k: int
    block_d: int
    num_warps: int
    num_stages: int


def search_config(dim: int, dtype: torch.dtype, precision: str) -> SearchConfig:
    """Tiles of the search for ``D = dim``, ``dtype`` and the float32 ``precision``.

    ``block_k`` codes are taken per iteration, as two halves whose products and arg-mins ping-pong
    (see :func:`_vq_nearest_fwd_kernel`). Tensor cores (fp16/bf16; fp32 with ``"tf32"`` or
    ``"3xtf32"``) take 128-row tiles on 8 warps (two warpgroups of wgmma on sm_90) with codebook tiles
    streaming through shared memory: fp16/bf16 128 codes (halves of 64) with D <= 64 in one tile and
    4 stages (the VQ-VAE case), 64 codes beyond (D <= 128 in one tile, then 32-wide chunks); tf32 64
    codes, D <= 64 in one tile, then 16-wide chunks; 3xtf32 64 codes, D <= 32 in one tile, then
    32-wide chunks (its operands are split in registers, three products each). Exact products (fp32
    ``"ieee"`` on FMA units, fp64 on DMMA) take 64 x 64 tiles in 16-wide chunks of D, on 8 warps for
    D <= 32 and 4 beyond. Every choice compiles without register spills for sm_80 and sm_90 even when
    nothing is known of the alignment of D (see AOT_CONFIGS).
    """
    if dtype in (torch.float16, torch.bfloat16):
        if dim <= 64:
            return SearchConfig(128, 128, 64, 8, 4)
        return SearchConfig(128, 64, 128 if dim <= 128 else 32, 8, 3)
    if dtype == torch.float32 and precision == "tf32":
        return SearchConfig(128, 64, 64 if dim <= 64 else 16, 8, 3)
    if dtype == torch.float32 and precision == "3xtf32":
        return SearchConfig(128, 64, 32, 8, 3)
    return SearchConfig(64, 64, 16, 8 if dim <= 32 else 4, 3)


def _search_launch(dim: int, dtype: torch.dtype, precision: str) -> tuple[SearchConfig, dict[str, object]]:
    """The search's :func:`search_config` and the constexprs it launches with (all but INTERPRETED)."""
    config = search_config(dim, dtype, precision)
    constexprs = {
        "BLOCK_N": config.block_n,
        "BLOCK_K": config.block_k,
        "BLOCK_D": config.block_d,
        "SINGLE_D": dim <= config.block_d,
        "EVEN_D": dim % config.block_d == 0,
        "PRECISION": precision if dtype == torch.float32 else "ieee",
    }
    return config, constexprs


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _search(x: torch.Tensor, codebook: torch.Tensor, precision: str) -> plan.SearchWorkspace:
    """Launch ``|e|^2 / 2`` and the search on ``x (N, D)``, ``codebook (K, D)`` (N, D >= 1); returns the
    workspace holding the per-split ``(scores (S, N), int32 indices (S, N))``."""
    num_rows, dim = x.shape
    num_codes = codebook.shape[0]
    config, constexprs = _search_launch(dim, x.dtype, precision)
    workspace = plan.search_workspace(x, num_codes, config.block_n, config.block_k)
    num_entries = workspace.half_sq.numel()
    _vq_code_norms_kernel[(triton.cdiv(num_entries, NORM_BLOCK_K),)](
        codebook, workspace.half_sq, num_codes, num_entries, dim, ALIGNED=aligned_rows(dim, codebook),
        BLOCK_K=NORM_BLOCK_K, BLOCK_D=ROW_BLOCK_D,
    )  # fmt: skip
    _vq_nearest_fwd_kernel[(triton.cdiv(num_rows, config.block_n), workspace.splits)](
        x, codebook, workspace.half_sq, workspace.part_score, workspace.part_index, num_rows, num_codes, dim,
        workspace.tiles_per_split, **constexprs, INTERPRETED=_interpreted(), num_warps=config.num_warps,
        num_stages=config.num_stages,
    )  # fmt: skip
    return workspace


# --- host functions -------------------------------------------------------------------------------------


@on_input_device
def vq_nearest_fwd(x: torch.Tensor, codebook: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code of every row of ``x (N, D)`` in ``codebook (K, D)``, lowest index on ties.

    ``precision`` (``"ieee"``, ``"tf32"`` or ``"3xtf32"``) chooses the float32 products of the search;
    other dtypes ignore it. Returns ``(indices (N,) int64, distances (N,) in x's dtype)``, each distance
    recomputed exactly as ``|x - e|^2`` in the accumulation dtype.
    """
    plan.check_sizes(x, codebook)
    x, codebook = x.contiguous(), codebook.contiguous()
    (indices, distances), launch = plan.vq_nearest_fwd(x)
    if not launch:
        return indices, distances
    num_rows, dim = x.shape
    workspace = _search(x, codebook, precision)
    _vq_nearest_epilogue_kernel[(triton.cdiv(num_rows, ROW_BLOCK_N),)](
        x,
        codebook,
        workspace.part_score,
        workspace.part_index,
        indices,
        distances,
        distances,  # quantized, block sums and usage are not written without QUANTIZE
        workspace.part_score,
        workspace.part_index,
        num_rows,
        dim,
        workspace.splits,
        ALIGNED=aligned_rows(dim, x),
        BLOCK_N=ROW_BLOCK_N,
        BLOCK_D=ROW_BLOCK_D,
        QUANTIZE=False,
    )
    return indices, distances


@on_input_device
def vector_quantize_fwd(
    x: torch.Tensor, codebook: torch.Tensor, precision: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest codes and the VQ statistics, as :func:`fastvae.reference.vq.vector_quantize`.

    Returns ``(quantized (N, D), indices (N,) int64, commitment_loss, codebook_loss, perplexity)``,
    the last three 0-dim, all floating outputs in x's dtype; the losses are means over the ``N D``
    elements. ``N = 0`` gives NaN losses and perplexity, ``D = 0`` NaN losses.
    """
    plan.check_sizes(x, codebook)
    x, codebook = x.contiguous(), codebook.contiguous()
    outputs, launch = plan.vector_quantize_fwd(x)
    if not launch:
        return outputs
    quantized, indices, *statistics = outputs
    num_rows, dim = x.shape
    num_codes = codebook.shape[0]
    workspace = _search(x, codebook, precision)
    block_sums, usage = plan.epilogue_workspace(x, num_codes, ROW_BLOCK_N)
    row_blocks = block_sums.numel()
    _vq_nearest_epilogue_kernel[(row_blocks,)](
        x,
        codebook,
        workspace.part_score,
        workspace.part_index,
        indices,
        block_sums,  # no distances are stored with QUANTIZE
        quantized,
        block_sums,
        usage,
        num_rows,
        dim,
        workspace.splits,
        ALIGNED=aligned_rows(dim, x, quantized),
        BLOCK_N=ROW_BLOCK_N,
        BLOCK_D=ROW_BLOCK_D,
        QUANTIZE=True,
    )
    _vector_quantize_stats_kernel[(1,)](
        block_sums, usage, *statistics, row_blocks, num_codes, num_rows, BLOCK=STATS_BLOCK
    )
    return outputs


@on_input_device
def vector_quantize_bwd(
    grad_quantized: torch.Tensor,
    grad_commitment: torch.Tensor,
    grad_codebook_loss: torch.Tensor,
    x: torch.Tensor,
    codebook: torch.Tensor,
    indices: torch.Tensor,
) -> list[torch.Tensor]:
    """Gradients ``[d x, d codebook]`` of :func:`vector_quantize_fwd`, as the reference's backward:
    one pass over the rows, the codebook gradient a segment sum by atomics in the accumulation dtype."""
    plan.check_sizes(x, codebook)
    x, codebook = x.contiguous(), codebook.contiguous()
    num_rows, dim = x.shape
    (grad_x, grad_codebook), launch = plan.vector_quantize_bwd(x, codebook)
    if launch:
        _vector_quantize_bwd_kernel[(triton.cdiv(num_rows, ROW_BLOCK_N),)](
            grad_quantized.contiguous(),
            grad_commitment,
            grad_codebook_loss,
            x,
            codebook,
            indices.contiguous(),
            grad_x,
            grad_codebook,
            num_rows,
            dim,
            BLOCK_N=ROW_BLOCK_N,
            BLOCK_D=ROW_BLOCK_D,
        )
    return [grad_x, grad_codebook.to(codebook.dtype)]


@on_input_device
def vq_code_stats_fwd(x: torch.Tensor, indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code row counts ``(K,)`` and row sums ``(K, D)`` in the accumulation dtype, by atomics."""
    x = x.contiguous()
    num_rows, dim = x.shape
    (counts, sums), launch = plan.vq_code_stats_fwd(x, num_codes)
    if launch:
        _vq_code_stats_fwd_kernel[(triton.cdiv(num_rows, ROW_BLOCK_N),)](
            x, indices.contiguous(), counts, sums, num_rows, dim, ALIGNED=aligned_rows(dim, x),
            BLOCK_N=ROW_BLOCK_N, BLOCK_D=ROW_BLOCK_D,
        )
    return counts, sums


# --- ahead-of-time compile check ------------------------------------------------------------------------

_TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}

#: The values of ``precision`` the host functions take (those of ``fastvae.ops.vq.PRECISIONS``).
_PRECISIONS = ("ieee", "tf32", "3xtf32")


def _pointers(**names: str) -> dict[str, str]:
    return {name: f"*{t}" for name, t in names.items()}


def _aot(kernel, pointers: dict[str, str], scalars: tuple[str, ...], constexprs: dict, warps=4, stages=3) -> AotConfig:
    signature = {**pointers, **{name: "i32" for name in scalars}, **{name: "constexpr" for name in constexprs}}
    return AotConfig(kernel, signature, constexprs, warps, stages)


def _search_aot_configs() -> list[AotConfig]:
    """The search at every tile :func:`_search_launch` picks for some dtype, precision and D in
    :data:`aot.SIZES` (INTERPRETED is interpreter-only)."""
    configs = []
    for dtype, t in _TRITON_TYPES.items():
        acc = _TRITON_TYPES[accumulation_dtype(dtype)]
        pointers = _pointers(x_ptr=t, codebook_ptr=t, half_sq_ptr=acc, part_score_ptr=acc, part_index_ptr="i32")
        scalars = ("num_rows", "num_codes", "dim", "tiles_per_split")
        for precision in _PRECISIONS:
            for dim in aot.SIZES:
                config, constexprs = _search_launch(dim, dtype, precision)
                constexprs = {**constexprs, "INTERPRETED": False}
                configs.append(
                    _aot(_vq_nearest_fwd_kernel, pointers, scalars, constexprs, config.num_warps, config.num_stages)
                )
    return aot.distinct(configs)


def _aot_configs() -> list[AotConfig]:
    """Every launch the host functions can pick on a GPU."""
    configs = _search_aot_configs()
    rows = {"BLOCK_N": ROW_BLOCK_N, "BLOCK_D": ROW_BLOCK_D}
    for dtype, t in _TRITON_TYPES.items():
        acc = _TRITON_TYPES[accumulation_dtype(dtype)]
        configs.append(
            _aot(
                _vq_code_norms_kernel,
                _pointers(codebook_ptr=t, half_sq_ptr=acc),
                ("num_codes", "num_entries", "dim"),
                {"ALIGNED": True, "BLOCK_K": NORM_BLOCK_K, "BLOCK_D": ROW_BLOCK_D},
            )
        )
        for quantize in (False, True):
            pointers = _pointers(
                x_ptr=t,
                codebook_ptr=t,
                part_score_ptr=acc,
                part_index_ptr="i32",
                index_ptr="i64",
                distance_ptr=acc if quantize else t,
                quantized_ptr=t,
                block_sum_ptr=acc,
                usage_ptr="i32",
            )
            configs.append(
                _aot(
                    _vq_nearest_epilogue_kernel,
                    pointers,
                    ("num_rows", "dim", "num_splits"),
                    {"ALIGNED": True, **rows, "QUANTIZE": quantize},
                )
            )
        pointers = _pointers(
            block_sum_ptr=acc, usage_ptr="i32", commitment_ptr=t, codebook_loss_ptr=t, perplexity_ptr=t
        )
        configs.append(
            _aot(
                _vector_quantize_stats_kernel,
                pointers,
                ("num_blocks", "num_codes", "num_rows"),
                {"BLOCK": STATS_BLOCK},
            )
        )
        pointers = _pointers(
            grad_quantized_ptr=t,
            grad_commitment_ptr=t,
            grad_codebook_loss_ptr=t,
            x_ptr=t,
            codebook_ptr=t,
            index_ptr="i64",
            grad_x_ptr=t,
            grad_codebook_ptr=acc,
        )
        configs.append(_aot(_vector_quantize_bwd_kernel, pointers, ("num_rows", "dim"), rows))
        pointers = _pointers(x_ptr=t, index_ptr="i64", counts_ptr=acc, sums_ptr=acc)
        configs.append(_aot(_vq_code_stats_fwd_kernel, pointers, ("num_rows", "dim"), {"ALIGNED": True, **rows}))
    return configs


#: Every launch configuration the host functions can pick on a GPU, for ``python -m fastvae.kernels.aot``.
AOT_CONFIGS: list[AotConfig] = _aot_configs()

#: Kernels whose fp16/bf16/tf32 configurations must use wgmma on sm_90.
WGMMA_KERNELS = ("_vq_nearest_fwd_kernel",)
