"""Mutual Information Gap (Chen et al., 2018, "Isolating sources of disentanglement in VAEs").

For each factor ``v_k`` the gap between the two latents that share the most information with it,
normalised by the factor's entropy, averaged over factors::

    MIG = 1/K sum_k ( I(z_{j(1)}; v_k) - I(z_{j(2)}; v_k) ) / H(v_k)

with ``j(1), j(2)`` the latents of largest and second-largest ``I(z_j; v_k)``.

Protocol (disentanglement_lib's, which Locatello et al. 2019 use; the paper itself estimates
``I(z_j; v_k)`` from the encoder's posterior ``q(z_j | x)`` over the whole data set, which a
representation function does not give):

- codes of ``num_samples = 10,000`` observations of uniformly drawn factors (one draw, no split);
- each latent discretised into ``num_bins = 20`` equal-width bins over its range in the sample;
- factors used as their discrete classes;
- ``I`` and ``H`` plug-in estimates (nats) from the contingency tables.

What scores mean: 1 when each factor is a function of its own latent (and of no other) with at most
``num_bins`` distinct values; a factor with more classes than bins loses resolution and caps at
``log(num_bins) / log(C)`` for ``C`` equiprobable classes (dSprites: 0.81 for the 40 orientations,
0.86 for the 32 positions, so a perfect dSprites code scores ~0.91 with 20 bins). Independent noise
scores ~0, up to the plug-in estimator's positive bias (about ``(bins - 1)(C - 1) / 2N`` nats per
pair, mostly cancelled by the difference). MIG is invariant to permuting latents and to scaling
(or any strictly monotone map of) a latent: the bins map onto bins.
"""

from __future__ import annotations

import torch

from fastvae.ops._checks import (
    as_codes,
    as_factors,
    check_int,
    check_same_rows,
    make_generator,
)
from fastvae.metrics._estimators import discretize, entropy, mutual_information
from fastvae.metrics.sampling import (
    DEFAULT_CHUNK_SIZE,
    FactorSource,
    Represent,
    check_source,
    encode_factors,
    sample_factors,
)

__all__ = ["mig", "mig_from_codes", "mutual_information_matrix"]


def _information(codes: torch.Tensor, factors: torch.Tensor, num_bins: int) -> torch.Tensor:
    """``I(bin(z_j); v_k)`` (nats) for checked float64 ``codes (N, L)`` and int64 ``factors (N, K)``: ``(L, K)``."""
    bins = discretize(codes, check_int(num_bins, "num_bins", low=2))
    return torch.tensor(
        [[mutual_information(bins[:, j], factors[:, k]) for k in range(factors.shape[1])] for j in range(bins.shape[1])],
        dtype=torch.float64,
    )


def mutual_information_matrix(codes: object, factors: object, *, num_bins: int = 20) -> torch.Tensor:
    """``I(z_j; v_k)`` in nats, float64 ``(L, K)``, for ``codes (N, L)`` (real) and ``factors (N, K)`` (integer classes).

    Each latent is cut into ``num_bins`` equal-width bins over its range; factors are used as classes.
    """
    codes, factors = as_codes(codes), as_factors(factors)
    check_same_rows(codes, factors)
    return _information(codes, factors, num_bins)


def mig_from_codes(codes: object, factors: object, *, num_bins: int = 20) -> float:
    """MIG of ``codes (N, L)`` (real, ``L >= 2``) against ``factors (N, K)`` (integer classes), in ``[0, 1]``.

    Raises ``ValueError`` when ``L < 2`` (there is no gap) or a factor is constant (its entropy is 0).
    """
    codes, factors = as_codes(codes), as_factors(factors)
    check_same_rows(codes, factors)
    if codes.shape[1] < 2:
        raise ValueError(f"codes must have at least 2 latent dimensions for MIG, got {codes.shape[1]}")
    entropies = torch.tensor([entropy(factors[:, k]) for k in range(factors.shape[1])], dtype=torch.float64)
    if bool((entropies == 0).any()):
        raise ValueError(f"factors[:, {int((entropies == 0).nonzero()[0])}] is constant: MIG needs every factor to vary")
    top = _information(codes, factors, num_bins).topk(2, dim=0).values
    return float(((top[0] - top[1]) / entropies).mean())


def mig(
    represent: Represent,
    dataset: FactorSource,
    *,
    num_samples: int = 10_000,
    num_bins: int = 20,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> float:
    """MIG of ``represent`` on ``dataset`` (module docstring): ``num_samples`` uniform factor draws.

    Args:
        represent: observations ``(n, ...)`` -> codes ``(n, L)``.
        dataset: a :class:`~fastvae.metrics.sampling.FactorSource` (``fastvae.data.DSprites``).
        num_samples: observations encoded.
        num_bins: equal-width bins per latent.
        seed: seeds the factor draws.
        chunk_size: observations per ``represent`` call.
        device: where observations are rendered (default CPU).
    """
    check_source(dataset)
    check_int(num_samples, "num_samples", low=2)
    factors = sample_factors(dataset, num_samples, make_generator(seed))
    codes = encode_factors(represent, dataset, factors, chunk_size=chunk_size, device=device)
    return mig_from_codes(codes, factors, num_bins=num_bins)
