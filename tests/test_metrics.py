"""Tests of fastvae.metrics: each metric on constructed representations whose score is known.

Representations are built from the known factors, through a factor source whose "observations" are
the factor values themselves (:class:`FactorsAsObservations`), so the image-level API runs without
rendering; one test per image metric also runs on real dSprites renders. The codes:

- *perfect*: each latent is one factor's value, permuted and rescaled (some negatively) -> every
  score near 1 (MIG: 1 up to the plug-in estimator's bias when factors have <= 20 classes; with
  dSprites' 40 and 32 classes the 20-bin cap computed in the test);
- *noise*: independent Gaussian latents -> MIG, SAP and DCI informativeness ~0 (below 0.03); the
  classifier scores at chance ``1/K`` (within 0.05, a few standard errors of the eval sets used);
- *Hadamard*: z-scored factors of identical distribution mixed by a normalised Hadamard matrix
  (every latent an equal-magnitude mix of every factor) -> MIG, SAP, DCI disentanglement and
  completeness ~0 (below 0.03), FactorVAE and beta-VAE at chance, DCI informativeness ~1;
- *duplicated*: ``(v0, v0, v1)`` -> MIG and SAP 0.5 (factor 0 has no gap, factor 1 a full one), to 0.01.

Invariances: MIG unchanged by permuting latents and by scaling, negating or shifting one; the
FactorVAE and beta-VAE scores unchanged by rescaling latents.
"""

from __future__ import annotations

import math

import pytest
import torch
from tolerances import (
    CHANCE_SCORE_ATOL,
    DUPLICATED_LATENT_SCORE_ATOL,
    FLOAT64_REORDERED,
    FLOAT64_UNIT,
    LASSO_KKT,
    LASSO_SOLUTION,
    LOGISTIC_STATIONARY,
    MIG_PERFECT_ATOL,
    NOISE_IMPORTANCE_ATOL,
    NOISE_SCORE_ATOL,
    R_SQUARED_SAMPLING_ATOL,
    SCORE_NEAR_ZERO,
)

from fastvae import metrics, models
from fastvae.data import DSprites
from fastvae.metrics._estimators import (
    discretize,
    lasso,
    logistic_regression,
    mutual_information,
    nearest_mean_accuracy,
)

DSPRITES_SIZES = DSprites.FACTOR_SIZES
EQUAL_SIZES = (10, 10, 10, 10)
SMALL_SIZES = (4, 7, 12, 20)
# (at most 20 classes each, so 20 bins resolve them all)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the metrics run many tiny ops, which 2 contending OpenMP threads slow by 100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FactorsAsObservations:
    """A factor source whose observation of a factor row is the row itself, float64 ``(n, K)``."""

    def __init__(self, sizes: tuple[int, ...]) -> None:
        self.FACTOR_SIZES = sizes

    def sample_factors(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.stack([torch.randint(s, (n,), generator=generator) for s in self.FACTOR_SIZES], dim=-1)

    def render_factors(self, factors: torch.Tensor) -> torch.Tensor:
        return factors.double()


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _hadamard(n: int) -> torch.Tensor:
    """The normalised Sylvester-Hadamard matrix ``(n, n)``, n a power of 2: orthogonal, entries ``+-1/sqrt(n)``."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def _zscore(x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """Factor classes ``x`` (float) z-scored with the population moments of uniform classes ``0 .. C - 1``."""
    c = torch.tensor(sizes, dtype=torch.float64)
    return (x - (c - 1) / 2) / ((c.square() - 1) / 12).sqrt()


def perfect(sizes: tuple[int, ...]) -> metrics.Represent:
    """Latent ``i`` = factor ``order[i]`` times ``scale[i]``: a permuted, rescaled (and sign-flipped) identity."""
    k = len(sizes)
    order = torch.arange(k).roll(1)
    scale = torch.linspace(-3.0, 5.0, k, dtype=torch.float64)
    scale[scale.abs() < 0.5] = 0.5
    return lambda x: x[:, order] * scale


def noise(num_latents: int, seed: int = 1) -> metrics.Represent:
    generator = _generator(seed)
    return lambda x: torch.randn(x.shape[0], num_latents, generator=generator, dtype=torch.float64)


def hadamard(sizes: tuple[int, ...]) -> metrics.Represent:
    matrix = _hadamard(len(sizes))
    return lambda x: _zscore(x, sizes) @ matrix


def _draw(sizes: tuple[int, ...], n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uniform factor rows int64 ``(n, K)`` and the same as float64 observations."""
    factors = FactorsAsObservations(sizes).sample_factors(n, _generator(seed))
    return factors, factors.double()


# --- the estimators -------------------------------------------------------------------------------


def test_mutual_information_matches_the_formula() -> None:
    # Joint of a (3 values) and b (2 values) given by counts; MI computed by the textbook sum in float64.
    counts = [[10, 2], [3, 7], [0, 8]]
    a = torch.tensor([i for i, row in enumerate(counts) for j, c in enumerate(row) for _ in range(c)])
    b = torch.tensor([j for i, row in enumerate(counts) for j, c in enumerate(row) for _ in range(c)])
    n = sum(map(sum, counts))
    pa = [sum(row) / n for row in counts]
    pb = [sum(row[j] for row in counts) / n for j in range(2)]
    expected = sum(
        c / n * math.log(c / n / (pa[i] * pb[j])) for i, row in enumerate(counts) for j, c in enumerate(row) if c
    )
    # The values need not be 0..C-1.
    assert mutual_information(a * 7 - 3, b + 100) == pytest.approx(expected, rel=FLOAT64_REORDERED.rtol)
    grid = torch.cartesian_prod(torch.arange(4), torch.arange(5))
    independent = mutual_information(grid[:, 0], grid[:, 1])
    assert independent == pytest.approx(0.0, abs=FLOAT64_UNIT.atol)  # independent: exactly 0


def test_discretize_uses_equal_width_bins_over_the_range() -> None:
    values = torch.tensor([[0.0, 5.0], [0.49, 5.0], [0.5, 5.0], [9.99, 5.0], [10.0, 5.0]], dtype=torch.float64)
    bins = discretize(values, 20)
    assert bins[:, 0].tolist() == [0, 0, 1, 19, 19]  # the maximum joins the last bin
    assert bins[:, 1].tolist() == [0] * 5  # a constant column is one bin


def test_lasso_is_soft_thresholding_for_an_orthonormal_design() -> None:
    # Columns of sqrt(N) * Hadamard are orthogonal with x^T x / N = I: the Lasso solution is
    # w = sign(c) max(|c| - alpha, 0) with c = x^T y / N.
    n = 16
    x = _hadamard(n)[:, 1:6] * math.sqrt(n)
    y = torch.randn(n, 3, generator=_generator(0), dtype=torch.float64)
    c = x.T @ y / n
    expected = c.sign() * (c.abs() - 0.3).clamp_min(0)
    assert torch.allclose(lasso(x, y, 0.3), expected, **LASSO_SOLUTION)


def test_lasso_satisfies_the_optimality_conditions_on_a_correlated_design() -> None:
    g = _generator(1)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [0.0], [-2.0], [0.0], [0.5], [0.0]], dtype=torch.float64)
    y = y + torch.randn(500, 1, generator=g, dtype=torch.float64)
    alpha = 0.1
    w = lasso(x, y, alpha)
    gradient = x.T @ (y - x @ w) / 500  # KKT: = alpha sign(w) where w != 0, |.| <= alpha where w == 0
    nonzero = w != 0
    assert bool(nonzero.any()) and not bool(nonzero.all())
    assert torch.allclose(gradient[nonzero], alpha * w[nonzero].sign(), **LASSO_KKT)
    assert bool((gradient[~nonzero].abs() <= alpha + LASSO_KKT.atol).all())


def test_logistic_regression_reaches_a_stationary_point() -> None:
    g = _generator(2)
    labels = torch.randint(3, (300,), generator=g)
    x = torch.randn(300, 4, generator=g, dtype=torch.float64) + torch.nn.functional.one_hot(labels, 4).double()
    l2 = 0.01
    weight, bias = logistic_regression(x, labels, 3, l2=l2)
    p = torch.softmax(x @ weight + bias, dim=1)
    residual = p - torch.nn.functional.one_hot(labels, 3).double()
    assert torch.allclose(x.T @ residual / 300 + l2 * weight, torch.zeros_like(weight), **LOGISTIC_STATIONARY)
    assert torch.allclose(residual.mean(0), torch.zeros(3, dtype=torch.float64), **LOGISTIC_STATIONARY)


def test_nearest_mean_accuracy_is_chance_adjusted_balanced_accuracy() -> None:
    train_x = torch.tensor([0.0, 0.2, 1.0, 1.2, 3.0, 3.2], dtype=torch.float64)
    train_y = torch.tensor([0, 0, 1, 1, 2, 2])  # means 0.1, 1.1, 3.1: thresholds 0.6 and 2.1
    test_y = torch.tensor([0, 0, 0, 0, 1, 2])
    perfect_x = torch.tensor([0.5, 0.0, -4.0, 0.3, 2.0, 2.2], dtype=torch.float64)
    assert nearest_mean_accuracy(train_x, train_y, perfect_x, test_y) == 1.0
    # Class 0 recall 1/2, class 1 recall 1, class 2 recall 0: balanced 1/2, adjusted (1/2 - 1/3) / (2/3) = 1/4.
    half_x = torch.tensor([0.0, 0.1, 0.7, 0.9, 1.5, 1.9], dtype=torch.float64)
    assert nearest_mean_accuracy(train_x, train_y, half_x, test_y) == pytest.approx(0.25)
    # Everything predicted as class 1: balanced 1/3 = chance -> 0.
    assert nearest_mean_accuracy(train_x, train_y, torch.full((6,), 1.1, dtype=torch.float64), test_y) == 0.0


# --- MIG ------------------------------------------------------------------------------------------


def _binned_entropy_ratio(classes: int, bins: int = 20) -> float:
    """``H(bin(v)) / H(v)`` for ``v`` uniform on ``0 .. classes - 1`` cut into ``bins`` equal-width bins."""
    counts: dict[int, int] = {}
    for c in range(classes):
        b = min(bins - 1, math.floor(c / (classes - 1) * bins))
        counts[b] = counts.get(b, 0) + 1
    h = -sum(n / classes * math.log(n / classes) for n in counts.values())
    return h / math.log(classes)


def test_mig_of_a_perfect_code_is_one() -> None:
    factors, x = _draw(SMALL_SIZES, 8000)
    assert metrics.mig_from_codes(perfect(SMALL_SIZES)(x), factors) == pytest.approx(1.0, abs=MIG_PERFECT_ATOL)


def test_mig_of_a_perfect_dsprites_code_is_capped_by_the_20_bins() -> None:
    # With 40 (orientation) and 32 (positions) classes, 20 bins merge classes: the cap is computed here.
    factors, x = _draw(DSPRITES_SIZES, 10_000)
    expected = sum(_binned_entropy_ratio(c) for c in DSPRITES_SIZES) / len(DSPRITES_SIZES)
    assert 0.88 < expected < 0.92
    assert metrics.mig_from_codes(perfect(DSPRITES_SIZES)(x), factors) == pytest.approx(expected, abs=MIG_PERFECT_ATOL)


def test_mig_of_noise_and_of_an_equal_mixing_is_near_zero() -> None:
    factors, x = _draw(EQUAL_SIZES, 8000)
    assert 0.0 <= metrics.mig_from_codes(noise(6)(x), factors) < SCORE_NEAR_ZERO
    assert 0.0 <= metrics.mig_from_codes(hadamard(EQUAL_SIZES)(x), factors) < SCORE_NEAR_ZERO


def test_mig_of_a_duplicated_latent_is_one_half() -> None:
    factors, x = _draw((5, 8), 4000)
    codes = torch.stack([x[:, 0], 2 * x[:, 0], x[:, 1]], dim=1)  # factor 0 twice: no gap; factor 1: full gap
    # (less the estimator's bias)
    assert metrics.mig_from_codes(codes, factors) == pytest.approx(0.5, abs=DUPLICATED_LATENT_SCORE_ATOL)


def test_mig_is_invariant_to_permuting_and_scaling_latents() -> None:
    factors, x = _draw(SMALL_SIZES, 5000)
    g = _generator(3)
    codes = _zscore(x, SMALL_SIZES) @ torch.randn(4, 6, generator=g, dtype=torch.float64)
    codes = codes + 0.3 * torch.randn(codes.shape, generator=g, dtype=torch.float64)
    reference = metrics.mig_from_codes(codes, factors)
    assert 0.05 < reference < 0.95  # neither end: the invariances are not trivially satisfied
    assert metrics.mig_from_codes(codes[:, torch.tensor([3, 0, 5, 1, 4, 2])], factors) == reference
    rescaled = codes * torch.tensor([7.5, -1.0, 0.01, 1.0, -300.0, 2.0], dtype=torch.float64) + 11.0
    assert metrics.mig_from_codes(rescaled, factors) == pytest.approx(reference, abs=FLOAT64_REORDERED.atol)


def test_mig_image_level_matches_the_code_level() -> None:
    source = FactorsAsObservations(SMALL_SIZES)
    represent = hadamard(SMALL_SIZES)
    factors = source.sample_factors(3000, _generator(5))
    expected = metrics.mig_from_codes(represent(factors.double()), factors)
    assert metrics.mig(represent, source, num_samples=3000, seed=5, chunk_size=700) == expected


# --- SAP ------------------------------------------------------------------------------------------


def test_sap_known_answers() -> None:
    factors, x = _draw(DSPRITES_SIZES, 6000)
    assert metrics.sap_from_codes(perfect(DSPRITES_SIZES)(x), factors) > 0.97
    assert 0.0 <= metrics.sap_from_codes(noise(7)(x), factors) < SCORE_NEAR_ZERO
    factors, x = _draw(EQUAL_SIZES, 6000)
    assert 0.0 <= metrics.sap_from_codes(hadamard(EQUAL_SIZES)(x), factors) < SCORE_NEAR_ZERO
    factors, x = _draw((5, 8), 3000)
    duplicated = torch.stack([x[:, 0], -x[:, 0], x[:, 1]], dim=1)
    assert metrics.sap_from_codes(duplicated, factors) == pytest.approx(0.5, abs=DUPLICATED_LATENT_SCORE_ATOL)


def test_sap_continuous_factors_score_r_squared() -> None:
    # z = v + e with var(e) = var(v): R^2 = 1/2 (up to sampling); the other latent is noise.
    factors, x = _draw((32,), 6000)
    g = _generator(4)
    v = x[:, 0]
    codes = torch.stack([v + v.std() * torch.randn(6000, generator=g, dtype=torch.float64), torch.randn(6000, generator=g, dtype=torch.float64)], 1)
    scores = metrics.sap_score_matrix(codes, factors, continuous=True)
    assert scores[0, 0] == pytest.approx(0.5, abs=R_SQUARED_SAMPLING_ATOL)
    assert scores[1, 0] < NOISE_SCORE_ATOL
    assert metrics.sap_from_codes(codes, factors, continuous=[True]) == pytest.approx(float(scores[0, 0] - scores[1, 0]))


def test_sap_scores_inactive_latents_zero() -> None:
    factors, x = _draw((5, 8), 3000)
    codes = torch.stack([0.01 * x[:, 0], x[:, 1]], dim=1)  # latent 0 perfect but its std 0.014 < 0.05
    scores = metrics.sap_score_matrix(codes, factors)
    assert scores[0].tolist() == [0.0, 0.0]
    assert metrics.sap_score_matrix(codes, factors, min_std=0.0)[0, 0] == 1.0


# --- DCI ------------------------------------------------------------------------------------------


def test_dci_from_importance_known_answers() -> None:
    def dc(r: list[list[float]]) -> tuple[float, float]:
        scores = metrics.dci_from_importance(torch.tensor(r, dtype=torch.float64))
        return scores["disentanglement"], scores["completeness"]

    assert dc([[0, 2, 0], [5, 0, 0], [0, 0, 1]]) == pytest.approx((1.0, 1.0))
    assert dc([[1, 1], [1, 1]]) == pytest.approx((0.0, 0.0))
    assert dc([[1, 1], [0, 0]]) == pytest.approx((0.0, 1.0))  # one latent for both factors
    assert dc([[1, 0], [1, 0]]) == pytest.approx((1.0, 0.0))  # factor 0 split over two latents
    # One latent, P = (3/4, 1/4): D = 1 - H_2(P); with one latent, completeness is 1.
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert dc([[3, 1]]) == pytest.approx((1.0 - h, 1.0))
    assert dc([[0, 0], [0, 0]]) == (0.0, 0.0)


def test_dci_of_a_perfect_code() -> None:
    factors, x = _draw(DSPRITES_SIZES, 6000)
    scores = metrics.dci_from_codes(perfect(DSPRITES_SIZES)(x), factors)
    assert scores["disentanglement"] > 0.999 and scores["completeness"] > 0.999
    assert scores["informativeness"] > 0.99


def test_dci_of_an_equal_mixing_is_not_disentangled_but_informative() -> None:
    factors, x = _draw(EQUAL_SIZES, 6000)
    scores = metrics.dci_from_codes(hadamard(EQUAL_SIZES)(x), factors)
    assert scores["disentanglement"] < SCORE_NEAR_ZERO and scores["completeness"] < SCORE_NEAR_ZERO
    assert scores["informativeness"] > 0.99


def test_dci_of_noise_is_uninformative() -> None:
    # D and C normalise the importances away, so they are not defined by noise-level weights;
    # what says "noise" is informativeness ~0 and importances ~0 (the Lasso zeroes them).
    factors, x = _draw(DSPRITES_SIZES, 9000)
    codes = noise(8)(x)
    scores = metrics.dci_from_codes(codes, factors, num_train=6000)
    assert abs(scores["informativeness"]) < NOISE_SCORE_ATOL
    assert float(metrics.importance_matrix(codes[:6000], factors[:6000]).max()) < NOISE_IMPORTANCE_ATOL


# --- FactorVAE and beta-VAE scores ----------------------------------------------------------------


def test_factor_vae_score_known_answers() -> None:
    sizes = DSPRITES_SIZES
    source = FactorsAsObservations(sizes)
    options = {"num_train": 300, "num_eval": 1000, "num_variance_estimate": 2000}

    def with_collapsed(x: torch.Tensor) -> torch.Tensor:  # two collapsed latents (std 0.01, 0), pruned
        return torch.cat([perfect(sizes)(x), 0.01 * x[:, :1], torch.zeros(x.shape[0], 1, dtype=torch.float64)], 1)

    assert metrics.factor_vae_score(with_collapsed, source, **options) == 1.0
    assert metrics.factor_vae_score(noise(7), source, **options) == pytest.approx(1 / 5, abs=CHANCE_SCORE_ATOL)
    equal = FactorsAsObservations(EQUAL_SIZES)
    mixed = metrics.factor_vae_score(hadamard(EQUAL_SIZES), equal, **options)
    assert mixed == pytest.approx(1 / 4, abs=CHANCE_SCORE_ATOL)
    assert metrics.factor_vae_score(lambda x: 0.001 * x, source, **options) == 0.0  # every latent's std < 0.05


def test_factor_vae_score_is_invariant_to_rescaling_latents() -> None:
    source = FactorsAsObservations(EQUAL_SIZES)
    represent = hadamard(EQUAL_SIZES)
    options = {"num_train": 200, "num_eval": 200, "num_variance_estimate": 1000, "seed": 3}
    reference = metrics.factor_vae_score(represent, source, **options)
    scale = torch.tensor([0.1, 10.0, -3.0, 1.0], dtype=torch.float64)
    assert metrics.factor_vae_score(lambda x: represent(x) * scale, source, **options) == reference


def test_beta_vae_score_known_answers() -> None:
    source = FactorsAsObservations(DSPRITES_SIZES)
    options = {"num_train": 300, "num_eval": 1000}
    assert metrics.beta_vae_score(perfect(DSPRITES_SIZES), source, **options) == 1.0
    assert metrics.beta_vae_score(noise(7), source, **options) == pytest.approx(1 / 5, abs=CHANCE_SCORE_ATOL)
    equal = FactorsAsObservations(EQUAL_SIZES)
    mixed = metrics.beta_vae_score(hadamard(EQUAL_SIZES), equal, **options)
    assert mixed == pytest.approx(1 / 4, abs=CHANCE_SCORE_ATOL)


def test_beta_vae_score_is_invariant_to_rescaling_latents() -> None:
    # A partly mixed code (identity + a random matrix), so that the score is neither 1 nor chance.
    source = FactorsAsObservations(EQUAL_SIZES)
    mixing = torch.eye(4, dtype=torch.float64) + 0.8 * torch.randn(4, 4, generator=_generator(9), dtype=torch.float64)
    options = {"num_train": 300, "num_eval": 300, "seed": 1}
    reference = metrics.beta_vae_score(lambda x: _zscore(x, EQUAL_SIZES) @ mixing, source, **options)
    assert 0.5 < reference < 1.0
    scale = torch.tensor([100.0, 0.01, -3.0, 1.0], dtype=torch.float64)
    rescaled = metrics.beta_vae_score(lambda x: _zscore(x, EQUAL_SIZES) @ mixing * scale, source, **options)
    assert rescaled == reference


def test_image_metrics_on_rendered_dsprites() -> None:
    # Centroid x, centroid y and area of the real images: position is read off exactly enough and area
    # tracks scale, so fixing pos_x, pos_y or scale is recognised; shape and orientation are not.
    # Expected ~3/5 (plus chance on the rest) against chance 1/5.
    coords = torch.arange(64, dtype=torch.float64) + 0.5

    def centroid_and_area(images: torch.Tensor) -> torch.Tensor:
        assert images.shape[1:] == (1, 64, 64)
        pixels = images[:, 0].double()
        area = pixels.sum((1, 2))
        return torch.stack([(pixels * coords).sum((1, 2)) / area, (pixels * coords[:, None]).sum((1, 2)) / area, area], 1)

    options = {"batch_size": 16, "num_train": 40, "num_eval": 60}
    assert metrics.factor_vae_score(centroid_and_area, DSprites, num_variance_estimate=256, **options) > 0.5
    assert metrics.beta_vae_score(centroid_and_area, DSprites, **options) > 0.5


# --- the suite, the model hook, arguments ---------------------------------------------------------


def test_evaluate_all_of_a_perfect_code_and_its_determinism() -> None:
    source = FactorsAsObservations(SMALL_SIZES)
    scores = metrics.evaluate_all(perfect(SMALL_SIZES), source, fast=True, seed=2)
    assert set(scores) == {
        "mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness",
        "factor_vae_score", "beta_vae_score",
    }  # fmt: skip
    for name in ("mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness"):
        assert scores[name] > 0.95, name
    assert scores["factor_vae_score"] == scores["beta_vae_score"] == 1.0
    assert metrics.evaluate_all(perfect(SMALL_SIZES), source, fast=True, seed=2) == scores


@pytest.mark.parametrize("name", ["vae", "aae", "wae", "vq_vae"])
def test_model_representation(name: str) -> None:
    torch.manual_seed(0)
    model = models.create(name, input_shape=(1, 64, 64), latent_dim=4).eval()
    images = DSprites.render_factors(DSprites.sample_factors(3, _generator(0)))
    codes = metrics.model_representation(model)(images)
    with torch.no_grad():
        if name == "vae":
            expected = model.encode(images)[0]  # the posterior mean
        elif name == "aae":
            expected = model.encode(images)  # the deterministic code
        else:
            expected = model(images).z.flatten(1)  # no encode: the forward's z
    assert codes.shape == (3, expected.shape[1]) and torch.allclose(codes, expected)


def test_errors_name_the_argument() -> None:
    factors, x = _draw((5, 8), 100)
    with pytest.raises(ValueError, match="codes must have at least 2"):
        metrics.mig_from_codes(x[:, :1], factors)
    with pytest.raises(ValueError, match="factors and|codes and factors"):
        metrics.mig_from_codes(x[:50], factors)
    with pytest.raises(TypeError, match="factors must hold integer"):
        metrics.sap_from_codes(x, x)
    with pytest.raises(ValueError, match=r"factors\[:, 1\] is constant"):
        metrics.mig_from_codes(x, torch.stack([factors[:, 0], torch.zeros(100, dtype=torch.int64)], 1))
    with pytest.raises(ValueError, match="num_train"):
        metrics.dci_from_codes(x, factors, num_train=99)
    with pytest.raises(ValueError, match="continuous"):
        metrics.sap_from_codes(x, factors, continuous=[True])
    with pytest.raises(TypeError, match="dataset must have FACTOR_SIZES"):
        metrics.mig(lambda x: x, object())
    source = FactorsAsObservations((5, 8))
    with pytest.raises(ValueError, match="represent must map"):
        metrics.mig(lambda x: x[:, 0], source, num_samples=10)
    with pytest.raises(ValueError, match="batch_size"):
        metrics.factor_vae_score(lambda x: x, source, batch_size=1)
    with pytest.raises(ValueError, match="seed"):
        metrics.beta_vae_score(lambda x: x, source, seed=-1)
