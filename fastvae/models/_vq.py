"""What the VQ models ``vq_vae`` and ``vq_vae2`` share: :class:`VQModel`, their base.

A VQ model here encodes an image to one or more grids of code vectors (its levels), quantises each
grid with its own quantiser, decodes the quantised codes, and fits a gated PixelCNN prior
(:class:`~fastvae.models._prior.GatedPixelCNN`) per level on the code indices. The quantiser is one
of four (``quantizer``, :data:`QUANTIZERS`): a learned codebook (:class:`fastvae.nn.VectorQuantizer`,
``"vq"``, the default), residual VQ (:class:`fastvae.nn.ResidualVQ`, ``"rvq"``), finite
scalar quantisation (:class:`fastvae.nn.FSQ`, ``"fsq"``) or lookup-free quantisation
(:class:`fastvae.nn.LFQ`, ``"lfq"``). The base holds the hyper-parameters both models take and their
checks, builds the quantisers and priors alike, runs a quantiser and decodes its indices whatever its
kind, and computes the loss both models minimise (:meth:`VQModel.vq_loss`)::

    loss = recon + sum_l codebook_l + beta * sum_l commitment_l + sum_l prior_l          (vq, rvq, fsq)
    loss = recon + lfq_commitment_weight * sum_l commitment_l
           + lfq_entropy_weight * sum_l entropy_l + sum_l prior_l                      (lfq)

with each level's terms on the honest scale (per-example sums averaged over the batch). Each model's
module builds its networks, runs them in ``forward`` and states its own loss.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fastvae.models._prior import GatedPixelCNN
from fastvae.models.base import ModelOutput, ObservationModel
from fastvae.nn import FSQ, LFQ, ResidualVQ, VectorQuantizer
from fastvae.nn.lfq import MAX_DIM as LFQ_MAX_DIM
from fastvae.ops._checks import check_int, choice, number
from fastvae.ops.fsq import check_levels

__all__ = ["QUANTIZERS", "QUANTIZER_OPTIONS", "VQModel", "code_perplexity", "codebook_usage", "stage_usage"]

#: The loss terms every level adds to: ``loss = recon + codebook + beta * commitment + prior``.
LEVEL_TERMS: tuple[str, ...] = ("commitment", "codebook", "prior")

#: The values of ``quantizer``.
QUANTIZERS: tuple[str, ...] = ("vq", "rvq", "fsq", "lfq")

#: The quantisers each option means something for. With any other quantiser the option must keep its
#: default: a value set there would be ignored, so the model refuses it.
QUANTIZER_OPTIONS: dict[str, tuple[str, ...]] = {
    "codebook_size": ("vq", "rvq"),
    "beta": ("vq", "rvq"),
    "ema": ("vq", "rvq"),
    "decay": ("vq", "rvq"),
    "dead_code_threshold": ("vq", "rvq"),
    "precision": ("vq",),
    "kmeans_init": ("vq", "rvq"),
    "kmeans_iters": ("vq",),
    "codebook_dim": ("vq",),
    "gradient": ("vq",),
    "num_quantizers": ("rvq",),
    "shared_codebook": ("rvq",),
    "quantize_dropout": ("rvq",),
    "fsq_levels": ("fsq",),
    "lfq_commitment_weight": ("lfq",),
    "lfq_entropy_weight": ("lfq",),
    "lfq_diversity_gamma": ("lfq",),
    "lfq_inv_temperature": ("lfq",),
}


def _code_counts(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """``(num_codes,)`` float32: how often ``indices`` (int64, any shape, values in ``[0, num_codes)``) pick
    each code. A fixed-size ``index_add_``, not ``torch.bincount``, which reads the largest index back to
    the host on a GPU."""
    flat = indices.flatten()
    return torch.zeros(num_codes, device=indices.device).index_add_(
        0, flat, torch.ones(flat.shape, device=indices.device)
    )


def codebook_usage(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """The fraction of the ``num_codes`` codes that ``indices`` (int64, any shape) use at least once (0-dim float32)."""
    return _code_counts(indices, num_codes).gt(0).float().mean()


def stage_usage(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """For residual VQ indices ``(..., Q)`` (int64, ``-1`` where quantizer dropout skipped the stage):
    the mean, over the stages that ran, of the fraction of each stage's ``num_codes`` codes it uses
    at least once (0-dim float32)."""
    stages = indices.shape[-1]
    offsets = torch.arange(stages, device=indices.device) * num_codes
    shifted = torch.where(indices >= 0, indices + offsets, stages * num_codes)  # skipped: one spare bin
    counts = _code_counts(shifted, stages * num_codes + 1)[:-1].view(stages, num_codes)
    ran = counts.sum(1) > 0
    used = counts.gt(0).float().mean(1)
    return (used * ran).sum() / ran.sum()


def code_perplexity(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """``exp`` of the entropy of the usage of ``num_codes`` codes by ``indices`` (int64, any shape, values
    in ``[0, num_codes)``): 0-dim float32, between 1 and the number of codes used."""
    probs = _code_counts(indices, num_codes) / max(indices.numel(), 1)
    return torch.exp(-torch.special.xlogy(probs, probs).sum())


def _is_default(value: object, default: object) -> bool:
    """Whether ``value`` is the option's ``default`` (a list for a tuple default counts by its items)."""
    if isinstance(default, tuple) and isinstance(value, (list, tuple)):
        return tuple(value) == default
    return value == default and isinstance(value, bool) == isinstance(default, bool)


class VQModel(ObservationModel):
    """Base of the VQ models: spatial codes, a quantiser per level, an autoregressive prior per level.

    A subclass sets :attr:`levels`, builds its networks in :meth:`build_networks` (with
    :meth:`make_quantizer` and :meth:`make_prior`), lists its quantisers in :meth:`quantizers` and
    implements ``forward`` (running each level's quantiser with :meth:`quantize`), ``loss`` (through
    :meth:`vq_loss`), ``sample`` and :meth:`prior_nll`. This class gives it the observation model
    (``mean`` and ``reconstruction_nll``, the very methods of
    :class:`~fastvae.models.base.GaussianVAE`, so both families score ``-log p(x|z)`` identically), the
    hyper-parameters and their checks, the quantisers and what each kind needs (:meth:`quantize`,
    :meth:`code_vectors`), the honest-scale VQ terms, :meth:`reconstruct` and :meth:`elbo`.

    Quantisers (``quantizer``), at every level alike; ``D = latent_dim`` channels reach the quantiser
    and leave it, ``K`` is :attr:`codebook_size`, the number of codes the prior chooses among:

    * ``"vq"``: :class:`fastvae.nn.VectorQuantizer`, ``K = codebook_size`` learned codes; with
      ``codebook_dim`` the codes live in that space, behind linear projections (factorised codes);
      ``kmeans_init``, ``kmeans_iters`` and ``gradient`` as the quantiser takes them.
    * ``"rvq"``: :class:`fastvae.nn.ResidualVQ`, ``num_quantizers = Q`` stages of
      ``K = codebook_size`` codes each; indices ``(B, h, w, Q)``; its losses are summed over the
      stages. The prior models all ``h w Q`` codes (a :class:`GatedPixelCNN` with ``stages = Q``).
    * ``"fsq"``: :class:`fastvae.nn.FSQ` with ``fsq_levels``, ``K = prod(fsq_levels)``; the ``D``
      channels are projected to ``len(fsq_levels)`` and back by its linear layers (none when
      ``D = len(fsq_levels)``). No codebook and no VQ loss: commitment and codebook are 0.
    * ``"lfq"``: :class:`fastvae.nn.LFQ`: each of the ``D`` channels is one bit, ``K = 2^D``
      (``latent_dim`` at most 20; the prior's softmax has ``2^D`` outputs, so keep it small, 8 to
      12), no projection. Its commitment loss (weight ``lfq_commitment_weight``) and its entropy loss
      (weight ``lfq_entropy_weight``, diversity ``lfq_diversity_gamma``, temperature
      ``lfq_inv_temperature``) join the loss; codebook is 0.

    An option that does not apply to the chosen quantiser (:data:`QUANTIZER_OPTIONS`) must keep its
    default; another value raises a ValueError naming it.

    Args:
        input_shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``2^(downsamples + levels - 1)``, the
            downsampling of the coarsest code grid.
        latent_dim: ``D``, the code vectors' dimension (for ``"lfq"``, the number of bits).
        codebook_size, beta, ema, decay, dead_code_threshold, hidden, res_blocks, downsamples,
        likelihood, obs_std, prior_channels, prior_layers, prior_batch, precision, quantizer,
        num_quantizers, shared_codebook, quantize_dropout, kmeans_init, kmeans_iters, codebook_dim,
        gradient, fsq_levels, lfq_commitment_weight, lfq_entropy_weight, lfq_diversity_gamma,
        lfq_inv_temperature: the
            hyper-parameters of both models, with the defaults of the VQ-VAE paper and of each
            quantiser's (see :class:`~fastvae.models.vq_vae.VQVAE` for each).

    Raises:
        ValueError: a bad ``input_shape`` or hyper-parameter, ``quantizer`` not in :data:`QUANTIZERS`,
            an option set that the quantiser does not take, ``latent_dim`` above 20 with ``"lfq"``;
            the message names the argument.
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
        quantizer: str = "vq",
        num_quantizers: int = 4,
        shared_codebook: bool = False,
        quantize_dropout: bool = False,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        codebook_dim: int | None = None,
        gradient: str = "ste",
        fsq_levels: tuple[int, ...] = (8, 5, 5, 5),
        lfq_commitment_weight: float = 0.05,
        lfq_entropy_weight: float = 0.1,
        lfq_diversity_gamma: float = 1.0,
        lfq_inv_temperature: float = 100.0,
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
        self.quantizer_kind = choice(quantizer, "quantizer", QUANTIZERS)
        _check_options(self.quantizer_kind, {
            "codebook_size": codebook_size, "beta": beta, "ema": ema, "decay": decay,
            "dead_code_threshold": dead_code_threshold, "precision": precision, "kmeans_init": kmeans_init,
            "kmeans_iters": kmeans_iters, "codebook_dim": codebook_dim, "gradient": gradient,
            "num_quantizers": num_quantizers, "shared_codebook": shared_codebook,
            "quantize_dropout": quantize_dropout, "fsq_levels": fsq_levels,
            "lfq_commitment_weight": lfq_commitment_weight, "lfq_entropy_weight": lfq_entropy_weight,
            "lfq_diversity_gamma": lfq_diversity_gamma, "lfq_inv_temperature": lfq_inv_temperature,
        })
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
        self.num_quantizers = check_int(num_quantizers, "num_quantizers", 1)
        self.shared_codebook = shared_codebook
        self.quantize_dropout = quantize_dropout
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.codebook_dim = codebook_dim
        self.gradient = gradient
        self.lfq_commitment_weight = number(lfq_commitment_weight, "lfq_commitment_weight", low=0.0)
        self.lfq_entropy_weight = number(lfq_entropy_weight, "lfq_entropy_weight", low=0.0)
        self.lfq_diversity_gamma = number(lfq_diversity_gamma, "lfq_diversity_gamma", low=0.0)
        self.lfq_inv_temperature = number(lfq_inv_temperature, "lfq_inv_temperature", low=0.0)
        if self.lfq_inv_temperature == 0.0:
            raise ValueError("lfq_inv_temperature must be > 0, got 0")
        try:
            self.fsq_levels = check_levels(fsq_levels)
        except (TypeError, ValueError) as error:
            raise type(error)(f"fsq_levels: {error}") from None
        #: The channels the VQ losses are means over: ``codebook_dim`` with factorised codes, else ``D``.
        self.code_dim = latent_dim if codebook_dim is None else codebook_dim
        if self.quantizer_kind == "fsq":
            self.codebook_size = math.prod(self.fsq_levels)
        elif self.quantizer_kind == "lfq":
            if latent_dim > LFQ_MAX_DIM:
                raise ValueError(
                    f"latent_dim must be at most {LFQ_MAX_DIM} with quantizer='lfq' (K = 2^latent_dim codes), "
                    f"got {latent_dim}"
                )
            self.codebook_size = 2**latent_dim
        self.build_networks()

    # --- what a subclass provides ---------------------------------------------------------------------

    def build_networks(self) -> None:
        """Build the encoders, quantisers, decoders and priors, in the order the model's weights are drawn."""
        raise NotImplementedError

    def quantizers(self) -> tuple[nn.Module, ...]:
        """The model's quantisers, coarsest first."""
        raise NotImplementedError

    def prior_nll(self, out: ModelOutput) -> torch.Tensor:
        """``-log p_prior(codes)`` in nats of every example's codes in ``out``, ``(B,)`` float32."""
        raise NotImplementedError

    # --- parts ----------------------------------------------------------------------------------------

    def make_quantizer(self) -> nn.Module:
        """A quantiser of the kind ``quantizer`` names, over channel dim 1 of ``(B, D, h, w)`` maps:

        * ``"vq"``: :class:`fastvae.nn.VectorQuantizer` of ``codebook_size`` codes of ``latent_dim``
          with the model's ``beta``, ``ema``, ``decay``, ``dead_code_threshold``, ``precision``,
          ``kmeans_init``, ``kmeans_iters``, ``codebook_dim`` and ``gradient``;
        * ``"rvq"``: :class:`fastvae.nn.ResidualVQ` of ``num_quantizers`` stages of
          ``codebook_size`` codes, with ``beta``, ``ema``, ``decay``, ``dead_code_threshold``,
          ``kmeans_init``, ``shared_codebook`` and ``quantize_dropout``;
        * ``"fsq"``: :class:`fastvae.nn.FSQ` of ``fsq_levels`` with ``dim=latent_dim``;
        * ``"lfq"``: :class:`fastvae.nn.LFQ` of ``latent_dim`` bits with the ``lfq_*`` options.
        """
        kind = self.quantizer_kind
        if kind == "vq":
            return VectorQuantizer(
                self.codebook_size, self.latent_dim, beta=self.beta, ema=self.ema, decay=self.decay,
                dead_code_threshold=self.dead_code_threshold, channel_dim=1, precision=self.precision,
                kmeans_init=self.kmeans_init, kmeans_iters=self.kmeans_iters, codebook_dim=self.codebook_dim,
                gradient=self.gradient,
            )
        if kind == "rvq":
            return ResidualVQ(
                self.num_quantizers, self.codebook_size, self.latent_dim, beta=self.beta, ema=self.ema,
                decay=self.decay, dead_code_threshold=self.dead_code_threshold, kmeans_init=self.kmeans_init,
                shared_codebook=self.shared_codebook, quantize_dropout=self.quantize_dropout, channel_dim=1,
            )
        if kind == "fsq":
            return FSQ(self.fsq_levels, dim=self.latent_dim, channel_dim=1)
        return LFQ(
            self.latent_dim, entropy_weight=self.lfq_entropy_weight, commitment_weight=self.lfq_commitment_weight,
            diversity_gamma=self.lfq_diversity_gamma, inv_temperature=self.lfq_inv_temperature, channel_dim=1,
        )

    def make_prior(self, condition_codes: int = 0) -> GatedPixelCNN:
        """A gated PixelCNN over ``codebook_size`` codes (per stage, ``num_quantizers`` stages with
        ``"rvq"``), ``prior_channels`` wide and ``prior_layers`` deep; conditioned on a coarser grid of
        ``condition_codes`` codes (with as many stages) when that is not 0."""
        return GatedPixelCNN(
            self.codebook_size, channels=self.prior_channels, layers=self.prior_layers, condition_codes=condition_codes,
            stages=self.num_quantizers if self.quantizer_kind == "rvq" else 1,
        )

    def quantizer_dtype(self, quantizer: nn.Module) -> torch.dtype:
        """The dtype ``quantizer`` computes in: its codebook's (``"vq"``, ``"rvq"``), its projections'
        (``"fsq"`` with projections), else the model's parameters'."""
        if self.quantizer_kind == "vq":
            return quantizer.codebook.dtype
        if self.quantizer_kind == "rvq":
            return quantizer.layers[0].codebook.dtype
        weight = next(quantizer.parameters(), None)
        return next(self.parameters()).dtype if weight is None else weight.dtype

    def quantize(self, quantizer: nn.Module, z_e: torch.Tensor, suffix: str = "") -> dict[str, torch.Tensor]:
        """One level's ``forward`` entries: ``quantizer(z_e)`` for ``z_e (B, D, h, w)``, run in
        :meth:`quantizer_dtype` with autocast off, so that under mixed precision the search, the
        losses and the EMA statistics keep the quantiser's precision.

        Returns:
            ``z{suffix}`` (the straight-through codes ``(B, D, h, w)``, in the quantiser's dtype),
            ``indices{suffix}`` (int64 ``(B, h, w)``; ``(B, h, w, Q)`` for ``"rvq"``, ``-1`` for a stage
            quantizer dropout skipped), ``commitment_loss{suffix}`` and ``codebook_loss{suffix}`` (0-dim,
            means over the ``B h w`` code vectors' elements as the quantiser returns them; 0 where the
            quantiser has none: both for ``"fsq"``, the codebook loss for ``"lfq"``), ``perplexity{suffix}``
            (``exp`` of the entropy of code usage in the batch: 0-dim; ``(Q,)`` per stage for ``"rvq"``,
            NaN for a skipped stage) and, for ``"lfq"``, ``entropy_loss{suffix}`` (0-dim, its
            ``per_sample_entropy - lfq_diversity_gamma * codebook_entropy``, per code vector).
        """
        with torch.autocast(z_e.device.type, enabled=False):
            out = quantizer(z_e.to(self.quantizer_dtype(quantizer)))
        kind = self.quantizer_kind
        if kind in ("vq", "rvq"):
            entries = {"z": out.quantized, "indices": out.indices, "commitment_loss": out.commitment_loss,
                       "codebook_loss": out.codebook_loss, "perplexity": out.perplexity}
        elif kind == "fsq":
            zero = torch.zeros((), device=z_e.device)
            entries = {"z": out.quantized, "indices": out.indices, "commitment_loss": zero, "codebook_loss": zero,
                       "perplexity": code_perplexity(out.indices, self.codebook_size)}
        else:
            entries = {"z": out.quantized, "indices": out.indices, "commitment_loss": out.commitment_loss,
                       "codebook_loss": torch.zeros_like(out.commitment_loss),
                       "perplexity": code_perplexity(out.indices, self.codebook_size),
                       "entropy_loss": out.entropy_loss}
        return {f"{name}{suffix}": value for name, value in entries.items()}

    def code_vectors(self, quantizer: nn.Module, indices: torch.Tensor) -> torch.Tensor:
        """The quantised map ``(B, D, h, w)`` that ``quantizer`` gives for the int64 ``indices`` ``(B, h, w)``
        (``(B, h, w, Q)`` for ``"rvq"``), in :meth:`quantizer_dtype`: the codebook rows (``"vq"``, then the
        output projection with ``codebook_dim``), the sum of the stages' codes (``"rvq"``,
        ``get_codes_from_indices``), ``FSQ.indices_to_codes`` (with its output projection), or the
        ``{-1, +1}`` bits of ``LFQ.indices_to_codes``."""
        kind = self.quantizer_kind
        if kind == "vq":
            codes = F.embedding(indices, quantizer.codebook)
            codes = codes if self.code_dim == self.latent_dim else quantizer.project_out(codes)
            return codes.permute(0, 3, 1, 2)
        if kind == "rvq":
            return quantizer.get_codes_from_indices(indices).sum(-2).permute(0, 3, 1, 2)
        return quantizer.indices_to_codes(indices, dtype=self.quantizer_dtype(quantizer))

    @contextlib.contextmanager
    def frozen_codebooks(self) -> Iterator[None]:
        """Inside, every quantiser is in eval mode: nearest codes only, no EMA update, no restart, every
        residual stage."""
        modes = [(quantizer, quantizer.training) for quantizer in self.quantizers()]
        for quantizer, _ in modes:
            quantizer.eval()
        try:
            yield
        finally:
            for quantizer, training in modes:
                quantizer.train(training)

    # --- the loss -------------------------------------------------------------------------------------

    def positions(self, out: ModelOutput, suffix: str = "") -> int:
        """``h w``, the code positions per example of the level ``suffix`` of ``out``."""
        return math.prod(out[f"indices{suffix}"].shape[1:3])

    def vq_terms(self, out: ModelOutput, suffix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """``(commitment, codebook)`` of one level on the honest scale, float32 0-dim.

        The quantiser's losses are means over the ``B h w D'`` elements of ``(z_e - e)^2`` (what
        ``F.mse_loss`` gives; ``D' = codebook_dim`` with factorised codes, else ``D``; for ``"rvq"``,
        summed over the stages); times ``h w D'`` they become sums over the grid and ``D'`` averaged
        over the batch, the scale of the summed reconstruction term. The codebook term is 0 under EMA
        (the codebook takes no gradient), and for ``"fsq"`` and ``"lfq"`` (no codebook); both are 0
        for ``"fsq"``.
        """
        elements = self.positions(out, suffix) * self.code_dim
        commitment = elements * out[f"commitment_loss{suffix}"].float()
        if self.ema or self.quantizer_kind in ("fsq", "lfq"):
            return commitment, torch.zeros((), device=commitment.device)
        return commitment, elements * out[f"codebook_loss{suffix}"].float()

    def entropy_term(self, out: ModelOutput, suffix: str = "") -> torch.Tensor:
        """``"lfq"``'s entropy term of one level on the honest scale, float32 0-dim: ``h w`` times the
        quantiser's ``per_sample_entropy - lfq_diversity_gamma * codebook_entropy`` (entropies in nats
        per code vector), i.e. the per-example sum over the grid of the per-sample entropies minus
        ``h w`` times the diversity term. It can be negative."""
        return self.positions(out, suffix) * out[f"entropy_loss{suffix}"].float()

    def usage(self, indices: torch.Tensor) -> torch.Tensor:
        """The fraction of the ``codebook_size`` codes the ``indices`` use, 0-dim float32; for ``"rvq"``
        the mean over the stages that ran of each stage's fraction (:func:`stage_usage`)."""
        if self.quantizer_kind == "rvq":
            return stage_usage(indices, self.codebook_size)
        return codebook_usage(indices, self.codebook_size)

    def prior_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """The examples of a batch of codes ``(B, ...)`` the prior trains on: the first ``prior_batch`` (all for 0)."""
        return codes[: self.prior_batch] if self.prior_batch else codes

    def vq_loss(self, x: torch.Tensor, out: ModelOutput, priors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss of a model whose levels are the keys of ``priors``, and the terms it reports.

        Args:
            x: the batch ``(B, *input_shape)``.
            out: ``forward(x)``: ``logits`` and, for each level suffix ``s``, the entries of
                :meth:`quantize`.
            priors: for each level suffix (``""`` for a model of one level), the level's prior term
                ``mean_b [ -log p_prior(k_b) ]`` (float32 0-dim) over the examples :meth:`prior_codes` picks.

        Returns:
            ``"loss" = recon + codebook + beta * commitment + prior`` (for ``"lfq"``:
            ``recon + lfq_commitment_weight * commitment + lfq_entropy_weight * entropy + prior``), where
            ``recon`` is ``mean_b [ -log p(x_b | z_q) ]`` and ``commitment``, ``codebook``, ``prior`` (and
            ``entropy``) are the sums over levels of :meth:`vq_terms`, ``priors`` (and
            :meth:`entropy_term`); then ``"recon"``, those totals, each level's
            ``"commitment{s}"``, ``"codebook{s}"``, ``"prior{s}"`` (``"entropy{s}"``) (for one level, the
            totals themselves), and each level's ``"perplexity{s}"`` (for ``"rvq"``, the mean over the
            stages that ran) and ``"usage{s}"`` (:meth:`usage`), reported and not minimised. Every term
            is float32 0-dim.
        """
        lfq = self.quantizer_kind == "lfq"
        names = LEVEL_TERMS + (("entropy",) if lfq else ())
        recon = self.reconstruction_nll(x, out.logits).mean()
        levels = {
            suffix: {
                **dict(zip(("commitment", "codebook"), self.vq_terms(out, suffix))), "prior": prior,
                **({"entropy": self.entropy_term(out, suffix)} if lfq else {}),
            }
            for suffix, prior in priors.items()
        }
        totals = {name: sum(level[name] for level in levels.values()) for name in names}
        if lfq:
            loss = (recon + self.lfq_commitment_weight * totals["commitment"]
                    + self.lfq_entropy_weight * totals["entropy"] + totals["prior"])
        else:
            loss = recon + totals["codebook"] + self.beta * totals["commitment"] + totals["prior"]
        terms = {"loss": loss, "recon": recon, **totals}
        terms.update({f"{name}{suffix}": level[name] for name in names for suffix, level in levels.items()})
        for suffix in levels:
            perplexity = out[f"perplexity{suffix}"].detach().float()
            terms[f"perplexity{suffix}"] = perplexity.nanmean() if perplexity.dim() else perplexity
        terms.update({f"usage{suffix}": self.usage(out[f"indices{suffix}"]) for suffix in levels})
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

        The posterior is a point mass on the quantiser's codes ``k`` (every stage's, for ``"rvq"``), so
        its KL to the prior is ``-log p_prior(k)``. Codebooks are not updated; examples go through in
        chunks of ``prior_batch``, so the priors' ``K``-way softmax stays as small as in training.
        """
        x = self.check_input(x)
        parts = []
        with self.frozen_codebooks():
            for part in x.split(self.prior_batch or x.shape[0]):
                out = self.forward(part, y)
                parts.append(-(self.reconstruction_nll(part, out.logits) + self.prior_nll(out)))
        return torch.cat(parts)


def _check_options(kind: str, options: dict[str, object]) -> None:
    """Refuse an option of ``options`` set away from its default for a quantiser it does not apply to
    (:data:`QUANTIZER_OPTIONS`): ValueError naming the option and ``quantizer``."""
    defaults = inspect.signature(VQModel.__init__).parameters
    for name, kinds in QUANTIZER_OPTIONS.items():
        default = defaults[name].default
        if kind not in kinds and not _is_default(options[name], default):
            allowed = " or ".join(map(repr, kinds))
            raise ValueError(
                f"{name} applies to quantizer={allowed} only, got {name}={options[name]!r} with "
                f"quantizer={kind!r}; leave it at its default {default!r}"
            )
