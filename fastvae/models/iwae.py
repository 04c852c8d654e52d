"""``iwae``: the importance weighted autoencoder (Burda, Grosse & Salakhutdinov 2015)."""

from __future__ import annotations

import math

import torch

from fastvae import ops
from fastvae.models.base import GaussianVAE, ModelOutput
from fastvae.models.registry import register

__all__ = ["IWAE", "check_count"]


def check_count(value: object, name: str) -> int:
    """``value`` as a positive int; ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@register("iwae")
class IWAE(GaussianVAE):
    """Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders" (ICLR 2016; arXiv 2015).

    The VAE's encoder and decoder trained on the ``K``-sample importance-weighted bound instead of
    the ELBO. For each example ``x_b``, ``z_{k,b} ~ q(z|x_b)`` (``k = 1..K``, reparameterised) and::

        log w_{k,b} = log p(x_b | z_{k,b}) + log N(z_{k,b}; 0, I) - log q(z_{k,b} | x_b)
        IWAE_K(x_b) = log (1/K) sum_k exp(log w_{k,b})
        loss        = -mean_b IWAE_K(x_b)

    with ``log p(x|z)`` summed over pixels (Bernoulli by default) and the Gaussian densities summed
    over latent dims, through :func:`fastvae.iwae_log_weights`; the log-mean-exp is
    :func:`fastvae.iwae_bound`, whose gradient with respect to ``log w`` is the normalised importance
    weights ``softmax_k(log w)`` (as constants), so the parameter gradient is the paper's estimator
    ``sum_k w~_k grad log w_k``, ``w~ = softmax_k(log w)``. ``K = 1`` is the one-sample ELBO with its
    Monte Carlo KL. ``loss`` also reports, as diagnostics outside the loss: ``"bound"`` (the batch mean
    of ``IWAE_K``), ``"recon"`` (the mean over samples and examples of ``-log p(x|z)``) and ``"kl"``
    (the batch mean of the closed-form KL).

    ``forward`` returns ``ModelOutput`` with ``recon``, ``z``, ``logits`` of the first sample (``(B,
    ...)``), ``mu``, ``logvar``, ``kl (B,)`` (closed form), ``log_w (K, B)``, ``log_px_z (K, B)``,
    ``z_samples (K, B, D)`` and ``bound (B,)``. ``log_likelihood(x, k)`` (inherited) is the same
    estimator with ``k`` samples.

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: size of ``z``.
        k: importance samples per example (5; the paper trains with K in {1, 5, 50}).
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``.
        obs_std: standard deviation of the Gaussian observation model.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        k: int = 5,
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        self.k = check_count(k, "k")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The leading dims of the posterior samples per example: ``(K,)``."""
        return (self.k,)

    def bound(self, log_w: torch.Tensor) -> torch.Tensor:
        """The bound per example from log-weights ``(*sample_shape, B)``: ``(B,)``."""
        return ops.iwae_bound(log_w, dim=0)

    def importance_sample(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, eps: torch.Tensor | None = None
    ) -> ModelOutput:
        """Draw ``z`` of shape ``(*sample_shape, B, D)`` from ``q(z|x)`` and compute the log-weights.

        Args:
            x: ``(B, *input_shape)``.
            y: labels, for conditional subclasses.
            eps: optional standard-normal noise ``(*sample_shape, B, D)`` to use instead of drawing it.

        Returns:
            ``ModelOutput`` (see the class docstring) with every per-sample tensor shaped
            ``(*sample_shape, B, ...)``, and ``bound (B,)``.
        """
        x = self.check_input(x)
        mu, logvar = self.encode(x, y)
        shape = (*self.sample_shape, *mu.shape)
        z = ops.reparameterize(mu.expand(shape), logvar.expand(shape), eps=eps)
        samples = math.prod(self.sample_shape)
        y_rep = None if y is None else y.repeat(samples)
        logits = self.decode(z.reshape(-1, self.latent_dim), y_rep).reshape(*self.sample_shape, *x.shape)
        log_px_z = -self.reconstruction_nll(x, logits)
        z32 = z.float()
        log_w = ops.iwae_log_weights(
            log_px_z, z32, mu.float().expand(z32.shape[1:]), logvar.float().expand(z32.shape[1:])
        )
        first = (0,) * len(self.sample_shape)
        return ModelOutput(
            recon=self.mean(logits[first]),
            z=z[first],
            logits=logits[first],
            mu=mu,
            logvar=logvar,
            kl=ops.gaussian_kl(mu, logvar),
            log_w=log_w,
            log_px_z=log_px_z,
            z_samples=z,
            bound=self.bound(log_w),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, *, eps: torch.Tensor | None = None) -> ModelOutput:
        """:meth:`importance_sample`: ``x (B, *input_shape)`` -> ``ModelOutput`` (class docstring)."""
        return self.importance_sample(x, y, eps=eps)

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss": -mean_b bound_b}`` plus the diagnostics ``"bound"``, ``"recon"``, ``"kl"`` (class docstring)."""
        bound = out.bound.float().mean()
        return {
            "loss": -bound,
            "bound": bound.detach(),
            "recon": -out.log_px_z.float().mean().detach(),
            "kl": out.kl.float().mean().detach(),
        }
