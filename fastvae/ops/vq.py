"""Vector quantisation: nearest-code search, the fused VQ-VAE quantiser, and per-code statistics.

The search never builds the ``N x K`` distance matrix: the torch and cpu backends score it in chunks of
a fixed memory budget (see :mod:`fastvae.reference.vq` and ``fastvae.cuda.vq_cpu``), the triton and cuda backends tile by tile with
a running arg-min (see ``fastvae.kernels.vq`` and ``fastvae.cuda.vq``). The cosine metric L2-normalises ``x`` and the codebook
(differentiably) and runs the Euclidean search on the results: for unit vectors
``|x - e|^2 = 2 - 2 cos(x, e)``, so the nearest code is the one of highest cosine similarity.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from fastvae import backend
from fastvae.ops import _checks
from fastvae.ops._dispatch import define

__all__ = ["VQOutput", "vq_nearest", "vector_quantize", "vq_code_stats"]

#: The backend ops of this family, as every backend names them (``<op>_fwd`` / ``<op>_bwd``).
OP_NAMES: tuple[str, ...] = ("vq_nearest_fwd", "vector_quantize_fwd", "vector_quantize_bwd", "vq_code_stats_fwd")
backend.register("torch", "fastvae.reference.vq", OP_NAMES)
backend.register("triton", "fastvae.kernels.vq", OP_NAMES)
backend.register("cuda", "fastvae.cuda.vq", OP_NAMES)
backend.register("cpu", "fastvae.cuda.vq_cpu", OP_NAMES)

#: Values of ``precision``: how the float32 search multiplies (see :func:`vq_nearest`).
PRECISIONS: tuple[str, ...] = ("ieee", "tf32", "3xtf32")


class VQOutput(NamedTuple):
    """What :func:`vector_quantize` and :class:`fastvae.nn.VectorQuantizer` return.

    Attributes:
        quantized: ``x``'s shape; the nearest codes, carrying the straight-through gradient to ``x``.
        indices: int64 code index per vector (``x``'s shape without the channel dim).
        loss: ``codebook_loss + beta * commitment_loss`` (0-dim).
        commitment_loss: ``mean over the N D elements of (x - sg[e])^2``, i.e.
            ``F.mse_loss(x, e.detach())`` (0-dim; gradient to ``x`` only).
        codebook_loss: ``mean over the N D elements of (sg[x] - e)^2``, i.e.
            ``F.mse_loss(e, x.detach())`` (0-dim; gradient to the codebook only).
        perplexity: ``exp`` of the entropy of code usage in the batch (0-dim, no gradient).
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    commitment_loss: torch.Tensor
    codebook_loss: torch.Tensor
    perplexity: torch.Tensor


# --- vq_nearest: the nearest code per row, and its squared distance -------------------------------


def _vq_nearest_setup(ctx, inputs, output):
    indices = output[1]
    ctx.mark_non_differentiable(indices)
    ctx.save_for_backward(inputs[0], inputs[1], indices)


def _vq_nearest_grad(ctx, grad_distances, _grad_indices):
    # d|x - e_k|^2 = 2 (x - e_k) dx - 2 (x - e_k) de_k, the latter summed per code.
    x, codebook, indices = ctx.saved_tensors
    scaled = 2.0 * grad_distances.unsqueeze(-1) * (x - codebook[indices])
    grad_codebook = torch.zeros_like(codebook).index_add_(0, indices, scaled, alpha=-1.0)
    return scaled, grad_codebook, None


# The backends return (indices, distances), as the public function does; the custom op alone returns
# (distances, indices): opcheck's harness sums a custom op's outputs in order, and cannot add a
# float to the int64 running sum that an int64 first output starts.
_vq_nearest = define(
    "vq_nearest_fwd",
    "(Tensor x, Tensor codebook, str precision) -> (Tensor, Tensor)",
    lambda x, codebook, precision: (x.new_empty(x.shape[:1]), x.new_empty(x.shape[:1], dtype=torch.int64)),
    setup_context=_vq_nearest_setup,
    backward=_vq_nearest_grad,
    outputs=lambda indices_distances: indices_distances[::-1],
)


# --- vector_quantize: the nearest codes with the VQ-VAE losses and the straight-through gradient ----

_vector_quantize_bwd = define(
    "vector_quantize_bwd",
    "(Tensor grad_quantized, Tensor grad_commitment, Tensor grad_codebook_loss, Tensor x, Tensor codebook,"
    " Tensor indices) -> Tensor[]",
    lambda grad_quantized, grad_commitment, grad_codebook_loss, x, codebook, indices: [
        torch.empty_like(x),
        torch.empty_like(codebook),
    ],
)


def _vector_quantize_setup(ctx, inputs, output):
    _, indices, _, _, perplexity = output
    ctx.mark_non_differentiable(indices, perplexity)
    ctx.save_for_backward(inputs[0], inputs[1], indices)


def _vector_quantize_grad(ctx, grad_quantized, _grad_indices, grad_commitment, grad_codebook_loss, _grad_perplexity):
    x, codebook, indices = ctx.saved_tensors
    zero = x.new_zeros(())
    grad_x, grad_codebook = _vector_quantize_bwd(
        torch.zeros_like(x) if grad_quantized is None else grad_quantized,
        zero if grad_commitment is None else grad_commitment,
        zero if grad_codebook_loss is None else grad_codebook_loss,
        x,
        codebook,
        indices,
    )
    return grad_x, grad_codebook, None


_vector_quantize = define(
    "vector_quantize_fwd",
    "(Tensor x, Tensor codebook, str precision) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    lambda x, codebook, precision: (
        torch.empty_like(x),
        x.new_empty(x.shape[:1], dtype=torch.int64),
        x.new_empty(()),
        x.new_empty(()),
        x.new_empty(()),
    ),
    setup_context=_vector_quantize_setup,
    backward=_vector_quantize_grad,
)


# --- vq_code_stats: per-code counts and sums of the rows assigned to each code ----------------------


def _vq_code_stats_fake(x, indices, num_codes):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.new_empty((num_codes,), dtype=acc), x.new_empty((num_codes, x.shape[1]), dtype=acc)


def _vq_code_stats_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(*output)


def _vq_code_stats_grad(ctx, _grad_counts, _grad_sums):
    raise RuntimeError("fastvae.vq_code_stats is not differentiable")


_vq_code_stats = define(
    "vq_code_stats_fwd",
    "(Tensor x, Tensor indices, SymInt num_codes) -> (Tensor, Tensor)",
    _vq_code_stats_fake,
    setup_context=_vq_code_stats_setup,
    backward=_vq_code_stats_grad,
)


# --- public functions -----------------------------------------------------------------------------


def _check_x_codebook(x: object, codebook: object) -> tuple[torch.Tensor, torch.Tensor]:
    x = _checks.tensor(x, "x", min_dim=1)
    codebook = _checks.tensor(codebook, "codebook")
    _checks.same_dtype_and_device([("x", x), ("codebook", codebook)])
    if codebook.dim() != 2:
        raise ValueError(f"codebook must be 2-D (K, D), got shape {tuple(codebook.shape)}")
    if codebook.shape[0] == 0:
        raise ValueError("codebook must hold at least one code, got K = 0")
    if codebook.shape[1] != x.shape[-1]:
        raise ValueError(
            f"codebook must have D = x.shape[-1] = {x.shape[-1]} columns, got shape {tuple(codebook.shape)}"
        )
    return x, codebook


def _prepared(x: torch.Tensor, codebook: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` as contiguous ``(N, D)`` rows and the codebook, L2-normalised for the cosine metric."""
    if metric == "cosine":
        x, codebook = F.normalize(x, dim=-1), F.normalize(codebook, dim=-1)
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1]).contiguous(), codebook.contiguous()


def vq_nearest(
    x: torch.Tensor, codebook: torch.Tensor, *, metric: str = "l2", precision: str = "ieee"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codebook entry of every vector, without building the N x K distance matrix.

    Args:
        x: ``(..., D)`` vectors; float16, bfloat16, float32 or float64.
        codebook: ``(K, D)`` codes, same dtype and device, ``K >= 1``.
        metric: ``"l2"`` (squared Euclidean) or ``"cosine"`` (Euclidean between L2-normalised
            vectors, i.e. highest cosine similarity).
        precision: how float32 inputs are multiplied in the search: ``"ieee"`` (the default: exact
            float32 products), ``"tf32"`` (one TF32 tensor-core product on the triton and cuda
            backends, fastest; each operand keeps 10 mantissa bits) or ``"3xtf32"`` (on the triton
            backend, each operand split into its TF32 rounding ``hi`` and a TF32 residual ``lo``, and
            ``hi hi + hi lo + lo hi`` summed on tensor cores: within about ``2^-20`` of each exact
            product, near float32 accuracy). The cuda backend has no 3xTF32 kernel and runs its exact
            ``"ieee"`` search for ``"3xtf32"`` (never less accurate than asked, never an error under
            the ``"auto"`` backend). The torch backend ignores ``precision`` and runs PyTorch's float32
            matmul, exact unless TF32 was enabled globally (see :mod:`fastvae.reference.vq`). float16
            and bfloat16 always use tensor cores with float32 accumulation, float64 is always exact.
            Only which code wins a near-tie can change: the returned distance is always recomputed
            exactly as ``|x - e|^2``.

    Returns:
        ``(indices, distances)``, both of shape ``x.shape[:-1]``: int64 indices (ties go to the lowest
        index) and the squared distance ``|x - e|^2`` to the chosen code (for ``"cosine"``,
        ``2 - 2 cos(x, e)``) in ``x``'s dtype. Distances are differentiable with respect to ``x`` and
        the codebook; indices are not.

    Raises:
        TypeError: non-floating or mixed dtypes.
        ValueError: a codebook that is not ``(K, D)`` with ``K >= 1`` and ``x``'s ``D``, mixed
            devices, an unknown metric or precision.
    """
    x, codebook = _check_x_codebook(x, codebook)
    metric = _checks.choice(metric, "metric", _checks.METRICS)
    precision = _checks.choice(precision, "precision", PRECISIONS)
    rows, codes = _prepared(x, codebook, metric)
    distances, indices = _vq_nearest(rows, codes, precision)
    return indices.reshape(x.shape[:-1]), distances.reshape(x.shape[:-1])


def vector_quantize(
    x: torch.Tensor, codebook: torch.Tensor, *, beta: float = 0.25, metric: str = "l2", precision: str = "ieee"
) -> VQOutput:
    """Quantise ``x`` to its nearest codes with the VQ-VAE losses (van den Oord et al. 2017), fused.

    Args:
        x: ``(..., D)`` encoder outputs; float16, bfloat16, float32 or float64.
        codebook: ``(K, D)`` codes, same dtype and device, ``K >= 1``.
        beta: weight of the commitment loss, ``>= 0`` (the paper's default 0.25).
        metric: ``"l2"`` or ``"cosine"``; with ``"cosine"``, ``x`` and the codebook are L2-normalised
            first and quantized, losses and gradients are those of the normalised vectors.
        precision: ``"ieee"`` (default), ``"tf32"`` or ``"3xtf32"``: how float32 inputs are
            multiplied in the nearest-code search, as for :func:`vq_nearest`. The losses always use
            the exact ``|x - e|^2`` of the chosen codes.

    Returns:
        :class:`VQOutput` ``(quantized, indices, loss, commitment_loss, codebook_loss, perplexity)``:
        ``quantized`` has ``x``'s shape and passes its gradient straight through to ``x``;
        ``indices`` has shape ``x.shape[:-1]``; the losses are means over the ``N D`` elements of
        ``(x - e)^2``, exactly what ``F.mse_loss`` gives (as in the VQ-VAE authors' code,
        vector-quantize-pytorch and taming-transformers, so ``beta`` keeps its usual meaning):
        ``codebook_loss`` with ``x`` detached, ``commitment_loss`` with the codes detached,
        ``loss = codebook_loss + beta * commitment_loss``. All values in ``x``'s dtype. An empty
        batch (``N = 0``) gives NaN losses and NaN perplexity, on every backend; ``D = 0`` gives NaN
        losses (a mean over no elements) and perplexity 1.

    Raises:
        TypeError: non-floating or mixed dtypes, a non-number ``beta``.
        ValueError: as for :func:`vq_nearest`; a negative ``beta``.
    """
    return vector_quantize_rows(x, codebook, beta=beta, metric=metric, precision=precision)[0]


def vector_quantize_rows(
    x: torch.Tensor, codebook: torch.Tensor, *, beta: float = 0.25, metric: str = "l2", precision: str = "ieee"
) -> tuple[VQOutput, torch.Tensor]:
    """:func:`vector_quantize`, and the ``(N, D)`` rows it searched with (contiguous, L2-normalised
    for ``"cosine"``), so that a caller gathering code statistics (:class:`fastvae.nn.VectorQuantizer`)
    does not copy and normalise ``x`` a second time. Arguments, checks and errors as for
    :func:`vector_quantize`; the rows carry ``x``'s gradient (detach them for statistics)."""
    x, codebook = _check_x_codebook(x, codebook)
    beta = _checks.number(beta, "beta", low=0.0)
    metric = _checks.choice(metric, "metric", _checks.METRICS)
    precision = _checks.choice(precision, "precision", PRECISIONS)
    rows, codes = _prepared(x, codebook, metric)
    quantized, indices, commitment, codebook_loss, perplexity = _vector_quantize(rows, codes, precision)
    out = VQOutput(
        quantized=quantized.reshape(x.shape),
        indices=indices.reshape(x.shape[:-1]),
        loss=codebook_loss + beta * commitment,
        commitment_loss=commitment,
        codebook_loss=codebook_loss,
        perplexity=perplexity,
    )
    return out, rows


def vq_code_stats(x: torch.Tensor, indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code counts and sums of the vectors assigned to each code, by segment reduction (no one-hot).

    The statistics behind the EMA codebook update of :class:`fastvae.nn.VectorQuantizer`. Not
    differentiable.

    Args:
        x: ``(..., D)`` vectors; float16, bfloat16, float32 or float64.
        indices: int64 code indices of shape ``x.shape[:-1]``, each in ``[0, num_codes)``.
        num_codes: the codebook size ``K >= 1``.

    Returns:
        ``(counts (K,), sums (K, D))`` in float32 (float64 for float64 ``x``).

    Raises:
        TypeError: non-floating ``x``, non-int64 ``indices``, non-int ``num_codes``.
        ValueError: mismatched shapes or devices, ``num_codes < 1``.
    """
    x = _checks.tensor(x, "x", min_dim=1)
    if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64:
        raise TypeError(f"indices must be an int64 tensor, got {getattr(indices, 'dtype', type(indices).__name__)}")
    if indices.device != x.device:
        raise ValueError(f"indices must be on the device of x ({x.device}), got {indices.device}")
    _checks.same_shape("indices", indices, x.shape[:-1], "x's shape without the last dim")
    if isinstance(num_codes, bool) or not isinstance(num_codes, int):
        raise TypeError(f"num_codes must be an int, got {type(num_codes).__name__}")
    if num_codes < 1:
        raise ValueError(f"num_codes must be >= 1, got {num_codes}")
    rows = x.detach().reshape(math.prod(x.shape[:-1]), x.shape[-1]).contiguous()
    return _vq_code_stats(rows, indices.reshape(-1).contiguous(), num_codes)
