"""``info_vae``: InfoVAE (Zhao et al. 2017), the ELBO with a reweighted KL and an MMD between the
aggregate posterior q(z) and the prior."""

from __future__ import annotations

import math

import torch

from fastvae.ops._checks import check_weight
from fastvae.models._divergences import KERNELS, mmd
from fastvae.models.base import GaussianVAE, ModelOutput
from fastvae.models.registry import register

__all__ = ["InfoVAE"]


@register("info_vae")
class InfoVAE(GaussianVAE):
    """InfoVAE of Zhao, Song & Ermon, "InfoVAE: Information Maximizing Variational Autoencoders"
    (arXiv 1706.02262, 2017; AAAI 2019).

    The InfoVAE objective with the MMD as the divergence ``D_Z`` between the aggregate posterior
    ``q(z) = E_x q(z|x)`` and the prior (the paper's MMD-VAE family)::

        recon = mean_b [ -log p(x_b | z_b) ]                (summed over pixels; z_b ~ q(z|x_b))
        kl    = mean_b [ KL(q(z|x_b) || N(0, I)) ]           (summed over latent dims, closed form)
        mmd   = MMD^2_k({z_b}, {z~_b}),  z~_b ~ N(0, I)     (unbiased U-statistic over the batch)
        loss  = recon + (1 - alpha) * kl + (alpha + lambda_ - 1) * mmd

    ``{z_b}`` are the posterior samples of this batch (one per example, i.e. samples of ``q(z)``) and
    ``{z~_b}`` as many fresh prior draws; the kernel ``k`` is RBF ``exp(-||z - z'||^2 / C)`` or IMQ
    ``C / (C + ||z - z'||^2)`` with ``C = 2 * latent_dim`` (see :mod:`fastvae.models._divergences`).

    The paper requires ``lambda_ > 0``; here both weights must also be non-negative
    (``alpha <= 1``, ``alpha + lambda_ >= 1``), so the objective stays bounded below. ``alpha = 0,
    lambda_ = 1`` is the plain VAE.

    Defaults: ``alpha = 0`` (KL weight 1, as in the ELBO) and ``lambda_ = 1000``, the large MMD
    weight of the paper's MMD-VAE experiments (against a reconstruction summed over pixels, an MMD of
    order 1e-2 needs it to matter), and the Gaussian (RBF) kernel the paper uses. The bandwidth
    ``C = 2 d`` is WAE's choice; the authors' code uses ``exp(-||z - z'||^2 / d^2)``.

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: size of ``z``.
        alpha: the InfoVAE ``alpha`` (default 0); the KL weight is ``1 - alpha``.
        lambda_: the InfoVAE ``lambda`` (default 1000); the MMD weight is ``alpha + lambda_ - 1``.
        kernel: ``"rbf"`` (default) or ``"imq"``.
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``.
        obs_std: standard deviation of the Gaussian observation model.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        alpha: float = 0.0,
        lambda_: float = 1000.0,
        kernel: str = "rbf",
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not -math.inf < alpha <= 1:
            raise ValueError(f"alpha must be a finite number <= 1 (the KL weight 1 - alpha is non-negative), got {alpha!r}")
        lambda_ = check_weight("lambda_", lambda_)
        if lambda_ == 0 or alpha + lambda_ < 1:
            raise ValueError(
                f"lambda_ must be > 0 with alpha + lambda_ >= 1 (the MMD weight is non-negative), "
                f"got lambda_={lambda_!r} with alpha={alpha!r}"
            )
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(map(repr, KERNELS))}, got {kernel!r}")
        self.alpha = float(alpha)
        self.lambda_ = lambda_
        self.kernel = kernel

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "recon", "kl", "mmd"}`` as in the class docstring, 0-dim float32 (``step`` unused).

        Draws ``B`` prior samples (``torch.randn``) for the MMD; needs a batch of at least 2.
        """
        recon = self.reconstruction_nll(x, out.logits).mean()
        kl = out.kl.float().mean()
        z = out.z.float()
        divergence = mmd(z, self.prior_sample(z.shape[0]).float(), kernel=self.kernel)
        loss = recon + (1.0 - self.alpha) * kl + (self.alpha + self.lambda_ - 1.0) * divergence
        return {"loss": loss, "recon": recon, "kl": kl, "mmd": divergence}
