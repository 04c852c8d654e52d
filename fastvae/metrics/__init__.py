"""Disentanglement metrics on data with known factors (the dSprites generator, :mod:`fastvae.data`).

Scores of a **representation function** ``represent(observations (n, ...)) -> codes (n, L)`` on a
**factor source** (``fastvae.data.DSprites`` or anything with ``FACTOR_SIZES``,
``sample_factors(n, generator)`` and ``render_factors(factors)``; see
:mod:`fastvae.metrics.sampling`), each following its paper with disentanglement_lib's conventions
(Locatello et al., 2019) where the paper leaves details open; every choice and deviation is in the
metric's module docstring:

- :func:`mig` (Chen et al., 2018), :func:`sap` (Kumar et al., 2018), :func:`dci` (Eastwood &
  Williams, 2018), with code-level versions :func:`mig_from_codes`, :func:`sap_from_codes`,
  :func:`dci_from_codes` on precomputed ``codes (N, L)`` and ``factors (N, K)``;
- :func:`factor_vae_score` (Kim & Mnih, 2018) and :func:`beta_vae_score` (Higgins et al., 2017),
  which need observations with one factor fixed, so only the image-level form;
- :func:`evaluate_all`: all of them (``fast=True`` for smaller samples), and :func:`disentanglement`,
  the same for a zoo model through :func:`model_representation` (posterior mean, or ``out.z``).

No scikit-learn: the classifiers and regressors (Lasso, logistic regression, a nearest-mean
classifier, histogram mutual information) are small torch float64 routines in
:mod:`fastvae.metrics._estimators`.
"""

from fastvae.metrics.beta_vae import beta_vae_score
from fastvae.metrics.dci import (
    dci,
    dci_from_codes,
    dci_from_importance,
    importance_matrix,
)
from fastvae.metrics.factor_vae import factor_vae_score
from fastvae.metrics.mig import mig, mig_from_codes, mutual_information_matrix
from fastvae.metrics.sampling import FactorSource, Represent, model_representation
from fastvae.metrics.sap import sap, sap_from_codes, sap_score_matrix
from fastvae.metrics.suite import FAST, FULL, Sizes, disentanglement, evaluate_all

__all__ = [
    "FAST",
    "FULL",
    "FactorSource",
    "Represent",
    "Sizes",
    "beta_vae_score",
    "dci",
    "dci_from_codes",
    "dci_from_importance",
    "disentanglement",
    "evaluate_all",
    "factor_vae_score",
    "importance_matrix",
    "mig",
    "mig_from_codes",
    "model_representation",
    "mutual_information_matrix",
    "sap",
    "sap_from_codes",
    "sap_score_matrix",
]
