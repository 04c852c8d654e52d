"""Host functions of the ``cuda`` backend for vector quantisation: the launchers of csrc/vq.cu.

The functions and their signatures are those of :mod:`fastvae.kernels.vq` (the triton backend) and
they return the same results: ``vq_nearest_fwd``, ``vector_quantize_fwd``, ``vector_quantize_bwd``
and ``vq_code_stats_fwd``. Inputs come in the canonical layouts :mod:`fastvae.ops.vq` passes --
``x (N, D)`` and ``codebook (K, D)`` of one dtype (float16, bfloat16, float32 or float64), int64
``indices (N,)`` -- and the host functions make ``x`` and the codebook contiguous (free for those
layouts); incoming gradients may be strided (autograd expands the gradient of a sum) and are made
contiguous here too, as on the triton backend. Outputs are allocated with PyTorch on the input's
device; ``fastvae._C`` gets their pointers, the sizes, the dtype code, the tile and the current
CUDA stream, and checks them.

The search runs in three launches: ``|e|^2 / 2`` per code (once per call), the tiled search
(tensor cores for float16/bfloat16 and for float32 with ``precision="tf32"``, exact FMA products for
float32 ``"ieee"`` and float64; the tile from :func:`search_config`), which writes one
``(score, index)`` per row and codebook split, and an epilogue that merges the splits (lowest index
on ties), gathers the code and recomputes its distance exactly as ``|x - e|^2``. The codebook is
split across CTAs (:func:`codebook_splits`) only when there are too few row blocks to fill the GPU.
Backward and the code statistics are segment sums by atomics: no one-hot matrix.

Code indices and usage counts are int32 in the kernels, so ``N`` and ``K`` must be below ``2**31``
(``ValueError`` otherwise). Empty inputs (``N = 0``, or ``D = 0``) launch nothing. No host function
synchronises with the device.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from fastvae.cuda import dtype_code, extension, stream

__all__ = ["vector_quantize_bwd", "vector_quantize_fwd", "vq_code_stats_fwd", "vq_nearest_fwd"]

#: Rows per block of the row-wise kernels (epilogues, backward, code statistics): 8 warps, 4 rows each.
ROW_BLOCK = 32

#: Search CTAs per SM the codebook split aims for when the row blocks alone are too few.
CTAS_PER_SM = 2

#: Exclusive bound on N and K: the kernels index rows and codes with int32.
MAX_ROWS_AND_CODES = 2**31


class SearchConfig(NamedTuple):
    """Tile of the search: rows and codes per CTA tile, and D elements per shared-memory stage."""

    block_n: int
    block_k: int
    d_tile: int


def search_config(dim: int, dtype: torch.dtype, precision: str) -> SearchConfig:
    """The search tile for ``D = dim``, ``dtype`` and the float32 ``precision``.

    Tensor cores (float16/bfloat16, float32 with ``"tf32"``) stage D in rows of 32, 64 or 128 bytes:
    the narrowest that holds all of D, with 256-row x 64-code tiles (x stays in registers for the
    whole codebook walk and only codebook tiles stream, each shared by 256 rows); longer rows stream
    x and the codebook together in 128-byte chunks on 128 x 128 tiles. Exact products (float32
    ``"ieee"``, float64) take 64 x 64 tiles with D in chunks of 16. These are the only tiles
    csrc/vq.cu is compiled for.
    """
    if dtype in (torch.float16, torch.bfloat16) or (dtype == torch.float32 and precision == "tf32"):
        size = torch.finfo(dtype).bits // 8
        for row_bytes in (32, 64, 128):
            if dim * size <= row_bytes:
                return SearchConfig(256, 64, row_bytes // size)
        return SearchConfig(128, 128, 128 // size)
    return SearchConfig(64, 64, 16)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def codebook_splits(row_blocks: int, k_tiles: int, target_ctas: int) -> tuple[int, int]:
    """``(splits, tiles_per_split)`` of the codebook's ``k_tiles`` tiles for ``row_blocks`` row blocks.

    No split when the row blocks reach ``target_ctas``; otherwise about ``target_ctas / row_blocks``
    splits (at most one per tile), every one non-empty and together covering every tile.
    """
    if row_blocks >= target_ctas:
        return 1, k_tiles
    tiles_per_split = _cdiv(k_tiles, min(k_tiles, _cdiv(target_ctas, row_blocks)))
    return _cdiv(k_tiles, tiles_per_split), tiles_per_split


@functools.cache
def multiprocessor_count(device_index: int) -> int:
    """Number of SMs of CUDA device ``device_index`` (queried once per device)."""
    return int(extension().device_properties(device_index)["multiprocessor_count"])


def _accumulation(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(x: torch.Tensor, codebook: torch.Tensor) -> None:
    """Rows and codes are int32 indices in the kernels."""
    if x.shape[0] >= MAX_ROWS_AND_CODES:
        raise ValueError(f"x must have fewer than 2**31 rows on the cuda backend, got N = {x.shape[0]}")
    if codebook.shape[0] >= MAX_ROWS_AND_CODES:
        raise ValueError(
            f"codebook must have fewer than 2**31 codes on the cuda backend, got K = {codebook.shape[0]}"
        )


def _search(x: torch.Tensor, codebook: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Launch ``|e|^2 / 2`` and the search on contiguous ``x (N, D)``, ``codebook (K, D)`` (N, D >= 1).

    Returns the per-split ``(scores (S, N) in the accumulation dtype, int32 indices (S, N), S)``.
    """
    num_rows, dim = x.shape
    num_codes = codebook.shape[0]
    code, cuda_stream, ext = dtype_code(x, "x"), stream(x), extension()
    config = search_config(dim, x.dtype, precision)
    k_tiles = _cdiv(num_codes, config.block_k)
    acc = _accumulation(x.dtype)
    # Padded to whole code tiles (the padding scores +inf), which the search reads 16 bytes at a time.
    half_sq = torch.empty(k_tiles * config.block_k, dtype=acc, device=x.device)
    ext.vq_code_half_sq(code, codebook.data_ptr(), half_sq.data_ptr(), num_codes, half_sq.numel(), dim, cuda_stream)
    row_blocks = _cdiv(num_rows, config.block_n)
    target = CTAS_PER_SM * multiprocessor_count(x.device.index)
    splits, tiles_per_split = codebook_splits(row_blocks, k_tiles, target)
    part_score = torch.empty((splits, num_rows), dtype=acc, device=x.device)
    part_index = torch.empty((splits, num_rows), dtype=torch.int32, device=x.device)
    ext.vq_search(
        code,
        precision == "tf32",
        x.data_ptr(),
        codebook.data_ptr(),
        half_sq.data_ptr(),
        part_score.data_ptr(),
        part_index.data_ptr(),
        num_rows,
        num_codes,
        dim,
        config.block_n,
        config.block_k,
        config.d_tile,
        splits,
        tiles_per_split,
        cuda_stream,
    )
    return part_score, part_index, splits


# --- host functions -------------------------------------------------------------------------------


def vq_nearest_fwd(x: torch.Tensor, codebook: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code of every row of ``x (N, D)`` in ``codebook (K, D)``, lowest index on ties.

    ``precision`` (``"ieee"`` or ``"tf32"``) chooses the float32 products of the search; other dtypes
    ignore it. Returns ``(indices (N,) int64, distances (N,) in x's dtype)``, each distance recomputed
    exactly as ``|x - e|^2`` in the accumulation dtype (float32; float64 for float64).
    """
    _check(x, codebook)
    x, codebook = x.contiguous(), codebook.contiguous()
    num_rows, dim = x.shape
    indices = torch.empty(num_rows, dtype=torch.int64, device=x.device)
    distances = torch.empty(num_rows, dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return indices, distances
    if dim == 0:  # every code is at distance 0: the lowest index wins
        return indices.zero_(), distances.zero_()
    with torch.cuda.device(x.device):
        part_score, part_index, splits = _search(x, codebook, precision)
        extension().vq_nearest_epilogue(
            dtype_code(x, "x"),
            x.data_ptr(),
            codebook.data_ptr(),
            part_score.data_ptr(),
            part_index.data_ptr(),
            indices.data_ptr(),
            distances.data_ptr(),
            num_rows,
            dim,
            splits,
            ROW_BLOCK,
            stream(x),
        )
    return indices, distances


def vector_quantize_fwd(
    x: torch.Tensor, codebook: torch.Tensor, precision: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest codes and the VQ statistics, as :func:`fastvae.reference.vq.vector_quantize`.

    Returns ``(quantized (N, D), indices (N,) int64, commitment_loss, codebook_loss, perplexity)``,
    the last three 0-dim, all floating outputs in x's dtype; the losses are means over the ``N D``
    elements. ``N = 0`` gives NaN losses and perplexity, ``D = 0`` NaN losses.
    """
    _check(x, codebook)
    x, codebook = x.contiguous(), codebook.contiguous()
    num_rows, dim = x.shape
    num_codes = codebook.shape[0]
    quantized = torch.empty_like(x)
    indices = torch.empty(num_rows, dtype=torch.int64, device=x.device)
    if num_rows == 0:
        return quantized, indices, *(x.new_full((), float("nan")) for _ in range(3))
    if dim == 0:  # every row takes code 0: losses are means over no elements, perplexity 1
        return quantized, indices.zero_(), x.new_full((), float("nan")), x.new_full((), float("nan")), x.new_ones(())
    code, cuda_stream, ext = dtype_code(x, "x"), stream(x), extension()
    with torch.cuda.device(x.device):
        statistics = [torch.empty((), dtype=x.dtype, device=x.device) for _ in range(3)]
        part_score, part_index, splits = _search(x, codebook, precision)
        row_blocks = _cdiv(num_rows, ROW_BLOCK)
        block_sums = torch.empty(row_blocks, dtype=part_score.dtype, device=x.device)
        usage = torch.zeros(num_codes, dtype=torch.int32, device=x.device)
        ext.vector_quantize_epilogue(
            code,
            x.data_ptr(),
            codebook.data_ptr(),
            part_score.data_ptr(),
            part_index.data_ptr(),
            indices.data_ptr(),
            quantized.data_ptr(),
            block_sums.data_ptr(),
            usage.data_ptr(),
            num_rows,
            dim,
            splits,
            ROW_BLOCK,
            cuda_stream,
        )
        ext.vector_quantize_stats(
            code,
            block_sums.data_ptr(),
            usage.data_ptr(),
            *(statistic.data_ptr() for statistic in statistics),
            row_blocks,
            num_codes,
            num_rows,
            cuda_stream,
        )
    return quantized, indices, *statistics


def vector_quantize_bwd(
    grad_quantized: torch.Tensor,
    grad_commitment: torch.Tensor,
    grad_codebook_loss: torch.Tensor,
    x: torch.Tensor,
    codebook: torch.Tensor,
    indices: torch.Tensor,
) -> list[torch.Tensor]:
    """Gradients ``[d x (N, D), d codebook (K, D)]`` of :func:`vector_quantize_fwd`, in the input dtype.

    ``grad_quantized (N, D)`` (any strides) and the 0-dim ``grad_commitment`` and
    ``grad_codebook_loss`` are the upstream gradients; ``indices (N,)`` int64 are the forward's.
    ``d x = grad_quantized + grad_commitment * 2 (x - e) / (N D)``; the codebook gradient
    ``-grad_codebook_loss * 2 / (N D) * sum_{n: k(n) = k} (x_n - e_k)`` is a segment sum by atomics in the
    accumulation dtype, rounded to the codebook's dtype at the end.
    """
    _check(x, codebook)
    x, codebook = x.contiguous(), codebook.contiguous()
    num_rows, dim = x.shape
    grad_x = torch.empty_like(x)
    grad_codebook = torch.zeros(codebook.shape, dtype=_accumulation(codebook.dtype), device=x.device)
    if num_rows > 0 and dim > 0:
        with torch.cuda.device(x.device):
            upstream = [g.to(x.dtype).contiguous() for g in (grad_quantized, grad_commitment, grad_codebook_loss)]
            extension().vector_quantize_bwd(
                dtype_code(x, "x"),
                *(g.data_ptr() for g in upstream),
                x.data_ptr(),
                codebook.data_ptr(),
                indices.contiguous().data_ptr(),
                grad_x.data_ptr(),
                grad_codebook.data_ptr(),
                num_rows,
                dim,
                ROW_BLOCK,
                stream(x),
            )
    return [grad_x, grad_codebook.to(codebook.dtype)]


def vq_code_stats_fwd(x: torch.Tensor, indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code row counts ``(K,)`` and row sums ``(K, D)`` of ``x (N, D)`` grouped by int64 ``indices (N,)``.

    Segment sums by atomics in the accumulation dtype (float32; float64 for float64), no one-hot.
    """
    x = x.contiguous()
    num_rows, dim = x.shape
    acc = _accumulation(x.dtype)
    counts = torch.zeros(num_codes, dtype=acc, device=x.device)
    sums = torch.zeros((num_codes, dim), dtype=acc, device=x.device)
    if num_rows > 0:
        with torch.cuda.device(x.device):
            extension().vq_code_stats(
                dtype_code(x, "x"),
                x.data_ptr(),
                indices.contiguous().data_ptr(),
                counts.data_ptr(),
                sums.data_ptr(),
                num_rows,
                num_codes,
                dim,
                ROW_BLOCK,
                stream(x),
            )
    return counts, sums
