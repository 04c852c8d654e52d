"""The beta-VAE disentanglement score (Higgins et al., 2017, "beta-VAE: learning basic visual concepts
with a constrained variational framework").

A training point: pick a factor ``k`` uniformly, draw ``batch_size`` pairs of observations whose two
members share factor ``k`` (each pair its own value) and differ at random elsewhere, encode both,
and take the mean over the batch of ``|z1 - z2|`` (``(L,)``) as the features, labelled ``k``. A
linear classifier fitted on train points predicts ``k``; the score is its accuracy on eval points.

Protocol (the paper's, with disentanglement_lib's sizes and classifier):

- ``batch_size = 64`` pairs per point, ``num_train = 10,000`` train and ``num_eval = 5,000`` eval
  points (disentanglement_lib; the paper does not fix them);
- the classifier is multinomial logistic regression with an L2 penalty (disentanglement_lib uses
  scikit-learn's ``LogisticRegression()``, C = 1, i.e. ``l2 = 1 / num_train`` on the mean loss;
  the paper trains a linear classifier with Adagrad), fitted to convergence by full-batch L-BFGS on
  features **z-scored with the train points' statistics** (a deviation: it makes the score
  invariant to rescaling latents and the fit well conditioned; the penalty then acts on z-scored
  weights).

What scores mean: 1 when fixing each factor zeroes (or visibly lowers) its own features; chance is
``1/K``, reached by codes that carry no information (noise) and by codes where every factor moves
every latent alike (an equal-magnitude mixing of identically distributed factors). Like the
FactorVAE score it does not penalise every entangled code: a rotation that leaves each factor a
distinct footprint on the features is linearly separable and scores near 1, and factors with
different numbers of classes differ in footprint even under an equal mixing.
"""

from __future__ import annotations

import math

import torch

from fastvae.ops._checks import check_int, make_generator
from fastvae.metrics._estimators import logistic_regression, standardize
from fastvae.metrics.factor_vae import fix_one_factor
from fastvae.metrics.sampling import (
    DEFAULT_CHUNK_SIZE,
    FactorSource,
    Represent,
    check_source,
    encode_factors,
    sample_factors,
)

__all__ = ["beta_vae_features", "beta_vae_score"]


def beta_vae_features(
    represent: Represent,
    dataset: FactorSource,
    num_points: int,
    *,
    batch_size: int = 64,
    generator: torch.Generator,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_points`` beta-VAE points (module docstring): features float64 ``(num_points, L)``, labels int64 ``(num_points,)``."""
    num_factors = len(dataset.FACTOR_SIZES)
    labels = torch.randint(num_factors, (num_points,), generator=generator)
    rows = sample_factors(dataset, 2 * num_points * batch_size, generator).reshape(num_points, 2 * batch_size, num_factors)
    # Pair row b with row batch_size + b; fixing factor k "to row 0's value" per pair is done on (V * B, 2, K).
    pairs = rows.reshape(num_points, 2, batch_size, num_factors).transpose(1, 2).reshape(-1, 2, num_factors)
    pairs = fix_one_factor(pairs, labels.repeat_interleave(batch_size))
    per_group = max(1, chunk_size // (2 * batch_size))
    features = []
    for start in range(0, num_points, per_group):
        group = pairs[start * batch_size : (start + per_group) * batch_size]
        codes = encode_factors(represent, dataset, group.reshape(-1, num_factors), chunk_size=chunk_size, device=device)
        codes = codes.reshape(-1, batch_size, 2, codes.shape[1])
        features.append((codes[:, :, 0] - codes[:, :, 1]).abs().mean(1))
    if len({f.shape[1] for f in features}) > 1:
        raise ValueError("represent returned codes of different sizes in different calls")
    return torch.cat(features), labels


def beta_vae_score(
    represent: Represent,
    dataset: FactorSource,
    *,
    batch_size: int = 64,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    l2: float | None = None,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> float:
    """The beta-VAE score of ``represent`` on ``dataset`` (module docstring), in ``[0, 1]``.

    Args:
        represent: observations ``(n, ...)`` -> codes ``(n, L)``.
        dataset: a :class:`~fastvae.metrics.sampling.FactorSource` (``fastvae.data.DSprites``).
        batch_size: pairs averaged per point.
        num_train, num_eval: train and eval points.
        l2: the classifier's L2 penalty on the mean cross-entropy; default ``1 / num_train``.
        seed: seeds every draw (train points, then eval points).
        chunk_size: observations per ``represent`` call.
        device: where observations are rendered (default CPU).
    """
    check_source(dataset)
    check_int(batch_size, "batch_size")
    check_int(num_train, "num_train", low=2)
    check_int(num_eval, "num_eval")
    check_int(chunk_size, "chunk_size")
    if l2 is None:
        l2 = 1.0 / num_train
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not (l2 >= 0 and math.isfinite(l2)):
        raise ValueError(f"l2 must be None or a finite number >= 0, got {l2!r}")
    generator = make_generator(seed)
    options = {"batch_size": batch_size, "generator": generator, "chunk_size": chunk_size, "device": device}
    train_x, train_y = beta_vae_features(represent, dataset, num_train, **options)
    eval_x, eval_y = beta_vae_features(represent, dataset, num_eval, **options)
    train_x, eval_x = standardize(train_x, eval_x)
    weight, bias = logistic_regression(train_x, train_y, len(dataset.FACTOR_SIZES), l2=float(l2))
    return float(((eval_x @ weight + bias).argmax(1) == eval_y).double().mean())
