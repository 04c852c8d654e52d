"""``el_vae``: the expected-loss VAE with an MS-SSIM reconstruction loss (Snell et al. 2017)."""

from __future__ import annotations

import math

import torch

from fastvae.models._ssim import gaussian_window, max_scales, ms_ssim, ms_ssim_weights
from fastvae.models.base import GaussianVAE, ModelOutput
from fastvae.models.registry import register

__all__ = ["ELVAE"]


@register("el_vae")
class ELVAE(GaussianVAE):
    """Snell, Ridgeway, Liao, Roads, Mozer & Zemel, "Learning to Generate Images with Perceptual
    Similarity Metrics" (ICIP 2017): a VAE whose reconstruction term is the MS-SSIM loss instead of a
    pixel-wise log-likelihood (their "expected-loss VAE").

    The decoder's output passes through a sigmoid, ``x_hat = sigmoid(decoder(z))`` in (0, 1) (data
    range ``L = 1``; ``out.recon``), with one reparameterised ``z ~ q(z|x)`` per example. With ``P =
    C * H * W`` pixels per image::

        recon = mean_b [ P * (1 - MS-SSIM(x_b, x_hat_b)) ]
        kl    = mean_b [ KL(q(z|x_b) || N(0, I)) ]          (summed over latent dims, closed form)
        loss  = recon + beta * kl

    The scale ``P``: ``1 - MS-SSIM`` is a mean over pixel positions of a local dissimilarity, so
    ``P * (1 - MS-SSIM)`` is on the scale of a sum over pixels, like the ``-log p(x|z)`` of the rest
    of the zoo, and ``beta`` weighs the KL against it as in a beta-VAE. ``loss`` also reports
    ``"ms_ssim"``, the batch mean of MS-SSIM (a diagnostic, not a separate term).

    MS-SSIM (:mod:`fastvae.models._ssim`): Gaussian window ``exp(-d^2 / (2 sigma^2))`` normalised to
    sum 1, ``window_size = 11``, ``sigma = 1.5``, valid filtering, ``C1 = 0.01^2``, ``C2 = 0.03^2``,
    2 x 2 average pooling between scales, per-channel MS-SSIM averaged over channels, each scale's
    mean ``cs`` (and the coarsest mean SSIM) clamped at 0 before its fractional power, as in
    pytorch-msssim and TensorFlow (so MS-SSIM is 0, and ``recon`` is ``P``, when a scale is
    anti-correlated), with a finite surrogate gradient there (see :mod:`fastvae.models._ssim`). The
    standard MS-SSIM has 5 scales; a 64 x 64 image fits only 3 (64, 32, 16: every scale's image at
    least the 11-tap window), so by default ``scales`` is the most that fit (at most 5) and the
    weights are the finest ``scales`` of ``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)``, renormalised
    to sum 1 (for 3 scales: ``(0.0448, 0.2856, 0.3001) / 0.6305``).

    ``elbo`` and ``log_likelihood`` (inherited) read the sigmoid outputs as Bernoulli means; the
    model is not trained on that likelihood, so they are diagnostics only.

    Args:
        input_shape: ``(C, H, W)``, pixels in [0, 1] (MS-SSIM needs images; flat data is refused).
        latent_dim: size of ``z``.
        beta: weight of the KL term (default 1: the ELBO's weighting with the MS-SSIM term in place
            of the log-likelihood).
        scales: MS-SSIM scales; None (default) for the most that fit the image (3 for 64 x 64).
        window_size: odd number of Gaussian taps (11, as in Wang et al.).
        window_sigma: the window's standard deviation in pixels (1.5, as in Wang et al.).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        beta: float = 1.0,
        scales: int | None = None,
        window_size: int = 11,
        window_sigma: float = 1.5,
    ) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"el_vae needs images: input_shape must be (C, H, W), got {tuple(input_shape)!r}")
        super().__init__(input_shape, latent_dim)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < math.inf:
            raise ValueError(f"beta must be a non-negative finite number, got {beta!r}")
        gaussian_window(window_size, window_sigma)  # validates both
        _, height, width = self.input_shape
        fit = max_scales(height, width, window_size)
        if fit == 0:
            raise ValueError(
                f"window_size={window_size} is larger than the {height} x {width} images; use a smaller window_size"
            )
        if scales is None:
            scales = fit
        elif isinstance(scales, bool) or not isinstance(scales, int) or not 1 <= scales <= fit:
            raise ValueError(
                f"scales must be None or an int in [1, {fit}] for {height} x {width} images with "
                f"window_size={window_size} (every scale's image at least the window), got {scales!r}"
            )
        self.beta = float(beta)
        self.scales = scales
        self.weights = ms_ssim_weights(scales)
        self.window_size = window_size
        self.window_sigma = float(window_sigma)

    def ms_ssim(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """MS-SSIM of each example with this model's settings: ``(B, C, H, W) x 2 -> (B,)`` float32."""
        return ms_ssim(
            x, recon, scales=self.scales, weights=self.weights, window_size=self.window_size, sigma=self.window_sigma
        )

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss": recon + beta * kl, "recon", "kl", "ms_ssim"}`` (class docstring), float32 scalars."""
        similarity = self.ms_ssim(x, out.recon)
        pixels = math.prod(self.input_shape)
        recon = (pixels * (1.0 - similarity)).mean()
        kl = out.kl.float().mean()
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl, "ms_ssim": similarity.mean().detach()}
