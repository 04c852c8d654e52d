"""``wae``: the Wasserstein auto-encoder (Tolstikhin et al. 2018), WAE-MMD and WAE-GAN; and
:class:`DeterministicAutoencoder`, the deterministic-encoder base it shares with SWAE."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fastvae.ops._checks import check_weight
from fastvae.models._divergences import KERNELS, mmd
from fastvae.models.base import GaussianVAE, ModelOutput, ObservationModel
from fastvae.models.nets import MLP, build_decoder, build_encoder
from fastvae.models.registry import register

__all__ = ["WAE", "DeterministicAutoencoder"]

#: Values of WAE's ``penalty`` hyper-parameter.
PENALTIES: tuple[str, ...] = ("mmd", "gan")
#: Hidden widths of the WAE-GAN latent discriminator (the paper's: four 512-unit ReLU layers).
DISCRIMINATOR_HIDDEN: tuple[int, ...] = (512, 512, 512, 512)


class DeterministicAutoencoder(ObservationModel):
    """An auto-encoder with a deterministic encoder ``z = f(x)``, prior ``N(0, I)`` and the zoo's
    observation models: the base of the optimal-transport auto-encoders (WAE, SWAE). Not registered.

    The encoder and decoder are the shared networks; the observation model (``mean``,
    ``reconstruction_nll``) and the prior sampler are :class:`GaussianVAE`'s, reused as they are.
    ``forward`` returns ``ModelOutput(recon, z, logits)``. There is no posterior density, hence no
    ``log_likelihood``. Subclasses implement :meth:`loss`.

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: size of ``z``.
        likelihood: ``"bernoulli"`` or ``"gaussian"``.
        obs_std: standard deviation of the Gaussian observation model.
    """

    prior_sample = GaussianVAE.prior_sample

    def __init__(self, input_shape: tuple[int, ...], latent_dim: int, *, likelihood: str, obs_std: float) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        self.encoder = build_encoder(self.input_shape, latent_dim)
        self.decoder = build_decoder(latent_dim, self.input_shape)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ModelOutput:
        """``z = encoder(x)`` (``(B, latent_dim)``), decode. ``x (B, *input_shape)``."""
        x = self.check_input(x)
        z = self.encoder(x)
        logits = self.decoder(z)
        return ModelOutput(recon=self.mean(logits), z=z, logits=logits)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples in data space, decoded from prior draws: ``(n, *input_shape)``."""
        return self.mean(self.decoder(self.prior_sample(n)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstructions ``mean(decoder(encoder(x)))``, ``(B, *input_shape)``."""
        return self.mean(self.decoder(self.encoder(self.check_input(x))))


@register("wae")
class WAE(DeterministicAutoencoder):
    """Wasserstein auto-encoder of Tolstikhin, Bousquet, Gelly & Schölkopf, "Wasserstein
    Auto-Encoders" (ICLR 2018).

    A deterministic encoder (the paper's experiments use deterministic encoder-decoder pairs) whose
    aggregate ``q(z)`` is pushed to the prior ``p(z) = N(0, I)`` by a penalty ``D_Z``::

        z_b   = encoder(x_b),  z~_b ~ N(0, I)
        recon = mean_b [ c(x_b, decoder(z_b)) ],  c = -log p(x|z)        (summed over pixels)

    ``penalty="mmd"`` (WAE-MMD, default; the paper's Algorithm 2)::

        mmd   = MMD^2_k({z_b}, {z~_b})          (unbiased U-statistic, IMQ kernel k = C / (C + ||z - z'||^2),
                                                 C = 2 * latent_dim, i.e. 2 d_z sigma_z^2 with sigma_z = 1)
        loss  = recon + lambda_ * mmd

    ``penalty="gan"`` (WAE-GAN; Algorithm 1) adds a latent discriminator ``D`` (an MLP with four
    512-unit ReLU layers and a logit output, as in the paper), trained to tell prior draws from codes::

        adversarial = mean_b [ -log D(z_b) ]                                   (non-saturating, as Algorithm 1)
        loss        = recon + lambda_ * adversarial
        disc_loss   = lambda_ * mean_b [ -log D(z~_b) - log(1 - D(sg[z_b])) ]  (sg: codes detached)

    With ``penalty="gan"`` the model has a discriminator: ``has_discriminator`` is an instance
    property, True exactly when ``penalty == "gan"``; :meth:`discriminator_parameters` then yields
    ``D``'s parameters (which the trainer updates on ``disc_loss`` only; ``loss`` trains the encoder
    and decoder). With ``"mmd"`` there is no ``D`` and ``has_discriminator`` is False.

    The reconstruction cost is the zoo's ``-log p(x|z)``. The paper's ``c(x, y) = ||x - y||^2`` is
    ``likelihood="gaussian", obs_std=0.5 ** 0.5`` up to an additive constant.

    Defaults: ``lambda_ = 10`` and ``sigma_z^2 = 1`` (the paper's MNIST settings), IMQ kernel.

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: size of ``z``.
        penalty: ``"mmd"`` (default) or ``"gan"``.
        lambda_: weight of the penalty (default 10).
        kernel: the MMD kernel, ``"imq"`` (default) or ``"rbf"`` (unused with ``"gan"``).
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``.
        obs_std: standard deviation of the Gaussian observation model.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        penalty: str = "mmd",
        lambda_: float = 10.0,
        kernel: str = "imq",
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        if penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {', '.join(map(repr, PENALTIES))}, got {penalty!r}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(map(repr, KERNELS))}, got {kernel!r}")
        self.penalty = penalty
        self.lambda_ = check_weight("lambda_", lambda_)
        self.kernel = kernel
        self.discriminator = MLP(latent_dim, 1, DISCRIMINATOR_HIDDEN) if penalty == "gan" else None

    @property
    def has_discriminator(self) -> bool:  # type: ignore[override]
        """True exactly for ``penalty="gan"`` (an instance property: it depends on the hyper-parameter)."""
        return self.penalty == "gan"

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """The latent discriminator's parameters (``penalty="gan"`` only; NotImplementedError otherwise)."""
        if self.discriminator is None:
            return super().discriminator_parameters()
        return self.discriminator.parameters()

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """WAE-MMD: ``{"loss", "recon", "mmd"}``; WAE-GAN: ``{"loss", "recon", "adversarial", "disc_loss"}``.

        0-dim float32 (``step`` unused). Draws ``B`` prior samples (``torch.randn``); the MMD needs ``B >= 2``.
        """
        recon = self.reconstruction_nll(x, out.logits).mean()
        z = out.z.float()
        prior = self.prior_sample(z.shape[0]).float()
        if self.discriminator is None:
            divergence = mmd(z, prior, kernel=self.kernel)
            return {"loss": recon + self.lambda_ * divergence, "recon": recon, "mmd": divergence}
        # -log sigmoid(t) = softplus(-t) and -log(1 - sigmoid(t)) = softplus(t), stably.
        adversarial = F.softplus(-self.discriminator(z)).mean()
        disc_loss = self.lambda_ * (
            F.softplus(-self.discriminator(prior)).mean() + F.softplus(self.discriminator(z.detach())).mean()
        )
        loss = recon + self.lambda_ * adversarial
        return {"loss": loss, "recon": recon, "adversarial": adversarial, "disc_loss": disc_loss}
