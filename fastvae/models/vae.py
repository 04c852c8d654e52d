"""``vae``: the variational autoencoder (Kingma & Welling 2014; Rezende et al. 2014)."""

from __future__ import annotations

from fastvae.models.base import GaussianVAE
from fastvae.models.registry import register

__all__ = ["VAE"]


@register("vae")
class VAE(GaussianVAE):
    """The variational autoencoder of Kingma & Welling, "Auto-Encoding Variational Bayes" (ICLR 2014).

    ``q(z|x) = N(mu(x), diag(e^logvar(x)))``, ``p(z) = N(0, I)``, ``p(x|z)`` Bernoulli (or Gaussian with
    ``likelihood="gaussian"``), trained on the negative ELBO with one reparameterised sample::

        recon = mean_b [ -log p(x_b | z_b) ]            (summed over pixels)
        kl    = mean_b [ KL(q(z|x_b) || N(0, I)) ]       (summed over latent dims, closed form)
        loss  = recon + kl

    Sampling and KL run as one fused op (:func:`fastvae.reparameterize_kl`); ``log_likelihood(x, k)``
    is the importance-sampled estimate of Burda et al. (through :func:`fastvae.iwae_bound`).

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: size of ``z`` (default 10, as for dSprites in Higgins et al. 2017).
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``.
        obs_std: standard deviation of the Gaussian observation model.
    """
