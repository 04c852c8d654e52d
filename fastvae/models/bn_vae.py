"""``bn_vae``: BN-VAE (Zhu et al. 2020), batch-normalised posterior means that keep the expected KL
bounded away from zero."""

from __future__ import annotations

import math

import torch
from torch import nn

from fastvae.models.base import GaussianVAE
from fastvae.models.registry import register

__all__ = ["BNVAE"]

#: The batch normalisation's ``eps``. Smaller than PyTorch's default 1e-5: the shared encoders start
#: with posterior means whose batch variance is about 1e-6, where ``eps = 1e-5`` would shrink
#: ``E_b[mu_i^2]`` to a fifth of ``gamma^2`` and void the bound below.
BN_EPS = 1e-8


@register("bn_vae")
class BNVAE(GaussianVAE):
    """BN-VAE of Zhu, Bi, Liu, Ma, Li & Wu, "A Batch Normalized Inference Network Keeps the KL
    Vanishing Away" (ACL 2020).

    The encoder's posterior means pass through batch normalisation with a *fixed* scale ``gamma`` and
    a learnable per-dimension shift ``beta``::

        mu_i = gamma * (mu'_i - E_b[mu'_i]) / sqrt(Var_b[mu'_i] + eps) + beta_i     (mu' the encoder's output)

    so over a batch ``E_b[mu_i^2] = gamma^2 Var_b/(Var_b + eps) + beta_i^2 ~= gamma^2 + beta_i^2`` whatever
    the encoder does, and since ``sigma^2 - log sigma^2 - 1 >= 0``::

        E_b[KL_b] >= (1/2) sum_i E_b[mu_i^2] ~= (latent_dim / 2) gamma^2 + (1/2) sum_i beta_i^2

    The KL cannot vanish (posterior collapse) however strong the decoder. The objective is the plain
    negative ELBO, unchanged::

        recon = mean_b [ -log p(x_b | z_b) ]          (summed over pixels; z_b ~ q(z|x_b), one sample)
        kl    = mean_b [ KL(q(z|x_b) || N(0, I)) ]     (summed over latent dims, with the normalised mu)
        loss  = recon + kl

    In training mode the batch statistics are used (a batch needs at least 2 examples); in eval mode
    the running averages, as for any batch normalisation (momentum 0.1, ``eps =`` :data:`BN_EPS`).

    Default ``gamma = 0.5``. The paper treats ``gamma`` as a tuned hyper-parameter of its
    text-modelling experiments rather than giving one default; values below 1 keep the aggregate
    posterior inside the prior (``gamma > 1`` makes ``E[mu^2]`` alone exceed the prior's variance).
    It must be positive (``gamma = 0`` removes the bound).

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: size of ``z``.
        gamma: the fixed scale of the normalised means (default 0.5).
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``.
        obs_std: standard deviation of the Gaussian observation model.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        gamma: float = 0.5,
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < math.inf:
            raise ValueError(f"gamma must be a positive finite number, got {gamma!r}")
        self.gamma = float(gamma)
        self.mu_norm = nn.BatchNorm1d(latent_dim, eps=BN_EPS, affine=False)
        #: The learnable shift ``beta`` of the normalised means, ``(latent_dim,)``.
        self.mu_shift = nn.Parameter(torch.zeros(latent_dim))

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mu, logvar)``, each ``(B, latent_dim)``, with ``mu`` batch-normalised as above."""
        mu, logvar = super().encode(x, y)
        return self.gamma * self.mu_norm(mu) + self.mu_shift, logvar
