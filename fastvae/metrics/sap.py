"""Separated Attribute Predictability (Kumar et al., 2018, "Variational inference of disentangled
latent concepts from unlabeled observations", the DIP-VAE paper).

A score matrix ``S (L, K)`` says how well latent ``j`` alone predicts factor ``k``; SAP is the mean
over factors of the gap between the two largest entries of the factor's column::

    SAP = 1/K sum_k ( S_{j(1),k} - S_{j(2),k} )

Protocol (the paper's, with the details it leaves open filled as stated):

- codes of ``num_train = 10,000`` + ``num_test = 5,000`` observations of uniformly drawn factors
  (disentanglement_lib's sizes); fitted on the train part, scored on the test part;
- latents with standard deviation below ``min_std = 0.05`` on the train part are inactive and score
  0 for every factor (the paper: "variance less than some threshold"; the threshold is
  disentanglement_lib's FactorVAE pruning threshold, in units of the N(0, 1) prior);
- continuous factors: ``S_jk = corr(z_j, v_k)^2`` on the test part, the R^2 of a fitted line (as the
  paper);
- discrete factors (the default for every factor: dSprites' factors are classes): ``S_jk`` is the
  **chance-adjusted balanced accuracy**, clipped at 0, of a one-latent nearest-class-mean
  classifier fitted on the train part (thresholds at the midpoints between sorted class means: a
  linear classifier, LDA with equal priors). Deviations: the paper fits thresholds on the test
  examples themselves and reports raw balanced accuracy; disentanglement_lib trains
  ``LinearSVC(C=0.01)`` and reports raw accuracy. The adjustment ``(bacc - 1/C) / (1 - 1/C)`` puts
  chance at 0 for every factor whatever its number of classes ``C``, like R^2, so that a perfect
  code scores 1 and the gap is not capped at ``1 - 1/C``.

What scores mean: 1 when each factor is predicted perfectly by one latent and at chance by all
others; ~0 for independent noise (gaps between near-chance scores) and for codes where every
factor is spread equally over several latents.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastvae.ops._checks import (
    as_codes,
    as_factors,
    check_fraction_split,
    check_int,
    check_same_rows,
    make_generator,
)
from fastvae.metrics._estimators import nearest_mean_accuracy
from fastvae.metrics.sampling import (
    DEFAULT_CHUNK_SIZE,
    FactorSource,
    Represent,
    check_source,
    encode_factors,
    sample_factors,
)

__all__ = ["sap", "sap_from_codes", "sap_score_matrix"]


def _continuous_mask(continuous: bool | Sequence[bool], num_factors: int) -> list[bool]:
    if isinstance(continuous, bool):
        return [continuous] * num_factors
    mask = list(continuous)
    if len(mask) != num_factors or not all(isinstance(c, bool) for c in mask):
        raise ValueError(f"continuous must be a bool or {num_factors} bools (one per factor), got {continuous!r}")
    return mask


def _r_squared(z: torch.Tensor, v: torch.Tensor) -> float:
    """Squared Pearson correlation of two float64 vectors ``(M,)``; 0 when either is constant."""
    z, v = z - z.mean(), v - v.mean()
    denominator = float(z.square().sum() * v.square().sum())
    return 0.0 if denominator == 0 else float((z * v).sum()) ** 2 / denominator


def sap_score_matrix(
    codes: object,
    factors: object,
    *,
    num_train: int | None = None,
    continuous: bool | Sequence[bool] = False,
    min_std: float = 0.05,
) -> torch.Tensor:
    """The score matrix ``S``, float64 ``(L, K)`` (module docstring), of ``codes (N, L)`` against ``factors (N, K)``.

    Args:
        codes: real ``(N, L)``.
        factors: ``(N, K)``; integer classes (real values allowed when every factor is continuous).
        num_train: the first ``num_train`` rows fit the classifiers and decide which latents are
            active, the rest score; default ``2N // 3``.
        continuous: per factor (or one for all): R^2 (True) or classification (False).
        min_std: latents whose train standard deviation is below it score 0.
    """
    codes = as_codes(codes)
    values = as_factors(factors, integer=False)
    mask = _continuous_mask(continuous, values.shape[1])
    classes = values.long() if all(mask) else as_factors(factors)  # integer classes wherever one is discrete
    check_same_rows(codes, values)
    split = check_fraction_split(num_train, codes.shape[0])
    if isinstance(min_std, bool) or not isinstance(min_std, (int, float)) or not min_std >= 0:
        raise ValueError(f"min_std must be a number >= 0, got {min_std!r}")
    train_z, test_z = codes[:split], codes[split:]
    active = (train_z.std(0, correction=0) >= min_std).tolist()
    scores = torch.zeros(codes.shape[1], values.shape[1], dtype=torch.float64)
    for j in (j for j in range(codes.shape[1]) if active[j]):
        for k, is_continuous in enumerate(mask):
            if is_continuous:
                scores[j, k] = _r_squared(test_z[:, j], values[split:, k])
            else:
                scores[j, k] = nearest_mean_accuracy(train_z[:, j], classes[:split, k], test_z[:, j], classes[split:, k])
    return scores


def sap_from_codes(
    codes: object,
    factors: object,
    *,
    num_train: int | None = None,
    continuous: bool | Sequence[bool] = False,
    min_std: float = 0.05,
) -> float:
    """SAP of ``codes (N, L)`` (``L >= 2``) against ``factors (N, K)``, in ``[0, 1]``; arguments as :func:`sap_score_matrix`."""
    scores = sap_score_matrix(codes, factors, num_train=num_train, continuous=continuous, min_std=min_std)
    if scores.shape[0] < 2:
        raise ValueError(f"codes must have at least 2 latent dimensions for SAP, got {scores.shape[0]}")
    top = scores.topk(2, dim=0).values
    return float((top[0] - top[1]).mean())


def sap(
    represent: Represent,
    dataset: FactorSource,
    *,
    num_train: int = 10_000,
    num_test: int = 5_000,
    continuous: bool | Sequence[bool] = False,
    min_std: float = 0.05,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> float:
    """SAP of ``represent`` on ``dataset`` (module docstring) from ``num_train + num_test`` uniform factor draws.

    ``represent``, ``dataset``, ``seed``, ``chunk_size`` and ``device`` as in :func:`fastvae.metrics.mig`;
    the rest as in :func:`sap_score_matrix`.
    """
    check_source(dataset)
    check_int(num_train, "num_train", low=2)
    check_int(num_test, "num_test", low=2)
    factors = sample_factors(dataset, num_train + num_test, make_generator(seed))
    codes = encode_factors(represent, dataset, factors, chunk_size=chunk_size, device=device)
    return sap_from_codes(codes, factors, num_train=num_train, continuous=continuous, min_std=min_std)
