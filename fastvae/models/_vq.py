"""What the VQ models ``vq_vae`` and ``vq_vae2`` share: :class:`VQModel`, their base.

A VQ model here encodes an image to one or more grids of code vectors (its levels), quantises each
grid with its own codebook (:class:`fastvae.nn.VectorQuantizer`), decodes the quantised codes, and
fits a gated PixelCNN prior (:class:`~fastvae.models._prior.GatedPixelCNN`) per level on the code
indices. The base holds the hyper-parameters both models take and their checks, builds the
quantisers and priors alike, and computes the loss both models minimise (:meth:`VQModel.vq_loss`)::

    loss = recon + sum_l codebook_l + beta * sum_l commitment_l + sum_l prior_l

with each level's terms on the honest scale (per-example sums averaged over the batch). Each model's
module builds its networks, runs them in ``forward`` and states its own loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from fastvae.models._prior import GatedPixelCNN
from fastvae.models.base import ModelOutput, ObservationModel
from fastvae.nn import VectorQuantizer
from fastvae.ops._checks import check_int, number
from fastvae.ops.vq import VQOutput

__all__ = ["VQModel", "codebook_usage"]

#: The loss terms every level adds to: ``loss = recon + codebook + beta * commitment + prior``.
LEVEL_TERMS: tuple[str, ...] = ("commitment", "codebook", "prior")


def codebook_usage(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """The fraction of the ``num_codes`` codes that ``indices`` (int64, any shape) use at least once (0-dim float32)."""
    return torch.bincount(indices.flatten(), minlength=num_codes).gt(0).float().mean()


class VQModel(ObservationModel):
    """Base of the VQ models: spatial codes, a learned codebook per level, an autoregressive prior per level.

    A subclass sets :attr:`levels`, builds its networks in :meth:`build_networks` (with
    :meth:`make_quantizer` and :meth:`make_prior`), lists its quantisers in :meth:`quantizers` and
    implements ``forward`` (packing each level with :meth:`level_outputs`), ``loss`` (through
    :meth:`vq_loss`), ``sample`` and :meth:`prior_nll`. This class gives it the observation model
    (``mean`` and ``reconstruction_nll``, the very methods of
    :class:`~fastvae.models.base.GaussianVAE`, so both families score ``-log p(x|z)`` identically), the
    hyper-parameters and their checks, the honest-scale VQ terms, :meth:`reconstruct` and :meth:`elbo`.

    Args:
        input_shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``2^(downsamples + levels - 1)``, the
            downsampling of the coarsest code grid.
        latent_dim: ``D``, the code vectors' dimension.
        codebook_size, beta, ema, decay, dead_code_threshold, hidden, res_blocks, downsamples,
        likelihood, obs_std, prior_channels, prior_layers, prior_batch, precision: the
            hyper-parameters of both models, with the defaults of the VQ-VAE paper (see
            :class:`~fastvae.models.vq_vae.VQVAE` for each).
    """

    #: The number of code grids, each half the side of the next finer one; the finest is
    #: ``1 / 2^downsamples`` of the input's side.
    levels: int = 1

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        codebook_size: int = 512,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        dead_code_threshold: float = 1.0,
        hidden: int = 128,
        res_blocks: int = 2,
        downsamples: int = 2,
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
        prior_channels: int = 64,
        prior_layers: int = 8,
        prior_batch: int = 64,
        precision: str = "ieee",
    ) -> None:
        check_int(downsamples, "downsamples", 0)
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        reduction = 2 ** (downsamples + self.levels - 1)
        if len(self.input_shape) != 3 or any(side % reduction for side in self.input_shape[1:]):
            raise ValueError(
                f"input_shape must be (C, H, W) with H and W divisible by {reduction} for model {self.name!r} "
                f"with these downsamples, got {self.input_shape!r}"
            )
        if not isinstance(ema, bool):
            raise TypeError(f"ema must be a bool, got {ema!r}")
        self.beta = number(beta, "beta", low=0.0)
        self.ema = ema
        self.downsamples = downsamples
        self.prior_batch = check_int(prior_batch, "prior_batch", 0)
        self.codebook_size = check_int(codebook_size, "codebook_size", 1)
        self.hidden = check_int(hidden, "hidden", 2)
        self.res_blocks = check_int(res_blocks, "res_blocks", 0)
        self.prior_channels = check_int(prior_channels, "prior_channels", 1)
        self.prior_layers = check_int(prior_layers, "prior_layers", 1)
        self.decay = decay
        self.dead_code_threshold = dead_code_threshold
        self.precision = precision
        self.build_networks()

    # --- what a subclass provides ---------------------------------------------------------------------

    def build_networks(self) -> None:
        """Build the encoders, quantisers, decoders and priors, in the order the model's weights are drawn."""
        raise NotImplementedError

    def quantizers(self) -> tuple[torch.nn.Module, ...]:
        """The model's quantisers, coarsest first."""
        raise NotImplementedError

    def prior_nll(self, out: ModelOutput) -> torch.Tensor:
        """``-log p_prior(codes)`` in nats of every example's codes in ``out``, ``(B,)`` float32."""
        raise NotImplementedError

    # --- parts ----------------------------------------------------------------------------------------

    def make_quantizer(self) -> VectorQuantizer:
        """A :class:`fastvae.nn.VectorQuantizer` of ``codebook_size`` codes of ``latent_dim`` over channel
        dim 1, with the model's ``beta``, ``ema``, ``decay``, ``dead_code_threshold`` and ``precision``."""
        return VectorQuantizer(
            self.codebook_size, self.latent_dim, beta=self.beta, ema=self.ema, decay=self.decay,
            dead_code_threshold=self.dead_code_threshold, channel_dim=1, precision=self.precision,
        )

    def make_prior(self, condition_codes: int = 0) -> GatedPixelCNN:
        """A gated PixelCNN over ``codebook_size`` codes, ``prior_channels`` wide and ``prior_layers``
        deep; conditioned on a coarser grid of ``condition_codes`` codes when that is not 0."""
        return GatedPixelCNN(
            self.codebook_size, channels=self.prior_channels, layers=self.prior_layers, condition_codes=condition_codes
        )

    @staticmethod
    def quantize(quantizer: torch.nn.Module, z_e: torch.Tensor) -> VQOutput:
        """``quantizer(z_e)`` in the codebook's dtype with autocast off, so that under mixed precision
        the nearest-code search, the losses and the EMA statistics keep the codebook's precision."""
        with torch.autocast(z_e.device.type, enabled=False):
            return quantizer(z_e.to(quantizer.codebook.dtype))

    @staticmethod
    def code_vectors(quantizer: torch.nn.Module, indices: torch.Tensor) -> torch.Tensor:
        """The codes of ``quantizer`` that ``indices (B, h, w)`` (int64) name, as a map ``(B, D, h, w)``
        in the codebook's dtype."""
        return F.embedding(indices, quantizer.codebook).permute(0, 3, 1, 2)

    @staticmethod
    def level_outputs(vq: VQOutput, suffix: str = "") -> dict[str, torch.Tensor]:
        """One level's ``forward`` entries from its quantiser's output: ``z{suffix}`` (the
        straight-through codes ``(B, D, h, w)``), ``indices{suffix}`` ``(B, h, w)`` int64, and
        ``commitment_loss{suffix}``, ``codebook_loss{suffix}``, ``perplexity{suffix}`` as the quantiser
        returns them (0-dim; the losses are means over the ``B h w D`` elements)."""
        return {
            f"z{suffix}": vq.quantized, f"indices{suffix}": vq.indices,
            f"commitment_loss{suffix}": vq.commitment_loss, f"codebook_loss{suffix}": vq.codebook_loss,
            f"perplexity{suffix}": vq.perplexity,
        }

    @contextlib.contextmanager
    def frozen_codebooks(self) -> Iterator[None]:
        """Inside, every quantiser is in eval mode: nearest codes only, no EMA update, no restart."""
        modes = [(quantizer, quantizer.training) for quantizer in self.quantizers()]
        for quantizer, _ in modes:
            quantizer.eval()
        try:
            yield
        finally:
            for quantizer, training in modes:
                quantizer.train(training)

    # --- the loss -------------------------------------------------------------------------------------

    def vq_terms(self, out: ModelOutput, suffix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """``(commitment, codebook)`` of one level on the honest scale, float32 0-dim.

        The quantiser's losses are means over the ``B h w D`` elements of ``(z_e - e)^2`` (what
        ``F.mse_loss`` gives); times ``h w D`` they become sums over the grid and ``D`` averaged over
        the batch, the scale of the summed reconstruction term. The codebook term is 0 under EMA
        (the codebook takes no gradient).
        """
        elements = out[f"indices{suffix}"][0].numel() * self.latent_dim
        commitment = elements * out[f"commitment_loss{suffix}"].float()
        if self.ema:
            return commitment, torch.zeros((), device=commitment.device)
        return commitment, elements * out[f"codebook_loss{suffix}"].float()

    def prior_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """The examples of a batch of codes ``(B, ...)`` the prior trains on: the first ``prior_batch`` (all for 0)."""
        return codes[: self.prior_batch] if self.prior_batch else codes

    def vq_loss(self, x: torch.Tensor, out: ModelOutput, priors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss of a model whose levels are the keys of ``priors``, and the terms it reports.

        Args:
            x: the batch ``(B, *input_shape)``.
            out: ``forward(x)``: ``logits`` and, for each level suffix ``s``, the entries of
                :meth:`level_outputs`.
            priors: for each level suffix (``""`` for a model of one level), the level's prior term
                ``mean_b [ -log p_prior(k_b) ]`` (float32 0-dim) over the examples :meth:`prior_codes` picks.

        Returns:
            ``"loss" = recon + codebook + beta * commitment + prior``, where ``recon`` is
            ``mean_b [ -log p(x_b | z_q) ]`` and ``commitment``, ``codebook``, ``prior`` are the sums
            over levels of :meth:`vq_terms` and ``priors``; then ``"recon"``, the three totals, each
            level's ``"commitment{s}"``, ``"codebook{s}"``, ``"prior{s}"`` (for one level, the totals
            themselves), and each level's ``"perplexity{s}"`` and ``"usage{s}"`` (the fraction of the
            codebook the batch uses), reported and not minimised. Every term is float32 0-dim.
        """
        recon = self.reconstruction_nll(x, out.logits).mean()
        levels = {
            suffix: {**dict(zip(("commitment", "codebook"), self.vq_terms(out, suffix))), "prior": prior}
            for suffix, prior in priors.items()
        }
        totals = {name: sum(level[name] for level in levels.values()) for name in LEVEL_TERMS}
        terms = {
            "loss": recon + totals["codebook"] + self.beta * totals["commitment"] + totals["prior"],
            "recon": recon,
            **totals,
        }
        terms.update({f"{name}{suffix}": level[name] for name in LEVEL_TERMS for suffix, level in levels.items()})
        terms.update({f"perplexity{suffix}": out[f"perplexity{suffix}"].detach().float() for suffix in levels})
        terms.update({
            f"usage{suffix}": codebook_usage(out[f"indices{suffix}"], self.codebook_size) for suffix in levels
        })
        return terms

    # --- evaluation -----------------------------------------------------------------------------------

    def check_count(self, n: object) -> int:
        """``n`` as a positive int (ValueError naming ``n``)."""
        return check_int(n, "n", 1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The decoded nearest codes of ``x``, ``(B, *input_shape)`` in data space; deterministic, and no
        codebook is updated whatever the model's mode."""
        with self.frozen_codebooks():
            return self.forward(x, y).recon

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The evidence lower bound per example, ``(B,)`` float32: ``log p(x | z_q) + log p_prior(k)``.

        The posterior is a point mass on the nearest codes ``k``, so its KL to the prior is
        ``-log p_prior(k)``. Codebooks are not updated; examples go through in chunks of
        ``prior_batch``, so the priors' ``K``-way softmax stays as small as in training.
        """
        x = self.check_input(x)
        parts = []
        with self.frozen_codebooks():
            for part in x.split(self.prior_batch or x.shape[0]):
                out = self.forward(part, y)
                parts.append(-(self.reconstruction_nll(part, out.logits) + self.prior_nll(out)))
        return torch.cat(parts)
