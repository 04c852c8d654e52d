"""``categorical_vae``: a VAE with categorical latents relaxed by the Gumbel-softmax (Jang et al. 2017)."""

from __future__ import annotations

import math

import torch

from fastvae import ops
from fastvae.ops._checks import check_step
from fastvae.models._gumbel import (
    categorical_kl_uniform,
    check_positive,
    check_steps,
    gumbel_softmax,
    one_hot_mode,
    sample_gumbel,
    uniform_one_hot,
)
from fastvae.models.base import ModelOutput, ObservationModel
from fastvae.models.nets import build_decoder, build_encoder
from fastvae.models.registry import register

__all__ = ["CategoricalVAE"]


@register("categorical_vae")
class CategoricalVAE(ObservationModel):
    """The categorical VAE of Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax"
    (ICLR 2017; arXiv 1611.01144, 2016).

    The latent code is ``N = latent_dim`` independent categorical variables of ``K = categories``
    classes each. The encoder gives ``q(c_n | x) = Cat(pi_n(x))``; the prior is uniform,
    ``p(c_n) = Cat(1/K)``; the decoder reads the ``N x K`` (relaxed) one-hot codes, flattened. Training
    replaces the discrete draw by the Gumbel-softmax sample at a temperature ``tau(step)`` that is
    annealed over training steps::

        y_n     = softmax((log pi_n + g_n) / tau(step)),   g_nk ~ Gumbel(0, 1)  (one-hot argmax if hard)
        recon   = mean_b [ -log p(x_b | y_b) ]                        (summed over pixels)
        kl      = mean_b [ sum_n KL(Cat(pi_n(x_b)) || Cat(1/K)) ]
                = mean_b [ sum_n (sum_k pi_nk log pi_nk + log K) ]      (closed form, summed over the N variables)
        loss    = recon + kl

    The KL is that of the categorical posterior to the categorical prior, as in the paper's VAE
    (its objective is a bound only for discrete samples). Temperature schedule (the paper's
    ``tau = max(0.5, exp(-r t))``, with ``t`` updated every N = 1000 steps)::

        r         = log(initial_temperature / min_temperature) / anneal_steps
        tau(step) = max(min_temperature, initial_temperature * exp(-r * anneal_every * floor(step / anneal_every)))
        tau(step) = min_temperature   for step >= anneal_steps and for step = None

    so the temperature reaches its minimum exactly at ``anneal_steps`` and stays there. The schedule
    depends only on the ``step`` passed to :meth:`loss` (training steps): the model keeps no counter.

    Where the temperature enters: :meth:`forward` has no step, so it draws the Gumbel noise, forms
    the sample at ``min_temperature`` (the end of the schedule: what evaluation and ``model(x)`` use)
    and decodes it; it returns the noise (``gumbel``) and the posterior (``log_probs``).
    :meth:`loss` at a step whose ``tau(step)`` differs redraws the relaxed sample from the same
    posterior and the same noise at ``tau(step)`` and decodes it again, so the reconstruction term and
    its gradient always use ``tau(step)``; once annealing is over, nothing is recomputed. (During the
    anneal this costs one extra decoder pass per step.)

    Hyper-parameters (the paper's values; its MNIST VAEs use 10-class variables, 20 of them in its
    section 4.3 and 30 in the authors' public demo; for 64 x 64 dSprites, with 5 ground-truth
    factors, the registry's default ``latent_dim = 10`` gives 10 x 10, at most 23 nats):

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: ``N``, the number of categorical variables.
        categories: ``K``, classes per variable (10).
        initial_temperature: ``tau_0`` (1.0: the paper's ``exp(-r * 0)``).
        min_temperature: ``tau_min`` (0.5).
        anneal_steps: steps until ``tau`` reaches ``tau_min`` (70,000: the paper's rate
            ``r = 1e-5`` reaches 0.5 at step ``ln 2 / 1e-5 = 69,315``; 70,000 is the next multiple of the
            update interval, ``r = ln 2 / 70,000 = 0.99e-5``).
        anneal_every: steps between temperature updates (1000; 1 for a smooth decay).
        hard: straight-through Gumbel-softmax (one-hot forward, relaxed gradient), the paper's "ST"
            variant (False).
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``, as for :class:`GaussianVAE`.
        obs_std: the Gaussian observation model's standard deviation.

    ``forward`` returns ``ModelOutput(recon, z, logits, log_probs, gumbel, temperature, kl)``: ``z (B, N,
    K)`` the relaxed codes, ``logits`` the decoder output, ``log_probs (B, N, K)`` the normalised log
    posterior, ``gumbel (B, N, K)`` the noise, ``temperature`` (float) the one used, ``kl (B,)``.
    ``loss`` returns ``{"loss", "recon", "kl", "temperature"}``. :meth:`reconstruct` decodes the most
    probable code; :meth:`sample` decodes one-hot codes from the uniform prior; :meth:`elbo` and
    :meth:`log_likelihood` use discrete codes drawn from ``q(c|x)``.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        categories: int = 10,
        initial_temperature: float = 1.0,
        min_temperature: float = 0.5,
        anneal_steps: int = 70_000,
        anneal_every: int = 1000,
        hard: bool = False,
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        if isinstance(categories, bool) or not isinstance(categories, int) or categories < 2:
            raise ValueError(f"categories must be an int >= 2, got {categories!r}")
        self.initial_temperature = check_positive("initial_temperature", initial_temperature)
        self.min_temperature = check_positive("min_temperature", min_temperature)
        if self.min_temperature > self.initial_temperature:
            raise ValueError(
                f"min_temperature must not exceed initial_temperature ({initial_temperature!r}), got {min_temperature!r}"
            )
        if not isinstance(hard, bool):
            raise TypeError(f"hard must be a bool, got {hard!r}")
        self.categories = categories
        self.anneal_steps = check_steps("anneal_steps", anneal_steps)
        self.anneal_every = check_steps("anneal_every", anneal_every)
        self.hard = hard
        self.encoder = build_encoder(self.input_shape, latent_dim * categories)
        self.decoder = build_decoder(latent_dim * categories, self.input_shape)

    @property
    def anneal_rate(self) -> float:
        """``r = log(initial_temperature / min_temperature) / anneal_steps`` (per step)."""
        return math.log(self.initial_temperature / self.min_temperature) / self.anneal_steps

    def temperature(self, step: int | None) -> float:
        """``tau(step)`` (class docstring); exactly ``min_temperature`` from ``anneal_steps`` on and for None."""
        step = check_step(step)
        if step is None or step >= self.anneal_steps:
            return self.min_temperature
        updated_at = step - step % self.anneal_every
        return max(self.min_temperature, self.initial_temperature * math.exp(-self.anneal_rate * updated_at))

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior ``log q(c|x)``, normalised over the classes: ``(B, N, K)``."""
        logits = self.encoder(x).unflatten(-1, (self.latent_dim, self.categories))
        return torch.log_softmax(logits.float(), dim=-1).to(logits.dtype)

    def decode(self, codes: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output for codes ``(B, N, K)``: ``(B, *input_shape)``."""
        return self.decoder(codes.flatten(-2))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ModelOutput:
        """Encode, draw Gumbel noise, relax at ``min_temperature`` and decode. ``x (B, *input_shape)``."""
        x = self.check_input(x)
        log_probs = self.encode(x)
        gumbel = sample_gumbel(log_probs.shape, device=log_probs.device, dtype=log_probs.dtype)
        temperature = self.temperature(None)
        codes = gumbel_softmax(log_probs, gumbel, temperature, hard=self.hard)
        logits = self.decode(codes)
        kl = categorical_kl_uniform(log_probs.float()).sum(-1)
        return ModelOutput(
            recon=self.mean(logits), z=codes, logits=logits, log_probs=log_probs, gumbel=gumbel,
            temperature=temperature, kl=kl,
        )

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss": recon + kl, "recon", "kl", "temperature"}``, 0-dim float32; the reconstruction uses
        the sample at ``tau(step)`` (redrawn from ``out``'s posterior and noise when ``forward`` used another)."""
        temperature = self.temperature(step)
        logits = out.logits
        if temperature != out.temperature:
            logits = self.decode(gumbel_softmax(out.log_probs, out.gumbel, temperature, hard=self.hard))
        recon = self.reconstruction_nll(x, logits).mean()
        kl = out.kl.float().mean()
        return {"loss": recon + kl, "recon": recon, "kl": kl, "temperature": torch.tensor(temperature, device=kl.device)}

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples in data space from one-hot codes drawn from the uniform prior, ``(n, *input_shape)``."""
        codes = uniform_one_hot((n, self.latent_dim), self.categories, device=self.device)
        return self.mean(self.decode(codes))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstructions from the most probable code of each variable, ``(B, *input_shape)``."""
        x = self.check_input(x)
        return self.mean(self.decode(one_hot_mode(self.encode(x))))

    def _draw_codes(self, log_probs: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``samples`` discrete codes per example from ``q(c|x)`` (Gumbel-max): one-hot ``(samples, B, N, K)``
        and ``log q(c|x)`` summed over the ``N`` variables, ``(samples, B)`` float32."""
        noise = sample_gumbel((samples, *log_probs.shape), device=log_probs.device, dtype=log_probs.dtype)
        index = (log_probs + noise).argmax(dim=-1)
        codes = torch.nn.functional.one_hot(index, self.categories).to(log_probs.dtype)
        log_q = log_probs.float().expand(samples, *log_probs.shape).gather(-1, index.unsqueeze(-1))
        return codes, log_q.squeeze(-1).sum(-1)

    def _log_px(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``log p(x|c)`` for codes ``(S, B, N, K)``: ``(S, B)`` float32."""
        logits = self.decode(codes.flatten(0, 1)).unflatten(0, codes.shape[:2])
        return -self.reconstruction_nll(x, logits)

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The ELBO per example with one discrete code ``c ~ q(c|x)``: ``log p(x|c) - KL``, ``(B,)`` float32."""
        x = self.check_input(x)
        log_probs = self.encode(x)
        codes, _ = self._draw_codes(log_probs, 1)
        return self._log_px(x, codes)[0] - categorical_kl_uniform(log_probs.float()).sum(-1)

    @torch.no_grad()
    def log_likelihood(
        self, x: torch.Tensor, k: int = 100, y: torch.Tensor | None = None, *, chunk: int = 50
    ) -> torch.Tensor:
        """Importance-sampled ``log p(x)`` with ``k`` discrete codes from ``q(c|x)``, ``(B,)`` float32:
        ``log (1/k) sum_i p(x|c_i) p(c_i) / q(c_i|x)`` through :func:`fastvae.iwae_bound`, ``chunk``
        codes at a time."""
        x = self.check_input(x)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        log_probs = self.encode(x)
        log_prior = -self.latent_dim * math.log(self.categories)
        log_w = []
        for start in range(0, k, chunk):
            codes, log_q = self._draw_codes(log_probs, min(chunk, k - start))
            log_w.append(self._log_px(x, codes) + log_prior - log_q)
        return ops.iwae_bound(torch.cat(log_w), dim=0)
