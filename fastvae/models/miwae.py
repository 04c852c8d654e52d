"""``miwae``: the multiply importance weighted autoencoder (Rainforth et al. 2018)."""

from __future__ import annotations

import torch

from fastvae import ops
from fastvae.models.iwae import IWAE, check_count
from fastvae.models.registry import register

__all__ = ["MIWAE"]


@register("miwae")
class MIWAE(IWAE):
    """Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh, "Tighter Variational Bounds are Not
    Necessarily Better" (ICML 2018): MIWAE, the average of ``M`` independent ``K``-sample IWAE bounds.

    For each example ``x_b``, ``M x K`` reparameterised samples ``z_{k,m,b} ~ q(z|x_b)`` and::

        log w_{k,m,b} = log p(x_b | z_{k,m,b}) + log N(z_{k,m,b}; 0, I) - log q(z_{k,m,b} | x_b)
        MIWAE(x_b)    = (1/M) sum_m log (1/K) sum_k exp(log w_{k,m,b})
        loss          = -mean_b MIWAE(x_b)

    through :func:`fastvae.iwae_log_weights` and :func:`fastvae.miwae_bound` (gradient: the
    normalised weights ``softmax_k`` within each group, as constants, divided by ``M``). ``M = 1`` is
    the IWAE; ``K = 1`` the ELBO averaged over ``M`` samples. For the same ``M K`` samples a smaller
    ``K`` gives a looser bound but a better signal-to-noise ratio of the encoder's gradient (the
    paper's point). ``loss`` reports the diagnostics of :class:`IWAE` (``"bound"`` is the MIWAE bound).

    ``forward`` returns :class:`IWAE`'s ``ModelOutput``, with samples laid out ``(K, M, B, ...)``:
    ``log_w (K, M, B)``, ``log_px_z (K, M, B)``, ``z_samples (K, M, B, D)``; ``eps`` likewise.

    Args:
        input_shape: ``(C, H, W)`` or ``(D,)``.
        latent_dim: size of ``z``.
        k: importance samples per group (8).
        m: groups averaged (8; the paper's MIWAE(M=8, K=8) spends the 64 samples of IWAE(K=64)).
        likelihood: ``"bernoulli"`` (default) or ``"gaussian"``.
        obs_std: standard deviation of the Gaussian observation model.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        k: int = 8,
        m: int = 8,
        likelihood: str = "bernoulli",
        obs_std: float = 1.0,
    ) -> None:
        super().__init__(input_shape, latent_dim, k=k, likelihood=likelihood, obs_std=obs_std)
        self.m = check_count(m, "m")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The leading dims of the posterior samples per example: ``(K, M)``."""
        return (self.k, self.m)

    def bound(self, log_w: torch.Tensor) -> torch.Tensor:
        """The MIWAE bound per example from log-weights ``(K, M, B)``: ``(B,)``."""
        return ops.miwae_bound(log_w, k_dim=0, m_dim=1)
