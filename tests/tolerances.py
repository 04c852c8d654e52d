"""The one table of comparison tolerances per dtype, the named tolerances of every other comparison
the tests make, and helpers that use them.

Results are compared against independent float64 formulas. A tolerance here is a property of the
dtype's rounding, never widened to make a test pass. Tolerances that are not the dtype's rounding
(a Monte Carlo estimate's statistical error, a quadrature's error, a rasterised sprite's pixels) are
named below too, each with what it bounds and why it is that size; tests take every tolerance from
this module. A pair is a :class:`Tolerance`, spread into the comparison's keywords; a single number
is a float.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: (rtol, atol) for comparing a result computed in ``dtype`` with a float64 ground truth.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1e-2, 1e-2),
}

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Tolerance:
    """An ``(rtol, atol)`` pair, spread into a comparison's keywords:
    ``torch.testing.assert_close(a, b, **FLOAT32)``, ``torch.allclose(a, b, **LASSO_KKT)``, or a test's
    own helper taking ``rtol`` and ``atol``. ``pytest.approx`` takes ``rel=T.rtol`` and ``abs=T.atol``."""

    rtol: float
    atol: float

    def keys(self) -> tuple[str, str]:
        return ("rtol", "atol")

    def __getitem__(self, key: str) -> float:
        return {"rtol": self.rtol, "atol": self.atol}[key]


def absolute(atol: float) -> Tolerance:
    """An absolute-only :class:`Tolerance`, for a bound a test computes (standard errors of its sample)."""
    return Tolerance(rtol=0.0, atol=atol)


#: Equality, through ``torch.testing.assert_close`` (which also checks shape, dtype and device).
EXACT = Tolerance(rtol=0.0, atol=0.0)

#: :data:`TOLERANCES`' float32 entry as a pair: a float32 result against its float64 ground truth (or
#: the same float32 formula in another order).
FLOAT32 = Tolerance(*TOLERANCES[torch.float32])

#: :data:`TOLERANCES`' float64 entry as a pair: a float64 result against a float64 ground truth.
FLOAT64 = Tolerance(*TOLERANCES[torch.float64])

#: Largest difference between the Triton sampling kernels' float32 normals and the float64 normal
#: stream (Box-Muller of the same Philox words in float64), on any device. The kernels take
#: ``-2 ln u`` from lg2.approx.f32 (absolute error 2**-22 on [1/2, 2], 2 ulp elsewhere; a series in
#: ``1 - u`` where ``1 - u < 2**-5``), the radius from sqrt.approx.f32 (2**-22 relative taken) and the
#: angle's cosine and sine from cos/sin.approx.f32 (absolute error 2**-20.9 on [-pi, pi]), as the PTX
#: ISA and the CUDA programming guide document them. So a normal ``n = r c`` errs by at most
#: ``|dr| + r |dc| + 2**-24 |n|``: ``|dc| <= 2**-20.9 + 2.1e-7 = 7.2e-7`` (2.1e-7: the rounding of
#: the angle), ``|dr|`` below 7.4e-7 for ``u >= 1/2`` and 3.8e-7 r below it. The largest radius,
#: ``r = sqrt(-2 ln 2**-24) = 5.77``, gives the most: 2.2e-6 + 4.1e-6 + 3.4e-7 = 6.7e-6, rounded up
#: to 8e-6. tests/test_noise_accuracy.py computes this over every uniform and checks the kernels
#: over 2**20 draws. The float32 stream of fastvae.reference.philox is within 1.4e-6 of the float64 one.
NOISE_ATOL = 8e-6


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, *, scale: float = 1.0) -> None:
    """Assert ``actual`` (computed in ``dtype``) matches the float64 ``expected`` within ``dtype``'s tolerance.

    ``scale`` multiplies both tolerances; a caller passes it only for results that add up many
    rounded terms (a sum over ``D`` elements, say) and says in a comment why the factor is honest.
    """
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.detach().to(torch.float64), expected.detach().to(torch.float64), rtol=rtol * scale, atol=atol * scale
    )


#: Relative error of one float32 product ``x_i e_i`` made of three TF32 products, as the nearest-code
#: search computes it with ``precision="3xtf32"``. Each operand ``v`` is split into ``hi``, ``v`` rounded
#: to TF32 (11 significant bits, to nearest: ``|v - hi| <= 2^-11 |v|``), and ``lo``, ``v - hi`` rounded
#: the same way (``|(v - hi) - lo| <= 2^-11 |v - hi| <= 2^-22 |v|``); ``x_hi e_hi + x_hi e_lo + x_lo e_hi``
#: misses ``x_hi (e - e_hi - e_lo)``, ``(x - x_hi - x_lo) e_hi`` and ``(x - x_hi)(e - e_hi)``, each at most
#: ``2^-22 (1 + 2^-11) |x_i e_i|``: in all at most ``(3 + 2^-10) 2^-22 |x_i e_i| <= 2^-20 |x_i e_i|``. The
#: products of TF32 numbers are exact in float32, so this is all the split loses.
THREE_TF32_PRODUCT_RTOL = 2.0**-20

#: Unit roundoff assumed for float32 sums on tensor cores, whose adders may truncate: one float32 ulp,
#: ``2^-23``, twice that of round-to-nearest.
TENSOR_CORE_FP32_UNIT = 2.0**-23


def three_tf32_score_error(rows: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Bound ``(N, K)`` on the error of the search score ``|e_k|^2 / 2 - x_n . e_k`` computed with
    ``precision="3xtf32"`` for float32 ``rows (N, D)`` and ``codebook (K, D)``, in float64.

    The split loses at most ``2^-20 sum_i |x_i e_ki|`` (:data:`THREE_TF32_PRODUCT_RTOL`). The dot
    product then sums ``3 D`` products whose magnitudes add up to at most ``(1 + 2^-9) sum_i |x_i e_ki|``,
    ``|e|^2 / 2`` sums ``D`` squares, and the score is one subtraction: with ``u =``
    :data:`TENSOR_CORE_FP32_UNIT` and ``gamma_m = m u / (1 - m u)`` these add at most
    ``(gamma_3D (1 + 2^-9) + u) sum_i |x_i e_ki| + (gamma_D + u) |e_k|^2 / 2`` (to first order in ``u``),
    within ``gamma_{4D+2} (sum_i |x_i e_ki| + |e_k|^2 / 2)`` with room for the higher orders (as
    ``gamma_3D 2^-9 <= gamma_D`` and ``gamma_a + gamma_b <= gamma_{a+b}``). A chosen code ``c`` thus
    lies within ``2 (error_c + error_b)`` in squared distance of the nearest ``b``: its score is no
    higher, and a squared distance is twice the score plus ``|x|^2``.
    """
    x64, e64 = rows.detach().cpu().double(), codebook.detach().cpu().double()
    terms = 4 * x64.shape[1] + 2
    gamma = terms * TENSOR_CORE_FP32_UNIT / (1.0 - terms * TENSOR_CORE_FP32_UNIT)
    magnitude = x64.abs() @ e64.abs().T + 0.5 * (e64 * e64).sum(-1)[None, :]
    return (THREE_TF32_PRODUCT_RTOL + gamma) * magnitude


#: Relative error of one float32 product ``x_i e_i`` of TF32 operands, as the nearest-code search
#: computes it with ``precision="tf32"``: TF32 keeps 10 of float32's 23 mantissa bits (truncated), so
#: each operand is off by less than ``2^-10`` and the product by less than ``2^-9`` (to first order).
TF32_PRODUCT_RTOL = 2.0**-9


# --- float64 against float64 ------------------------------------------------------------------------

#: A float64 result against the same formula evaluated another way in float64 (Python loops, ``math``,
#: another summation order): a few hundred roundings of 1.1e-16 on values of order 1. ``.atol`` alone
#: bounds a float64 value that is 0 but for such rounding; ``.rtol`` alone serves ``pytest.approx(rel=)``.
FLOAT64_REORDERED = Tolerance(rtol=1e-12, atol=1e-12)

#: :data:`FLOAT64_REORDERED` for values of order 1, absolutely (an SSIM, a unit vector's norm).
FLOAT64_REORDERED_ABS = Tolerance(rtol=0.0, atol=FLOAT64_REORDERED.atol)

#: :data:`FLOAT64_REORDERED` relatively, for values away from 0 (probabilities, importance weights).
FLOAT64_REORDERED_REL = Tolerance(rtol=FLOAT64_REORDERED.rtol, atol=0.0)

#: A float64 result of a longer computation against the same quantity by another algorithm: the
#: benchmark's eager code against fastvae's torch backend, a flow's log-determinant against
#: autograd's Jacobian and ``slogdet``, a flow inverted and re-applied.
FLOAT64_RECOMPUTED = Tolerance(rtol=1e-10, atol=1e-10)

#: A float64 value of order 1 against a hand formula of a few terms (a three-term KL): a few roundings
#: of 1.1e-16, relatively, or absolutely where the value cancels to 0 (the KL of a uniform posterior).
FLOAT64_FEW_ROUNDINGS = 1e-14

#: A float64 value against the same value reached by one or two other roundings (``log 2 + log 5``
#: summed another way).
FLOAT64_ONE_ROUNDING_RTOL = 1e-15

#: float64 values of at most about 1 against a hand computation (a normalised Gaussian window's
#: weights; a mutual information of independent variables, 0 but for its ~20 terms' rounding): a few
#: roundings of 1.1e-16. ``.atol`` alone serves ``pytest.approx(abs=)``.
FLOAT64_UNIT = Tolerance(rtol=0.0, atol=1e-15)

#: A float64 annealing schedule (``exp`` of a step times ``ln 2 / 70,000`` or ``log(3 / 0.25) / 100``)
#: against ``2^x`` or ``exp`` written another way: ``exp`` multiplies its argument's rounding by the
#: argument, up to ~3, on top of a few roundings.
FLOAT64_SCHEDULE_RTOL = 1e-13

#: The float64 MMD U-statistic against a double loop over the same pairs: :data:`FLOAT64_REORDERED`'s
#: relative error, and an absolute floor for an MMD whose three sums cancel to near 0.
FLOAT64_MMD = Tolerance(rtol=1e-12, atol=1e-14)

#: The float64 MS-SSIM gradient against autograd through an independent float64 reference (unfold and
#: 121-tap windows over 64 x 64 pixels): long sums in another order, on gradient entries far below 1
#: (each pixel's share of means over thousands of positions), hence a relative bound and a tiny floor.
FLOAT64_MS_SSIM_GRADIENT = Tolerance(rtol=1e-9, atol=1e-15)

#: The float64 reference MS-SSIM's scales that compare images identical up to rounding (a period-2
#: checkerboard cancelled by 2 x 2 pooling): 1, but for the rounding of the pooled means.
FLOAT64_POOLED_IDENTICAL_SSIM_ATOL = 1e-9

#: The finite-difference step of ``torch.autograd.gradcheck`` on float64 nearest-code distances (its
#: default, written out): codes ~10 apart, rows within ~0.3 of theirs, so no step changes the argmin.
DISTANCE_GRADCHECK_EPS = 1e-6

#: gradcheck's bounds there: a squared distance is quadratic, so its central differences are exact but
#: for rounding (~1e-16 |f| / eps), and the cosine distance's third-order term is ~eps^2.
DISTANCE_GRADCHECK = Tolerance(rtol=1e-6, atol=1e-7)

#: td_vae's float64 latents ``z_t1``, ``z_t2`` against the same networks run by hand frame by frame
#: (float64 throughout, the noise fixed): what is compared is the wiring, not the rounding.
TD_VAE_HAND_LATENTS = Tolerance(rtol=1e-7, atol=1e-7)


# --- float32 against float64 ------------------------------------------------------------------------

#: A float32 value a few roundings (6e-8 relative each) from its float64 counterpart: float64
#: per-example terms averaged in float32 (the loss terms of a float64 model), a schedule value stored in
#: float32, or a short float32 formula in another order. ``.rtol`` alone serves ``pytest.approx(rel=)``.
FLOAT32_FEW_ROUNDINGS = Tolerance(rtol=1e-6, atol=1e-6)

#: :data:`FLOAT32_FEW_ROUNDINGS` for values of about 1 or less (a gradient entry, the KL of a few
#: dims): the same relative bound, an absolute floor of 1e-7 for entries near 0.
FLOAT32_FEW_ROUNDINGS_SMALL = Tolerance(rtol=1e-6, atol=1e-7)

#: :data:`FLOAT32_FEW_ROUNDINGS` relatively, for values away from 0 (a mean concentration, ``log cosh``
#: at ``|t| >= 1e4``).
FLOAT32_FEW_ROUNDINGS_RELATIVE = Tolerance(rtol=1e-6, atol=0.0)

#: :data:`FLOAT32_FEW_ROUNDINGS` for terms of tens to thousands of nats (a log-mean-exp of float32
#: log-weights, the mean of 12-pixel Bernoulli sums) against float64 of the same float32 inputs, or
#: against the same float32 computation in another shape (MIWAE with one group against IWAE).
FLOAT32_FEW_ROUNDINGS_NATS = Tolerance(rtol=1e-6, atol=1e-4)

#: nvae's float32 loss against the float64 sum ``recon + beta kl + 0.1 spectral`` of its own float32
#: terms: the float32 additions round a total of a few thousand nats.
NVAE_LOSS_SUM = Tolerance(rtol=1e-6, atol=1e-3)

#: A float32 value of order 1 against what it equals in exact arithmetic (an image's SSIM with itself,
#: a unit vector's norm, ``x + (e - x)`` against ``e``, grid values in [0, 1], the noise stream's
#: largest radius 5.77): a few float32 roundings. ``.atol`` alone serves ``pytest.approx(abs=)`` and ``<``.
FLOAT32_ORDER_ONE = Tolerance(rtol=0.0, atol=1e-6)

#: float32 results against float64 where a value can sit near 0 (a probability, a KL, a squared
#: distance, a log-odds), or a fused float32 quantiser against its eager twin: :data:`FLOAT32`'s
#: relative bound with an absolute floor ten times tighter, so that such values are still checked.
FLOAT32_SMALL_VALUES = Tolerance(rtol=1e-5, atol=1e-6)

#: :data:`FLOAT32_SMALL_VALUES` for values far below 1 (a mean squared error over elements, EMA
#: codebook entries, a near-uniform posterior's categorical KL): an absolute floor of 1e-7.
FLOAT32_TINY_VALUES = Tolerance(rtol=1e-5, atol=1e-7)

#: A float32 log-likelihood, log-weight, ELBO or reconstruction term (a Bernoulli or Gaussian sum over
#: up to 4,096 pixels plus latent log-densities) against float64: float32's relative error on values of
#: thousands of nats, and 1e-3 nats absolutely where they are small.
FLOAT32_LOG_LIKELIHOOD = Tolerance(rtol=1e-5, atol=1e-3)

#: A float32 loss of a model on 10-pixel data (a Bernoulli sum plus KL, MMD, adversarial or covariance
#: penalties weighted by up to 20) against float64: the penalties' float32 error times their weights.
FLOAT32_FLAT_LOSS = Tolerance(rtol=1e-5, atol=1e-4)

#: A float32 PixelCNN prior NLL (log-probabilities summed over a grid's tens to hundreds of code
#: positions, averaged over the batch) against float64 log-softmax of the same logits.
FLOAT32_PRIOR_NLL = Tolerance(rtol=1e-5, atol=1e-4)

#: A float32 capacity objective (recon plus ``gamma |kl - C|`` with gamma 150 to 1,000) against float64:
#: gamma multiplies the float32 KL's error (~1e-5 nats).
FLOAT32_AMPLIFIED_KL = Tolerance(rtol=1e-5, atol=1e-2)

#: logcosh_vae's float32 reconstruction (``(1/a) log cosh(a e) + log Z_a`` summed over 4,096 pixels)
#: against float64 with ``log Z_a`` by the trapezoid rule: a float32 sum of 4,096 terms.
LOGCOSH_RECON = Tolerance(rtol=1e-5, atol=1e-2)

#: float32 estimates made of cancelling sums (the MMD U-statistic ``xx + yy - 2 xy``, a sliced
#: Wasserstein distance, batch variances of near-equal means, a score-function correction
#: ``f - baseline``) against float64: the cancellation magnifies float32's relative error ~10x.
FLOAT32_CANCELLING = Tolerance(rtol=1e-4, atol=1e-6)

#: dip_vae's float32 off-diagonal penalty (squared covariances of 6 means, themselves cancelling sums)
#: against float64: :data:`FLOAT32_CANCELLING`'s relative bound, a floor of 1e-7 for a penalty near 0.
FLOAT32_COVARIANCE_SQUARES = Tolerance(rtol=1e-4, atol=1e-7)

#: vae_gan's float32 gradients of a feature-matching loss over 2,048 features, through the model's
#: routed graph against a plain one: the same long sums in another order; a floor for entries near 0.
FLOAT32_ROUTED_GRADIENT = Tolerance(rtol=1e-4, atol=1e-7)

#: float32 parameter gradients of an image model's loss (sums over 4,096 pixels) against the gradient
#: of the same loss written another way (the one-sample IWAE and the ELBO).
FLOAT32_IMAGE_GRADIENT = Tolerance(rtol=1e-4, atol=1e-4)

#: nvae's spectral-norm estimates after 500 float32 power iterations against ``torch.linalg``'s matrix
#: 2-norm in float64: float32 rounding of the converged iterates.
SPECTRAL_NORM_ESTIMATE = Tolerance(rtol=1e-5, atol=1e-6)

#: The relative error ``|g - g_exact| / |g_exact|`` of the IWAE and MIWAE gradients on flat 24-pixel
#: data against a brute-force sum over samples: float32 log-weights near -50 keep their rounding small.
IWAE_GRADIENT_FLAT_RTOL = 1e-5

#: The same on 64 x 64 images: float32 log-weights near -3e3 carry ~2e-4 nats of rounding, so their
#: normalised weights are good to ~1e-4 relative.
IWAE_GRADIENT_IMAGE_RTOL = 1e-3

#: beta_tc_vae's float32 mi, tc and dwkl when every posterior is the prior (0 for MSS, ``-10 log N``
#: for MWS): float32 rounding of log-densities of 32 x 10 values.
PRIOR_POSTERIOR_TERMS_ATOL = 1e-4

#: One Adam step from zero moments moves a float32 weight by ``lr g / (|g| + eps)``, which a test
#: recomputes: Adam's bias corrections and float32 rounding of weights of order 1.
ADAM_FIRST_STEP = Tolerance(rtol=0.0, atol=1e-6)


# --- special functions, quadrature --------------------------------------------------------------------

#: ``log(I_v(x) e^-x)`` against 150-digit closed forms and 60-digit power series, x from 0.01 to 1e5:
#: the absolute error the series / asymptotic switch is built for.
LOG_BESSEL_IVE = Tolerance(rtol=0.0, atol=1e-12)

#: ``log I_v(x) = log(I_v(x) e^-x) + x``: :data:`LOG_BESSEL_IVE`, plus the rounding of adding x (up to
#: 1e5, 1.1e-16 relative).
LOG_BESSEL_IV = Tolerance(rtol=1e-15, atol=1e-12)

#: ``log(I_v(x) e^-x)`` for v = 0, 1 against the log of ``torch.special.i0e`` / ``i1e`` (Cephes,
#: accurate to a few float64 ulps).
LOG_BESSEL_TORCH_SPECIAL = Tolerance(rtol=0.0, atol=1e-13)

#: The Bessel ratio ``I_{v+1}(x) / I_v(x)`` (the vMF mean resultant length) against closed forms in
#: 150-digit decimals or float64 ``coth``: relative, as the ratio spans ~3e-3 to 1.
BESSEL_RATIO = Tolerance(rtol=1e-12, atol=0.0)

#: ``d/dx log I_v(x)`` by autograd through the series and asymptotic forms against the ratio plus
#: ``v / x``: relative, and looser than :data:`BESSEL_RATIO`, autograd differentiating the approximations.
LOG_BESSEL_GRADIENT = Tolerance(rtol=1e-10, atol=0.0)

#: The vMF KL at kappa = 1e3 to 1e5 against 100-digit decimals, relatively, per dtype: float64 keeps
#: ~1e-9 through the large-kappa cancellation, float32 a few dozen of its roundings (6e-8).
VMF_KL_LARGE_KAPPA = {torch.float64: Tolerance(rtol=1e-9, atol=0.0), torch.float32: Tolerance(rtol=2e-6, atol=0.0)}

#: dKL/dkappa at the same points: ten times :data:`VMF_KL_LARGE_KAPPA`, as ``kappa (1 - A^2) - (m - 1) A``
#: cancels one more digit.
VMF_KL_GRADIENT_LARGE_KAPPA = {
    dtype: Tolerance(rtol=tolerance.rtol * 10, atol=0.0) for dtype, tolerance in VMF_KL_LARGE_KAPPA.items()
}

#: The vMF KL against Simpson's rule on 200,001 to 400,001 points over the angle (or ``w = mu^T z``).
VMF_KL_QUADRATURE = Tolerance(rtol=1e-9, atol=1e-11)

#: A vMF density integrated by Simpson's rule on 200,001 points over the angle: 1.
SIMPSON_DENSITY_RTOL = 1e-8

#: Wood's density of the accepted ``eps`` integrated by Simpson's rule on 200,001 points over
#: ``[1e-9, 1 - 1e-9]``: 1, less the mass of the cut ends and Simpson's error.
WOOD_DENSITY_RTOL = 1e-6

#: logcosh_vae's log-normaliser against the trapezoid rule on 320,001 points over [-80, 80].
LOG_COSH_NORMALISER_RTOL = 1e-7

#: vMF samples at kappa = 1e6 against their mean direction: ``|z - mu| ~ sqrt((m - 1) / kappa)``,
#: 2.2e-3 for m = 6; 0.02 is ~9 times that.
VMF_CONCENTRATED_SAMPLE_ATOL = 0.02


# --- Monte Carlo estimates ----------------------------------------------------------------------------

#: Standard errors a zoo Monte Carlo mean may stray from its expectation (Gumbel-max frequencies over
#: 40,000 draws, vMF moments and gradient estimates over 20,000, 400 one-sample ELBOs): 4 sigma,
#: failing a correct estimator about once in 16,000 comparisons.
MONTE_CARLO_SIGMAS = 4.0

#: Standard errors allowed to the moments of the normal noise stream (mean, standard deviation, fourth
#: moment, lane means and correlations over 32,768 to 262,144 draws): 6 sigma, one in 5e8.
NORMAL_MOMENT_SIGMAS = 6.0

#: The Kolmogorov distribution's 0.1% critical value, times ``1 / sqrt(n)``, for the KS statistic of n
#: draws of the normal stream.
KOLMOGOROV_CRITICAL_0_1_PERCENT = 1.95

#: The sample mean and standard deviation of 32,000 standardised draws of the benchmark's sampling
#: cases against 0 and 1: about 9 and 13 standard errors.
BENCH_NORMAL_MOMENTS_ATOL = 0.05

#: The mean of 4,000 draws of the label prior against its mean: 5 standard errors of the widest dim.
PRIOR_SAMPLE_MEAN_SIGMAS = 5

#: The standard deviation of the same 4,000 draws against the prior's: its relative standard error is
#: ``1 / sqrt(2 n) = 1.1%``, so ~5 sigma.
PRIOR_SAMPLE_STD = Tolerance(rtol=0.06, atol=0.0)

#: Binomial standard errors a PixelCNN sampler's frequency over 3,000 samples may stray from the
#: prior's probability of that grid.
SAMPLER_FREQUENCY_SIGMAS = 5

#: Added to :data:`SAMPLER_FREQUENCY_SIGMAS`' bound for grids of probability near 0, whose binomial
#: sigma vanishes while a few stray samples do not.
SAMPLER_FREQUENCY_ATOL = 2e-3

#: The importance-sampled log-likelihood with 4,000 samples against exact enumeration of a categorical
#: latent's 9 codes: its Monte Carlo error, in nats.
IS_LOG_LIKELIHOOD_ENUMERATED = Tolerance(rtol=0.0, atol=0.02)

#: The same estimate against quadrature over a continuous latent (trapezoid rule on 6,001 to 8,001
#: points): Monte Carlo error plus the quadrature's, in nats.
IS_LOG_LIKELIHOOD_QUADRATURE = Tolerance(rtol=0.0, atol=0.03)

#: Standard errors of a mean dwkl over 1,500 batches: the margin for the estimators' ordering by batch
#: size and for their value at B = N.
DWKL_STANDARD_ERRORS = 5

#: Added to MSS's bound at B = N: the bias that the log (Jensen's inequality) still leaves there
#: (measured 0.002), in nats.
DWKL_FULL_BATCH_ATOL = 0.005

#: The mean dwkl at batch 32 of a 40-point data set against the exact one: the estimators' small-batch
#: bias (measured 0.016 for MSS, 0.02 for MWS against its offset), in nats.
DWKL_SMALL_BATCH_BIAS_ATOL = 0.05

#: The dwkl the issue logged, ``-135.1``, against ``-10 log 737,280 = -135.108``: its one decimal.
LOGGED_DWKL_ATOL = 0.01

#: bn_vae's mean second moment of the means against ``gamma^2 + mean beta^2``, which drops the batch
#: norm's ``Var / (Var + 1e-8)``: with batch variances ~1e-6, that factor falls short of 1 by ~1%.
BN_VAE_EPS_SHORTFALL_RTOL = 0.02


# --- disentanglement metrics --------------------------------------------------------------------------

#: The coordinate-descent Lasso (stopped when no weight moves by 1e-10) against the soft-thresholding
#: closed form on an orthonormal design. rtol is torch.allclose's default, kept as the test had it.
LASSO_SOLUTION = Tolerance(rtol=1e-5, atol=1e-12)

#: The Lasso's optimality conditions on 500 correlated rows at that stopping point: the gradient is
#: ``alpha sign(w)`` where ``w != 0``, at most alpha where ``w = 0``. rtol is torch.allclose's default.
LASSO_KKT = Tolerance(rtol=1e-5, atol=1e-8)

#: The gradient of the L-BFGS logistic regression at its stopping point (gradient tolerance 1e-9,
#: change 1e-12): 0. rtol is torch.allclose's default (it multiplies 0 here).
LOGISTIC_STATIONARY = Tolerance(rtol=1e-5, atol=1e-6)

#: MIG of a perfect code on 8,000 to 10,000 samples against 1 (or the 20-bin cap): the plug-in
#: entropy estimator's bias.
MIG_PERFECT_ATOL = 0.02

#: MIG and SAP of a duplicated latent on 3,000 to 4,000 samples against 1/2: the estimator's bias.
DUPLICATED_LATENT_SCORE_ATOL = 0.01

#: MIG, SAP, and DCI disentanglement and completeness of a code where no latent carries one factor
#: alone (noise, an equal mixing), on 6,000 to 8,000 samples: 0, up to the estimators' bias.
SCORE_NEAR_ZERO = 0.03

#: The R^2 of a noise latent and the DCI informativeness of a noise code, on 6,000 to 9,000 samples:
#: 0, up to sampling (~1/N) and the regression's fit to noise.
NOISE_SCORE_ATOL = 0.01

#: DCI's Lasso importances of a noise code: 0, up to the Lasso's fit to noise.
NOISE_IMPORTANCE_ATOL = 0.02

#: SAP's R^2 of ``v + e``, ``var(e) = var(v)``, against 1/2 from 6,000 samples: ~4 standard errors.
R_SQUARED_SAMPLING_ATOL = 0.04

#: The FactorVAE and beta-VAE scores of codes at chance ``1/K`` over 1,000 evaluation votes: a few
#: standard errors of the eval sets.
CHANCE_SCORE_ATOL = 0.05


# --- data, rendering and the command line -----------------------------------------------------------

#: A value printed with three decimals (``{:8.3f}``) against the logged one: rounding moves it by at
#: most 5e-4.
PRINTED_THREE_DECIMALS_ATOL = 1e-3

#: Pixels in which a rendered sprite may differ from the float64 reference renderer: a pixel centre
#: within float32 rounding of the boundary may flip.
RENDER_FLIPPED_PIXELS = 1

#: The mean pixel count of 64 sprites against the shape's area times scale^2: the boundary pixels'
#: share of the count, largest at the smallest scale. atol is torch.allclose's default, kept.
SPRITE_AREA = Tolerance(rtol=0.06, atol=1e-8)

#: A rendered sprite's centroid against where its position puts it, in pixels: the boundary pixels
#: move it by a fraction of a pixel.
CENTROID_ATOL = 0.35

#: A moving sprite's centroid step between frames against 44 px times its position step: two
#: centroids, each off by a fraction of a pixel.
CENTROID_STEP_ATOL = 0.6

#: The fraction of a sprite's pixels that turning it by one of its symmetries changes: only boundary
#: pixels, rasterised after another rotation.
SYMMETRIC_TURN_CHANGED_FRACTION = 0.05

#: float64 positions and angles of a 40-frame sequence against a Python replay of its steps (bounces,
#: wrapping, constant turns): float64 rounding of 40 additions. rtol is torch.allclose's default.
FLOAT64_TRAJECTORY = Tolerance(rtol=1e-5, atol=1e-9)


# --- the noise stream's derivation --------------------------------------------------------------------

#: The cos/sin error that :data:`NOISE_ATOL`'s derivation takes (``2**-20.9`` from cos/sin.approx.f32
#: plus the angle's float32 rounding, 7.2e-7): tests/test_noise_accuracy.py computes it and checks it here.
NOISE_COS_SIN_ATOL = 7.3e-7
