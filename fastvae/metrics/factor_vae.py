"""The FactorVAE disentanglement score (Kim & Mnih, 2018, "Disentangling by factorising").

A vote: pick a factor ``k`` uniformly, draw ``batch_size`` observations whose factor ``k`` is fixed
(to the first draw's value) and whose other factors are uniform, encode them, divide each latent's
variance in the batch by its variance over the whole data, and vote ``(argmin_j, k)``. A majority-vote
classifier (each latent predicts the factor it got most train votes for) is fitted on the train
votes; the score is its accuracy on separate eval votes.

Protocol (the paper's, with disentanglement_lib's sizes):

- the whole-data variance of each latent from ``num_variance_estimate = 10,000`` uniform draws
  (unbiased, ``ddof = 1``; batch variances too); latents with standard deviation below
  ``prune_std = 0.05`` are **collapsed** and pruned (they take no votes; the paper prunes
  collapsed latents without fixing a rule, disentanglement_lib by this threshold); with no active
  latent the score is 0 (disentanglement_lib's convention);
- normalising by the empirical standard deviation makes the score invariant to rescaling latents;
- ``batch_size = 64`` observations per vote, ``num_train = 10,000`` train votes and
  ``num_eval = 5,000`` eval votes (disentanglement_lib's sizes);
- ties in the argmin, and in the majority vote, go to the lower index.

What scores mean: 1 when fixing each factor leaves one latent of its own constant; chance is
``1/K`` in expectation (a latent's votes are uniform over factors), noisier on small eval sets. The score
does not penalise every entangled code: a rotation of the factors in which each factor still has
its own most-affected latent scores 1; only codes that spread each factor equally over latents
(an equal-magnitude mixing such as a Hadamard matrix) score chance.
"""

from __future__ import annotations

import torch

from fastvae.ops._checks import check_int, make_generator
from fastvae.metrics.sampling import (
    DEFAULT_CHUNK_SIZE,
    FactorSource,
    Represent,
    check_source,
    encode_factors,
    sample_factors,
)

__all__ = ["factor_vae_score", "fix_one_factor", "majority_vote_accuracy"]


def fix_one_factor(factors: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """``factors`` int64 ``(V, B, K)`` with factor ``fixed[v]`` of every row of group ``v`` set to row 0's value.

    ``fixed`` int64 ``(V,)``; returns a new tensor.
    """
    out = factors.clone()
    groups = torch.arange(factors.shape[0])
    out[groups[:, None], torch.arange(factors.shape[1])[None, :], fixed[:, None]] = factors[groups, 0, fixed][:, None]
    return out


def majority_vote_accuracy(train_votes: torch.Tensor, eval_votes: torch.Tensor) -> float:
    """Accuracy on ``eval_votes`` of the majority-vote classifier of ``train_votes``.

    Both are vote counts int64 ``(L, K)``: entry ``(j, k)`` counts votes of latent ``j`` for factor
    ``k``. Latent ``j`` predicts ``argmax_k train_votes[j]``; returns the fraction of eval votes
    whose factor is their latent's prediction (0 without eval votes).
    """
    predicted = train_votes.argmax(1)
    total = int(eval_votes.sum())
    return 0.0 if total == 0 else int(eval_votes.gather(1, predicted[:, None]).sum()) / total


def _votes(
    represent: Represent,
    dataset: FactorSource,
    num_votes: int,
    batch_size: int,
    active: torch.Tensor,
    scale: torch.Tensor,
    generator: torch.Generator,
    chunk_size: int,
    device: torch.device | str | None,
) -> torch.Tensor:
    """Vote counts int64 ``(L_active, K)`` of ``num_votes`` votes.

    ``active`` bool ``(L,)`` marks the latents that may vote; ``scale`` float64 ``(L_active,)`` is their
    whole-data variance.
    """
    num_factors = len(dataset.FACTOR_SIZES)
    fixed = torch.randint(num_factors, (num_votes,), generator=generator)
    rows = sample_factors(dataset, num_votes * batch_size, generator).reshape(num_votes, batch_size, num_factors)
    rows = fix_one_factor(rows, fixed)
    per_group = max(1, chunk_size // batch_size)
    latents = []
    for start in range(0, num_votes, per_group):
        group = rows[start : start + per_group]
        codes = encode_factors(represent, dataset, group.reshape(-1, num_factors), chunk_size=chunk_size, device=device)
        if codes.shape[1] != active.shape[0]:
            raise ValueError(f"represent returned codes of {active.shape[0]} and then {codes.shape[1]} dimensions")
        variance = codes.reshape(group.shape[0], batch_size, -1).var(1, correction=1)
        latents.append((variance[:, active] / scale).argmin(1))
    counts = torch.bincount(torch.cat(latents) * num_factors + fixed, minlength=int(active.sum()) * num_factors)
    return counts.reshape(-1, num_factors)


def factor_vae_score(
    represent: Represent,
    dataset: FactorSource,
    *,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    num_variance_estimate: int = 10_000,
    prune_std: float = 0.05,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> float:
    """The FactorVAE score of ``represent`` on ``dataset`` (module docstring), in ``[0, 1]``.

    Args:
        represent: observations ``(n, ...)`` -> codes ``(n, L)``.
        dataset: a :class:`~fastvae.metrics.sampling.FactorSource` (``fastvae.data.DSprites``).
        batch_size: observations per vote (``>= 2``).
        num_train, num_eval: train and eval votes.
        num_variance_estimate: draws for the whole-data variance (``>= 2``).
        prune_std: latents with a smaller whole-data standard deviation are pruned.
        seed: seeds every draw (variance sample, then train votes, then eval votes).
        chunk_size: observations per ``represent`` call (votes are encoded whole, in groups).
        device: where observations are rendered (default CPU).
    """
    check_source(dataset)
    check_int(batch_size, "batch_size", low=2)
    check_int(num_train, "num_train")
    check_int(num_eval, "num_eval")
    check_int(num_variance_estimate, "num_variance_estimate", low=2)
    check_int(chunk_size, "chunk_size")
    if isinstance(prune_std, bool) or not isinstance(prune_std, (int, float)) or not prune_std >= 0:
        raise ValueError(f"prune_std must be a number >= 0, got {prune_std!r}")
    generator = make_generator(seed)
    sample = sample_factors(dataset, num_variance_estimate, generator)
    variance = encode_factors(represent, dataset, sample, chunk_size=chunk_size, device=device).var(0, correction=1)
    active = (variance.sqrt() >= prune_std) & (variance > 0)
    if not bool(active.any()):
        return 0.0
    arguments = (batch_size, active, variance[active], generator, chunk_size, device)
    train_votes = _votes(represent, dataset, num_train, *arguments)
    eval_votes = _votes(represent, dataset, num_eval, *arguments)
    return majority_vote_accuracy(train_votes, eval_votes)
