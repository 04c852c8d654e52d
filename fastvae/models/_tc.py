"""Minibatch estimators of the aggregate posterior, the KL decomposition they enable, and the base of
the models that weigh its terms.

Shared by ``beta_tc_vae`` (Chen et al. 2018) and ``hfvae`` (Esmaeili et al. 2019), whose common base is
:class:`KLDecompositionVAE`: their hyper-parameters and the batch means of :func:`decompose_kl`. With a data set of
``N`` points and encoder ``q(z|n)``, the aggregate posterior is ``q(z) = (1/N) sum_n q(z|n)``. For a
minibatch ``x_1..x_B`` with samples ``z_i ~ q(z|x_i)``, each estimator is a weight matrix ``W (B, B)``
and::

    log q(z_i)   ~= logsumexp_j [ log W_ij + log q(z_i | x_j) ]
    log q(z_i^g) ~= logsumexp_j [ log W_ij + sum_{d in g} log q(z_id | x_j) ]     (a group of dims g)

``q(z_id | x_j)`` is the diagonal Gaussian's density of dim ``d``; the pairwise table
``(B, B, D)`` is computed once (:func:`pairwise_log_density`) and every joint, group and dim-wise
estimate is a group-sum of it followed by a weighted logsumexp, so nothing underflows.

Estimators (Chen et al. 2018, section 4.1 and its appendix; ``M = B - 1``):

``"mws"`` (minibatch-weighted sampling)
    ``W_ij = 1 / (N B)`` for every ``i, j``: the paper's ``log sum_j q(z_i|x_j) - log(N B)`` (its ``M``
    is the batch size) and the official code's ``logsumexp_j log q(z_i|x_j) - log(B N)``. Its weights sum to ``1/N``, not 1, so
    it is biased at every batch size, not only small ones: with the whole data set as the batch
    (``B = N``) it returns exactly ``log q(z) - log N``, and where every ``q(z|x_j)`` is the prior it
    returns ``log p(z) - log N`` (per dim too), whatever ``B``.
``"mss"`` (minibatch-stratified sampling)
    Row ``i`` treats ``x_i`` as the point ``n*`` that ``z_i`` was drawn from and ``x_{(i+1) mod B}``
    as the one batch point from ``n*``'s own stratum::

        W_ii              = 1 / N
        W_i,(i+1) mod B   = (N - M) / (N M)
        W_ij              = 1 / M         for the other M - 1 columns

    Each row sums to 1, and the weights on the points other than ``n*`` sum to ``(N - 1) / N``, so
    for a batch drawn without replacement the estimate of ``q(z)`` (not of its log) is unbiased
    for every fixed ``z`` and ``n*``; the estimate of ``log q(z)`` is then biased low only through
    the logarithm's concavity, which fades as ``B`` grows. The official code (rtqichen/beta-tcvae,
    ``_log_importance_weight_matrix``) means this matrix but fills it with a stride of ``B`` instead
    of ``B + 1``, which sets columns 0 and 1 rather than the diagonal and super-diagonal (its pull
    request #1); this module builds the matrix the formula describes. Needs ``B >= 2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fastvae import ops
from fastvae.models.base import GaussianVAE, ModelOutput
from fastvae.ops._checks import check_weight

__all__ = [
    "ESTIMATORS",
    "KLDecompositionVAE",
    "check_dataset_size",
    "check_estimator",
    "decompose_kl",
    "group_log_density",
    "log_importance_weights",
    "pairwise_log_density",
]

#: Values of the ``estimator`` hyper-parameter.
ESTIMATORS: tuple[str, ...] = ("mws", "mss")


def check_estimator(estimator: object) -> str:
    """``estimator`` if it is one of :data:`ESTIMATORS`; ValueError naming ``estimator`` otherwise."""
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(map(repr, ESTIMATORS))}, got {estimator!r}")
    return estimator


def check_dataset_size(dataset_size: object) -> int:
    """``dataset_size`` if it is a positive int; ValueError naming ``dataset_size`` otherwise."""
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1:
        raise ValueError(f"dataset_size must be a positive int (the number of training examples), got {dataset_size!r}")
    return dataset_size


def pairwise_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``out[i, j, d] = log N(z[i, d]; mu[j, d], exp(logvar[j, d]))`` for every pair of batch rows.

    Args:
        z, mu, logvar: ``(B, D)`` floating tensors of one dtype (samples and posterior parameters).

    Returns:
        ``(B, B, D)`` in the dtype of ``z``, through :func:`fastvae.gaussian_log_prob` (a trailing
        singleton dim makes its sum over the last dim elementwise; ``z`` is expanded to the pairs,
        the parameters broadcast).
    """
    b, d = z.shape
    points = z[:, None, :, None].expand(b, b, d, 1)
    return ops.gaussian_log_prob(points, mu[None, :, :, None], logvar[None, :, :, None])


def log_importance_weights(
    batch_size: int, dataset_size: int, estimator: str, *, dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``log W``, the ``(B, B)`` log weight matrix of ``estimator`` (see the module docstring).

    Raises:
        ValueError: an unknown ``estimator``, a bad ``dataset_size``, or ``"mss"`` with a batch of one
            (it needs the batch point ``n*`` and at least one other).
    """
    check_estimator(estimator)
    n = check_dataset_size(dataset_size)
    b = batch_size
    if estimator == "mws":
        return torch.full((b, b), -math.log(n * b), dtype=dtype, device=device)
    if b < 2:
        raise ValueError(f"the 'mss' estimator needs a batch of at least 2 examples, got a batch of {b}")
    m = b - 1
    weights = torch.full((b, b), 1.0 / m, dtype=torch.float64)
    rows = torch.arange(b)
    weights[rows, (rows + 1) % b] = (n - m) / (n * m)
    weights[rows, rows] = 1.0 / n
    return weights.log().to(dtype=dtype, device=device)


def group_log_density(
    pairwise: torch.Tensor, log_weights: torch.Tensor, group_sizes: Sequence[int] | None = None
) -> torch.Tensor:
    """Estimated ``log q(z_i^g)`` of each contiguous group of latent dims.

    Args:
        pairwise: ``(B, B, D)`` from :func:`pairwise_log_density`.
        log_weights: ``(B, B)`` from :func:`log_importance_weights` (any ``log W`` works).
        group_sizes: sizes of consecutive groups summing to ``D``; None for one group per dim.

    Returns:
        ``(B, G)``: ``logsumexp_j [log_weights[i, j] + sum_{d in g} pairwise[i, j, d]]``.
    """
    if group_sizes is not None:
        pairwise = torch.stack([part.sum(-1) for part in pairwise.split(list(group_sizes), dim=-1)], dim=-1)
    return torch.logsumexp(log_weights[:, :, None] + pairwise, dim=1)


def decompose_kl(
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    log_weights: torch.Tensor,
    group_sizes: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-example terms of the decomposition of ``log q(z|x) - log p(z)`` (prior ``N(0, I)``).

    With ``log q(z)``, ``log q(z^g)`` and ``log q(z_d)`` estimated through ``log_weights``::

        mi         = log q(z|x) - log q(z)                       (index-code mutual information)
        tc         = log q(z) - sum_d log q(z_d)                  (total correlation)
        dwkl       = sum_d log q(z_d) - log p(z)                  (dimension-wise KL)
        tc_between = log q(z) - sum_g log q(z^g)                  (only with group_sizes)
        tc_within  = sum_g log q(z^g) - sum_d log q(z_d)          (only with group_sizes)

    so ``mi + tc + dwkl = log q(z|x) - log p(z)`` and ``tc = tc_between + tc_within`` exactly, for any
    weights. The prior's own correlation terms (``log p(z) - sum_g log p(z^g)`` and the like) vanish
    for the factorised ``N(0, I)``. Expectations over ``q(z, x)`` are the batch means of these.

    Args:
        z, mu, logvar: ``(B, D)``, one dtype.
        log_weights: ``(B, B)`` in that dtype.
        group_sizes: consecutive group sizes summing to ``D``, or None.

    Returns:
        ``{"mi", "tc", "dwkl"}`` (and ``"tc_between"``, ``"tc_within"`` with groups), each ``(B,)``.
    """
    pairwise = pairwise_log_density(z, mu, logvar)
    log_qz = group_log_density(pairwise, log_weights, (z.shape[-1],)).squeeze(-1)
    log_qz_dims = group_log_density(pairwise, log_weights).sum(-1)
    log_qz_x = ops.gaussian_log_prob(z, mu, logvar)
    log_pz = ops.gaussian_log_prob(z)
    terms = {"mi": log_qz_x - log_qz, "tc": log_qz - log_qz_dims, "dwkl": log_qz_dims - log_pz}
    if group_sizes is not None:
        log_qz_groups = group_log_density(pairwise, log_weights, group_sizes).sum(-1)
        terms["tc_between"] = log_qz - log_qz_groups
        terms["tc_within"] = log_qz_groups - log_qz_dims
    return terms


class KLDecompositionVAE(GaussianVAE):
    """Base of ``beta_tc_vae`` and ``hfvae``: a :class:`~fastvae.models.base.GaussianVAE` whose loss
    weighs the terms of :func:`decompose_kl` instead of the KL.

    It holds, checked, the hyper-parameters both models take: three weights (each model's docstring
    says which term each weighs) and the aggregate-posterior estimator; :meth:`kl_terms` gives the
    decomposition's batch means. Each model states and computes its own loss from them.

    Args:
        input_shape, latent_dim, likelihood, obs_std: as for :class:`~fastvae.models.base.GaussianVAE`.
        alpha, beta, gamma: non-negative finite weights (ValueError naming the bad one).
        dataset_size: ``N``, the number of training examples the estimators assume.
        estimator: one of :data:`ESTIMATORS`.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        *,
        alpha: float,
        beta: float,
        gamma: float,
        dataset_size: int,
        estimator: str,
        likelihood: str,
        obs_std: float,
    ) -> None:
        super().__init__(input_shape, latent_dim, likelihood=likelihood, obs_std=obs_std)
        self.alpha = check_weight("alpha", alpha)
        self.beta = check_weight("beta", beta)
        self.gamma = check_weight("gamma", gamma)
        self.dataset_size = check_dataset_size(dataset_size)
        self.estimator = check_estimator(estimator)

    def kl_terms(self, out: ModelOutput, group_sizes: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """The batch means of :func:`decompose_kl` for ``out`` (the model's forward: ``z``, ``mu``,
        ``logvar``, each ``(B, D)``), computed in float32 with the model's estimator and ``dataset_size``.

        Returns:
            ``{"mi", "tc", "dwkl"}`` (and ``"tc_between"``, ``"tc_within"`` with ``group_sizes``), each a
            float32 0-dim tensor.
        """
        z, mu, logvar = out.z.float(), out.mu.float(), out.logvar.float()
        log_w = log_importance_weights(z.shape[0], self.dataset_size, self.estimator, device=z.device)
        return {name: value.mean() for name, value in decompose_kl(z, mu, logvar, log_w, group_sizes).items()}
