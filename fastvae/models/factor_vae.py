"""``factor_vae``: FactorVAE (Kim & Mnih 2018), and the discriminator helpers the adversarial models share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastvae.ops._checks import check_weight
from fastvae.models.base import GaussianVAE, ModelOutput
from fastvae.models.registry import register

__all__ = ["FactorVAE", "call_frozen", "permute_dims", "tc_discriminator"]


def call_frozen(module: nn.Module, *inputs: torch.Tensor) -> Any:
    """``module(*inputs)`` with its parameters detached.

    Gradients flow to ``inputs`` but never reach ``module``'s parameters, so a generator loss can
    score samples with a discriminator without training it, whatever the optimiser set-up.
    """
    params = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, params, inputs)


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shuffle each latent dimension independently across the batch (Kim & Mnih 2018, Algorithm 1).

    Column ``d`` of the result is column ``d`` of ``z`` under its own random permutation of the
    batch, so every marginal ``q(z_d)`` is kept while the dependence between dims is destroyed: the
    rows are samples of ``prod_d q(z_d)``. (Not a shuffle within a sample: values never move
    between dims.)

    Args:
        z: ``(B, D)``.
        generator: optional random generator (default: torch's global one).

    Returns:
        ``(B, D)``, same dtype and device.
    """
    if z.dim() != 2:
        raise ValueError(f"z must have shape (B, D), got {tuple(z.shape)}")
    keys = torch.rand(z.shape, generator=generator, device=z.device if generator is None else generator.device)
    return z.gather(0, keys.argsort(dim=0).to(z.device))


def tc_discriminator(latent_dim: int, *, width: int = 1000, layers: int = 6) -> nn.Sequential:
    """The FactorVAE discriminator: ``layers`` linear layers (``width`` units, LeakyReLU(0.2) between)
    ending in one logit, ``(B, latent_dim) -> (B, 1)`` (Kim & Mnih 2018, appendix: 6 layers of 1000)."""
    blocks: list[nn.Module] = []
    inputs = latent_dim
    for _ in range(layers - 1):
        blocks += [nn.Linear(inputs, width), nn.LeakyReLU(0.2)]
        inputs = width
    blocks.append(nn.Linear(inputs, 1))
    return nn.Sequential(*blocks)


@register("factor_vae")
class FactorVAE(GaussianVAE):
    """FactorVAE of Kim & Mnih, "Disentangling by Factorising" (ICML 2018).

    The ELBO plus gamma times the total correlation ``KL(q(z) || prod_d q(z_d))``, estimated by the
    density-ratio trick: a discriminator ``D`` is trained to tell samples of ``q(z)`` from samples of
    ``prod_d q(z_d)`` (:func:`permute_dims`), and then ``TC ~= E_q(z)[log D(z) / (1 - D(z))]``, which
    is the discriminator's logit. With ``z_b ~ q(z|x_b)`` (one sample per example)::

        recon     = mean_b [ -log p(x_b | z_b) ]                    (summed over pixels)
        kl        = mean_b [ KL(q(z|x_b) || N(0, I)) ]               (summed over latent dims, closed form)
        tc        = mean_b [ logit D(z_b) ]                          (D's parameters detached)
        loss      = recon + kl + gamma * tc
        disc_loss = mean_{b < h} BCE(logit D(z_b), 1) + mean_b BCE(logit D(permute_dims(z_{h:})_b), 0)

    where ``BCE(l, t) = -t log sigmoid(l) - (1 - t) log(1 - sigmoid(l))``, so ``disc_loss`` is minus
    the paper's discriminator objective ``E_q(z)[log D(z)] + E_{prod q(z_d)}[log(1 - D(z))]``.

    ``disc_loss`` sees ``z`` detached: the first ``h = floor(B / 2)`` codes as real samples of ``q(z)``,
    the other ``B - h``, permuted dim by dim, as samples of ``prod_d q(z_d)`` (the paper draws a second batch;
    the two halves stand in for the two batches, so the permuted codes are independent of the real
    ones). ``loss`` therefore trains the encoder and decoder only, ``disc_loss`` the discriminator
    only. Batches need at least 2 examples. One logit replaces the paper's two-way softmax (the same
    model: ``softmax`` of two logits is ``sigmoid`` of their difference).

    Hyper-parameters:
        gamma: TC weight (35, the paper's dSprites value).
        likelihood, obs_std: the observation model (:mod:`fastvae.models.base`).

    The discriminator is the paper's: 6 linear layers of 1000 units with LeakyReLU(0.2). The paper
    trains it with Adam at lr 1e-4, betas (0.5, 0.9), and the VAE with Adam at lr 1e-4, betas
    (0.9, 0.999); fastvae's trainer uses one learning rate for both optimisers.
    """

    has_discriminator = True

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        gamma: float = 35.0,
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        self.gamma = check_weight("gamma", gamma)
        self.discriminator = tc_discriminator(latent_dim)

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """The TC discriminator's parameters."""
        return self.discriminator.parameters()

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "recon", "kl", "tc", "disc_loss"}``: float32 scalars (see the class docstring)."""
        batch = out.z.shape[0]
        if batch < 2:
            raise ValueError(f"factor_vae needs a batch of at least 2 examples in x, got {batch}")
        recon = self.reconstruction_nll(x, out.logits).mean()
        kl = out.kl.float().mean()
        tc = call_frozen(self.discriminator, out.z).float().mean()
        codes = out.z.detach()
        half = batch // 2
        real = self.discriminator(codes[:half]).float()
        fake = self.discriminator(permute_dims(codes[half:])).float()
        disc_loss = F.binary_cross_entropy_with_logits(
            real, torch.ones_like(real)
        ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        return {"loss": recon + kl + self.gamma * tc, "recon": recon, "kl": kl, "tc": tc, "disc_loss": disc_loss}
