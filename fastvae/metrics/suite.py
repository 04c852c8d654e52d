"""Every metric at once: :func:`evaluate_all` for a representation function, :func:`disentanglement`
for a zoo model (the hook ``fastvae evaluate`` calls for runs on dSprites).

MIG, SAP and DCI share one draw of ``num_train + num_test`` factor rows, encoded once: SAP and DCI
fit on the first ``num_train`` codes and score on the rest; MIG, which fits nothing, uses all of
them. The FactorVAE and beta-VAE scores draw their own batches. Every metric is seeded with
``seed``. Sizes (observations encoded in all: about 2.9 million full, 62,000 fast):

========================  ==========================  ===============
setting                   full (disentanglement_lib)  ``fast=True``
========================  ==========================  ===============
MIG / SAP / DCI codes     10,000 train + 5,000 test   2,000 + 1,000
FactorVAE votes           10,000 train + 5,000 eval   200 + 100
FactorVAE variance draws  10,000                      2,000
beta-VAE points           10,000 train + 5,000 eval   200 + 100
batch per vote / point    64                          64
========================  ==========================  ===============

Rendering dominates on a CPU: dSprites renders about 2,000 images a second on one core, so
``fast=True`` takes one to two minutes there and the full protocol an hour or more;
``device`` renders on the model's GPU instead. The factors are drawn from the whole dSprites grid
whatever subset a run trained on.

Keys of the result: ``mig``, ``sap``, ``dci_disentanglement``, ``dci_completeness``,
``dci_informativeness``, ``factor_vae_score``, ``beta_vae_score``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastvae.ops._checks import check_int, make_generator
from fastvae.metrics.beta_vae import beta_vae_score
from fastvae.metrics.dci import dci_from_codes
from fastvae.metrics.factor_vae import factor_vae_score
from fastvae.metrics.mig import mig_from_codes
from fastvae.metrics.sampling import (
    DEFAULT_CHUNK_SIZE,
    FactorSource,
    Represent,
    check_source,
    encode_factors,
    model_representation,
    sample_factors,
)
from fastvae.metrics.sap import sap_from_codes

__all__ = ["FAST", "FULL", "Sizes", "disentanglement", "evaluate_all"]


@dataclass(frozen=True)
class Sizes:
    """Sample sizes of :func:`evaluate_all` (see the module docstring's table)."""

    num_train: int
    num_test: int
    votes_train: int
    votes_eval: int
    num_variance_estimate: int
    batch_size: int = 64

    @property
    def observations(self) -> int:
        """Observations :func:`evaluate_all` renders with these sizes: the MIG / SAP / DCI codes, the
        FactorVAE variance draws and votes, and the beta-VAE points (two per pair). Fewer when the
        FactorVAE score finds no active latent (it then casts no votes)."""
        votes = (self.votes_train + self.votes_eval) * self.batch_size
        return self.num_train + self.num_test + self.num_variance_estimate + votes + 2 * votes


FULL = Sizes(num_train=10_000, num_test=5_000, votes_train=10_000, votes_eval=5_000, num_variance_estimate=10_000)
FAST = Sizes(num_train=2_000, num_test=1_000, votes_train=200, votes_eval=100, num_variance_estimate=2_000)


def evaluate_all(
    represent: Represent,
    dataset: FactorSource,
    *,
    seed: int = 0,
    fast: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """MIG, SAP, DCI, the FactorVAE and the beta-VAE scores of ``represent`` on ``dataset`` (module docstring).

    Args:
        represent: observations ``(n, ...)`` -> codes ``(n, L)``, ``L >= 2``.
        dataset: a :class:`~fastvae.metrics.sampling.FactorSource` (``fastvae.data.DSprites``).
        seed: seeds every metric's draws.
        fast: the smaller sizes of the table (for quick looks; scores are noisier).
        chunk_size: observations per ``represent`` call.
        device: where observations are rendered (default CPU; a model's device saves the copies).
    """
    check_source(dataset)
    check_int(seed, "seed", low=0)
    check_int(chunk_size, "chunk_size")
    if not isinstance(fast, bool):
        raise TypeError(f"fast must be a bool, got {type(fast).__name__}")
    sizes = FAST if fast else FULL
    factors = sample_factors(dataset, sizes.num_train + sizes.num_test, make_generator(seed))
    codes = encode_factors(represent, dataset, factors, chunk_size=chunk_size, device=device)
    dci_scores = dci_from_codes(codes, factors, num_train=sizes.num_train)
    common = {"seed": seed, "chunk_size": chunk_size, "device": device, "batch_size": sizes.batch_size}
    return {
        "mig": mig_from_codes(codes, factors),
        "sap": sap_from_codes(codes, factors, num_train=sizes.num_train),
        **{f"dci_{name}": value for name, value in dci_scores.items()},
        "factor_vae_score": factor_vae_score(
            represent,
            dataset,
            num_train=sizes.votes_train,
            num_eval=sizes.votes_eval,
            num_variance_estimate=sizes.num_variance_estimate,
            **common,
        ),
        "beta_vae_score": beta_vae_score(
            represent, dataset, num_train=sizes.votes_train, num_eval=sizes.votes_eval, **common
        ),
    }


def disentanglement(
    model: torch.nn.Module, dataset: FactorSource, *, seed: int = 0, fast: bool = False
) -> dict[str, float]:
    """:func:`evaluate_all` of ``model``'s default representation (:func:`model_representation`), rendered on its device."""
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else None
    return evaluate_all(model_representation(model), dataset, seed=seed, fast=fast, device=device)
