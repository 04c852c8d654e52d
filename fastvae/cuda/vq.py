"""Host functions of the ``cuda`` backend for vector quantisation: the launchers of csrc/vq.cu.

The functions and their signatures are those of :mod:`fastvae.kernels.vq` (the triton backend) and
they return the same results: ``vq_nearest_fwd``, ``vector_quantize_fwd``, ``vector_quantize_bwd``
and ``vq_code_stats_fwd``. Inputs come in the canonical layouts :mod:`fastvae.ops.vq` passes --
``x (N, D)`` and ``codebook (K, D)`` of one dtype (float16, bfloat16, float32 or float64), int64
``indices (N,)`` -- and the host functions make ``x`` and the codebook contiguous (free for those
layouts); incoming gradients may be strided (autograd expands the gradient of a sum) and are made
contiguous here too, as on the triton backend. Outputs, workspaces, the codebook split and empty
inputs are planned by :mod:`fastvae.plan.vq`, as on the triton backend; ``fastvae._C`` gets the
pointers, the sizes, the dtype code and the current CUDA stream, checks them, and chooses the tiles
next to its launches (the search's tile comes back from ``vq_search_tile`` to size its workspace, the
row-wise kernels' blocks are ``vq_rows_per_block`` rows).

The search runs in three launches: ``|e|^2 / 2`` per code (once per call), the tiled search
(tensor cores for float16/bfloat16 and for float32 with ``precision="tf32"``, exact FMA products for
float32 ``"ieee"`` and float64; there is no 3xTF32 kernel, so ``"3xtf32"`` runs the exact ``"ieee"``
search, more accurate than it promises: a user who asks for near-float32 accuracy gets it, and the
``"auto"`` backend never fails on it), which writes one ``(score, index)`` per row and codebook split, and
an epilogue that merges the splits (lowest index on ties), gathers the code and recomputes its
distance exactly as ``|x - e|^2``. The codebook is split across CTAs only when there are too few row
blocks to fill the GPU. Backward and the code statistics are segment sums by atomics: no one-hot
matrix.

Code indices and usage counts are int32 in the kernels, so ``N`` and ``K`` must be below ``2**31``
(``ValueError`` otherwise). Empty inputs (``N = 0``, or ``D = 0``) launch nothing. No host function
synchronises with the device.
"""

from __future__ import annotations

import torch

from fastvae.cuda import dtype_code, extension, stream
from fastvae.plan import vq as plan

__all__ = ["vector_quantize_bwd", "vector_quantize_fwd", "vq_code_stats_fwd", "vq_nearest_fwd"]


def _search(x: torch.Tensor, codebook: torch.Tensor, precision: str) -> plan.SearchWorkspace:
    """Launch ``|e|^2 / 2`` and the search on contiguous ``x (N, D)``, ``codebook (K, D)`` (N, D >= 1).

    Returns the workspace holding the per-split ``(scores (S, N) in the accumulation dtype, int32
    indices (S, N))``.
    """
    num_rows, dim = x.shape
    num_codes = codebook.shape[0]
    # "3xtf32" has no kernel here and takes the exact search, as "ieee" (see the module docstring).
    code, tf32, cuda_stream, ext = dtype_code(x, "x"), precision == "tf32", stream(x), extension()
    block_n, block_k = ext.vq_search_tile(code, tf32, dim)
    workspace = plan.search_workspace(x, num_codes, block_n, block_k)
    ext.vq_code_half_sq(
        code, codebook.data_ptr(), workspace.half_sq.data_ptr(), num_codes, workspace.half_sq.numel(), dim,
        cuda_stream,
    )  # fmt: skip
    ext.vq_search(
        code,
        tf32,
        x.data_ptr(),
        codebook.data_ptr(),
        workspace.half_sq.data_ptr(),
        workspace.part_score.data_ptr(),
        workspace.part_index.data_ptr(),
        num_rows,
        num_codes,
        dim,
        workspace.splits,
        workspace.tiles_per_split,
        cuda_stream,
    )
    return workspace


# --- host functions -------------------------------------------------------------------------------


def vq_nearest_fwd(x: torch.Tensor, codebook: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code of every row of ``x (N, D)`` in ``codebook (K, D)``, lowest index on ties.

    ``precision`` chooses the float32 products of the search: TF32 tensor cores for ``"tf32"``, exact
    products for ``"ieee"`` and ``"3xtf32"`` (see the module docstring); other dtypes ignore it. Returns
    ``(indices (N,) int64, distances (N,) in x's dtype)``, each distance recomputed exactly as
    ``|x - e|^2`` in the accumulation dtype (float32; float64 for float64).
    """
    plan.check_sizes(x, codebook)
    x, codebook = x.contiguous(), codebook.contiguous()
    (indices, distances), launch = plan.vq_nearest_fwd(x)
    if not launch:
        return indices, distances
    num_rows, dim = x.shape
    with torch.cuda.device(x.device):
        workspace = _search(x, codebook, precision)
        extension().vq_nearest_epilogue(
            dtype_code(x, "x"),
            x.data_ptr(),
            codebook.data_ptr(),
            workspace.part_score.data_ptr(),
            workspace.part_index.data_ptr(),
            indices.data_ptr(),
            distances.data_ptr(),
            num_rows,
            dim,
            workspace.splits,
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
    plan.check_sizes(x, codebook)
    x, codebook = x.contiguous(), codebook.contiguous()
    outputs, launch = plan.vector_quantize_fwd(x)
    if not launch:
        return outputs
    quantized, indices, *statistics = outputs
    num_rows, dim = x.shape
    num_codes = codebook.shape[0]
    code, cuda_stream, ext = dtype_code(x, "x"), stream(x), extension()
    with torch.cuda.device(x.device):
        workspace = _search(x, codebook, precision)
        block_sums, usage = plan.epilogue_workspace(x, num_codes, ext.vq_rows_per_block)
        ext.vector_quantize_epilogue(
            code,
            x.data_ptr(),
            codebook.data_ptr(),
            workspace.part_score.data_ptr(),
            workspace.part_index.data_ptr(),
            indices.data_ptr(),
            quantized.data_ptr(),
            block_sums.data_ptr(),
            usage.data_ptr(),
            num_rows,
            dim,
            workspace.splits,
            cuda_stream,
        )
        ext.vector_quantize_stats(
            code,
            block_sums.data_ptr(),
            usage.data_ptr(),
            *(statistic.data_ptr() for statistic in statistics),
            block_sums.numel(),
            num_codes,
            num_rows,
            cuda_stream,
        )
    return outputs


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
    plan.check_sizes(x, codebook)
    x, codebook = x.contiguous(), codebook.contiguous()
    num_rows, dim = x.shape
    (grad_x, grad_codebook), launch = plan.vector_quantize_bwd(x, codebook)
    if launch:
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
                stream(x),
            )
    return [grad_x, grad_codebook.to(codebook.dtype)]


def vq_code_stats_fwd(x: torch.Tensor, indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code row counts ``(K,)`` and row sums ``(K, D)`` of ``x (N, D)`` grouped by int64 ``indices (N,)``.

    Segment sums by atomics in the accumulation dtype (float32; float64 for float64), no one-hot.
    """
    x = x.contiguous()
    num_rows, dim = x.shape
    (counts, sums), launch = plan.vq_code_stats_fwd(x, num_codes)
    if launch:
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
                stream(x),
            )
    return counts, sums
