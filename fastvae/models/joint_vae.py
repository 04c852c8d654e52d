"""``joint_vae``: continuous and discrete latents with separate capacity schedules (Dupont 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fastvae import ops
from fastvae.ops._checks import check_step, check_weight
from fastvae.models._gumbel import (
    categorical_kl_uniform,
    check_categories,
    check_positive,
    check_steps,
    gumbel_softmax,
    log_uniform_capacity,
    one_hot_mode,
    sample_gumbel,
    uniform_one_hot,
)
from fastvae.models.base import ModelOutput, ObservationModel
from fastvae.models.nets import build_decoder, build_encoder
from fastvae.models.registry import register

__all__ = ["JointVAE"]


@register("joint_vae")
class JointVAE(ObservationModel):
    """JointVAE of Dupont, "Learning Disentangled Joint Continuous and Discrete Representations"
    (NeurIPS 2018; arXiv 1804.00104).

    The code is a continuous Gaussian ``z`` (``latent_dim`` dims, ``q(z|x) = N(mu, e^logvar)``, prior
    ``N(0, I)``) and discrete variables ``c_i`` with ``K_i = categories[i]`` classes
    (``q(c_i|x) = Cat(pi_i(x))``, uniform priors), relaxed by the Gumbel-softmax at a fixed
    ``temperature``; the decoder reads ``[z, y_1, ..., y_n]``. Each part's KL is pulled towards its own
    capacity, which grows linearly over training steps::

        z      = mu + e^{logvar/2} * eps                              (fused: ops.reparameterize_kl)
        y_i    = softmax((log pi_i + g_i) / temperature),  g ~ Gumbel(0, 1)
        recon  = mean_b [ -log p(x_b | z_b, y_b) ]                      (summed over pixels)
        kl_z   = mean_b [ KL(N(mu_b, e^logvar_b) || N(0, I)) ]          (summed over latent dims)
        kl_c   = mean_b [ sum_i (sum_k pi_ik log pi_ik + log K_i) ]     (summed over the discrete variables)
        C_z(step) = capacity_z_max * min(step / capacity_z_steps, 1)
        C_c(step) = min(capacity_c_max * min(step / capacity_c_steps, 1),  sum_i log K_i)
        loss   = recon + gamma_z * | kl_z - C_z(step) | + gamma_c * | kl_c - C_c(step) |

    ``step = None`` means the end of both schedules. The discrete capacity is clamped at
    ``sum_i log K_i``, the largest KL categorical posteriors can have to uniform priors (as in the
    paper's code), so a configured ``capacity_c_max`` above it never asks for an unreachable KL: with
    the dSprites defaults (``1.1`` nats, one 3-way variable) ``C_c`` stops at ``log 3 = 1.0986``. The
    absolute values are of the batch-mean KLs, as in the paper. Schedules depend only on the ``step``
    passed to :meth:`loss`; the model keeps no counter.

    Defaults are the paper's dSprites settings (its released ``specs.json``): ``gamma_z = gamma_c = 150``,
    ``C_z`` from 0 to 40 nats and ``C_c`` from 0 to 1.1 nats over 300,000 iterations, one discrete
    variable of 3 classes (dSprites' three shapes), temperature 0.67, and 6 continuous latents: pass
    ``latent_dim=6`` for the paper's setting (the registry's default is 10). The paper's loss sums the
    reconstruction over pixels and averages the KLs over the batch, the scale used here (its code then
    divides everything by the number of pixels, a constant factor), so ``gamma`` carries over.

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: continuous latent dims (6 in the paper's dSprites model).
        categories: classes of each discrete variable (``(3,)``).
        temperature: Gumbel-softmax temperature, fixed (0.67).
        gamma_z: weight of ``|kl_z - C_z|`` (150).
        capacity_z_max: final continuous capacity in nats (40).
        capacity_z_steps: steps over which ``C_z`` rises from 0 (300,000).
        gamma_c: weight of ``|kl_c - C_c|`` (150).
        capacity_c_max: final discrete capacity in nats before the ``sum_i log K_i`` clamp (1.1).
        capacity_c_steps: steps over which ``C_c`` rises from 0 (300,000).
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``, as for :class:`GaussianVAE`.
        obs_std: the Gaussian observation model's standard deviation.

    ``forward`` returns ``ModelOutput(recon, z, logits, mu, logvar, log_probs, kl_z, kl_c)``: ``z (B,
    latent_dim + sum K_i)`` the decoder's input ``[z, y_1, ..., y_n]``, ``log_probs (B, sum K_i)`` the
    normalised log posteriors side by side, ``kl_z`` and ``kl_c`` per example ``(B,)``. ``loss``
    returns ``{"loss", "recon", "kl_z", "kl_c", "capacity_z", "capacity_c"}``. :meth:`encode` returns
    ``(mu, logvar, log_probs)``; :meth:`reconstruct` decodes ``mu`` with the most probable classes;
    :meth:`sample` draws ``z ~ N(0, I)`` and uniform one-hot classes; :meth:`elbo` and
    :meth:`log_likelihood` use discrete classes drawn from ``q(c|x)``.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        categories: Sequence[int] = (3,),
        temperature: float = 0.67,
        gamma_z: float = 150.0,
        capacity_z_max: float = 40.0,
        capacity_z_steps: int = 300_000,
        gamma_c: float = 150.0,
        capacity_c_max: float = 1.1,
        capacity_c_steps: int = 300_000,
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        self.categories = check_categories("categories", categories)
        self.temperature = check_positive("temperature", temperature)
        self.gamma_z = check_weight("gamma_z", gamma_z)
        self.capacity_z_max = check_weight("capacity_z_max", capacity_z_max)
        self.capacity_z_steps = check_steps("capacity_z_steps", capacity_z_steps)
        self.gamma_c = check_weight("gamma_c", gamma_c)
        self.capacity_c_max = check_weight("capacity_c_max", capacity_c_max)
        self.capacity_c_steps = check_steps("capacity_c_steps", capacity_c_steps)
        discrete = sum(self.categories)
        self.encoder = build_encoder(self.input_shape, 2 * latent_dim + discrete)
        self.decoder = build_decoder(latent_dim + discrete, self.input_shape)

    @property
    def max_discrete_capacity(self) -> float:
        """``sum_i log K_i``, the cap on ``C_c``."""
        return log_uniform_capacity(self.categories)

    def capacity_z(self, step: int | None) -> float:
        """``C_z(step)`` in nats; ``step=None`` means the end of the schedule."""
        step = check_step(step)
        fraction = 1.0 if step is None else min(step / self.capacity_z_steps, 1.0)
        return self.capacity_z_max * fraction

    def capacity_c(self, step: int | None) -> float:
        """``C_c(step)`` in nats, never above ``sum_i log K_i``; ``step=None`` means the end of the schedule."""
        step = check_step(step)
        fraction = 1.0 if step is None else min(step / self.capacity_c_steps, 1.0)
        return min(self.capacity_c_max * fraction, self.max_discrete_capacity)

    def _split(self, log_probs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return log_probs.split(self.categories, dim=-1)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of ``q(z|x)``, each ``(B, latent_dim)``, and the normalised ``log q(c_i|x)``
        side by side, ``(B, sum K_i)``."""
        h = self.encoder(x)
        mu, logvar, logits = h.split((self.latent_dim, self.latent_dim, sum(self.categories)), dim=-1)
        log_probs = torch.cat([torch.log_softmax(part.float(), dim=-1) for part in self._split(logits)], dim=-1)
        return mu, logvar, log_probs.to(logits.dtype)

    def decode(self, code: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output for ``[z, y_1, ..., y_n]`` ``(B, latent_dim + sum K_i)``: ``(B, *input_shape)``."""
        return self.decoder(code)

    def discrete_kl(self, log_probs: torch.Tensor) -> torch.Tensor:
        """``sum_i KL(q(c_i|x) || Uniform(K_i))`` from ``log_probs (..., sum K_i)``: ``(...)`` float32."""
        return sum(categorical_kl_uniform(part.float()) for part in self._split(log_probs))  # type: ignore[return-value]

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ModelOutput:
        """Encode, sample ``z`` with its KL (fused) and the relaxed classes, decode. ``x (B, *input_shape)``."""
        x = self.check_input(x)
        mu, logvar, log_probs = self.encode(x)
        z, kl_z = ops.reparameterize_kl(mu, logvar)
        gumbel = sample_gumbel(log_probs.shape, device=log_probs.device, dtype=log_probs.dtype)
        relaxed = [
            gumbel_softmax(part, noise, self.temperature)
            for part, noise in zip(self._split(log_probs), self._split(gumbel))
        ]
        code = torch.cat([z, *relaxed], dim=-1)
        logits = self.decode(code)
        return ModelOutput(
            recon=self.mean(logits), z=code, logits=logits, mu=mu, logvar=logvar, log_probs=log_probs,
            kl_z=kl_z, kl_c=self.discrete_kl(log_probs),
        )

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss": recon + gamma_z |kl_z - C_z| + gamma_c |kl_c - C_c|, "recon", "kl_z", "kl_c",
        "capacity_z", "capacity_c"}``, 0-dim float32."""
        capacity_z, capacity_c = self.capacity_z(step), self.capacity_c(step)
        recon = self.reconstruction_nll(x, out.logits).mean()
        kl_z = out.kl_z.float().mean()
        kl_c = out.kl_c.float().mean()
        loss = recon + self.gamma_z * (kl_z - capacity_z).abs() + self.gamma_c * (kl_c - capacity_c).abs()
        device = recon.device
        return {
            "loss": loss, "recon": recon, "kl_z": kl_z, "kl_c": kl_c,
            "capacity_z": torch.tensor(capacity_z, device=device), "capacity_c": torch.tensor(capacity_c, device=device),
        }

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples in data space: ``z ~ N(0, I)`` and one-hot classes from the uniform priors."""
        classes = [uniform_one_hot((n,), k, device=self.device) for k in self.categories]
        z = torch.randn(n, self.latent_dim, device=self.device)
        return self.mean(self.decode(torch.cat([z, *classes], dim=-1)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstructions from ``mu`` and the most probable class of each variable, ``(B, *input_shape)``."""
        x = self.check_input(x)
        mu, _, log_probs = self.encode(x)
        return self.mean(self.decode(torch.cat([mu, *map(one_hot_mode, self._split(log_probs))], dim=-1)))

    def _log_weights(
        self, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, log_probs: torch.Tensor, samples: int
    ) -> torch.Tensor:
        """``log p(x|z,c) + log p(z) + log p(c) - log q(z|x) - log q(c|x)`` for ``samples`` draws
        ``z ~ q(z|x)``, discrete ``c ~ q(c|x)`` (Gumbel-max) per example: ``(samples, B)`` float32."""
        batch = mu.shape[0]
        z = ops.reparameterize(mu.expand(samples, *mu.shape), logvar.expand(samples, *logvar.shape))
        noise = sample_gumbel((samples, *log_probs.shape), device=log_probs.device, dtype=log_probs.dtype)
        classes, log_q_c = [], torch.zeros(samples, batch, device=mu.device)
        for part, part_noise in zip(self._split(log_probs), self._split(noise)):
            index = (part + part_noise).argmax(dim=-1)
            classes.append(F.one_hot(index, part.shape[-1]).to(z.dtype))
            log_q_c = log_q_c + part.float().expand(samples, *part.shape).gather(-1, index.unsqueeze(-1)).squeeze(-1)
        logits = self.decode(torch.cat([z, *classes], dim=-1).flatten(0, 1)).unflatten(0, (samples, batch))
        log_px = -self.reconstruction_nll(x, logits)
        log_w_z = ops.iwae_log_weights(log_px, z.float(), mu.float(), logvar.float())
        log_prior_c = -self.max_discrete_capacity  # log p(c) = -sum_i log K_i under the uniform priors
        return log_w_z + log_prior_c - log_q_c

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The ELBO per example with one draw ``z, c ~ q``: ``log p(x|z,c) - KL_z - KL_c``, ``(B,)`` float32."""
        x = self.check_input(x)
        mu, logvar, log_probs = self.encode(x)
        z, kl_z = ops.reparameterize_kl(mu, logvar)
        noise = sample_gumbel(log_probs.shape, device=log_probs.device, dtype=log_probs.dtype)
        classes = [one_hot_mode(part + part_noise) for part, part_noise in zip(self._split(log_probs), self._split(noise))]
        log_px = -self.reconstruction_nll(x, self.decode(torch.cat([z, *classes], dim=-1)))
        return log_px - kl_z.float() - self.discrete_kl(log_probs)

    @torch.no_grad()
    def log_likelihood(
        self, x: torch.Tensor, k: int = 100, y: torch.Tensor | None = None, *, chunk: int = 50
    ) -> torch.Tensor:
        """Importance-sampled ``log p(x)`` with ``k`` draws from ``q(z|x) q(c|x)``, ``(B,)`` float32:
        ``log (1/k) sum_i p(x|z_i,c_i) p(z_i) p(c_i) / (q(z_i|x) q(c_i|x))``; the Gaussian part through
        :func:`fastvae.iwae_log_weights`, the bound through :func:`fastvae.iwae_bound`."""
        x = self.check_input(x)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        mu, logvar, log_probs = self.encode(x)
        log_w = [self._log_weights(x, mu, logvar, log_probs, min(chunk, k - start)) for start in range(0, k, chunk)]
        return ops.iwae_bound(torch.cat(log_w), dim=0)
