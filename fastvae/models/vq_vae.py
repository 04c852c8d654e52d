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
    That is ``quantizer="vq"``, the default and the paper's model; the other quantisers replace the
    codebook (below, "Quantisers").

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

    Quantisers (``quantizer``; :class:`VQModel` lists which options each takes, and refuses the others
    away from their defaults). ``K`` below is :attr:`codebook_size`, the codes the prior chooses among:

    * ``"vq"`` (default): the codebook above, :class:`fastvae.nn.VectorQuantizer`, ``K =
      codebook_size``. ``kmeans_init`` initialises it by ``kmeans_iters`` Lloyd iterations on the first
      training batch; ``codebook_dim`` factorises it (the search and the losses in a
      ``codebook_dim``-dimensional space behind linear projections, so ``commitment`` sums over
      ``h w codebook_dim``); ``gradient="rotation"`` passes the gradient by the rotation trick
      (Fifty et al. 2024).
    * ``"rvq"``: residual VQ (:class:`fastvae.nn.ResidualVQ`; SoundStream, Zeghidour et
      al. 2021): ``Q = num_quantizers`` codebooks of ``K = codebook_size`` codes, stage ``q``
      quantising the residual ``r_q = z_e - sum_{j<q} e_j``; ``z_q = sum_q e_q``, ``indices (B, h, w,
      Q)``. ``commitment = mean_b [ sum_q sum_{h w} |r_q - sg[e_q]|^2 ]`` and ``codebook`` likewise
      with the stop gradient on ``r_q`` (0 under EMA). ``shared_codebook``: one codebook for every
      stage; ``quantize_dropout``: each training batch keeps a random number ``1..Q`` of the first
      stages (SoundStream's quantizer dropout), the others' indices are ``-1`` and add nothing to
      ``commitment``, ``codebook`` or ``prior``. The prior models all ``h w Q`` codes in the raster
      order of position, then stage (:class:`~fastvae.models._prior.GatedPixelCNN` with ``stages = Q``:
      ``p(k) = prod_{i, j, q} p(k_ijq | the positions before (i, j), the stages < q at (i, j))``), so
      ``prior`` and the ELBO's KL are ``-log p_prior`` of every stage's codes; :meth:`sample` draws
      ``h w Q`` codes, one by one.
    * ``"fsq"``: finite scalar quantisation (:class:`fastvae.nn.FSQ`, Mentzer et al. 2023) with
      ``fsq_levels`` (default ``(8, 5, 5, 5)``, ``K = prod(fsq_levels) = 1000``): ``z_e``'s ``D``
      channels are projected to ``len(fsq_levels)`` by a linear layer (none when ``D =
      len(fsq_levels)``), bounded and rounded with a straight-through gradient, and projected back to
      ``D``. No codebook is learned, so ``commitment = codebook = 0`` and ``loss = recon + prior``.
    * ``"lfq"``: lookup-free quantisation (:class:`fastvae.nn.LFQ`, Yu et al. 2023, MAGVIT-v2): each
      of the ``D = latent_dim`` channels is a bit, ``z_q = sign(z_e)`` in ``{-1, +1}^D`` with a
      straight-through gradient, ``K = 2^D`` (``latent_dim`` at most 20; the prior's softmax has
      ``2^D`` outputs, so 8 to 12 bits suit it). No projection and no codebook: ``codebook = 0``,
      ``commitment = mean_b [ sum_{h w} |z_e - sg[z_q]|^2 ]`` weighted by ``lfq_commitment_weight``
      (not ``beta``), and ``entropy = h w (mean_n H(p(. | z_n)) - lfq_diversity_gamma H(mean_n p(. |
      z_n)))`` with ``p(c | z) = softmax_c(2 lfq_inv_temperature <z, c>)`` over the ``2^D`` codes, ``n``
      over the batch's ``B h w`` code vectors (the per-sample entropy summed over the grid, minus
      ``h w`` times the batch's code entropy; negative when codes are confident and diverse)::

          loss = recon + lfq_commitment_weight * commitment + lfq_entropy_weight * entropy + prior

      ``lfq_commitment_weight`` is 0.05, not the 0.25 of :class:`fastvae.nn.LFQ`: on this honest
      scale 0.25 pins every bit's sign early and the codes collapse to a few (seen on dSprites), and 0
      (vector-quantize-pytorch's default) lets ``|z_e|`` grow without bound.

    ``forward`` returns ``ModelOutput(recon, z, logits, z_e, indices, commitment_loss,
    codebook_loss, perplexity)`` (and ``entropy_loss`` for ``"lfq"``): ``z`` the straight-through
    codes ``(B, D, h, w)``, ``z_e`` the encoder output, ``indices (B, h, w)`` int64 (``(B, h, w, Q)``
    for ``"rvq"``), the losses as the quantiser returns them (means over the ``B h w D`` elements; 0
    where it has none), ``perplexity`` the exponentiated entropy of code usage in the batch (``(Q,)``
    per stage for ``"rvq"``). ``loss`` also reports ``perplexity`` and ``usage`` (the fraction of the
    ``K`` codes the batch uses; for ``"rvq"`` both are means over the stages that ran), not minimised,
    and for ``"lfq"`` the ``entropy`` term. :meth:`reconstruct`, :meth:`elbo` (``-(recon + prior)`` per example) and eval mode
    never update the codebook.

    Args:
        input_shape: ``(C, H, W)``, sides divisible by ``2^downsamples``.
        latent_dim: ``D``, the code vectors' dimension (64 in the paper's setups).
        codebook_size: ``K`` (512 in the paper); per stage for ``"rvq"``.
        beta: commitment weight (0.25), for ``"vq"`` and ``"rvq"``.
        ema: learn the codebook by EMA (True) or by the codebook loss (``"vq"``, ``"rvq"``).
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
        precision: ``"ieee"`` or ``"tf32"``, the nearest-code search's float32 products (``"vq"``).
        quantizer: ``"vq"`` (default), ``"rvq"``, ``"fsq"`` or ``"lfq"`` (above).
        num_quantizers: ``Q``, the stages of ``"rvq"`` (4).
        shared_codebook: one codebook for every ``"rvq"`` stage (False).
        quantize_dropout: ``"rvq"``'s quantizer dropout in training (False).
        kmeans_init: initialise the codebook(s) by k-means on the first training batch (``"vq"``,
            ``"rvq"``; False).
        kmeans_iters: Lloyd iterations of that initialisation (10; ``"vq"`` only, ``"rvq"`` runs
            ResidualVQ's 10).
        codebook_dim: factorised codes of this dimension (``"vq"``; None: ``D``).
        gradient: ``"ste"`` (default) or ``"rotation"`` (``"vq"``).
        fsq_levels: the levels of ``"fsq"`` (``(8, 5, 5, 5)``, the FSQ paper's ``K = 1000``).
        lfq_commitment_weight: ``"lfq"``'s commitment weight (0.05, above).
        lfq_entropy_weight: ``"lfq"``'s entropy weight (0.1, MAGVIT-v2's).
        lfq_diversity_gamma: the weight of the batch's code entropy in ``entropy`` (1.0).
        lfq_inv_temperature: ``"lfq"``'s inverse temperature of the code probabilities (100).
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
        """Decoder output (logits for Bernoulli, the mean for Gaussian) ``(B, *input_shape)`` of the int64
        code indices ``(B, h, w)`` (``(B, h, w, Q)`` for ``"rvq"``), decoded through :meth:`VQModel.code_vectors`."""
        return self.decoder(self.code_vectors(self.quantizer, indices))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ModelOutput:
        """Encode, quantise (updating the codebook in training mode), decode. ``x (B, *input_shape)``."""
        x = self.check_input(x)
        z_e = self.encoder(x)
        level = self.quantize(self.quantizer, z_e)
        logits = self.decoder(level["z"])
        return ModelOutput(recon=self.mean(logits), logits=logits, z_e=z_e, **level)

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "recon", "commitment", "codebook", "prior", "perplexity", "usage"}``, and ``"entropy"``
        after ``"prior"`` for ``"lfq"`` (see the class docstring); float32 0-dim each."""
        return self.vq_loss(x, out, {"": self.prior.nll(self.prior_codes(out.indices)).mean()})

    def prior_nll(self, out: ModelOutput) -> torch.Tensor:
        """``-log p_prior(indices)`` in nats per example (over all ``h w Q`` codes for ``"rvq"``), ``(B,)`` float32."""
        return self.prior.nll(out.indices)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples ``(n, *input_shape)`` in data space: codes from the prior, decoded."""
        codes = self.prior.sample(self.check_count(n), self.code_grid)
        return self.mean(self.decode_codes(codes))
