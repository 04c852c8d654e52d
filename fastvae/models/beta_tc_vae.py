"""``beta_tc_vae``: the beta-TCVAE (Chen, Li, Grosse & Duvenaud 2018)."""

from __future__ import annotations

import torch

from fastvae.models._tc import KLDecompositionVAE
from fastvae.models.base import ModelOutput
from fastvae.models.registry import register

__all__ = ["BetaTCVAE"]


@register("beta_tc_vae")
class BetaTCVAE(KLDecompositionVAE):
    """beta-TCVAE of Chen et al., "Isolating Sources of Disentanglement in Variational Autoencoders"
    (NeurIPS 2018).

    The ELBO's KL term, averaged over the data, splits into index-code mutual information, total
    correlation and dimension-wise KL; each gets its own weight. With one sample ``z_b ~ q(z|x_b)``
    per example and ``log q(z)``, ``log q(z_d)`` estimated on the minibatch (minibatch-weighted or
    minibatch-stratified sampling, see :mod:`fastvae.models._tc`)::

        recon = mean_b [ -log p(x_b | z_b) ]                              (summed over pixels)
        mi    = mean_b [ log q(z_b|x_b) - log q(z_b) ]
        tc    = mean_b [ log q(z_b) - sum_d log q(z_bd) ]
        dwkl  = mean_b [ sum_d log q(z_bd) - log p(z_b) ]                 (p = N(0, I))
        loss  = recon + alpha * mi + beta * tc + gamma * dwkl

    ``mi + tc + dwkl`` is the one-sample Monte-Carlo KL ``mean_b[log q(z_b|x_b) - log p(z_b)]``, so
    ``alpha = beta = gamma = 1`` is the plain VAE's loss (with a sampled instead of a closed-form KL),
    as in the official code. ``loss`` also reports ``kl``, the closed-form ``mean_b KL(q(z|x_b) || p)``
    (summed over latent dims), for monitoring; it is not part of ``"loss"``.

    Signs. The exact terms (expectations with the true aggregate posterior) are all >= 0; the logged
    ones are minibatch estimates and can be negative:

    * ``"mss"`` (the default) estimates ``q(z)`` without bias at any batch size, so its only bias is
      that of the logarithm (``E log q_hat <= log q``): ``dwkl`` reads low, by an amount that shrinks
      as the batch grows. On a 40-point data set with exact ``dwkl = 0.323`` (2 dims, by quadrature)
      its mean is about 0.07 at batch 8 and 0.31 at batch 32; when a posterior dim equals the prior
      the estimate of that dim's KL is exactly 0.
    * ``"mws"`` (the paper's main-text estimator) weights every batch point by ``1/(N B)``: its
      weights sum to ``1/N``, not 1, so each ``log q(z)`` and ``log q(z_d)`` estimate is low by
      between about ``log B`` (well-separated posteriors) and ``log N`` (overlapping ones), at every
      batch size. Its ``dwkl`` is about ``-D log N`` whenever the posterior dims overlap: exactly
      ``-10 log 737,280 = -135.1`` for 10 dims equal to the prior (at initialisation, or after
      collapse), with ``mi = log N`` and ``tc = (D - 1) log N``; on the 40-point set its mean is
      about -7.03 at batch 32 and -7.05 at batch 40 (the exact 0.323 minus ``2 log 40 = 7.38``).
      These values are the estimator's, not a defect of this implementation: tests check both
      estimators against exact enumeration and quadrature.

    Hyper-parameters (the paper's dSprites values):
        alpha: weight of the mutual information (1).
        beta: weight of the total correlation (6, the value of the official code's dSprites command
            ``vae_quant.py --dataset shapes --beta 6 --tcvae``).
        gamma: weight of the dimension-wise KL (1).
        dataset_size: ``N``, the number of training examples the estimators assume (737,280, the
            full dSprites grid; set it to the size of the set you train on).
        estimator: ``"mss"`` (minibatch-stratified sampling, the paper's appendix and the official
            code's ``--mss``, "the improved minibatch estimator"; batches of >= 2; the default, as in
            ``hfvae``) or ``"mws"`` (minibatch-weighted sampling, the paper's main-text estimator and
            the official code's default). See "Signs" above.
        likelihood, obs_std: the observation model (:mod:`fastvae.models.base`).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        alpha: float = 1.0,
        beta: float = 6.0,
        gamma: float = 1.0,
        dataset_size: int = 737_280,
        estimator: str = "mss",
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
    ) -> None:
        super().__init__(
            input_shape, latent_dim, alpha=alpha, beta=beta, gamma=gamma, dataset_size=dataset_size,
            estimator=estimator, likelihood=likelihood, obs_std=obs_std,
        )

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "recon", "mi", "tc", "dwkl", "kl"}``: scalars (float32), see the class docstring."""
        recon = self.reconstruction_nll(x, out.logits).mean()
        terms = self.kl_terms(out)
        loss = recon + self.alpha * terms["mi"] + self.beta * terms["tc"] + self.gamma * terms["dwkl"]
        return {"loss": loss, "recon": recon, **terms, "kl": out.kl.float().mean()}
