"""``vq_vae``: the vector-quantised VAE (van den Oord et al. 2017), with a jointly fitted PixelCNN prior."""

from __future__ import annotations

import torch

from fastvae.models._vq import VQModel
from fastvae.models.base import ModelOutput
from fastvae.models.nets import FeatureDecoder, FeatureEncoder
from fastvae.models.registry import register

__all__ = ["VQVAE", "VQModel"]


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

    levels = 1

    def build_networks(self) -> None:
        """Encoder, quantiser, decoder and prior, in that order."""
        channels, height, width = self.input_shape
        self.code_grid = (height >> self.downsamples, width >> self.downsamples)
        self.encoder = FeatureEncoder(channels, self.latent_dim, hidden=self.hidden, downsamples=self.downsamples,
                                      res_blocks=self.res_blocks)
        self.quantizer = self.make_quantizer()
        self.decoder = FeatureDecoder(self.latent_dim, channels, hidden=self.hidden, upsamples=self.downsamples,
                                      res_blocks=self.res_blocks)
        self.prior = self.make_prior()

    def quantizers(self) -> tuple[torch.nn.Module, ...]:
        """``(quantizer,)``."""
        return (self.quantizer,)

    def decode_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Decoder output (logits for Bernoulli, the mean for Gaussian) ``(B, *input_shape)`` of code
        indices ``(B, h, w)``."""
        return self.decoder(self.code_vectors(self.quantizer, indices))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ModelOutput:
        """Encode, quantise (updating the codebook in training mode), decode. ``x (B, *input_shape)``."""
        x = self.check_input(x)
        z_e = self.encoder(x)
        vq = self.quantize(self.quantizer, z_e)
        logits = self.decoder(vq.quantized)
        return ModelOutput(recon=self.mean(logits), logits=logits, z_e=z_e, **self.level_outputs(vq))

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "recon", "commitment", "codebook", "prior", "perplexity", "usage"}`` (see the class docstring)."""
        return self.vq_loss(x, out, {"": self.prior.nll(self.prior_codes(out.indices)).mean()})

    def prior_nll(self, out: ModelOutput) -> torch.Tensor:
        """``-log p_prior(indices)`` in nats per example, ``(B,)`` float32."""
        return self.prior.nll(out.indices)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples ``(n, *input_shape)`` in data space: codes from the prior, decoded."""
        codes = self.prior.sample(self.check_count(n), self.code_grid)
        return self.mean(self.decode_codes(codes))
