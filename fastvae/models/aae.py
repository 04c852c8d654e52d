"""``aae``: the adversarial autoencoder (Makhzani et al. 2015)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fastvae.ops._checks import check_weight
from fastvae.models.base import ModelOutput, ObservationModel
from fastvae.models.factor_vae import call_frozen
from fastvae.models.nets import MLP, build_decoder, build_encoder
from fastvae.models.registry import register

__all__ = ["AAE"]

#: Hidden widths of the latent discriminator (the paper's MNIST set-up: two ReLU layers of 1000).
DISCRIMINATOR_HIDDEN: tuple[int, ...] = (1000, 1000)


@register("aae")
class AAE(ObservationModel):
    """The adversarial autoencoder of Makhzani, Shlens, Jaitly, Goodfellow & Frey, "Adversarial
    Autoencoders" (ICLR 2016 workshop; arXiv 1511.05644, 2015).

    An autoencoder whose code distribution ``q(z) = E_x[delta(z - f(x))]`` is matched to the prior
    ``p(z) = N(0, I)`` by a GAN in latent space instead of a KL term. The encoder is deterministic,
    ``z = f(x)`` (the paper's first choice of ``q(z|x)``); a discriminator ``D`` (an MLP, two ReLU
    layers of 1000 units as in the paper) tells prior draws (real) from codes (fake)::

        recon     = mean_b [ -log p(x_b | z_b) ]                     (summed over pixels; z_b = f(x_b))
        adv       = mean_b [ -log D(z_b) ]                            (non-saturating; D's parameters detached)
        loss      = recon + adversarial_weight * adv
        disc_loss = mean_b [ -log D(z'_b) ] + mean_b [ -log(1 - D(z_b)) ]     (z'_b ~ N(0, I), z detached)

    with ``D = sigmoid(logit)`` and every ``log D`` computed from logits (binary cross-entropy with
    logits). The paper alternates a reconstruction phase and a regularisation phase with separate
    SGD steps; here both are one joint step of two optimisers from one forward: ``loss`` trains the
    encoder and decoder (it cannot reach ``D``), ``disc_loss`` trains ``D`` only. ``sample`` decodes
    prior draws. There is no tractable posterior, so no ``elbo``/``log_likelihood``.

    Hyper-parameters:
        adversarial_weight: weight of the encoder's adversarial term (1: the paper's two phases
            weigh the reconstruction and the regularisation equally).
        likelihood, obs_std: the observation model (:mod:`fastvae.models.base`).
    """

    has_discriminator = True

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        adversarial_weight: float = 1.0,
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        self.adversarial_weight = check_weight("adversarial_weight", adversarial_weight)
        self.encoder = build_encoder(self.input_shape, latent_dim)
        self.decoder = build_decoder(latent_dim, self.input_shape)
        self.discriminator = MLP(latent_dim, 1, DISCRIMINATOR_HIDDEN)

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """The latent discriminator's parameters."""
        return self.discriminator.parameters()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic code ``z = f(x)``, ``(B, latent_dim)``."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output (logits for Bernoulli, the mean for Gaussian), ``(B, *input_shape)``."""
        return self.decoder(z)

    def prior_sample(self, n: int) -> torch.Tensor:
        """``n`` draws from the prior ``N(0, I)``, ``(n, latent_dim)``."""
        return torch.randn(n, self.latent_dim, device=self.device)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ModelOutput:
        """Encode and decode: ``ModelOutput(recon, z, logits)`` for ``x (B, *input_shape)``."""
        x = self.check_input(x)
        z = self.encode(x)
        logits = self.decode(z)
        return ModelOutput(recon=self.mean(logits), z=z, logits=logits)

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "recon", "adv", "disc_loss"}``: float32 scalars (see the class docstring)."""
        recon = self.reconstruction_nll(x, out.logits).mean()
        fooled = call_frozen(self.discriminator, out.z).float()
        adv = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        real = self.discriminator(self.prior_sample(out.z.shape[0]).to(out.z.dtype)).float()
        fake = self.discriminator(out.z.detach()).float()
        disc_loss = F.binary_cross_entropy_with_logits(
            real, torch.ones_like(real)
        ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        return {"loss": recon + self.adversarial_weight * adv, "recon": recon, "adv": adv, "disc_loss": disc_loss}

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples in data space: prior draws decoded, ``(n, *input_shape)``."""
        return self.mean(self.decode(self.prior_sample(n)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``decode(f(x))`` in data space, ``(B, *input_shape)``."""
        return self.mean(self.decode(self.encode(self.check_input(x))))
