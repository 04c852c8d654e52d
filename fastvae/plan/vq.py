"""Planning of the vector-quantisation host functions, shared by the triton and cuda backends.

Inputs are the canonical layouts: ``x (N, D)`` and ``codebook (K, D)`` of one dtype on one device,
int64 ``indices (N,)``. Code indices and usage counts are int32 inside the kernels, so ``N`` and ``K``
must be below ``2**31`` (:func:`check_sizes`). Accumulation is in float32 (float64 for float64 inputs).

The nearest-code search of both backends writes one ``(score, index)`` per row and codebook split, and
an epilogue merges the splits. Each backend picks its own tile (``block_n`` rows by ``block_k`` codes:
Triton's from ``fastvae.kernels.vq.search_config``, CUDA's from C++ next to the launch); from that
tile, :func:`search_workspace` splits the codebook (:func:`codebook_splits`) and allocates what the
search writes, and :func:`epilogue_workspace` what ``vector_quantize``'s epilogue writes.

Empty inputs launch nothing: with ``N = 0`` the outputs are empty and the losses and perplexity NaN;
with ``D = 0`` every code is at distance 0, so every row takes code 0, the losses (means over no
elements) are NaN and the perplexity 1.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from fastvae.plan import accumulation_dtype, cdiv

__all__ = [
    "SearchWorkspace",
    "check_sizes",
    "codebook_splits",
    "epilogue_workspace",
    "search_workspace",
    "target_programs",
    "vector_quantize_bwd",
    "vector_quantize_fwd",
    "vq_code_stats_fwd",
    "vq_nearest_fwd",
]

#: Exclusive bound on N and K: the kernels index rows and codes with int32.
MAX_ROWS_AND_CODES = 2**31

#: Search programs (CTAs) per SM the codebook split aims for when the row blocks alone are too few.
PROGRAMS_PER_SM = 2

#: SMs assumed for tensors on the CPU (the Triton interpreter): an H100's 132, so the interpreter
#: splits the codebook as a GPU would.
INTERPRETER_SMS = 132


def check_sizes(x: torch.Tensor, codebook: torch.Tensor) -> None:
    """Check that ``x (N, D)`` and ``codebook (K, D)`` fit the kernels' int32 row and code indices.

    Raises:
        ValueError: ``N`` or ``K`` is ``2**31`` or more.
    """
    if x.shape[0] >= MAX_ROWS_AND_CODES:
        raise ValueError(f"x must have fewer than 2**31 rows for the compiled kernels, got N = {x.shape[0]}")
    if codebook.shape[0] >= MAX_ROWS_AND_CODES:
        raise ValueError(
            f"codebook must have fewer than 2**31 codes for the compiled kernels, got K = {codebook.shape[0]}"
        )


# --- outputs and empty inputs ---------------------------------------------------------------------


def vq_nearest_fwd(x: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], bool]:
    """``(indices (N,) int64, distances (N,) in x's dtype)`` for ``x (N, D)``, and whether to launch.

    No launch for ``N = 0``, nor for ``D = 0``, where every code is at distance 0 and the lowest
    index, 0, wins.
    """
    num_rows, dim = x.shape
    indices = torch.empty(num_rows, dtype=torch.int64, device=x.device)
    distances = torch.empty(num_rows, dtype=x.dtype, device=x.device)
    if dim == 0:
        return (indices.zero_(), distances.zero_()), False
    return (indices, distances), num_rows > 0


def vector_quantize_fwd(
    x: torch.Tensor,
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], bool]:
    """``(quantized (N, D), indices (N,) int64, commitment_loss, codebook_loss, perplexity)`` for
    ``x (N, D)``, the last three 0-dim, floating outputs in x's dtype; and whether to launch.

    No launch for ``N = 0`` (NaN losses and perplexity) nor ``D = 0`` (every row on code 0, NaN
    losses, perplexity 1).
    """
    num_rows, dim = x.shape
    quantized = torch.empty((num_rows, dim), dtype=x.dtype, device=x.device)
    indices = torch.empty(num_rows, dtype=torch.int64, device=x.device)
    statistics = [torch.empty((), dtype=x.dtype, device=x.device) for _ in range(3)]
    if num_rows == 0:
        return (quantized, indices, *(statistic.fill_(float("nan")) for statistic in statistics)), False
    if dim == 0:
        commitment, codebook_loss, perplexity = statistics
        outputs = (quantized, indices.zero_(), commitment.fill_(float("nan")), codebook_loss.fill_(float("nan")))
        return (*outputs, perplexity.fill_(1.0)), False
    return (quantized, indices, *statistics), True


def vector_quantize_bwd(x: torch.Tensor, codebook: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], bool]:
    """``(grad_x (N, D) in x's dtype, grad_codebook (K, D) zeros in the accumulation dtype)`` for
    ``x (N, D)`` and ``codebook (K, D)``, and whether to launch (``N, D > 0``).

    The codebook gradient is a segment sum by atomics into the zeros; the host function rounds it to
    the codebook's dtype at the end.
    """
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    grad_codebook = torch.zeros(codebook.shape, dtype=accumulation_dtype(codebook.dtype), device=x.device)
    return (grad_x, grad_codebook), x.numel() > 0


def vq_code_stats_fwd(x: torch.Tensor, num_codes: int) -> tuple[tuple[torch.Tensor, torch.Tensor], bool]:
    """``(counts (K,), sums (K, D))``, zeros in the accumulation dtype, for ``x (N, D)`` and
    ``K = num_codes``, and whether to launch (``N > 0``: the counts need no ``D``)."""
    num_rows, dim = x.shape
    acc = accumulation_dtype(x.dtype)
    counts = torch.zeros(num_codes, dtype=acc, device=x.device)
    sums = torch.zeros((num_codes, dim), dtype=acc, device=x.device)
    return (counts, sums), num_rows > 0


# --- the search's workspace -------------------------------------------------------------------------


@functools.cache
def _multiprocessor_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def target_programs(device: torch.device) -> int:
    """Search programs that fill ``device``: :data:`PROGRAMS_PER_SM` per SM (its SM count is queried
    once per CUDA device; a CPU device counts :data:`INTERPRETER_SMS`)."""
    if device.type != "cuda":
        return PROGRAMS_PER_SM * INTERPRETER_SMS
    return PROGRAMS_PER_SM * _multiprocessor_count(device.index)


def codebook_splits(row_blocks: int, k_tiles: int, target: int) -> tuple[int, int]:
    """``(splits, tiles_per_split)`` of the codebook's ``k_tiles`` tiles for ``row_blocks`` row blocks.

    No split when the row blocks reach ``target`` programs; otherwise about ``target / row_blocks``
    splits (at most one per tile), every one non-empty and together covering every tile.
    """
    if row_blocks >= target:
        return 1, k_tiles
    tiles_per_split = cdiv(k_tiles, min(k_tiles, cdiv(target, row_blocks)))
    return cdiv(k_tiles, tiles_per_split), tiles_per_split


class SearchWorkspace(NamedTuple):
    """What the search writes, and how its grid splits the codebook.

    Attributes:
        half_sq: ``|e|^2 / 2`` per code, ``(k_tiles * block_k,)`` in the accumulation dtype; the
            entries past ``K`` pad the last tile with +inf (each backend's norms kernel writes them),
            so that the searches read whole tiles unmasked and codes past ``K`` never win.
        part_score: ``(splits, N)`` lowest score of each row in each split, accumulation dtype.
        part_index: ``(splits, N)`` int32 code of that score.
        splits: codebook splits (the grid's second dim).
        tiles_per_split: code tiles of ``block_k`` codes per split.
    """

    half_sq: torch.Tensor
    part_score: torch.Tensor
    part_index: torch.Tensor
    splits: int
    tiles_per_split: int


def search_workspace(x: torch.Tensor, num_codes: int, block_n: int, block_k: int) -> SearchWorkspace:
    """The workspace of a search of ``x (N, D)`` against ``num_codes`` codes in ``block_n x block_k`` tiles.

    The codebook is split only when the ``N / block_n`` row blocks are too few to fill the device
    (:func:`target_programs`).
    """
    num_rows = x.shape[0]
    k_tiles = cdiv(num_codes, block_k)
    splits, tiles_per_split = codebook_splits(cdiv(num_rows, block_n), k_tiles, target_programs(x.device))
    acc = accumulation_dtype(x.dtype)
    return SearchWorkspace(
        half_sq=torch.empty(k_tiles * block_k, dtype=acc, device=x.device),
        part_score=torch.empty((splits, num_rows), dtype=acc, device=x.device),
        part_index=torch.empty((splits, num_rows), dtype=torch.int32, device=x.device),
        splits=splits,
        tiles_per_split=tiles_per_split,
    )


def epilogue_workspace(
    x: torch.Tensor, num_codes: int, rows_per_block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``vector_quantize``'s epilogue writes for ``x (N, D)`` in blocks of ``rows_per_block`` rows:
    ``block_sums (ceil(N / rows_per_block),)`` in the accumulation dtype, one sum of squared
    distances per block, and ``usage (K,)`` int32 zeros, the count of rows per code."""
    block_sums = torch.empty(cdiv(x.shape[0], rows_per_block), dtype=accumulation_dtype(x.dtype), device=x.device)
    usage = torch.zeros(num_codes, dtype=torch.int32, device=x.device)
    return block_sums, usage
