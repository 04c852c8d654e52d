"""ResidualVQ: ``Q`` codebooks, each quantising what the earlier ones left (SoundStream, EnCodec, DAC)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from fastvae.ops import _checks
from fastvae.ops.rvq import rvq_nearest
from fastvae.ops.vq import VQOutput, vq_code_stats
from fastvae.nn.vector_quantizer import VectorQuantizer, _distributed
from fastvae.plan import accumulation_dtype

__all__ = ["ResidualVQ"]


class _ResidualLosses(torch.autograd.Function):
    """The straight-through output and the per-stage losses of a residual search, without keeping any
    stage's ``(N, D)`` tensors: backward replays the stages from ``x`` and the indices. A stage whose
    entry of ``active (Q,)`` is False contributes nothing (its code counts as zero, its losses are 0).

    With ``r_q = x - sum_{j<q} sg[e_j]`` (``e_j`` the code chosen at stage ``j``):
    ``quantized = x + sg[sum_q e_q - x]``, ``commitment_q = mean((r_q - sg[e_q])^2)`` (gradient to
    ``x``: ``2 r_{q+1} / (N D)``) and ``codebook_q = mean((sg[r_q] - e_q)^2)`` (gradient to the chosen
    code: ``-2 r_{q+1} / (N D)`` summed over its rows), means over the ``N D`` elements.
    """

    @staticmethod
    def forward(ctx, rows, codebooks, indices, active):
        acc = accumulation_dtype(rows.dtype)
        residual = rows.detach().to(acc, copy=True)
        total = torch.zeros_like(residual)
        squared = []
        for stage in range(codebooks.shape[0]):
            codes = _stage_codes(codebooks, indices, active, stage, acc)
            residual -= codes
            total += codes
            squared.append(residual.square().mean() * active[stage])
        ctx.save_for_backward(rows, codebooks, indices, active)
        losses = torch.stack(squared).to(rows.dtype)
        return total.to(rows.dtype), losses, losses.clone()

    @staticmethod
    def backward(ctx, grad_quantized, grad_commitment, grad_codebook):
        rows, codebooks, indices, active = ctx.saved_tensors
        acc = accumulation_dtype(rows.dtype)
        scale = 2.0 / max(rows.numel(), 1)
        residual = rows.detach().to(acc, copy=True)
        grad_rows = torch.zeros_like(residual) if grad_quantized is None else grad_quantized.to(acc, copy=True)
        grad_codebooks = torch.zeros(codebooks.shape, dtype=acc, device=codebooks.device)
        for stage in range(codebooks.shape[0]):
            residual -= _stage_codes(codebooks, indices, active, stage, acc)
            weight = active[stage].to(acc) * scale
            if grad_commitment is not None:
                grad_rows += (weight * grad_commitment[stage].to(acc)) * residual
            if grad_codebook is not None:
                weighted = residual * (-weight * grad_codebook[stage].to(acc))
                grad_codebooks[stage].index_add_(0, indices[:, stage], weighted)
        return grad_rows.to(rows.dtype), grad_codebooks.to(codebooks.dtype), None, None


def _stage_codes(
    codebooks: torch.Tensor, indices: torch.Tensor, active: torch.Tensor, stage: int, acc: torch.dtype
) -> torch.Tensor:
    """Stage ``stage``'s chosen codes ``(N, D)`` in ``acc``, zero where the stage is inactive."""
    return codebooks[stage].to(acc)[indices[:, stage]] * active[stage].to(acc)


class ResidualVQ(nn.Module):
    """Residual vector quantisation: ``num_quantizers`` stages, stage ``q`` quantising the residual the
    stages before it left (Zeghidour et al. 2021, SoundStream; EnCodec; DAC).

    The search is :func:`fastvae.rvq_nearest` (one fused launch on the triton backend, no ``N x K``
    matrix); each stage's codebook is a :class:`VectorQuantizer`'s (``self.layers``), with its EMA
    update, dead-code restart, k-means initialisation and ``torch.distributed`` synchronisation, fed
    with that stage's residuals.

    Losses, summed over the stages that ran: with ``r_q = x - sum_{j<q} sg[e_j]`` the residual before
    stage ``q`` and ``e_q`` its chosen code, ``commitment_loss = sum_q mean((r_q - sg[e_q])^2)``,
    ``codebook_loss = sum_q mean((sg[r_q] - e_q)^2)`` (means over the ``N D`` elements, as
    ``F.mse_loss``), ``loss = codebook_loss + beta * commitment_loss``, or with ``ema=True``
    ``loss = beta * commitment_loss`` (the codebooks then learn by EMA and take no gradient).
    ``quantized = x + sg[sum_q e_q - x]``: the sum of the chosen codes, with the straight-through
    gradient to ``x``. No stage's ``(N, D)`` tensors are kept for backward (it replays the stages).

    ``quantize_dropout=True`` (SoundStream's quantizer dropout): each training forward keeps only the
    first ``n`` stages, ``n`` drawn uniformly from ``1..num_quantizers`` with torch's generator on the
    codebooks' device (under ``torch.distributed``, rank 0's draw is broadcast); the dropped stages'
    codes count as zero in ``quantized`` and in the losses, their indices are ``-1``, their
    perplexity NaN, and their codebooks are not updated. The draw never reaches the host: shapes stay
    fixed (every stage is searched, the dropped ones masked), so ``torch.compile`` sees one graph.
    Eval mode runs every stage.

    With ``shared_codebook=True`` every stage searches one codebook (``self.layers`` holds one
    quantizer), whose EMA statistics add up every stage's rows and whose restarts draw from ``x``.
    With ``kmeans_init=True`` the first training forward initialises the codebooks stage by stage
    (stage ``q`` by k-means on the residuals the initialised stages before it leave; a shared codebook
    on ``x``).

    Args:
        num_quantizers: ``Q >= 1`` stages.
        num_codes: codes per codebook ``K``.
        dim: code dimension ``D`` (the input's size along ``channel_dim``).
        beta, ema, decay, eps, dead_code_threshold, kmeans_init: as for :class:`VectorQuantizer`, per
            stage.
        shared_codebook: one codebook for every stage.
        quantize_dropout: train with a random number of stages per batch (above).
        channel_dim: the input dim that holds the ``D`` channels.

    Shapes:
        input ``x``: any shape with ``D`` along ``channel_dim``, float16, bfloat16, float32 or float64,
        matching the codebooks' dtype. Output: :class:`fastvae.VQOutput` with ``quantized`` in ``x``'s
        layout, ``indices`` of ``x``'s shape without ``channel_dim`` plus a last dim of ``Q`` (int64),
        the three losses 0-dim, ``perplexity`` ``(Q,)`` (per stage: ``exp`` of the entropy of its code
        usage in the batch).
    """

    def __init__(
        self,
        num_quantizers: int,
        num_codes: int,
        dim: int,
        *,
        beta: float = 0.25,
        ema: bool = False,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_threshold: float = 0.0,
        kmeans_init: bool = False,
        shared_codebook: bool = False,
        quantize_dropout: bool = False,
        channel_dim: int = -1,
    ) -> None:
        super().__init__()
        if isinstance(num_quantizers, bool) or not isinstance(num_quantizers, int):
            raise TypeError(f"num_quantizers must be an int, got {type(num_quantizers).__name__}")
        if num_quantizers < 1:
            raise ValueError(f"num_quantizers must be >= 1, got {num_quantizers}")
        for name, value in (("shared_codebook", shared_codebook), ("quantize_dropout", quantize_dropout)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
            raise TypeError(f"channel_dim must be an int, got {type(channel_dim).__name__}")
        self.num_quantizers = num_quantizers
        self.shared_codebook = shared_codebook
        self.quantize_dropout = quantize_dropout
        self.channel_dim = channel_dim
        self.layers = nn.ModuleList(
            VectorQuantizer(
                num_codes, dim, beta=beta, ema=ema, decay=decay, eps=eps,
                dead_code_threshold=dead_code_threshold, kmeans_init=kmeans_init,
            )  # fmt: skip
            for _ in range(1 if shared_codebook else num_quantizers)
        )
        first = self.layers[0]
        self.num_codes, self.dim, self.beta, self.ema = first.num_codes, first.dim, first.beta, first.ema

    def extra_repr(self) -> str:
        return (
            f"num_quantizers={self.num_quantizers}, shared_codebook={self.shared_codebook}, "
            f"quantize_dropout={self.quantize_dropout}, channel_dim={self.channel_dim}"
        )

    @property
    def codebooks(self) -> torch.Tensor:
        """``(Q, K, D)``: every stage's codebook (a fresh tensor; with ``shared_codebook`` Q copies of one)."""
        if self.shared_codebook:
            codebook = self.layers[0].codebook
            return codebook.unsqueeze(0).expand(self.num_quantizers, *codebook.shape).contiguous()
        return torch.stack([layer.codebook for layer in self.layers])

    def get_codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Each stage's code for ``indices (..., Q)`` int64 (``-1``: a dropped stage, a zero code).

        Returns:
            ``(..., Q, D)`` in the codebooks' dtype; ``quantized`` is its sum over ``Q`` (in the
            channels-last layout).
        """
        if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64:
            raise TypeError(f"indices must be an int64 tensor, got {getattr(indices, 'dtype', type(indices).__name__)}")
        if indices.dim() < 1 or indices.shape[-1] != self.num_quantizers:
            raise ValueError(
                f"indices must have a last dim of num_quantizers={self.num_quantizers}, got shape {tuple(indices.shape)}"
            )
        codebooks = self.codebooks
        if indices.device != codebooks.device:
            raise ValueError(f"indices must be on the codebooks' device ({codebooks.device}), got {indices.device}")
        if indices.numel() and (int(indices.min()) < -1 or int(indices.max()) >= self.num_codes):
            raise ValueError(f"indices must be in [-1, {self.num_codes}), got values outside")
        stage = torch.arange(self.num_quantizers, device=indices.device)
        codes = codebooks[stage, indices.clamp(min=0)]
        return codes.masked_fill((indices < 0).unsqueeze(-1), 0.0)

    def _active_stages(self, device: torch.device) -> torch.Tensor:
        """``(Q,)`` bool: the stages this forward keeps, all of them or with quantizer dropout in training
        the first ``n``, ``n`` drawn from ``1..Q`` (rank 0's under ``torch.distributed``)."""
        stage = torch.arange(self.num_quantizers, device=device)
        if not (self.training and self.quantize_dropout):
            return torch.ones_like(stage, dtype=torch.bool)
        draw = torch.randint(1, self.num_quantizers + 1, (), device=device)
        if _distributed():
            dist.broadcast(draw, src=0)
        return stage < draw

    def forward(self, x: torch.Tensor) -> VQOutput:
        """Quantise ``x`` stage by stage and, in training mode, update each stage's codebook statistics.

        Returns:
            :class:`fastvae.VQOutput` as described in the class docstring.
        """
        moved = _checks.channels_last(x, "x", self.dim, self.channel_dim)
        rows = moved.reshape(math.prod(moved.shape[:-1]), self.dim)
        if self.training and self.layers[0]._awaits_kmeans:
            self._kmeans_initialise(rows)
        codebooks = self.codebooks
        active = self._active_stages(rows.device)
        indices, _ = rvq_nearest(rows.detach(), codebooks.detach())
        quantized, commitment, codebook_loss = _ResidualLosses.apply(rows, codebooks, indices, active)
        if self.training:
            self._update(rows.detach(), codebooks.detach(), indices, active)
        commitment_loss, codebook_loss = commitment.sum(), codebook_loss.sum()
        loss = self.beta * commitment_loss if self.ema else codebook_loss + self.beta * commitment_loss
        usage = _perplexity(indices, self.num_codes, accumulation_dtype(rows.dtype))
        perplexity = torch.where(active, usage, float("nan")).to(rows.dtype)
        channel_dim = _checks.dim_index(self.channel_dim, "channel_dim", x.dim())
        return VQOutput(
            quantized=quantized.reshape(moved.shape).movedim(-1, channel_dim),
            indices=torch.where(active, indices, -1).reshape(*moved.shape[:-1], self.num_quantizers),
            loss=loss,
            commitment_loss=commitment_loss,
            codebook_loss=codebook_loss,
            perplexity=perplexity,
        )

    @torch.no_grad()
    def _update(self, rows: torch.Tensor, codebooks: torch.Tensor, indices: torch.Tensor, active: torch.Tensor) -> None:
        """Each kept stage's EMA statistics and restarts from its residuals, replayed stage by stage."""
        if rows.shape[0] == 0:
            return
        acc = accumulation_dtype(rows.dtype)
        residual = rows.to(acc, copy=True)
        shared_counts = shared_sums = None
        for stage in range(indices.shape[1]):
            counts, sums = vq_code_stats(residual, indices[:, stage], self.num_codes)
            if self.shared_codebook:
                kept = active[stage].to(counts.dtype)
                shared_counts = counts * kept if shared_counts is None else shared_counts + counts * kept
                shared_sums = sums * kept if shared_sums is None else shared_sums + sums * kept
            else:
                self.layers[stage]._apply_statistics(counts, sums, residual.to(rows.dtype), active[stage])
            residual -= _stage_codes(codebooks, indices, active, stage, acc)
        if self.shared_codebook:
            self.layers[0]._apply_statistics(shared_counts, shared_sums, rows)

    @torch.no_grad()
    def _kmeans_initialise(self, rows: torch.Tensor) -> None:
        """Stage by stage: k-means on the residual the stages before it leave (a shared codebook: on ``x``)."""
        if self.shared_codebook:
            self.layers[0]._kmeans_initialise(rows)
            return
        residual = rows.detach()
        for layer in self.layers:
            layer._kmeans_initialise(residual)
            chosen, _ = rvq_nearest(residual, layer.codebook.unsqueeze(0))
            residual = residual - layer.codebook[chosen[:, 0]]


def _perplexity(indices: torch.Tensor, num_codes: int, dtype: torch.dtype) -> torch.Tensor:
    """Per stage, ``exp`` of the entropy of code usage in ``indices (N, Q)``: ``(Q,)`` in ``dtype`` (NaN
    for no rows). Counted into a fixed-size buffer, so the shape never depends on the data."""
    stages = indices.shape[1]
    offsets = torch.arange(stages, device=indices.device) * num_codes
    counts = torch.zeros(stages * num_codes, dtype=dtype, device=indices.device).index_add_(
        0, (indices + offsets).reshape(-1), torch.ones(indices.numel(), dtype=dtype, device=indices.device)
    )
    probs = counts.reshape(stages, num_codes) / indices.shape[0]
    return torch.exp(-torch.xlogy(probs, probs).sum(1))
