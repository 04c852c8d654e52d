"""Disentanglement, completeness and informativeness (Eastwood & Williams, 2018, "A framework for the
quantitative evaluation of disentangled representations").

One regressor per factor predicts the factor from all latents; its importance for latent ``j``
fills ``R_jk >= 0``. With ``P_jk = R_jk / sum_k R_jk`` and ``Q_jk = R_jk / sum_j R_jk``:

- disentanglement ``D = sum_j rho_j (1 - H_K(P_j.))``, ``rho_j = sum_k R_jk / sum R`` (entropy in
  base ``K``: each latent should matter for one factor);
- completeness ``C = sum_k sigma_k (1 - H_L(Q_.k))``, ``sigma_k = sum_j R_jk / sum R`` (entropy in
  base ``L``: each factor should be captured by one latent; the importance weighting is
  disentanglement_lib's, the paper's released code takes the plain mean of the ``C_k``);
- informativeness ``I``: how well the regressors predict the factors on held-out data.

Protocol:

- codes of ``num_train = 10,000`` + ``num_test = 5,000`` observations of uniformly drawn factors
  (disentanglement_lib's sizes); the regressors fit the train part;
- latents and factors z-scored with the train part's mean and standard deviation (constant latents
  become 0 and get importance 0; factors are their class indices, which for dSprites' ordinal
  factors is an affine map of their values; shape is regressed as its id 0, 1, 2);
- the regressor is the **Lasso** the paper uses (it also uses random forests; disentanglement_lib
  uses gradient-boosted trees, which fastvae does not carry — the deviation from the
  disentanglement_lib numbers most often quoted): ``min_w 1/(2N) ||v_k - Z w||^2 + alpha ||w||_1``
  with ``alpha = 0.02`` (the paper's text does not fix it; 0.02 on z-scored data is the usual
  choice of reimplementations), and ``R_jk = |w_jk|``. A linear
  regressor sees only linearly decodable information: factors a latent encodes non-monotonically
  (orientation's symmetries in dSprites) get little importance and informativeness;
- informativeness ``I`` = mean over factors of the test-set ``R^2 = 1 - NRMSE^2`` (NRMSE, the
  paper's error, normalised by the test factor's standard deviation), so that higher is better
  like ``D`` and ``C`` (1 perfect prediction, ~0 predicting the mean; it can dip below 0).

What scores mean: ``D = C = 1`` for a code whose latents are each one factor's (scaled, permuted)
value; ~0 for codes that mix every factor into every latent with equal weight; intermediate for a
generic rotation of the factors. ``D`` and ``C`` normalise the importances away, so they say
nothing about an uninformative code: for noise the Lasso keeps at most a few noise-level weights
(|w| ~ 0.01) or none, and ``D``, ``C`` land anywhere in ``[0, 1]`` (0 by convention when ``R = 0``);
read them with ``I`` (~0 for noise) and the importances' size (:func:`importance_matrix`).
"""

from __future__ import annotations

import math

import torch

from fastvae.ops._checks import (
    as_codes,
    as_factors,
    check_fraction_split,
    check_int,
    check_same_rows,
    make_generator,
)
from fastvae.metrics._estimators import lasso, standardize
from fastvae.metrics.sampling import (
    DEFAULT_CHUNK_SIZE,
    FactorSource,
    Represent,
    check_source,
    encode_factors,
    sample_factors,
)

__all__ = ["dci", "dci_from_codes", "dci_from_importance", "importance_matrix"]

#: The Lasso penalty, on z-scored latents and factors.
DEFAULT_ALPHA = 0.02


def _check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (alpha >= 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    return float(alpha)


def importance_matrix(codes: object, factors: object, *, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """``R = |w|``, float64 ``(L, K)``: Lasso weights of z-scored ``factors (N, K)`` on z-scored ``codes (N, L)``.

    Fits every row given (no split). Raises ``ValueError`` when a factor is constant.
    """
    codes, factors = as_codes(codes), as_factors(factors, integer=False)
    check_same_rows(codes, factors)
    return _fit(codes, factors, _check_alpha(alpha))[0].abs()


def _fit(codes: torch.Tensor, factors: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed Lasso weights ``(L, K)`` and the factors' ``[mean; std]`` ``(2, K)``, from checked float64 train rows."""
    std = factors.std(0, correction=0)
    if bool((std == 0).any()):
        raise ValueError(f"factors[:, {int((std == 0).nonzero()[0])}] is constant on the training rows: it cannot be regressed")
    (z,) = standardize(codes)
    (v,) = standardize(factors)
    return lasso(z, v, alpha), torch.stack([factors.mean(0), std])


def _one_minus_entropy(p: torch.Tensor) -> torch.Tensor:
    """``1 - H_n(p_i)`` for the rows ``p (M, n)`` of distributions, entropy in base ``n`` (1 when ``n == 1``)."""
    n = p.shape[1]
    if n == 1:
        return torch.ones(p.shape[0], dtype=p.dtype)
    plogp = torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p))
    return 1.0 + plogp.sum(1) / math.log(n)


def dci_from_importance(importance: object) -> dict[str, float]:
    """``{"disentanglement", "completeness"}`` of an importance matrix ``R (L, K) >= 0`` (module docstring)."""
    r = torch.as_tensor(importance).to(torch.float64)
    if r.dim() != 2 or r.numel() == 0:
        raise ValueError(f"importance must have shape (L, K) with L, K >= 1, got {tuple(r.shape)}")
    if not bool((r >= 0).all()) or not bool(r.isfinite().all()):
        raise ValueError("importance must be finite and >= 0")
    total = float(r.sum())
    if total == 0:
        return {"disentanglement": 0.0, "completeness": 0.0}
    results = {}
    for name, matrix in (("disentanglement", r), ("completeness", r.T)):
        mass = matrix.sum(1)
        rows = matrix / torch.where(mass > 0, mass, torch.ones_like(mass))[:, None]
        results[name] = float((_one_minus_entropy(rows) * mass / total).sum())
    return results


def dci_from_codes(
    codes: object, factors: object, *, num_train: int | None = None, alpha: float = DEFAULT_ALPHA
) -> dict[str, float]:
    """``{"disentanglement", "completeness", "informativeness"}`` of ``codes (N, L)`` against ``factors (N, K)``.

    Args:
        codes: real ``(N, L)``.
        factors: ``(N, K)``, integer classes or real values.
        num_train: the first ``num_train`` rows fit the Lasso (and the z-scores), the rest give
            informativeness; default ``2N // 3``.
        alpha: the Lasso penalty.
    """
    codes, factors = as_codes(codes), as_factors(factors, integer=False)
    check_same_rows(codes, factors)
    split = check_fraction_split(num_train, codes.shape[0])
    alpha = _check_alpha(alpha)
    weights, stats = _fit(codes[:split], factors[:split], alpha)
    scores = dci_from_importance(weights.abs())
    _, test_z = standardize(codes[:split], codes[split:])
    test_v = (factors[split:] - stats[0]) / stats[1]
    error = (test_v - test_z @ weights).square().mean(0)
    variance = test_v.var(0, correction=0)
    r_squared = 1.0 - error / torch.where(variance > 0, variance, torch.ones_like(variance))
    scores["informativeness"] = float(r_squared.mean())
    return scores


def dci(
    represent: Represent,
    dataset: FactorSource,
    *,
    num_train: int = 10_000,
    num_test: int = 5_000,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """DCI of ``represent`` on ``dataset`` (module docstring) from ``num_train + num_test`` uniform factor draws.

    ``represent``, ``dataset``, ``seed``, ``chunk_size`` and ``device`` as in :func:`fastvae.metrics.mig`.
    Returns ``{"disentanglement", "completeness", "informativeness"}``.
    """
    check_source(dataset)
    check_int(num_train, "num_train", low=2)
    check_int(num_test, "num_test", low=2)
    factors = sample_factors(dataset, num_train + num_test, make_generator(seed))
    codes = encode_factors(represent, dataset, factors, chunk_size=chunk_size, device=device)
    return dci_from_codes(codes, factors, num_train=num_train, alpha=alpha)
