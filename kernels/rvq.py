"""Triton kernel for residual vector quantisation: every stage's search in one launch.

Canonical layouts, as :mod:`fastvae.ops.rvq` passes them: contiguous ``x (N, D)`` and ``codebooks
(Q, K, D)`` of one dtype (float16, bfloat16, float32 or float64). Each program holds a ``BLOCK_N``-row
tile of the residual on chip in the accumulation dtype (float32; float64 for float64) for all ``Q``
stages: it reads ``x`` once, scores each codebook tile by tile as ``|e|^2 / 2 - r.e`` with exact
products (``tl.dot`` with ``input_precision="ieee"``; on a near-tie the residual's rounding decides,
as in the reference), keeps a running minimum with a strict ``<`` so ties go to the lowest index,
gathers the chosen code, subtracts it from the residual and adds it to the quantized sum, and finally
writes the ``(N, Q)`` indices and the quantized rows. Rows longer than :data:`MAX_FUSED_DIM` do not fit
on chip beside a code tile; they run one exact ``vq_nearest`` search per stage instead. No ``N x K``
matrix exists anywhere.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from fastvae.kernels import aot, on_input_device
from fastvae.kernels.vq import _dot_acc, vq_nearest_fwd
from fastvae.plan import accumulation_dtype
from fastvae.plan import rvq as plan
# The backward is a per-stage index_add of the incoming gradient into the chosen codes: PyTorch's own
# scatter kernel, which the reference calls, is what a fused kernel would be.
from fastvae.reference.rvq import rvq_nearest_bwd

__all__ = ["rvq_nearest_bwd", "rvq_nearest_fwd"]

#: Longest row the fused kernel keeps on chip (residual, quantized sum and a code tile); longer rows
#: run one search per stage (see :func:`rvq_nearest_fwd`).
MAX_FUSED_DIM = 256

#: Software-pipelining stages of the fused kernel's code loop.
NUM_STAGES = 1


@triton.jit
def _rvq_nearest_fwd_kernel(
    x_ptr, codebooks_ptr, indices_ptr, quantized_ptr, rows, num_codes, dim, stages,
    ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    INTERPRETED: tl.constexpr,
):  # fmt: skip
    """One ``BLOCK_N``-row tile through all ``stages`` (see the module docstring)."""
    row = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    col = tl.arange(0, BLOCK_D)
    row_ok = row < rows
    tile_ok = row_ok[:, None] & (col[None, :] < dim)
    residual = tl.load(x_ptr + row[:, None] * dim + col[None, :], mask=tile_ok, other=0.0).to(ACC)
    quantized = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    for stage in range(stages):
        codebook = codebooks_ptr + (stage * num_codes).to(tl.int64) * dim
        best = tl.full([BLOCK_N], float("inf"), ACC)
        best_code = tl.zeros([BLOCK_N], tl.int64)
        for start in range(0, num_codes, BLOCK_K):
            code = start + tl.arange(0, BLOCK_K)
            code_ok = code < num_codes
            # (BLOCK_D, BLOCK_K): the codes as columns.
            codes = tl.load(
                codebook + code[None, :].to(tl.int64) * dim + col[:, None],
                mask=code_ok[None, :] & (col[:, None] < dim), other=0.0,
            ).to(ACC)  # fmt: skip
            half_sq = 0.5 * tl.sum(codes * codes, axis=0)
            dots = _dot_acc(residual, codes, tl.zeros([BLOCK_N, BLOCK_K], ACC), "ieee", INTERPRETED)
            scores = tl.where(code_ok[None, :], half_sq[None, :] - dots, float("inf"))
            tile_best = tl.min(scores, axis=1)
            tile_code = tl.argmin(scores, axis=1).to(tl.int64) + start
            better = tile_best < best
            best = tl.where(better, tile_best, best)
            best_code = tl.where(better, tile_code, best_code)
        chosen = tl.load(codebook + best_code[:, None] * dim + col[None, :], mask=tile_ok, other=0.0).to(ACC)
        residual -= chosen
        quantized += chosen
        tl.store(indices_ptr + row * stages + stage, best_code, mask=row_ok)
    tl.store(
        quantized_ptr + row[:, None] * dim + col[None, :],
        quantized.to(quantized_ptr.dtype.element_ty), mask=tile_ok,
    )  # fmt: skip


def _tiles(dim: int) -> tuple[int, int, int]:
    """``(BLOCK_N, BLOCK_K, BLOCK_D)``: the whole row in one tile (at least 16 for ``tl.dot``), and
    fewer rows for long rows so that the residual and the quantized sum stay in registers."""
    block_d = max(16, triton.next_power_of_2(dim))
    block_n = max(16, min(64, 2048 // block_d))
    return block_n, 32, block_d


@on_input_device
def rvq_nearest_fwd(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual search in one launch. ``x (N, D)``, ``codebooks (Q, K, D)`` -> ``(indices (N, Q)
    int64, quantized (N, D))``, ``quantized`` in ``x``'s dtype. No host synchronisation."""
    x, codebooks = x.contiguous(), codebooks.contiguous()
    rows, dim = x.shape
    stages, num_codes, _ = codebooks.shape
    indices = torch.empty((rows, stages), dtype=torch.int64, device=x.device)
    quantized = torch.empty_like(x)
    if rows == 0:
        return indices, quantized
    if dim == 0:  # every code is at distance 0: the lowest index wins, and the sum is empty
        return indices.zero_(), quantized
    if dim > MAX_FUSED_DIM:
        return plan.stage_by_stage(x, codebooks, lambda residual, codebook: vq_nearest_fwd(residual, codebook, "ieee")[0])
    block_n, block_k, block_d = _tiles(dim)
    acc = tl.float64 if accumulation_dtype(x.dtype) == torch.float64 else tl.float32
    _rvq_nearest_fwd_kernel[(triton.cdiv(rows, block_n),)](
        x, codebooks, indices, quantized, rows, num_codes, dim, stages,
        ACC=acc, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d,
        INTERPRETED=os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"), num_stages=NUM_STAGES,
    )  # fmt: skip
    return indices, quantized


def _aot_configs() -> list[aot.AotConfig]:
    """Every tile :func:`_tiles` picks at some D in ``aot.SIZES``, for float32, bfloat16 and float16
    inputs (the residual in float32)."""
    tiles = sorted({_tiles(dim) for dim in aot.SIZES if dim <= MAX_FUSED_DIM}, key=lambda tile: tile[2])
    configs = []
    for pointer in ("*fp32", "*bf16", "*fp16"):
        for block_n, block_k, block_d in tiles:
            signature = {
                "x_ptr": pointer, "codebooks_ptr": pointer, "indices_ptr": "*i64", "quantized_ptr": pointer,
                "rows": "i64", "num_codes": "i32", "dim": "i32", "stages": "i32", "ACC": "constexpr",
                "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "BLOCK_D": "constexpr", "INTERPRETED": "constexpr",
            }  # fmt: skip
            constexprs = {"ACC": tl.float32, "BLOCK_N": block_n, "BLOCK_K": block_k, "BLOCK_D": block_d, "INTERPRETED": False}
            configs.append(aot.AotConfig(_rvq_nearest_fwd_kernel, signature, constexprs, num_stages=NUM_STAGES))
    return configs


#: The launch configurations the host function above can choose (see fastvae.kernels.aot).
AOT_CONFIGS: list[aot.AotConfig] = _aot_configs()
