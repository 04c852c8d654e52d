"""``vq_vae``: the vector-quantised VAE (van den Oord et al. 2017), with a jointly fitted PixelCNN prior.

Also :class:`VQModel`, what ``vq_vae`` and ``vq_vae2`` share: the observation models of
:class:`~fastvae.models.base.GaussianVAE`, hyper-parameter checks, the honest-scale VQ terms, and
reconstruction and ELBO paths that never update a codebook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from fastvae.ops._checks import check_int
from fastvae.models._prior import GatedPixelCNN
from fastvae.models.base import ModelOutput, ObservationModel
from fastvae.models.nets import FeatureDecoder, FeatureEncoder
from fastvae.models.registry import register
from fastvae.nn import VectorQuantizer
from fastvae.ops import _checks
from fastvae.ops.vq import VQOutput

__all__ = ["VQVAE", "VQModel"]


def codebook_usage(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """The fraction of the ``num_codes`` codes that ``indices`` (int64, any shape) use at least once (0-dim float32)."""
    return torch.bincount(indices.flatten(), minlength=num_codes).gt(0).float().mean()


class VQModel(ObservationModel):
    """Base of the VQ models: spatial codes, a learned codebook per level, an autoregressive prior.

    Subclasses build their networks, list their quantisers in :meth:`quantizers` and implement
    ``forward``, ``loss``, ``sample`` and :meth:`prior_nll`. This class gives them the observation
    model (``mean`` and ``reconstruction_nll``, the very methods of
    :class:`~fastvae.models.base.GaussianVAE`, so both families score ``-log p(x|z)`` identically),
    the quantiser factory, the honest-scale VQ terms, :meth:`reconstruct` and :meth:`elbo`.

    Args:
        input_shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``reduction``.
        latent_dim: ``D``, the code vectors' dimension.
        reduction: the total downsampling factor of the coarsest code grid.
        beta, ema, prior_batch, likelihood, obs_std: as in :class:`VQVAE`.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        reduction: int,
        beta: float,
        ema: bool,
        prior_batch: int,
        likelihood: str,
        obs_std: float,
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        if len(self.input_shape) != 3 or any(side % reduction for side in self.input_shape[1:]):
            raise ValueError(
                f"input_shape must be (C, H, W) with H and W divisible by {reduction} for model {self.name!r} "
                f"with these downsamples, got {self.input_shape!r}"
            )
        if not isinstance(ema, bool):
            raise TypeError(f"ema must be a bool, got {ema!r}")
        self.beta = _checks.number(beta, "beta", low=0.0)
        self.ema = ema
        self.prior_batch = check_int(prior_batch, "prior_batch", 0)

    def make_quantizer(
        self, codebook_size: int, *, decay: float, dead_code_threshold: float, precision: str
    ) -> VectorQuantizer:
        """A :class:`fastvae.nn.VectorQuantizer` of ``codebook_size`` codes of ``latent_dim`` over channel dim 1."""
        return VectorQuantizer(
            check_int(codebook_size, "codebook_size", 1), self.latent_dim, beta=self.beta, ema=self.ema, decay=decay,
            dead_code_threshold=dead_code_threshold, channel_dim=1, precision=precision,
        )

    def quantizers(self) -> tuple[torch.nn.Module, ...]:
        """The model's quantisers, coarsest first."""
        raise NotImplementedError

    @staticmethod
    def quantize(quantizer: torch.nn.Module, z_e: torch.Tensor) -> VQOutput:
        """``quantizer(z_e)`` in the codebook's dtype with autocast off, so that under mixed precision
        the nearest-code search, the losses and the EMA statistics keep the codebook's precision."""
        with torch.autocast(z_e.device.type, enabled=False):
            return quantizer(z_e.to(quantizer.codebook.dtype))

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

    def check_count(self, n: object) -> int:
        """``n`` as a positive int (ValueError naming ``n``)."""
        return check_int(n, "n", 1)

    def prior_nll(self, out: ModelOutput) -> torch.Tensor:
        """``-log p_prior(codes)`` in nats of every example's codes in ``out``, ``(B,)`` float32."""
        raise NotImplementedError

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


@register("vq_vae")
class VQVAE(VQModel):
    """The VQ-VAE of van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation Learning"
    (NeurIPS 2017), with a gated PixelCNN prior over its code grid.

    Encoder ``z_e = E(x)`` (:class:`~fastvae.models.nets.FeatureEncoder`: ``downsamples`` stride-2
    4 x 4 convolutions, a 3 x 3 convolution, ``res_blocks`` residual blocks, a 1 x 1 projection to
    ``D = latent_dim`` channels), a ``(H / 2^downsamples) x (W / 2^downsamples)`` grid of code vectors
    quantised to the nearest of ``codebook_size`` codes by :class:`fastvae.nn.VectorQuantizer` (the
    fused :func:`fastvae.vector_quantize`: never an ``N x K`` distance matrix), and the mirrored
    decoder (:class:`~fastvae.models.nets.FeatureDecoder`) on the straight-through codes ``z_q``.

    Loss, every term a per-example sum averaged over the batch (``h w`` code positions, ``sg`` = stop
    gradient)::

        recon      = mean_b [ -log p(x_b | z_q) ]                         (summed over pixels)
        commitment = mean_b [ sum_{h w} |z_e - sg[e]|^2 ]                  (summed over D too)
        codebook   = mean_b [ sum_{h w} |sg[z_e] - e|^2 ]   if ema=False;  0 under EMA
        prior      = mean_{b < prior_batch} [ -log p_prior(k_b) ]         (nats per grid; k = code indices)
        loss       = recon + codebook + beta * commitment + prior

    ``recon + prior`` is the negative ELBO of the model with the learned prior (the posterior is a
    point mass on the codes, so the KL is ``-log p_prior(k)``); ``commitment`` and ``codebook`` train
    the encoder and the codebook. The quantiser reports its losses as means over elements
    (``F.mse_loss``, the scale of the VQ-VAE authors' code); this model rescales them by ``h w D``
    inside its loss (:meth:`VQModel.vq_terms`) so that they are sums like ``recon`` and ``beta``
    weighs them against it as before.

    Codebook: with ``ema=True`` (the paper's appendix A.1; default) it is a buffer updated in
    training mode by exponential moving averages (``decay``, Laplace smoothing); with ``ema=False`` it
    is a parameter trained by the codebook loss. Codes whose EMA usage count falls below
    ``dead_code_threshold`` restart at a random encoder output of the batch (as in Jukebox,
    Dhariwal et al. 2020; not in the VQ-VAE paper). The default 1.0 restarts a code used less than
    once per batch on average; 0 disables restarts.

    Prior: a gated PixelCNN (:class:`~fastvae.models._prior.GatedPixelCNN`, van den Oord et al. 2016)
    over the ``h x w`` code grid in raster order. The paper fits it *after* training the VQ-VAE;
    here it is fitted jointly, on the code indices of each batch (integers, so no gradient of
    ``prior`` reaches the encoder or the codebook), on the first ``prior_batch`` examples of the
    batch (0: all), so that its ``K``-way softmax at every position does not grow with the batch.
    ``prior`` is the mean over those examples. :meth:`sample` draws codes from it, ``h w`` sequential
    steps, and decodes them.

    ``forward`` returns ``ModelOutput(recon, z, logits, z_e, indices, commitment_loss,
    codebook_loss, perplexity)``: ``z`` the straight-through codes ``(B, D, h, w)``, ``z_e`` the
    encoder output, ``indices (B, h, w)`` int64, the two losses as the quantiser returns them (means
    over the ``B h w D`` elements), ``perplexity`` the exponentiated entropy of code usage in the batch.
    ``loss`` also reports ``perplexity`` and ``usage`` (the fraction of codes the batch uses), not
    minimised. :meth:`reconstruct`, :meth:`elbo` (``-(recon + prior)`` per example) and eval mode
    never update the codebook.

    Args:
        input_shape: ``(C, H, W)``, sides divisible by ``2^downsamples``.
        latent_dim: ``D``, the code vectors' dimension (64 in the paper's setups).
        codebook_size: ``K`` (512 in the paper).
        beta: commitment weight (0.25).
        ema: learn the codebook by EMA (True) or by the codebook loss.
        decay: EMA decay (0.99).
        dead_code_threshold: EMA usage count below which a code restarts (1.0; 0 disables).
        hidden: channels of the encoder and decoder (128, the paper's 256 scaled to 64 x 64 data).
        res_blocks: residual blocks in the encoder and in the decoder (2).
        downsamples: stride-2 layers, 2: 64 x 64 images give a 16 x 16 code grid.
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``, as for GaussianVAE.
        obs_std: the Gaussian observation model's standard deviation.
        prior_channels: width of the PixelCNN prior (64).
        prior_layers: gated layers of the prior (8).
        prior_batch: examples per batch the prior trains on (64; 0: all).
        precision: ``"ieee"`` or ``"tf32"``, the nearest-code search's float32 products.
    """

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
        super().__init__(
            input_shape, latent_dim, reduction=2**downsamples, beta=beta, ema=ema, prior_batch=prior_batch,
            likelihood=likelihood, obs_std=obs_std,
        )
        channels, height, width = self.input_shape
        hidden = check_int(hidden, "hidden", 2)
        res_blocks = check_int(res_blocks, "res_blocks", 0)
        self.codebook_size = codebook_size
        self.code_grid = (height >> downsamples, width >> downsamples)
        self.encoder = FeatureEncoder(channels, latent_dim, hidden=hidden, downsamples=downsamples, res_blocks=res_blocks)
        self.quantizer = self.make_quantizer(
            codebook_size, decay=decay, dead_code_threshold=dead_code_threshold, precision=precision
        )
        self.decoder = FeatureDecoder(latent_dim, channels, hidden=hidden, upsamples=downsamples, res_blocks=res_blocks)
        self.prior = GatedPixelCNN(codebook_size, channels=check_int(prior_channels, "prior_channels", 1),
                                   layers=check_int(prior_layers, "prior_layers", 1))

    def quantizers(self) -> tuple[torch.nn.Module, ...]:
        """``(quantizer,)``."""
        return (self.quantizer,)

    def decode_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Decoder output (logits for Bernoulli, the mean for Gaussian) ``(B, *input_shape)`` of code
        indices ``(B, h, w)``."""
        return self.decoder(F.embedding(indices, self.quantizer.codebook).permute(0, 3, 1, 2))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ModelOutput:
        """Encode, quantise (updating the codebook in training mode), decode. ``x (B, *input_shape)``."""
        x = self.check_input(x)
        z_e = self.encoder(x)
        vq = self.quantize(self.quantizer, z_e)
        logits = self.decoder(vq.quantized)
        return ModelOutput(
            recon=self.mean(logits), z=vq.quantized, logits=logits, z_e=z_e, indices=vq.indices,
            commitment_loss=vq.commitment_loss, codebook_loss=vq.codebook_loss, perplexity=vq.perplexity,
        )

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "recon", "commitment", "codebook", "prior", "perplexity", "usage"}`` (see the class docstring)."""
        recon = self.reconstruction_nll(x, out.logits).mean()
        commitment, codebook = self.vq_terms(out)
        prior = self.prior.nll(self.prior_codes(out.indices)).mean()
        return {
            "loss": recon + codebook + self.beta * commitment + prior,
            "recon": recon,
            "commitment": commitment,
            "codebook": codebook,
            "prior": prior,
            "perplexity": out.perplexity.detach().float(),
            "usage": codebook_usage(out.indices, self.codebook_size),
        }

    def prior_nll(self, out: ModelOutput) -> torch.Tensor:
        """``-log p_prior(indices)`` in nats per example, ``(B,)`` float32."""
        return self.prior.nll(out.indices)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples ``(n, *input_shape)`` in data space: codes from the prior, decoded."""
        codes = self.prior.sample(self.check_count(n), self.code_grid)
        return self.mean(self.decode_codes(codes))
