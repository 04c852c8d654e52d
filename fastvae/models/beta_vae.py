"""``beta_vae`` (Higgins et al. 2017) and ``disentangled_beta_vae`` (Burgess et al. 2018): the ELBO with
a reweighted KL term, fixed or pulled towards a capacity that grows over training."""

from __future__ import annotations

import torch

from fastvae.ops._checks import check_step, check_weight
from fastvae.models.base import GaussianVAE, ModelOutput
from fastvae.models.registry import register

__all__ = ["BetaVAE", "DisentangledBetaVAE"]


@register("beta_vae")
class BetaVAE(GaussianVAE):
    """β-VAE of Higgins et al., "β-VAE: Learning Basic Visual Concepts with a Constrained Variational
    Framework" (ICLR 2017).

    The VAE with its KL term weighted by β > 1, which pressures the posterior towards the factorised
    prior and so towards disentangled latents::

        recon = mean_b [ -log p(x_b | z_b) ]          (summed over pixels; z_b ~ q(z|x_b), one sample)
        kl    = mean_b [ KL(q(z|x_b) || N(0, I)) ]     (summed over latent dims, closed form)
        loss  = recon + beta * kl

    ``forward`` is :class:`GaussianVAE`'s (fused :func:`fastvae.reparameterize_kl`).

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: size of ``z`` (10 for dSprites in the paper).
        beta: the KL weight (default 4, the paper's dSprites value with 10 latents and a Bernoulli
            decoder, on this summed scale).
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``.
        obs_std: standard deviation of the Gaussian observation model.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        beta: float = 4.0,
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        self.beta = check_weight("beta", beta)

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss": recon + beta * kl, "recon", "kl"}``, 0-dim float32 (``step`` unused)."""
        recon = self.reconstruction_nll(x, out.logits).mean()
        kl = out.kl.float().mean()
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl}


@register("disentangled_beta_vae")
class DisentangledBetaVAE(GaussianVAE):
    """β-VAE with controlled capacity increase, Burgess et al., "Understanding disentangling in
    β-VAE" (NIPS 2017 Workshop on Learning Disentangled Representations; arXiv 1804.03599, 2018).

    The KL is pulled towards a target capacity ``C`` (in nats) that rises linearly from 0 to
    ``capacity_max`` over the first ``capacity_steps`` training steps, so the latent code is allowed to
    carry more information as training progresses::

        C(step) = capacity_max * min(step / capacity_steps, 1)      (C(None) = capacity_max)
        recon   = mean_b [ -log p(x_b | z_b) ]                       (summed over pixels)
        kl      = mean_b [ KL(q(z|x_b) || N(0, I)) ]                  (summed over latent dims)
        loss    = recon + gamma * | kl - C(step) |

    The absolute value is taken of the batch-mean KL, as in the paper's objective
    ``E[log p(x|z)] - gamma |KL - C|``. The schedule depends only on the ``step`` passed to
    :meth:`loss` (training steps); the model keeps no counter, so extra ``forward``/``loss`` calls
    (evaluation, logging) never move it.

    Defaults are the paper's dSprites settings (its appendix on experimental details): gamma = 1000 and C raised from 0 to
    25 nats over 100,000 iterations, with a Bernoulli decoder. They are in nats of the KL summed over
    latent dimensions and recon summed over pixels, which is the scale used here, so they carry over
    unchanged.

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: size of ``z`` (10 in the paper).
        gamma: weight of ``|kl - C|`` (default 1000).
        capacity_max: final capacity ``C`` in nats (default 25).
        capacity_steps: training steps over which ``C`` rises from 0 to ``capacity_max`` (default 100,000).
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``.
        obs_std: standard deviation of the Gaussian observation model.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        gamma: float = 1000.0,
        capacity_max: float = 25.0,
        capacity_steps: int = 100_000,
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        self.gamma = check_weight("gamma", gamma)
        self.capacity_max = check_weight("capacity_max", capacity_max)
        if isinstance(capacity_steps, bool) or not isinstance(capacity_steps, int) or capacity_steps < 1:
            raise ValueError(f"capacity_steps must be a positive int, got {capacity_steps!r}")
        self.capacity_steps = capacity_steps

    def capacity(self, step: int | None) -> float:
        """The target KL ``C(step)`` in nats; ``step=None`` means the end of the schedule."""
        step = check_step(step)
        if step is None:
            return self.capacity_max
        return self.capacity_max * min(step / self.capacity_steps, 1.0)

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss": recon + gamma * |kl - C(step)|, "recon", "kl", "capacity"}``, 0-dim float32."""
        capacity = self.capacity(step)
        recon = self.reconstruction_nll(x, out.logits).mean()
        kl = out.kl.float().mean()
        loss = recon + self.gamma * (kl - capacity).abs()
        return {"loss": loss, "recon": recon, "kl": kl, "capacity": torch.tensor(capacity, device=kl.device)}
