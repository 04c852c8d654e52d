"""``vq_vae2``: the two-level VQ-VAE of Razavi, van den Oord & Vinyals (2019), with PixelCNN priors."""

from __future__ import annotations

import torch
from torch import nn

from fastvae.models._vq import VQModel
from fastvae.models.base import ModelOutput
from fastvae.models.nets import FeatureDecoder, FeatureEncoder
from fastvae.models.registry import register

__all__ = ["VQVAE2"]


@register("vq_vae2")
class VQVAE2(VQModel):
    """VQ-VAE-2 of Razavi, van den Oord & Vinyals, "Generating Diverse High-Fidelity Images with
    VQ-VAE-2" (NeurIPS 2019): a top and a bottom code grid, each with its own codebook, and a gated
    PixelCNN prior per level.

    Networks (``D = latent_dim``; sides for 64 x 64 inputs with the default ``downsamples=2``):

    * bottom encoder (:class:`~fastvae.models.nets.FeatureEncoder`): ``x`` to ``hidden`` features at
      ``1 / 2^downsamples`` of the input side (16 x 16);
    * top encoder: a further stride-2 :class:`~fastvae.models.nets.FeatureEncoder` of those features
      to ``D`` channels (8 x 8), quantised by the top codebook: ``z_q_top``;
    * top decoder (:class:`~fastvae.models.nets.FeatureDecoder`): ``z_q_top`` upsampled to the bottom
      grid (16 x 16, ``D`` channels), concatenated with the bottom features, a 1 x 1 convolution to
      ``D`` channels, quantised by the bottom codebook: ``z_q_bottom``;
    * decoder: ``z_q_top`` upsampled by a stride-2 transposed convolution, concatenated with
      ``z_q_bottom`` (``z``, ``2D`` channels on the bottom grid), then a ``FeatureDecoder`` back to
      the image.

    Both quantisers are :class:`fastvae.nn.VectorQuantizer` (fused nearest-code search, EMA or
    loss-trained codebook, dead-code restart), configured alike, with the default ``quantizer="vq"``;
    ``"rvq"``, ``"fsq"`` and ``"lfq"`` put residual VQ, FSQ or LFQ at both levels, with the options,
    ``K``, losses and prior of each that :class:`~fastvae.models.vq_vae.VQVAE` states (for ``"rvq"``
    both priors model every stage, and the bottom prior's conditioning embeds every stage of the top
    codes; for ``"lfq"`` each level adds its ``entropy`` term). Loss, every term a per-example sum
    averaged over the batch (see :class:`~fastvae.models.vq_vae.VQVAE` for each level's terms; the
    quantisers' element means are rescaled by each level's ``h w D`` to sums)::

        loss = recon + codebook_top + codebook_bottom + beta * (commitment_top + commitment_bottom)
               + prior_top + prior_bottom

    Priors, as in the paper but small (gated PixelCNNs without the paper's self-attention,
    :class:`~fastvae.models._prior.GatedPixelCNN`): ``p(k_top)`` over the top grid and
    ``p(k_bottom | k_top)`` over the bottom grid, conditioned on the top codes (embedded, a 3 x 3
    convolution, upsampled to the bottom grid, added to every gated layer). The paper fits them after
    the autoencoder; here they are fitted jointly on the code indices of the first ``prior_batch``
    examples of each batch, so no gradient of theirs reaches the encoders or the codebooks.
    ``prior_top + prior_bottom`` is ``-log p(k_top, k_bottom)`` in nats, and ``recon`` plus it the
    negative ELBO. :meth:`sample` draws top codes, then bottom codes given them (``h_t w_t + h_b w_b``
    sequential steps), and decodes.

    ``forward`` returns ``ModelOutput(recon, z, logits, z_top, z_bottom, indices_top (B, h_t, w_t),
    indices_bottom (B, h_b, w_b), commitment_loss_top, commitment_loss_bottom, codebook_loss_top,
    codebook_loss_bottom, perplexity_top, perplexity_bottom)``. ``loss`` returns ``"loss"``,
    ``"recon"``, the totals ``"commitment"``, ``"codebook"``, ``"prior"`` and each level's
    ``"commitment_top"``, ``"commitment_bottom"``, ``"codebook_top"``, ``"codebook_bottom"``,
    ``"prior_top"``, ``"prior_bottom"`` (for ``"lfq"`` also ``"entropy"``, ``"entropy_top"``,
    ``"entropy_bottom"``), plus ``"perplexity_top"``, ``"perplexity_bottom"``, ``"usage_top"``,
    ``"usage_bottom"`` (reported, not minimised). With ``"rvq"`` the indices are ``(B, h, w, Q)``. :meth:`reconstruct`, :meth:`elbo`
    (``-(recon + prior)`` per example) and eval mode never update a codebook.

    Args:
        input_shape: ``(C, H, W)``, sides divisible by ``2^(downsamples + 1)``.
        latent_dim: ``D`` of both codebooks (64 in the paper).
        codebook_size: ``K`` of each codebook (512 in the paper).
        beta: commitment weight (0.25).
        ema: EMA codebooks (True, as in the paper) or loss-trained ones.
        decay: EMA decay (0.99).
        dead_code_threshold: EMA usage count below which a code restarts (1.0; 0 disables).
        hidden: channels of the encoders and decoders (128).
        res_blocks: residual blocks per encoder and decoder (2).
        downsamples: stride-2 layers of the bottom encoder (2); the top grid is half the bottom one.
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``.
        obs_std: the Gaussian observation model's standard deviation.
        prior_channels: width of each prior (64).
        prior_layers: gated layers of each prior (8).
        prior_batch: examples per batch the priors train on (64; 0: all).
        precision: ``"ieee"`` or ``"tf32"``, the nearest-code searches' float32 products (``"vq"``).
        quantizer, num_quantizers, shared_codebook, quantize_dropout, kmeans_init, kmeans_iters,
        codebook_dim, gradient, fsq_levels, lfq_commitment_weight, lfq_entropy_weight,
        lfq_diversity_gamma, lfq_inv_temperature: the quantiser of both levels and its options, as
            for :class:`~fastvae.models.vq_vae.VQVAE`.
    """

    levels = 2

    def build_networks(self) -> None:
        """The networks of the class docstring, the quantisers and the priors, in the order of their weights."""
        channels, height, width = self.input_shape
        latent_dim, hidden, res_blocks, downsamples = self.latent_dim, self.hidden, self.res_blocks, self.downsamples
        self.bottom_grid = (height >> downsamples, width >> downsamples)
        self.top_grid = (height >> (downsamples + 1), width >> (downsamples + 1))
        self.encoder_bottom = FeatureEncoder(channels, hidden, hidden=hidden, downsamples=downsamples,
                                             res_blocks=res_blocks)
        self.encoder_top = FeatureEncoder(hidden, latent_dim, hidden=hidden, downsamples=1, res_blocks=res_blocks)
        self.quantizer_top = self.make_quantizer()
        self.decoder_top = FeatureDecoder(latent_dim, latent_dim, hidden=hidden, upsamples=1, res_blocks=res_blocks)
        self.pre_quantize_bottom = nn.Conv2d(latent_dim + hidden, latent_dim, 1)
        self.quantizer_bottom = self.make_quantizer()
        self.upsample_top = nn.ConvTranspose2d(latent_dim, latent_dim, 4, stride=2, padding=1)
        self.decoder = FeatureDecoder(2 * latent_dim, channels, hidden=hidden, upsamples=downsamples,
                                      res_blocks=res_blocks)
        self.prior_top = self.make_prior()
        self.prior_bottom = self.make_prior(condition_codes=self.codebook_size)

    def quantizers(self) -> tuple[nn.Module, ...]:
        """``(quantizer_top, quantizer_bottom)``."""
        return (self.quantizer_top, self.quantizer_bottom)

    def _decode(self, z_top: torch.Tensor, z_bottom: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, decoder output)`` from the two quantised maps ``(B, D, h_t, w_t)`` and ``(B, D, h_b, w_b)``."""
        z = torch.cat([self.upsample_top(z_top), z_bottom], dim=1)
        return z, self.decoder(z)

    def decode_codes(self, indices_top: torch.Tensor, indices_bottom: torch.Tensor) -> torch.Tensor:
        """Decoder output ``(B, *input_shape)`` (logits for Bernoulli, the mean for Gaussian) of the int64 code
        indices ``(B, h_t, w_t)`` and ``(B, h_b, w_b)`` (``(B, h, w, Q)`` each for ``"rvq"``), decoded through
        :meth:`VQModel.code_vectors`."""
        z_top = self.code_vectors(self.quantizer_top, indices_top)
        z_bottom = self.code_vectors(self.quantizer_bottom, indices_bottom)
        return self._decode(z_top, z_bottom)[1]

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ModelOutput:
        """Encode both levels, quantise top then bottom (updating the codebooks in training mode), decode."""
        x = self.check_input(x)
        features = self.encoder_bottom(x)
        top = self.quantize(self.quantizer_top, self.encoder_top(features), "_top")
        z_e_bottom = self.pre_quantize_bottom(torch.cat([self.decoder_top(top["z_top"]), features], dim=1))
        bottom = self.quantize(self.quantizer_bottom, z_e_bottom, "_bottom")
        z, logits = self._decode(top["z_top"], bottom["z_bottom"])
        return ModelOutput(recon=self.mean(logits), z=z, logits=logits, **top, **bottom)

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """The terms of the class docstring: totals, each level's, perplexities and usage."""
        top = self.prior_codes(out.indices_top)
        return self.vq_loss(x, out, {
            "_top": self.prior_top.nll(top).mean(),
            "_bottom": self.prior_bottom.nll(self.prior_codes(out.indices_bottom), top).mean(),
        })

    def prior_nll(self, out: ModelOutput) -> torch.Tensor:
        """``-log p(indices_top) - log p(indices_bottom | indices_top)`` in nats per example, ``(B,)`` float32."""
        return self.prior_top.nll(out.indices_top) + self.prior_bottom.nll(out.indices_bottom, out.indices_top)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples ``(n, *input_shape)`` in data space: top codes from the top prior, bottom codes
        from the bottom prior given them, decoded."""
        top = self.prior_top.sample(self.check_count(n), self.top_grid)
        bottom = self.prior_bottom.sample(n, self.bottom_grid, condition=top)
        return self.mean(self.decode_codes(top, bottom))
