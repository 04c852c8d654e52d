"""Model zoo I: factor_vae, beta_tc_vae, hfvae, aae, vae_gan.

Each model's mechanism is checked against an independent computation: the aggregate-posterior
estimators against explicit loops over the paper's formulas and against the exact aggregate
posterior of a tiny data set (including an exact enumeration that shows the stratified estimator is
unbiased), the FactorVAE permutation against the properties it must have, and every discriminator
loss against binary cross-entropy written out by hand, with the gradient routing of the two
optimisers checked parameter by parameter. Each model then trains on embedded dSprites with a
falling loss, and runs forward/loss/sample/reconstruct on images and flat vectors.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from tolerances import (
    DWKL_FULL_BATCH_ATOL,
    DWKL_SMALL_BATCH_BIAS_ATOL,
    DWKL_STANDARD_ERRORS,
    FLOAT32,
    FLOAT32_ROUTED_GRADIENT,
    FLOAT32_SMALL_VALUES,
    FLOAT64,
    FLOAT64_REORDERED,
    FLOAT64_REORDERED_REL,
    LOGGED_DWKL_ATOL,
    PRIOR_POSTERIOR_TERMS_ATOL,
    assert_close,
)
from torch.distributions import Normal

import fastvae.data
from fastvae import models
from fastvae.models import _tc
from fastvae.models.base import ModelOutput
from fastvae.models.factor_vae import permute_dims
from fastvae.models.hfvae import group_sizes

MODELS = ("factor_vae", "beta_tc_vae", "hfvae", "aae", "vae_gan")
LOG_2PI = math.log(2 * math.pi)


# --- independent references (float64 Python loops) --------------------------------------------------


def _log_normal(z: float, mu: float, logvar: float) -> float:
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 / math.exp(logvar))


def _log_mixture(z: list[float], mu: list[list[float]], logvar: list[list[float]], weights: list[float], dims) -> float:
    """``log sum_j weights[j] prod_{d in dims} N(z_d; mu[j][d], exp(logvar[j][d]))``."""
    total = 0.0
    for j, w in enumerate(weights):
        total += w * math.exp(sum(_log_normal(z[d], mu[j][d], logvar[j][d]) for d in dims))
    return math.log(total)


def _paper_weights(estimator: str, batch: int, dataset_size: int) -> list[list[float]]:
    """Chen et al.'s weights, written from the formulas: MWS ``1/(N B)``; MSS ``1/N`` on the sample's own
    point, ``(N - M)/(N M)`` on the next batch point (cyclically), ``1/M`` elsewhere (``M = B - 1``)."""
    n, b = dataset_size, batch
    if estimator == "mws":
        return [[1.0 / (n * b)] * b for _ in range(b)]
    m = b - 1
    rows = []
    for i in range(b):
        row = []
        for j in range(b):
            if j == i:
                row.append(1.0 / n)
            elif j == (i + 1) % b:
                row.append((n - m) / (n * m))
            else:
                row.append(1.0 / m)
        rows.append(row)
    return rows


def _brute_terms(z, mu, logvar, weights, groups) -> dict[str, float]:
    """Batch means of the KL decomposition with the aggregate densities ``sum_j W_ij q(.|x_j)``."""
    z, mu, logvar = z.tolist(), mu.tolist(), logvar.tolist()
    dims = range(len(z[0]))
    bounds = list(itertools.accumulate(groups, initial=0))
    group_dims = [range(bounds[g], bounds[g + 1]) for g in range(len(groups))]
    sums = dict.fromkeys(("mi", "tc", "dwkl", "tc_between", "tc_within"), 0.0)
    for i, row in enumerate(z):
        log_qz_x = sum(_log_normal(row[d], mu[i][d], logvar[i][d]) for d in dims)
        log_pz = sum(_log_normal(row[d], 0.0, 0.0) for d in dims)
        log_qz = _log_mixture(row, mu, logvar, weights[i], dims)
        log_groups = sum(_log_mixture(row, mu, logvar, weights[i], g) for g in group_dims)
        log_dims = sum(_log_mixture(row, mu, logvar, weights[i], [d]) for d in dims)
        sums["mi"] += log_qz_x - log_qz
        sums["tc"] += log_qz - log_dims
        sums["dwkl"] += log_dims - log_pz
        sums["tc_between"] += log_qz - log_groups
        sums["tc_within"] += log_groups - log_dims
    return {k: v / len(z) for k, v in sums.items()}


def _posteriors(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g, dtype=torch.float64)
    return mu, 0.6 * torch.randn(n, d, generator=g, dtype=torch.float64)


# --- the aggregate-posterior estimators ---------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["mws", "mss"])
@pytest.mark.parametrize(("batch", "dataset_size"), [(2, 7), (3, 7), (5, 100), (8, 737_280)])
def test_importance_weights_are_the_papers(estimator: str, batch: int, dataset_size: int) -> None:
    log_w = _tc.log_importance_weights(batch, dataset_size, estimator, dtype=torch.float64)
    expected = torch.tensor(_paper_weights(estimator, batch, dataset_size), dtype=torch.float64)
    torch.testing.assert_close(log_w.exp(), expected, **FLOAT64_REORDERED_REL)
    if estimator == "mss":
        torch.testing.assert_close(log_w.exp().sum(1), torch.ones(batch, dtype=torch.float64))


def test_mss_needs_two_examples_and_estimators_are_named() -> None:
    with pytest.raises(ValueError, match="mss"):
        _tc.log_importance_weights(1, 10, "mss")
    with pytest.raises(ValueError, match="estimator"):
        _tc.log_importance_weights(4, 10, "exact")
    with pytest.raises(ValueError, match="dataset_size"):
        _tc.log_importance_weights(4, 0, "mws")


def test_pairwise_log_density_is_every_pair_and_dim() -> None:
    z, _ = _posteriors(4, 3, seed=1)
    mu, logvar = _posteriors(4, 3, seed=2)
    table = _tc.pairwise_log_density(z, mu, logvar)
    assert table.shape == (4, 4, 3)
    for i, j, d in itertools.product(range(4), range(4), range(3)):
        expected = _log_normal(z[i, d].item(), mu[j, d].item(), logvar[j, d].item())
        assert table[i, j, d].item() == pytest.approx(expected, rel=FLOAT64_REORDERED.rtol)


@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_mss_estimate_of_q_z_is_unbiased_by_exact_enumeration(estimator: str) -> None:
    """Average the estimate of q(z) (not log q(z)) over every ordered batch of 3 drawn without replacement
    from a 5-point data set, for each point n* a row is drawn from: MSS gives the exact aggregate density
    ``(1/N) sum_n q(z|n)`` for the joint and for each dim; MWS (the control) does not."""
    n, b, d = 5, 3, 2
    mu, logvar = _posteriors(n, d)
    z_star = torch.tensor([0.3, -0.4], dtype=torch.float64)
    uniform = [1.0 / n] * n
    exact_joint = math.exp(_log_mixture(z_star.tolist(), mu.tolist(), logvar.tolist(), uniform, range(d)))
    exact_dims = [math.exp(_log_mixture(z_star.tolist(), mu.tolist(), logvar.tolist(), uniform, [k])) for k in range(d)]
    log_w = _tc.log_importance_weights(b, n, estimator, dtype=torch.float64)
    joint = torch.zeros(b, n, dtype=torch.float64)
    dims = torch.zeros(b, n, d, dtype=torch.float64)
    count = torch.zeros(b, n, dtype=torch.float64)
    for batch in itertools.permutations(range(n), b):
        idx = torch.tensor(batch)
        table = _tc.pairwise_log_density(z_star.expand(b, d), mu[idx], logvar[idx])
        rows = torch.arange(b)
        joint[rows, idx] += _tc.group_log_density(table, log_w, (d,)).squeeze(-1).exp()
        dims[rows, idx] += _tc.group_log_density(table, log_w).exp()
        count[rows, idx] += 1
    mean_joint, mean_dims = joint / count, dims / count[..., None]
    if estimator == "mss":
        torch.testing.assert_close(mean_joint, torch.full_like(mean_joint, exact_joint), **FLOAT64_REORDERED_REL)
        exact = torch.tensor(exact_dims, dtype=torch.float64).expand(b, n, d)
        torch.testing.assert_close(mean_dims, exact, **FLOAT64_REORDERED_REL)
    else:
        assert (mean_joint / exact_joint - 1).abs().min() > 0.1


def test_mws_with_the_whole_data_set_as_batch_is_exact_minus_log_n() -> None:
    """With B = N, MWS's ``(1/(N B)) sum_j q(z|x_j)`` is ``q(z) / N`` exactly, for the joint and each dim."""
    n, d = 5, 3
    mu, logvar = _posteriors(n, d)
    order = torch.tensor([3, 0, 4, 1, 2])
    z, _ = _posteriors(n, d, seed=7)
    table = _tc.pairwise_log_density(z, mu[order], logvar[order])
    log_w = _tc.log_importance_weights(n, n, "mws", dtype=torch.float64)
    uniform = [1.0 / n] * n
    for i in range(n):
        row = z[i].tolist()
        exact = _log_mixture(row, mu.tolist(), logvar.tolist(), uniform, range(d))
        joint = _tc.group_log_density(table, log_w, (d,))[i, 0].item()
        assert joint == pytest.approx(exact - math.log(n), rel=FLOAT64_REORDERED.rtol)
        for k in range(d):
            exact_k = _log_mixture(row, mu.tolist(), logvar.tolist(), uniform, [k])
            marginal = _tc.group_log_density(table, log_w)[i, k].item()
            assert marginal == pytest.approx(exact_k - math.log(n), rel=FLOAT64_REORDERED.rtol)


def test_group_total_correlations_match_the_exact_aggregate_posterior() -> None:
    """On a 6-point data set used whole as the batch with weights 1/N (the exact aggregate posterior
    ``q(z) = (1/N) sum_n q(z|n)``), every term of the hierarchical decomposition matches brute force."""
    n, groups = 6, (2, 1, 2)
    mu, logvar = _posteriors(n, sum(groups))
    z = mu + (0.5 * logvar).exp() * _posteriors(n, sum(groups), seed=3)[0]
    log_w = torch.full((n, n), -math.log(n), dtype=torch.float64)
    terms = {k: v.mean().item() for k, v in _tc.decompose_kl(z, mu, logvar, log_w, groups).items()}
    expected = _brute_terms(z, mu, logvar, [[1.0 / n] * n] * n, groups)
    for name in ("mi", "tc", "dwkl", "tc_between", "tc_within"):
        assert terms[name] == pytest.approx(expected[name], rel=FLOAT64.rtol, abs=FLOAT64.atol), name
    assert terms["tc_between"] > 1e-3 and terms["tc_within"] > 1e-3


def test_one_group_per_dim_is_the_full_total_correlation_and_one_group_has_no_between_term() -> None:
    n, d = 6, 5
    mu, logvar = _posteriors(n, d)
    z = _posteriors(n, d, seed=4)[0]
    log_w = _tc.log_importance_weights(n, 50, "mss", dtype=torch.float64)
    per_dim = _tc.decompose_kl(z, mu, logvar, log_w, (1,) * d)
    one = _tc.decompose_kl(z, mu, logvar, log_w, (d,))
    assert per_dim["tc_within"].abs().max().item() < FLOAT64_REORDERED.atol
    torch.testing.assert_close(per_dim["tc_between"], per_dim["tc"], **FLOAT64_REORDERED)
    assert one["tc_between"].abs().max().item() < FLOAT64_REORDERED.atol
    torch.testing.assert_close(one["tc_within"], one["tc"], **FLOAT64_REORDERED)
    assert per_dim["tc"].abs().max().item() > 1e-2


def test_mws_dwkl_is_minus_d_log_n_where_every_posterior_is_the_prior() -> None:
    """The logged ``dwkl=-135.1`` explained: with every ``q(z|x) = N(0, I)`` the aggregate posterior is
    the prior and every exact term is 0. MSS returns 0; MWS, whose weights sum to ``1/N``, returns
    ``log p - log N`` for each density, so ``dwkl = -D log N = -10 log 737,280 = -135.1`` at batch 32
    (at any batch size), ``mi = log N`` and ``tc = (D - 1) log N``."""
    b, d, n = 32, 10, 737_280
    z = torch.randn(b, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    zeros = torch.zeros(b, d, dtype=torch.float64)
    mws = _tc.decompose_kl(z, zeros, zeros, _tc.log_importance_weights(b, n, "mws", dtype=torch.float64))
    assert mws["dwkl"].mean().item() == pytest.approx(-d * math.log(n), rel=FLOAT64_REORDERED.rtol)
    assert mws["dwkl"].mean().item() == pytest.approx(-135.1, abs=LOGGED_DWKL_ATOL)
    assert mws["mi"].mean().item() == pytest.approx(math.log(n), rel=FLOAT64_REORDERED.rtol)
    assert mws["tc"].mean().item() == pytest.approx((d - 1) * math.log(n), rel=FLOAT64_REORDERED.rtol)
    mss = _tc.decompose_kl(z, zeros, zeros, _tc.log_importance_weights(b, n, "mss", dtype=torch.float64))
    for name in ("mi", "tc", "dwkl"):
        assert mss[name].abs().max().item() < FLOAT64_REORDERED.atol, name


def _exact_dwkl(mu: torch.Tensor, logvar: torch.Tensor) -> float:
    """``sum_d KL(q(z_d) || N(0, 1))`` with the exact aggregate ``q(z_d) = (1/N) sum_n q(z_d|n)``, by the
    trapezoidal rule on [-12, 12] (``torch.distributions`` densities, float64)."""
    grid = torch.linspace(-12.0, 12.0, 40_001, dtype=torch.float64)
    log_p = Normal(0.0, 1.0).log_prob(grid)
    total = 0.0
    for d in range(mu.shape[1]):
        components = Normal(mu[:, d, None], (0.5 * logvar[:, d, None]).exp()).log_prob(grid)
        log_q = torch.logsumexp(components, dim=0) - math.log(mu.shape[0])
        total += torch.trapezoid(log_q.exp() * (log_q - log_p), grid).item()
    return total


def _mean_dwkl(mu: torch.Tensor, logvar: torch.Tensor, batch: int, estimator: str, draws: int) -> tuple[float, float]:
    """Mean and standard error, over ``draws`` batches drawn without replacement with one ``z ~ q(z|x)``
    per example, of the estimator's batch-mean ``dwkl``."""
    n, d = mu.shape
    g = torch.Generator().manual_seed(1)
    log_w = _tc.log_importance_weights(batch, n, estimator, dtype=torch.float64)
    values = []
    for _ in range(draws):
        idx = torch.randperm(n, generator=g)[:batch]
        z = mu[idx] + (0.5 * logvar[idx]).exp() * torch.randn(batch, d, generator=g, dtype=torch.float64)
        values.append(_tc.decompose_kl(z, mu[idx], logvar[idx], log_w)["dwkl"].mean().item())
    v = torch.tensor(values, dtype=torch.float64)
    return v.mean().item(), v.std().item() / math.sqrt(draws)


def test_dwkl_estimators_against_the_exact_aggregate_posterior_at_batch_32() -> None:
    """A 40-point data set of 2-d Gaussian posteriors, its exact dwkl by quadrature (0.323): MSS's mean
    at batch 32 is within its small-batch bias (below, shrinking as the batch grows; measured 0.067 at
    batch 8, 0.307 at 32, 0.321 at 40); MWS's mean is the exact value minus about ``D log N`` at batch 32
    and exactly that at ``B = N`` (measured -7.035 and -7.051), a bias that no batch size removes."""
    g = torch.Generator().manual_seed(0)
    n, d = 40, 2
    mu = 1.2 * torch.randn(n, d, generator=g, dtype=torch.float64)
    logvar = torch.log(0.05 + 0.5 * torch.rand(n, d, generator=g, dtype=torch.float64))
    exact = _exact_dwkl(mu, logvar)
    assert 0.2 < exact < 0.5
    mss = {b: _mean_dwkl(mu, logvar, b, "mss", 1500) for b in (8, 32, n)}
    # Biased low (E log <= log E), and less so as the batch grows; 5 standard errors of margin.
    assert mss[8][0] < mss[32][0] - DWKL_STANDARD_ERRORS * mss[32][1] and mss[32][0] < exact
    assert mss[32][0] == pytest.approx(exact, abs=DWKL_SMALL_BATCH_BIAS_ATOL)
    assert mss[n][0] == pytest.approx(exact, abs=DWKL_STANDARD_ERRORS * mss[n][1] + DWKL_FULL_BATCH_ATOL)
    offset = d * math.log(n)
    for b in (32, n):
        mean, error = _mean_dwkl(mu, logvar, b, "mws", 1500)
        if b < n:
            margin = max(DWKL_STANDARD_ERRORS * error, DWKL_SMALL_BATCH_BIAS_ATOL)
        else:
            margin = DWKL_STANDARD_ERRORS * error
        assert mean == pytest.approx(exact - offset, abs=margin), b


def test_group_sizes() -> None:
    assert group_sizes(5, 10) == (2, 2, 2, 2, 2)
    assert group_sizes(4, 10) == (3, 3, 2, 2)
    assert group_sizes((2, 1, 2), 5) == (2, 1, 2)
    assert group_sizes([1, 4], 5) == (1, 4)
    for bad in (0, 11, True, 2.0, "3", (), (4, 4), (0, 10), (5.0, 5.0), (True, 9)):
        with pytest.raises(ValueError, match="groups"):
            group_sizes(bad, 10)  # type: ignore[arg-type]


# --- beta_tc_vae and hfvae losses ---------------------------------------------------------------------


def _flat_model(name: str, **hparams):
    torch.manual_seed(0)
    return models.create(name, input_shape=(6,), latent_dim=3 if name != "hfvae" else 5, **hparams)


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_beta_tc_vae_terms_match_brute_force(estimator: str) -> None:
    model = _flat_model("beta_tc_vae", alpha=0.5, beta=3.0, gamma=2.0, dataset_size=11, estimator=estimator)
    x = torch.rand(5, 6)
    out = model(x)
    terms = model.loss(x, out)
    weights = _paper_weights(estimator, 5, 11)
    expected = _brute_terms(out.z.double(), out.mu.double(), out.logvar.double(), weights, (3,))
    for name in ("mi", "tc", "dwkl"):
        assert terms[name].item() == pytest.approx(expected[name], rel=FLOAT32.rtol, abs=FLOAT32.atol), name
    weighted = terms["recon"] + 0.5 * terms["mi"] + 3.0 * terms["tc"] + 2.0 * terms["dwkl"]
    torch.testing.assert_close(terms["loss"], weighted)
    mc_kl = sum(
        _log_normal(z, m, lv) - _log_normal(z, 0.0, 0.0)
        for zr, mr, lr in zip(out.z.tolist(), out.mu.tolist(), out.logvar.tolist())
        for z, m, lv in zip(zr, mr, lr)
    ) / 5
    total = (terms["mi"] + terms["tc"] + terms["dwkl"]).item()
    assert total == pytest.approx(mc_kl, rel=FLOAT32.rtol, abs=FLOAT32.atol)


def test_beta_tc_vae_defaults_to_mss_so_a_posterior_at_the_prior_logs_zero_dwkl() -> None:
    """The default estimator is MSS: a model whose encoder outputs ``mu = 0, logvar = 0`` (the state in
    which the issue saw ``dwkl=-135.1`` with MWS, batch 32, 10 latents) logs 0 for mi, tc and dwkl."""
    assert models.hyperparameters("beta_tc_vae")["estimator"] == "mss"
    x = torch.rand(32, 6, generator=torch.Generator().manual_seed(0))
    for estimator, expected in ((None, 0.0), ("mws", -10 * math.log(737_280))):
        hparams = {} if estimator is None else {"estimator": estimator}
        model = models.create("beta_tc_vae", input_shape=(6,), latent_dim=10, **hparams)
        with torch.no_grad():
            model.encoder[-1].weight.zero_()
            model.encoder[-1].bias.zero_()
        terms = model.loss(x, model(x))
        assert terms["dwkl"].item() == pytest.approx(expected, abs=PRIOR_POSTERIOR_TERMS_ATOL), estimator
        if estimator is None:
            assert abs(terms["mi"].item()) < PRIOR_POSTERIOR_TERMS_ATOL
            assert abs(terms["tc"].item()) < PRIOR_POSTERIOR_TERMS_ATOL


def test_hfvae_terms_match_brute_force() -> None:
    model = _flat_model("hfvae", groups=(2, 1, 2), alpha=0.5, beta=3.0, gamma=2.0, dataset_size=9, estimator="mss")
    x = torch.rand(4, 6)
    out = model(x)
    terms = model.loss(x, out)
    weights = _paper_weights("mss", 4, 9)
    expected = _brute_terms(out.z.double(), out.mu.double(), out.logvar.double(), weights, (2, 1, 2))
    for name in ("mi", "tc_between", "tc_within", "dwkl"):
        assert terms[name].item() == pytest.approx(expected[name], rel=FLOAT32.rtol, abs=FLOAT32.atol), name
    torch.testing.assert_close(
        terms["loss"],
        terms["recon"] + terms["dwkl"] + 0.5 * terms["mi"] + 3.0 * terms["tc_between"] + 2.0 * terms["tc_within"],
    )


def test_hfvae_with_one_group_per_dim_is_beta_tc_vae() -> None:
    kwargs = {"alpha": 1.0, "beta": 6.0, "gamma": 1.0, "dataset_size": 20, "estimator": "mss"}
    hf = models.create("hfvae", input_shape=(6,), latent_dim=4, groups=4, **kwargs)
    tc = models.create("beta_tc_vae", input_shape=(6,), latent_dim=4, **kwargs)
    tc.load_state_dict(hf.state_dict())
    x = torch.rand(5, 6)
    torch.manual_seed(3)
    hf_terms = hf.loss(x, hf(x))
    torch.manual_seed(3)
    tc_terms = tc.loss(x, tc(x))
    assert hf_terms["tc_within"].abs().item() < FLOAT32.atol
    torch.testing.assert_close(hf_terms["tc_between"], tc_terms["tc"])
    torch.testing.assert_close(hf_terms["loss"], tc_terms["loss"])


#: ``model.loss(x, out)`` of each model with ``alpha=0.5, beta=3, gamma=2, dataset_size=40`` (hfvae:
#: ``groups=(2, 1, 2)``) on the fixed ``_fixed_output`` below, computed by the models of commit ff472d7,
#: before what they repeated moved to ``_tc.KLDecompositionVAE`` (issue 14, point 4): the terms in order.
TERMS_BEFORE_SHARED_BASE = {
    ("beta_tc_vae", "mws"): {
        "loss": 13.741235733032227, "recon": 4.486828804016113, "mi": 3.6992974281311035, "tc": 11.253445625305176,
        "dwkl": -13.177790641784668, "kl": 2.5571510791778564,
    },
    ("beta_tc_vae", "mss"): {
        "loss": 6.513505935668945, "recon": 4.486828804016113, "mi": 0.8160552978515625, "tc": -0.2991451323032379,
        "dwkl": 1.2580424547195435, "kl": 2.5571510791778564,
    },
    ("hfvae", "mws"): {
        "loss": 29.193756103515625, "recon": 4.39802885055542, "mi": 4.601650238037109,
        "tc_between": 8.183021545410156, "tc_within": 7.400404453277588, "dwkl": -16.854970932006836,
        "kl": 2.846257448196411,
    },
    ("hfvae", "mss"): {
        "loss": 8.55469036102295, "recon": 4.39802885055542, "mi": 1.9909756183624268,
        "tc_between": 0.8774456977844238, "tc_within": 0.06715259701013565, "dwkl": 0.39453125,
        "kl": 2.846257448196411,
    },
}


def _fixed_output(batch: int, latent_dim: int, features: int) -> tuple[torch.Tensor, ModelOutput]:
    """A batch ``x`` and a forward's output for it, drawn from a fixed generator (no model, no sampler)."""
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(batch, latent_dim, generator=generator)
    logvar = 0.5 * torch.randn(batch, latent_dim, generator=generator)
    z = mu + (0.5 * logvar).exp() * torch.randn(batch, latent_dim, generator=generator)
    logits = torch.randn(batch, features, generator=generator)
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)
    x = torch.rand(batch, features, generator=generator)
    return x, ModelOutput(recon=torch.sigmoid(logits), z=z, logits=logits, mu=mu, logvar=logvar, kl=kl)


@pytest.mark.parametrize("name, estimator", list(TERMS_BEFORE_SHARED_BASE))
def test_losses_are_those_before_the_shared_base(name: str, estimator: str) -> None:
    latent_dim, hparams = (5, {"groups": (2, 1, 2)}) if name == "hfvae" else (4, {})
    model = models.create(name, input_shape=(6,), latent_dim=latent_dim, alpha=0.5, beta=3.0, gamma=2.0,
                          dataset_size=40, estimator=estimator, **hparams)
    x, out = _fixed_output(5, latent_dim, 6)
    terms = model.loss(x, out)
    expected = TERMS_BEFORE_SHARED_BASE[name, estimator]
    assert list(terms) == list(expected)
    for key, value in expected.items():
        assert_close(terms[key], torch.tensor(value, dtype=torch.float64), torch.float32)


# --- factor_vae ---------------------------------------------------------------------------------------


def test_permute_dims_shuffles_each_dim_independently_across_the_batch() -> None:
    batch, dims = 64, 6
    z = torch.arange(batch * dims, dtype=torch.float32).reshape(batch, dims)  # z[i, j] = i * dims + j
    torch.manual_seed(0)
    out = permute_dims(z)
    # Marginals kept: each column is a permutation of the same column (values never change dims).
    torch.testing.assert_close(out.sort(dim=0).values, z)
    sources = ((out - torch.arange(dims)) / dims).long()  # the batch row each value came from
    assert sources.sort(dim=0).values.equal(torch.arange(batch)[:, None].expand(batch, dims))
    # Different dims get different permutations, so the joint rows are broken up.
    for a, b in itertools.combinations(range(dims), 2):
        assert not sources[:, a].equal(sources[:, b])
    intact = (sources == sources[:, :1]).all(dim=1).sum().item()
    assert intact <= 1
    # Not a within-sample shuffle: that keeps each row's set of values; here almost no row does.
    kept = sum(set(out[i].tolist()) == set(z[i].tolist()) for i in range(batch))
    assert kept <= 1


def _gradients(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True))


def _reaches(grads: list[torch.Tensor | None]) -> bool:
    return any(g is not None and g.abs().sum().item() > 0 for g in grads)


def _check_routing(model, terms) -> None:
    generator = list(model.generator_parameters())
    discriminator = list(model.discriminator_parameters())
    assert not _reaches(_gradients(terms["loss"], discriminator)), "loss trains the discriminator"
    assert not _reaches(_gradients(terms["disc_loss"], generator)), "disc_loss trains the generator"
    assert _reaches(_gradients(terms["disc_loss"], discriminator))
    assert _reaches(_gradients(terms["loss"], list(model.encoder.parameters())))


def test_factor_vae_tc_is_the_discriminator_log_odds_and_disc_loss_is_bce() -> None:
    torch.manual_seed(0)
    model = models.create("factor_vae", input_shape=(8,), latent_dim=4, gamma=7.0)
    x = torch.rand(7, 8)
    out = model(x)
    torch.manual_seed(11)
    terms = model.loss(x, out)
    torch.manual_seed(11)
    z = out.z.detach()
    permuted = permute_dims(z[3:])
    with torch.no_grad():
        p = torch.sigmoid(model.discriminator(z).double())
        p_real = torch.sigmoid(model.discriminator(z[:3]).double())
        p_perm = torch.sigmoid(model.discriminator(permuted).double())
    log_odds = (p.log() - (1 - p).log()).mean().item()
    assert terms["tc"].item() == pytest.approx(log_odds, rel=FLOAT32_SMALL_VALUES.rtol, abs=FLOAT32_SMALL_VALUES.atol)
    disc = -p_real.log().mean() - (1 - p_perm).log().mean()
    assert terms["disc_loss"].item() == pytest.approx(disc.item(), rel=FLOAT32.rtol)
    torch.testing.assert_close(terms["loss"], terms["recon"] + terms["kl"] + 7.0 * terms["tc"])
    _check_routing(model, terms)
    assert _reaches(_gradients(terms["tc"], list(model.encoder.parameters())))
    with pytest.raises(ValueError, match="at least 2"):
        model.loss(x[:1], model(x[:1]))


# --- aae ------------------------------------------------------------------------------------------------


def test_aae_losses_are_the_hand_gan_formulas_and_route_to_their_networks() -> None:
    torch.manual_seed(0)
    model = models.create("aae", input_shape=(8,), latent_dim=3, adversarial_weight=2.0)
    x = torch.rand(6, 8)
    out = model(x)
    torch.testing.assert_close(model(x).z, out.z)  # deterministic encoder
    torch.manual_seed(5)
    terms = model.loss(x, out)
    torch.manual_seed(5)
    prior = torch.randn(6, 3)
    with torch.no_grad():
        p_prior = torch.sigmoid(model.discriminator(prior).double())
        p_code = torch.sigmoid(model.discriminator(out.z).double())
    disc = -p_prior.log().mean() - (1 - p_code).log().mean()
    assert terms["disc_loss"].item() == pytest.approx(disc.item(), rel=FLOAT32.rtol)
    assert terms["adv"].item() == pytest.approx(-p_code.log().mean().item(), rel=FLOAT32.rtol)
    recon = torch.nn.functional.binary_cross_entropy(out.recon.double(), x.double(), reduction="sum") / 6
    assert terms["recon"].item() == pytest.approx(recon.item(), rel=FLOAT32.rtol)
    torch.testing.assert_close(terms["loss"], terms["recon"] + 2.0 * terms["adv"])
    _check_routing(model, terms)
    torch.manual_seed(9)
    samples = model.sample(4)
    torch.manual_seed(9)
    with torch.no_grad():
        expected = torch.sigmoid(model.decoder(torch.randn(4, 3)))
    torch.testing.assert_close(samples, expected)


# --- vae_gan --------------------------------------------------------------------------------------------


def test_vae_gan_feature_likelihood_and_gan_losses_match_hand_computation() -> None:
    torch.manual_seed(0)
    gamma = 0.25
    model = models.create("vae_gan", input_shape=(1, 16, 16), latent_dim=3, gamma=gamma, feature_layer=1)
    x = (torch.rand(5, 1, 16, 16) < 0.4).float()
    out = model(x)
    torch.manual_seed(4)
    terms = model.loss(x, out)
    torch.manual_seed(4)
    prior = torch.randn(5, 3)
    dis = model.discriminator
    with torch.no_grad():
        f_x = dis.features(x).double().flatten(1)
        f_r = dis.features(out.recon).double().flatten(1)
        assert f_x.shape == (5, 32 * 8 * 8)
        llike = (0.5 * (f_x - f_r) ** 2 + 0.5 * LOG_2PI).sum(1).mean()
        x_tilde = torch.sigmoid(model.decoder(out.z))
        x_prior = torch.sigmoid(model.decoder(prior))
        p_x, p_tilde, p_prior = (torch.sigmoid(dis(v)[1].double()) for v in (x, x_tilde, x_prior))
    assert terms["llike"].item() == pytest.approx(llike.item(), rel=FLOAT32.rtol)
    disc = -p_x.log().mean() - (1 - p_tilde).log().mean() - (1 - p_prior).log().mean()
    assert terms["disc_loss"].item() == pytest.approx(disc.item(), rel=FLOAT32.rtol)
    adv = -p_tilde.log().mean() - p_prior.log().mean()
    assert terms["adv"].item() == pytest.approx(adv.item(), rel=FLOAT32.rtol)
    torch.testing.assert_close(terms["loss"], terms["kl"] + terms["llike"] + terms["adv"])
    _check_routing(model, terms)

    # The paper's routing: llike reaches the encoder with weight 1 and the decoder with weight gamma; the
    # GAN term reaches the decoder but not the encoder.
    encoder, decoder = list(model.encoder.parameters()), list(model.decoder.parameters())
    target = dis.features(x).detach()
    plain = 0.5 * ((target - dis.features(torch.sigmoid(model.decoder(out.z)))) ** 2).flatten(1).sum(1).mean()
    for got, want in zip(_gradients(terms["llike"], decoder), _gradients(plain, decoder)):
        torch.testing.assert_close(got, gamma * want, **FLOAT32_ROUTED_GRADIENT)
    for got, want in zip(_gradients(terms["llike"], encoder), _gradients(plain, encoder)):
        torch.testing.assert_close(got, want, **FLOAT32_ROUTED_GRADIENT)
    assert not _reaches(_gradients(terms["adv"], encoder))
    assert _reaches(_gradients(terms["adv"], decoder))


def test_vae_gan_feature_layer_is_the_lth_block() -> None:
    shapes = {1: (32, 32, 32), 2: (32, 16, 16), 3: (64, 8, 8), 4: (64, 4, 4), 9: (64, 4, 4)}
    for layer, shape in shapes.items():
        model = models.create("vae_gan", feature_layer=layer)
        features, logit = model.discriminator(torch.zeros(2, 1, 64, 64))
        assert features.shape == (2, *shape) and logit.shape == (2, 1)
    flat = models.create("vae_gan", input_shape=(10,), latent_dim=2, feature_layer=3)
    assert flat.discriminator(torch.zeros(2, 10))[0].shape == (2, 512)


# --- hyper-parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "hparam", "value"),
    [
        ("beta_tc_vae", "beta", -1.0),
        ("beta_tc_vae", "estimator", "exact"),
        ("beta_tc_vae", "dataset_size", 0),
        ("hfvae", "groups", 11),
        ("hfvae", "gamma", float("nan")),
        ("factor_vae", "gamma", -2.0),
        ("aae", "adversarial_weight", float("inf")),
        ("vae_gan", "feature_layer", 0),
        ("vae_gan", "gamma", -1e-6),
    ],
)
def test_bad_hyperparameters_are_named(name: str, hparam: str, value: object) -> None:
    with pytest.raises(ValueError, match=hparam):
        models.create(name, input_shape=(6,), latent_dim=10, **{hparam: value})


# --- interface ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 64, 64), (12,)])
@pytest.mark.parametrize("name", MODELS)
def test_interface(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = models.create(name, input_shape=shape, latent_dim=6)
    x = torch.rand(4, *shape)
    out = model(x)
    assert out.recon.shape == x.shape and out.z.shape == (4, 6)
    terms = model.loss(x, out, step=0)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in terms.values())
    assert ("disc_loss" in terms) == model.has_discriminator
    model.eval()
    assert model.sample(3).shape == (3, *shape)
    assert model.reconstruct(x).shape == x.shape


# --- training on dSprites -------------------------------------------------------------------------------


#: The term that must fall while training: the whole loss, except for the adversarial models whose
#: loss holds a GAN term that can rise as their discriminator improves.
FALLING = {"factor_vae": "loss", "beta_tc_vae": "loss", "hfvae": "loss", "aae": "recon", "vae_gan": "llike"}
STEPS = 40


@pytest.mark.parametrize("name", MODELS)
def test_trains_on_dsprites(name: str) -> None:
    data = fastvae.data.dsprites(size=512, seed=0)
    torch.manual_seed(0)
    model = models.create(name, latent_dim=10)
    generator = list(model.generator_parameters())
    optimizers = [torch.optim.Adam(generator, lr=1e-3)]
    if model.has_discriminator:
        discriminator = list(model.discriminator_parameters())
        optimizers.append(torch.optim.Adam(discriminator, lr=1e-3))
    picks = torch.Generator().manual_seed(0)
    history = []
    for step in range(STEPS):
        x, _ = data.batch(torch.randint(0, len(data), (16,), generator=picks))
        terms = model.loss(x, model(x), step=step)
        for optimizer in optimizers:
            optimizer.zero_grad()
        if model.has_discriminator:
            torch.autograd.backward(terms["loss"], inputs=generator, retain_graph=True)
            torch.autograd.backward(terms["disc_loss"], inputs=discriminator)
            assert torch.isfinite(terms["disc_loss"])
        else:
            terms["loss"].backward()
        for optimizer in optimizers:
            optimizer.step()
        history.append(terms[FALLING[name]].item())
    assert sum(history[-10:]) / 10 < sum(history[:10]) / 10
