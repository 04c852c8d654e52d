"""``hfvae``: the hierarchically factorised VAE (Esmaeili et al. 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastvae.models._tc import KLDecompositionVAE
from fastvae.models.base import ModelOutput
from fastvae.models.registry import register

__all__ = ["HFVAE", "group_sizes"]


def group_sizes(groups: int | Sequence[int], latent_dim: int) -> tuple[int, ...]:
    """The sizes of the consecutive latent groups that ``groups`` describes.

    Args:
        groups: the number of groups (an int: ``latent_dim`` split into that many consecutive groups
            whose sizes differ by at most one, larger ones first) or the group sizes themselves (a
            sequence of positive ints summing to ``latent_dim``).
        latent_dim: ``D``.

    Raises:
        ValueError: naming ``groups``, when it is neither.
    """
    if isinstance(groups, int) and not isinstance(groups, bool):
        if not 1 <= groups <= latent_dim:
            raise ValueError(f"groups must be a number of groups in [1, latent_dim={latent_dim}], got {groups!r}")
        base, extra = divmod(latent_dim, groups)
        return tuple(base + (g < extra) for g in range(groups))
    if (
        isinstance(groups, (tuple, list))
        and groups
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in groups)
        and sum(groups) == latent_dim
    ):
        return tuple(groups)
    raise ValueError(
        f"groups must be a number of groups or a sequence of positive group sizes summing to "
        f"latent_dim={latent_dim}, got {groups!r}"
    )


@register("hfvae")
class HFVAE(KLDecompositionVAE):
    """The HFVAE of Esmaeili et al., "Structured Disentangled Representations" (AISTATS 2019).

    The latent dims are split into consecutive groups ``z = (z^1, ..., z^G)``, and the KL term of the
    ELBO is decomposed hierarchically: mutual information, total correlation *between* the groups,
    total correlation *within* each group, and dimension-wise KL, each with its own weight. With one
    sample ``z_b ~ q(z|x_b)`` per example and the aggregate densities estimated on the minibatch
    (:mod:`fastvae.models._tc`)::

        recon      = mean_b [ -log p(x_b | z_b) ]                                 (summed over pixels)
        mi         = mean_b [ log q(z_b|x_b) - log q(z_b) ]                       I(x; z)
        tc_between = mean_b [ log q(z_b) - sum_g log q(z_b^g) ]
        tc_within  = mean_b [ sum_g ( log q(z_b^g) - sum_{d in g} log q(z_bd) ) ]
        dwkl       = mean_b [ sum_d log q(z_bd) - log p(z_bd) ]                    sum_d KL(q(z_d) || p(z_d))
        loss       = recon + dwkl + alpha * mi + beta * tc_between + gamma * tc_within

    The paper's prior-side corrections ``log p(z) - sum_g log p(z^g)`` and
    ``log p(z^g) - sum_{d in g} log p(z^g_d)`` are identically zero for the factorised prior
    ``N(0, I)`` used here. ``tc_between + tc_within`` is the total correlation of beta-TCVAE: with one
    group per dim ``tc_within`` is 0 and the model is ``beta_tc_vae``; with one group ``tc_between``
    is 0. ``loss`` also reports the closed-form ``kl`` for monitoring (not part of ``"loss"``).

    Hyper-parameters:
        groups: the number of consecutive, near-equal groups (default 5: pairs of dims for the
            10-dim dSprites latent), or a tuple of group sizes summing to ``latent_dim``.
        alpha: weight of the mutual information (1, the ELBO's).
        beta: weight of the between-group total correlation (6, so that with one group per dim this
            is ``beta_tc_vae``'s dSprites setting; the paper sweeps it).
        gamma: weight of the within-group total correlation (1, the ELBO's: dims inside a group may
            stay correlated, which is the point of the grouping).
        dataset_size, estimator: the aggregate-posterior estimator (see ``beta_tc_vae``); default
            737,280 (dSprites) and ``"mss"``, unbiased for ``q(z)``. (The paper's probtorch code
            estimates ``q(z)`` by a batch average; Chen et al.'s estimators are reused here.)
        likelihood, obs_std: the observation model (:mod:`fastvae.models.base`).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        groups: int | tuple[int, ...] = 5,
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
        self.group_sizes = group_sizes(groups, latent_dim)

    def loss(
        self, x: torch.Tensor, out: ModelOutput, y: torch.Tensor | None = None, step: int | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "recon", "mi", "tc_between", "tc_within", "dwkl", "kl"}``: float32 scalars."""
        recon = self.reconstruction_nll(x, out.logits).mean()
        parts = self.kl_terms(out, self.group_sizes)
        terms = {name: parts[name] for name in ("mi", "tc_between", "tc_within", "dwkl")}
        loss = (
            recon
            + terms["dwkl"]
            + self.alpha * terms["mi"]
            + self.beta * terms["tc_between"]
            + self.gamma * terms["tc_within"]
        )
        return {"loss": loss, "recon": recon, **terms, "kl": out.kl.float().mean()}
