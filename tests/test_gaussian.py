"""Tests of the Gaussian ops: reparameterize, reparameterize_kl, gaussian_kl and gaussian_log_prob.

Every expected value is an independent float64 formula written here (or torch.distributions in
float64) applied to the same, already rounded, inputs; tolerances come from tests/tolerances.py.
The ops accumulate in float32 (float64 for float64 inputs) and round each result once, so row sums
over D are compared at the table's tolerance without scaling: summing at most D = 129 terms in
float32 costs at worst 129 * 2**-24 ~ 8e-6 of the sum (inside float32's 1e-5, and far inside the
half-precision rounding of the result), provided the terms do not cancel. The KL terms are all
non-negative, and the log-density terms here are dominated by the positive log(2 pi) + (x - mu)^2 / var.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import backends
import pytest
import torch
from backends import DEVICE, dtype_id, randn
from kernel_edges import check_op, misaligned, poison_allocations
from tolerances import FLOAT_DTYPES, NORMAL_MOMENT_SIGMAS, TOLERANCES, assert_close
from torch.distributions import Normal, kl_divergence

import fastvae
from fastvae import backend as fastvae_backend
from fastvae.ops._seed import draw
from fastvae.ops.gaussian import OP_NAMES
from fastvae.reference.philox import normal_stream, philox4x32

LEADING = [(7,), (3, 5, 4), (2, 1, 3, 9)]
# Weird latent sizes: 1, primes, a multiple of the Philox group of 4, one past it, one past 128.
DIMS = [1, 3, 4, 5, 17, 129]
REDUCTIONS = ["none", "sum", "mean"]


@pytest.fixture(params=backends.PARAMS)
def backend(request):
    """Runs the test under each backend available here."""
    with backends.forced(request.param, OP_NAMES) as name:
        yield name




def f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def check(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert actual.dtype == dtype
    assert_close(actual.cpu(), expected, dtype)


def reduce_rows(rows: torch.Tensor, reduction: str) -> torch.Tensor:
    return {"none": rows, "sum": rows.sum(), "mean": rows.mean()}[reduction]


# --- independent float64 formulas -------------------------------------------------------------------


def kl_standard_f64(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    mu, logvar = f64(mu), f64(logvar)
    return 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)


def kl_f64(mu, logvar, mu_p, logvar_p) -> torch.Tensor:
    """KL between diagonal Gaussians by torch.distributions, in float64."""
    q = Normal(f64(mu), (0.5 * f64(logvar)).exp())
    p = Normal(f64(mu_p), (0.5 * f64(logvar_p)).exp())
    return kl_divergence(q, p).sum(-1)


def log_prob_f64(x, mu, logvar) -> torch.Tensor:
    x = f64(x)
    mu = torch.zeros(()) if mu is None else f64(mu)
    logvar = torch.zeros(()) if logvar is None else f64(logvar)
    return Normal(mu.double(), (0.5 * logvar.double()).exp()).log_prob(x).sum(-1)


# --- values against the formulas --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("leading", LEADING)
@pytest.mark.parametrize("dim", DIMS)
def test_reparameterize_with_eps_matches_formula(backend, dtype, leading, dim):
    mu = randn(*leading, dim, dtype=dtype, seed=1)
    logvar = randn(*leading, dim, dtype=dtype, seed=2, scale=0.5)
    eps = randn(*leading, dim, dtype=dtype, seed=3)
    z = fastvae.reparameterize(mu, logvar, eps=eps)
    assert z.shape == mu.shape
    check(z, f64(mu) + (0.5 * f64(logvar)).exp() * f64(eps), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("leading", LEADING)
@pytest.mark.parametrize("dim", DIMS)
def test_gaussian_kl_standard_prior_matches_formula(backend, dtype, leading, dim):
    mu = randn(*leading, dim, dtype=dtype, seed=1)
    logvar = randn(*leading, dim, dtype=dtype, seed=2, scale=0.5)
    expected = kl_standard_f64(mu, logvar)
    for reduction in REDUCTIONS:
        kl = fastvae.gaussian_kl(mu, logvar, reduction=reduction)
        assert kl.shape == reduce_rows(expected, reduction).shape, reduction
        check(kl, reduce_rows(expected, reduction), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("leading", LEADING)
@pytest.mark.parametrize("dim", DIMS)
def test_reparameterize_kl_with_eps_matches_formulas(backend, dtype, leading, dim):
    mu = randn(*leading, dim, dtype=dtype, seed=1)
    logvar = randn(*leading, dim, dtype=dtype, seed=2, scale=0.5)
    eps = randn(*leading, dim, dtype=dtype, seed=3)
    expected_kl = kl_standard_f64(mu, logvar)
    for reduction in REDUCTIONS:
        z, kl = fastvae.reparameterize_kl(mu, logvar, eps=eps, reduction=reduction)
        check(z, f64(mu) + (0.5 * f64(logvar)).exp() * f64(eps), dtype)
        check(kl, reduce_rows(expected_kl, reduction), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("leading", LEADING)
@pytest.mark.parametrize("dim", DIMS)
def test_gaussian_kl_with_prior_matches_torch_distributions(backend, dtype, leading, dim):
    mu = randn(*leading, dim, dtype=dtype, seed=1)
    logvar = randn(*leading, dim, dtype=dtype, seed=2, scale=0.5)
    mu_p = randn(*leading, dim, dtype=dtype, seed=3)
    logvar_p = randn(*leading, dim, dtype=dtype, seed=4, scale=0.5)
    expected = kl_f64(mu, logvar, mu_p, logvar_p)
    for reduction in REDUCTIONS:
        kl = fastvae.gaussian_kl(mu, logvar, mu_p, logvar_p, reduction=reduction)
        check(kl, reduce_rows(expected, reduction), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_gaussian_kl_broadcast_and_partial_priors(backend, dtype):
    leading, dim = (3, 5), 17
    mu = randn(*leading, dim, dtype=dtype, seed=1)
    logvar = randn(*leading, dim, dtype=dtype, seed=2, scale=0.5)
    mu_p = randn(dim, dtype=dtype, seed=3)
    logvar_p = randn(1, dim, dtype=dtype, seed=4, scale=0.5)
    zeros = torch.zeros(dim, dtype=dtype)
    check(fastvae.gaussian_kl(mu, logvar, mu_p, logvar_p), kl_f64(mu, logvar, mu_p, logvar_p), dtype)
    # A missing half of the prior is 0 (mean) or 0 (log-variance).
    check(fastvae.gaussian_kl(mu, logvar, mu_p=mu_p), kl_f64(mu, logvar, mu_p, zeros), dtype)
    check(fastvae.gaussian_kl(mu, logvar, logvar_p=logvar_p), kl_f64(mu, logvar, zeros, logvar_p), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_gaussian_kl_of_identical_distributions_is_zero(backend, dtype):
    mu = randn(4, 9, dtype=dtype, seed=1, scale=3.0)
    logvar = randn(4, 9, dtype=dtype, seed=2, scale=3.0)
    zero = torch.zeros(4, dtype=torch.float64)
    check(fastvae.gaussian_kl(mu, logvar, mu, logvar), zero, dtype)
    check(fastvae.gaussian_kl(torch.zeros_like(mu), torch.zeros_like(logvar)), zero, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("leading", LEADING)
@pytest.mark.parametrize("dim", DIMS)
def test_gaussian_log_prob_matches_torch_distributions(backend, dtype, leading, dim):
    x = randn(*leading, dim, dtype=dtype, seed=1)
    mu = randn(*leading, dim, dtype=dtype, seed=2)
    logvar = randn(*leading, dim, dtype=dtype, seed=3, scale=0.5)
    for m, lv in ((None, None), (mu, None), (None, logvar), (mu, logvar)):
        out = fastvae.gaussian_log_prob(x, m, lv)
        assert out.shape == leading
        check(out, log_prob_f64(x, m, lv), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_gaussian_log_prob_broadcasts_parameters(backend, dtype):
    x = randn(3, 4, 5, dtype=dtype, seed=1)
    for mu_shape, lv_shape in (((5,), (5,)), ((4, 1), (1, 5)), ((1, 4, 5), (3, 1, 5)), ((), ())):
        mu = randn(*mu_shape, dtype=dtype, seed=2)
        logvar = randn(*lv_shape, dtype=dtype, seed=3, scale=0.5)
        out = fastvae.gaussian_log_prob(x, mu, logvar)
        assert out.shape == (3, 4)
        check(out, log_prob_f64(x, mu, logvar), dtype)


# --- noise: seeds and the stream layout ------------------------------------------------------------


@pytest.mark.parametrize("leading", LEADING)
@pytest.mark.parametrize("dim", [1, 5, 17])
def test_reparameterize_noise_is_the_stream_rows(backend, leading, dim):
    # The layout contract: the noise for seed s is normal_stream's rows of mu.reshape(-1, D).
    seed = 2**40 + 3
    mu = randn(*leading, dim, seed=1)
    logvar = randn(*leading, dim, seed=2, scale=0.5)
    eps = normal_stream(math.prod(leading), dim, seed).reshape(*leading, dim).to(torch.float64)
    expected = f64(mu) + (0.5 * f64(logvar)).exp() * eps
    check(fastvae.reparameterize(mu, logvar, seed=seed), expected, torch.float32)
    z, kl = fastvae.reparameterize_kl(mu, logvar, seed=seed)
    check(z, expected, torch.float32)
    check(kl, kl_standard_f64(mu, logvar), torch.float32)


def test_reparameterize_noise_is_standard_normal(backend):
    n_rows, dim = 512, 64
    zeros = torch.zeros(n_rows, dim, device=DEVICE)
    z = f64(fastvae.reparameterize(zeros, zeros, seed=5))
    n = z.numel()
    # Six standard errors of the mean and of the standard deviation of n standard normals.
    assert abs(z.mean().item()) < NORMAL_MOMENT_SIGMAS / math.sqrt(n)
    assert abs(z.std().item() - 1.0) < NORMAL_MOMENT_SIGMAS / math.sqrt(2.0 * n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
def test_seeded_sampling_is_reproducible(backend, dtype):
    mu = randn(3, 5, 6, dtype=dtype, seed=1)
    logvar = randn(3, 5, 6, dtype=dtype, seed=2)
    z = fastvae.reparameterize(mu, logvar, seed=42)
    assert torch.equal(fastvae.reparameterize(mu, logvar, seed=42), z)
    assert not torch.equal(fastvae.reparameterize(mu, logvar, seed=43), z)
    # Seeds differing only above bit 32 differ too.
    assert not torch.equal(fastvae.reparameterize(mu, logvar, seed=42 + 2**32), z)
    assert torch.isfinite(fastvae.reparameterize(mu, logvar, seed=2**63 - 1)).all()

    torch.manual_seed(7)
    drawn = fastvae.reparameterize(mu, logvar)
    drawn_kl, _ = fastvae.reparameterize_kl(mu, logvar)
    torch.manual_seed(7)
    assert torch.equal(fastvae.reparameterize(mu, logvar), drawn)
    assert torch.equal(fastvae.reparameterize_kl(mu, logvar)[0], drawn_kl)
    # Consecutive draws without reseeding use different seeds.
    assert not torch.equal(drawn_kl, drawn)


def test_drawn_seeds_are_the_draws_of_torch_randint_from_any_thread():
    # An eager draw reads its value back through a view of its scratch memory, not int(tensor): it
    # must still be exactly torch.randint(0, 2**62, ()) from the default generator, in every thread.
    torch.manual_seed(11)
    drawn = [draw() for _ in range(3)]
    in_thread: list[int] = []
    worker = threading.Thread(target=lambda: in_thread.extend(draw() for _ in range(2)))
    worker.start()
    worker.join()
    drawn += in_thread + [draw()]
    torch.manual_seed(11)
    assert drawn == [int(torch.randint(0, 2**62, ())) for _ in range(6)]
    assert len(set(drawn)) == 6


@pytest.mark.parametrize("op", ["reparameterize", "reparameterize_kl"])
def test_calls_with_and_without_gradients_draw_the_same_seeds_and_keep_their_own(backend, op):
    # A call that records no gradient draws its seed into a reused tensor: the same draws as a call
    # that records one, and a later call cannot change the seed a pending backward regenerates from.
    sample = getattr(fastvae, op)
    mu, logvar = randn(4, 10, seed=1), randn(4, 10, seed=2, scale=0.5)
    torch.manual_seed(3)
    plain = [sample(mu, logvar) for _ in range(2)]
    torch.manual_seed(3)
    leaf = logvar.clone().requires_grad_()
    tracked = sample(mu, leaf)
    assert torch.equal(_first(plain[0]), _first(tracked).detach())
    assert torch.equal(_first(plain[1]), _first(sample(mu, logvar)))  # the generator moved on alike
    for seed in (None, 5):
        sample(mu, logvar, seed=seed)  # no gradient: may reuse the seed tensor
    (_first(tracked) * randn(4, 10, seed=4)).sum().backward()
    # d z / d logvar = exp(logvar / 2) * eps / 2, with eps = (z - mu) / exp(logvar / 2).
    m, v, z = f64(mu), f64(logvar), f64(_first(tracked).detach())
    eps = (z - m) / torch.exp(0.5 * v)
    check(leaf.grad, f64(randn(4, 10, seed=4)) * 0.5 * torch.exp(0.5 * v) * eps, torch.float32)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def test_explicit_eps_overrides_the_seed(backend):
    mu, logvar, eps = randn(4, 5, seed=1), randn(4, 5, seed=2), randn(4, 5, seed=3)
    z = fastvae.reparameterize(mu, logvar, eps=eps, seed=1)
    assert torch.equal(fastvae.reparameterize(mu, logvar, eps=eps, seed=2), z)
    assert torch.equal(fastvae.reparameterize(mu, logvar, eps=eps), z)


# --- gradients --------------------------------------------------------------------------------------


def leaf(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return randn(*shape, dtype=torch.float64, seed=seed, scale=scale).requires_grad_()


def test_gradcheck_reparameterize_stream_noise(backend):
    # A fixed seed makes the noise a constant, so z is a smooth function of (mu, logvar).
    mu, logvar = leaf(2, 3, 5, seed=1), leaf(2, 3, 5, seed=2, scale=0.5)
    assert torch.autograd.gradcheck(lambda m, lv: fastvae.reparameterize(m, lv, seed=11), (mu, logvar))


def test_gradcheck_reparameterize_explicit_eps(backend):
    mu, logvar, eps = leaf(2, 3, 5, seed=1), leaf(2, 3, 5, seed=2, scale=0.5), leaf(2, 3, 5, seed=3)
    assert torch.autograd.gradcheck(lambda m, lv, e: fastvae.reparameterize(m, lv, eps=e), (mu, logvar, eps))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_reparameterize_kl(backend, reduction):
    mu, logvar, eps = leaf(2, 3, 5, seed=1), leaf(2, 3, 5, seed=2, scale=0.5), leaf(2, 3, 5, seed=3)
    assert torch.autograd.gradcheck(
        lambda m, lv: fastvae.reparameterize_kl(m, lv, seed=11, reduction=reduction), (mu, logvar)
    )
    assert torch.autograd.gradcheck(
        lambda m, lv, e: fastvae.reparameterize_kl(m, lv, eps=e, reduction=reduction), (mu, logvar, eps)
    )


def test_gradcheck_gaussian_kl(backend):
    mu, logvar = leaf(2, 3, 5, seed=1), leaf(2, 3, 5, seed=2, scale=0.5)
    mu_p, logvar_p = leaf(2, 3, 5, seed=3), leaf(2, 3, 5, seed=4, scale=0.5)
    mu_p_d, logvar_p_d = leaf(5, seed=5), leaf(5, seed=6, scale=0.5)
    assert torch.autograd.gradcheck(lambda m, lv: fastvae.gaussian_kl(m, lv), (mu, logvar))
    assert torch.autograd.gradcheck(fastvae.gaussian_kl, (mu, logvar, mu_p, logvar_p))
    assert torch.autograd.gradcheck(fastvae.gaussian_kl, (mu, logvar, mu_p_d, logvar_p_d))
    assert torch.autograd.gradcheck(lambda m, lv, mp: fastvae.gaussian_kl(m, lv, mp), (mu, logvar, mu_p_d))
    assert torch.autograd.gradcheck(
        lambda m, lv, lp: fastvae.gaussian_kl(m, lv, logvar_p=lp), (mu, logvar, logvar_p)
    )
    assert torch.autograd.gradcheck(lambda m, lv: fastvae.gaussian_kl(m, lv, reduction="mean"), (mu, logvar))


def test_gradcheck_gaussian_log_prob(backend):
    x, mu, logvar = leaf(2, 3, 5, seed=1), leaf(2, 3, 5, seed=2), leaf(2, 3, 5, seed=3, scale=0.5)
    mu_b, logvar_b = leaf(5, seed=4), leaf(3, 1, seed=5, scale=0.5)
    assert torch.autograd.gradcheck(lambda a: fastvae.gaussian_log_prob(a), (x,))
    assert torch.autograd.gradcheck(lambda a, m: fastvae.gaussian_log_prob(a, m), (x, mu))
    assert torch.autograd.gradcheck(lambda a, lv: fastvae.gaussian_log_prob(a, logvar=lv), (x, logvar))
    assert torch.autograd.gradcheck(fastvae.gaussian_log_prob, (x, mu, logvar))
    assert torch.autograd.gradcheck(fastvae.gaussian_log_prob, (x, mu_b, logvar_b))


@pytest.mark.parametrize("seed", [2**31 + 12345, 2**32 - 1, 2**63 - 1], ids=["lo_bit31", "lo_all_ones", "max"])
def test_seeds_with_the_top_bit_of_a_word_set_follow_the_stream(backend, seed):
    # Kernels take the seed as two int32 words; a word >= 2**31 must still key the same stream.
    mu = randn(6, 9, seed=1)
    logvar = randn(6, 9, seed=2, scale=0.5).requires_grad_()
    eps = normal_stream(6, 9, seed).to(torch.float64)
    z = fastvae.reparameterize(mu, logvar, seed=seed)
    check(z, f64(mu) + (0.5 * f64(logvar)).exp() * eps, torch.float32)
    z.backward(torch.ones_like(z))
    check(logvar.grad, 0.5 * (0.5 * f64(logvar)).exp() * eps, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("dim", [1, 5, 129])
def test_reparameterize_grad_is_noise_times_half_std(backend, dtype, dim):
    # dz/dlogvar = 0.5 * exp(logvar / 2) * eps = 0.5 * (z - mu); dz/dmu = 1.
    mu = randn(3, 4, dim, dtype=dtype, seed=1).requires_grad_()
    logvar = randn(3, 4, dim, dtype=dtype, seed=2, scale=0.5).requires_grad_()
    grad = randn(3, 4, dim, dtype=dtype, seed=3)
    z = fastvae.reparameterize(mu, logvar, seed=123)
    z.backward(grad)
    check(mu.grad, f64(grad), dtype)
    check(logvar.grad, 0.5 * (f64(z) - f64(mu)) * f64(grad), dtype)


def test_reparameterize_kl_grads_when_one_output_is_unused(backend):
    mu = randn(4, 6, dtype=torch.float64, seed=1).requires_grad_()
    logvar = randn(4, 6, dtype=torch.float64, seed=2, scale=0.5).requires_grad_()
    # Only the KL: d/dmu = mu, d/dlogvar = (e^logvar - 1) / 2.
    _, kl = fastvae.reparameterize_kl(mu, logvar, seed=3)
    mu_grad, logvar_grad = torch.autograd.grad(kl.sum(), (mu, logvar))
    check(mu_grad, f64(mu), torch.float64)
    check(logvar_grad, 0.5 * (f64(logvar).exp() - 1.0), torch.float64)
    # Only z: as reparameterize.
    z, _ = fastvae.reparameterize_kl(mu, logvar, seed=3)
    mu_grad, logvar_grad = torch.autograd.grad(z.sum(), (mu, logvar))
    check(mu_grad, torch.ones(4, 6, dtype=torch.float64), torch.float64)
    check(logvar_grad, 0.5 * (f64(z) - f64(mu)), torch.float64)


# --- layouts and extremes ---------------------------------------------------------------------------


def non_contiguous_views(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> list[torch.Tensor]:
    """Views of ``shape`` that are not contiguous: a reversed permutation and a stride-2 slice."""
    reversed_view = randn(*reversed(shape), seed=seed, scale=scale).permute(*reversed(range(len(shape))))
    strided = randn(*shape[:-1], 2 * shape[-1], seed=seed, scale=scale)[..., ::2]
    return [reversed_view, strided]


@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 17)])
def test_non_contiguous_inputs_give_contiguous_results(backend, shape):
    for mu, logvar, mu_p, x in zip(
        non_contiguous_views(shape, 1),
        non_contiguous_views(shape, 2, 0.5),
        non_contiguous_views(shape, 3),
        non_contiguous_views(shape, 4),
    ):
        assert not mu.is_contiguous()
        c = [t.contiguous() for t in (mu, logvar, mu_p, x)]
        assert torch.equal(fastvae.reparameterize(mu, logvar, seed=9), fastvae.reparameterize(c[0], c[1], seed=9))
        assert torch.equal(fastvae.reparameterize(mu, logvar, eps=x), fastvae.reparameterize(c[0], c[1], eps=c[3]))
        strided_z, strided_kl = fastvae.reparameterize_kl(mu, logvar, seed=9)
        dense_z, dense_kl = fastvae.reparameterize_kl(c[0], c[1], seed=9)
        assert torch.equal(strided_z, dense_z) and torch.equal(strided_kl, dense_kl)
        assert torch.equal(
            fastvae.gaussian_kl(mu, logvar, mu_p, logvar), fastvae.gaussian_kl(c[0], c[1], c[2], c[1])
        )
        assert torch.equal(fastvae.gaussian_log_prob(x, mu, logvar), fastvae.gaussian_log_prob(c[3], c[0], c[1]))


def test_non_contiguous_inputs_get_the_same_gradients(backend):
    views = [v.requires_grad_() for v in (non_contiguous_views((4, 5), 1)[0], non_contiguous_views((4, 5), 2)[0])]
    dense = [v.detach().contiguous().requires_grad_() for v in views]
    for mu, logvar in (views, dense):
        z, kl = fastvae.reparameterize_kl(mu, logvar, seed=4)
        (z.sum() + kl.sum()).backward()
    assert torch.equal(views[0].grad, dense[0].grad)
    assert torch.equal(views[1].grad, dense[1].grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("extreme", [60.0, -60.0])
def test_very_large_logvar_is_finite_and_correct(backend, dtype, extreme):
    mu = randn(4, 7, dtype=dtype, seed=1)
    logvar = torch.full((4, 7), extreme, dtype=dtype, device=DEVICE)
    eps = randn(4, 7, dtype=dtype, seed=2)
    check(fastvae.gaussian_kl(mu, logvar), kl_standard_f64(mu, logvar), dtype)
    # A prior at half the log-variance keeps e^(logvar - logvar_p) = e^30 inside float32's range.
    half = 0.5 * logvar
    check(fastvae.gaussian_kl(mu, logvar, -mu, half), kl_f64(mu, logvar, -mu, half), dtype)
    check(fastvae.gaussian_log_prob(eps, mu, logvar), log_prob_f64(eps, mu, logvar), dtype)
    check(fastvae.reparameterize(mu, logvar, eps=eps), f64(mu) + (0.5 * f64(logvar)).exp() * f64(eps), dtype)
    z, kl = fastvae.reparameterize_kl(mu, logvar, seed=1)
    assert torch.isfinite(z).all() and torch.isfinite(kl).all()
    check(kl, kl_standard_f64(mu, logvar), dtype)
    mu_l, logvar_l = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    fastvae.gaussian_kl(mu_l, logvar_l).sum().backward()
    check(logvar_l.grad, 0.5 * (f64(logvar).exp() - 1.0), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
def test_kl_near_the_prior_keeps_its_relative_accuracy(backend, dtype):
    # |mu|, |logvar| ~ 1e-3: each KL term mu^2 + e^lv - 1 - lv (about 1e-6) is what cancellation in
    # e^lv - 1 - lv would destroy. Computed without it, the row sums (of non-negative terms) and
    # d logvar = g (e^lv - 1) / 2 keep the dtype's relative tolerance with no absolute slack.
    mu, logvar = randn(5, 129, dtype=dtype, seed=1, scale=1e-3), randn(5, 129, dtype=dtype, seed=2, scale=1e-3)
    mu_p, logvar_p = randn(5, 129, dtype=dtype, seed=3, scale=1e-3), randn(5, 129, dtype=dtype, seed=4, scale=1e-3)
    rtol, _ = TOLERANCES[dtype]

    def relative(actual: torch.Tensor, expected: torch.Tensor) -> None:
        torch.testing.assert_close(f64(actual), expected, rtol=rtol, atol=0.0)

    relative(fastvae.gaussian_kl(mu, logvar), kl_standard_f64(mu, logvar))
    relative(fastvae.gaussian_kl(mu, logvar, mu_p, logvar_p), kl_f64(mu, logvar, mu_p, logvar_p))
    relative(fastvae.reparameterize_kl(mu, logvar, eps=randn(5, 129, dtype=dtype, seed=5))[1], kl_standard_f64(mu, logvar))
    leaf = logvar.clone().requires_grad_()
    fastvae.gaussian_kl(mu, leaf).sum().backward()
    relative(leaf.grad, 0.5 * torch.expm1(f64(logvar)))
    leaf = logvar.clone().requires_grad_()
    _, kl = fastvae.reparameterize_kl(mu, leaf, seed=7)
    kl.sum().backward()  # d z / d logvar gets no gradient: only the KL's expm1 term
    relative(leaf.grad, 0.5 * torch.expm1(f64(logvar)))


# Shapes that cross the fused kernels' tiles: rows one past and more than twice the widest tile (256),
# and more rows than one program takes (64 rows of D <= 16, 4 rows of D = 257 in float32; half as many
# in float64), with the last block of rows partial.
TILED_SHAPES = [(65, 5), (131, 16), (9, 257), (5, 600)]


@pytest.mark.parametrize("shape", TILED_SHAPES, ids=str)
def test_sampling_across_tiles_follows_the_stream(backend, shape):
    n_rows, dim = shape
    seed = 2**33 + 17
    mu = randn(*shape, seed=1).requires_grad_()
    logvar = randn(*shape, seed=2, scale=0.5).requires_grad_()
    eps = normal_stream(n_rows, dim, seed).to(torch.float64)
    expected = f64(mu) + (0.5 * f64(logvar)).exp() * eps
    z = fastvae.reparameterize(mu, logvar, seed=seed)
    check(z, expected, torch.float32)
    # The gradient of a sum arrives expanded (stride 0); backward regenerates the same noise.
    z.sum().backward()
    check(logvar.grad, 0.5 * (f64(logvar) * 0.5).exp() * eps, torch.float32)
    mu.grad, logvar.grad = None, None
    z, kl = fastvae.reparameterize_kl(mu, logvar, seed=seed)
    check(z, expected, torch.float32)
    check(kl, kl_standard_f64(mu, logvar), torch.float32)
    grad_z = randn(*shape, seed=3)
    torch.autograd.backward((z, kl), (grad_z, torch.full((n_rows,), 0.5)))
    check(mu.grad, f64(grad_z) + 0.5 * f64(mu), torch.float32)
    half_std = 0.5 * (0.5 * f64(logvar)).exp()
    check(logvar.grad, f64(grad_z) * half_std * eps + 0.25 * torch.expm1(f64(logvar)), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("shape", TILED_SHAPES, ids=str)
def test_row_sums_and_gradients_across_tiles(backend, dtype, shape):
    # The row sums are trees of partial sums (per tile, then along the row), whose float32 rounding
    # stays near log2(D) * 2**-24 of the sum, far inside the table's tolerance for these D.
    mu = randn(*shape, dtype=dtype, seed=1).requires_grad_()
    logvar = randn(*shape, dtype=dtype, seed=2, scale=0.5).requires_grad_()
    mu_p = randn(shape[1], dtype=dtype, seed=3).requires_grad_()
    logvar_p = randn(shape[1], dtype=dtype, seed=4, scale=0.5).requires_grad_()
    x = randn(*shape, dtype=dtype, seed=5).requires_grad_()
    check(fastvae.gaussian_kl(mu, logvar), kl_standard_f64(mu, logvar), dtype)
    kl = fastvae.gaussian_kl(mu, logvar, mu_p, logvar_p)
    check(kl, kl_f64(mu, logvar, mu_p, logvar_p), dtype)
    log_prob = fastvae.gaussian_log_prob(x, mu, logvar)
    check(log_prob, log_prob_f64(x, mu, logvar), dtype)
    # Gradients of kl.sum() + log_prob.sum(), by hand in float64.
    (kl.sum() + log_prob.sum()).backward()
    m, lv, mp, lvp, xs = (f64(t) for t in (mu, logvar, mu_p, logvar_p, x))
    kl_d_mu = (m - mp) * (-lvp).exp()
    kl_d_logvar = 0.5 * torch.expm1(lv - lvp)
    lp_d_mu = (xs - m) * (-lv).exp()
    lp_d_logvar = 0.5 * ((xs - m) ** 2 * (-lv).exp() - 1.0)
    check(x.grad, -lp_d_mu, dtype)
    check(mu.grad, kl_d_mu + lp_d_mu, dtype)
    check(logvar.grad, kl_d_logvar + lp_d_logvar, dtype)
    check(mu_p.grad, -kl_d_mu.sum(0), dtype)
    check(logvar_p.grad, (-kl_d_logvar - 0.5 * kl_d_mu * (m - mp)).sum(0), dtype)


@pytest.mark.parametrize("leading", [(0,), (2, 0)])
@pytest.mark.parametrize("dim", [1, 5])
def test_zero_size_batches_give_empty_results(backend, leading, dim):
    mu = torch.zeros(*leading, dim, device=DEVICE, requires_grad=True)
    logvar = torch.zeros(*leading, dim, device=DEVICE, requires_grad=True)
    z = fastvae.reparameterize(mu, logvar, seed=1)
    assert z.shape == mu.shape
    z_kl, kl = fastvae.reparameterize_kl(mu, logvar, seed=1)
    assert z_kl.shape == mu.shape and kl.shape == leading
    assert fastvae.gaussian_kl(mu, logvar).shape == leading
    assert fastvae.gaussian_kl(mu, logvar, mu, logvar).shape == leading
    assert fastvae.gaussian_log_prob(mu, mu, logvar).shape == leading
    assert fastvae.gaussian_kl(mu, logvar, reduction="sum").item() == 0.0
    assert fastvae.reparameterize_kl(mu, logvar, reduction="sum")[1].item() == 0.0
    # The mean over zero rows is NaN, as torch.mean's.
    assert math.isnan(fastvae.gaussian_kl(mu, logvar, reduction="mean").item())
    assert math.isnan(fastvae.reparameterize_kl(mu, logvar, reduction="mean")[1].item())
    (z.sum() + kl.sum()).backward()
    assert mu.grad.shape == mu.shape and logvar.grad.shape == logvar.shape


def test_readme_says_what_a_zero_size_batch_gives():
    # The README once promised "empty results" for every zero-size batch, while the reductions give a
    # scalar; its sentence must name what the code returns.
    text = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    sentence = text[text.index("A zero-size batch") :]
    sentence = sentence[: sentence.index(".", sentence.index("perplexity"))]
    assert '`reduction="none"`' in sentence and "come back empty" in sentence
    assert '`reduction="sum"` gives 0' in sentence and '`reduction="mean"` gives NaN' in sentence
    assert "`vector_quantize` then reports NaN losses and perplexity" in sentence
    rows = torch.zeros(0, 3)
    assert fastvae.gaussian_kl(rows, rows).shape == (0,)
    assert fastvae.gaussian_kl(rows, rows, reduction="sum").item() == 0.0
    assert math.isnan(fastvae.gaussian_kl(rows, rows, reduction="mean").item())
    out = fastvae.vector_quantize(rows, torch.ones(2, 3))
    statistics = (out.loss, out.commitment_loss, out.codebook_loss, out.perplexity)
    assert all(math.isnan(value.item()) for value in statistics)


# --- what compiled kernels special-case -------------------------------------------------------------
# The compiled kernels move 16-byte vectors (4 float32, 8 float16 elements) where every pointer is
# 16-byte aligned and D is a multiple of the vector width, and fall back to scalar access otherwise;
# they give a row several lanes of a warp, a warp or a block depending on D, and the last block of rows
# is partial; incoming gradients are read through their strides. These tests run on every backend.

# Row lengths that are not multiples of any vector width (one past 8, 32 and 256 among them).
EDGE_DIMS = [1, 3, 7, 9, 33, 257]
# One past a power of two: the last block of rows is partial whatever the rows per block.
EDGE_ROWS = 67


def _kl_standard(mu, logvar):
    return 0.5 * (mu * mu + logvar.exp() - 1.0 - logvar).sum(-1)


def _kl_prior(mu, logvar, mu_p, logvar_p):
    log_ratio = logvar - logvar_p
    return 0.5 * (log_ratio.exp() - 1.0 - log_ratio + (mu - mu_p) ** 2 * (-logvar_p).exp()).sum(-1)


def _log_prob(x, mu, logvar):
    return -0.5 * (math.log(2.0 * math.pi) + logvar + (x - mu) ** 2 * (-logvar).exp()).sum(-1)


def check_gaussian_ops(mu, logvar, x, mu_p, logvar_p, grad_z, grad_rows, seed: int) -> None:
    """Every Gaussian op, forward and backward, on these ``(R, D)`` inputs and incoming gradients
    (``grad_z`` ``(R, D)``, ``grad_rows`` ``(R,)``), against the float64 formulas."""
    eps = normal_stream(*mu.shape, seed).to(torch.float64)

    def sample(m, lv):
        return m + (0.5 * lv).exp() * eps

    check_op(lambda m, lv: fastvae.reparameterize(m, lv, seed=seed), sample, (mu, logvar), (grad_z,))
    check_op(
        lambda m, lv: fastvae.reparameterize_kl(m, lv, seed=seed),
        lambda m, lv: (sample(m, lv), _kl_standard(m, lv)),
        (mu, logvar),
        (grad_z, grad_rows),
    )
    check_op(fastvae.gaussian_kl, _kl_standard, (mu, logvar), (grad_rows,))
    check_op(fastvae.gaussian_kl, _kl_prior, (mu, logvar, mu_p, logvar_p), (grad_rows,))
    check_op(fastvae.gaussian_log_prob, _log_prob, (x, mu, logvar), (grad_rows,))
    check_op(
        lambda a: fastvae.gaussian_log_prob(a), lambda a: -0.5 * (math.log(2.0 * math.pi) + a * a).sum(-1), (x,), (grad_rows,)
    )


def gaussian_inputs(n_rows: int, dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """``(mu, logvar, x, mu_p, logvar_p, grad_z, grad_rows)`` of ``n_rows`` rows of ``dim``."""
    scales = (1.0, 0.5, 1.0, 1.0, 0.5, 1.0)
    tensors = [randn(n_rows, dim, dtype=dtype, seed=seed, scale=s) for seed, s in enumerate(scales, 1)]
    return (*tensors, randn(n_rows, dtype=dtype, seed=7))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=dtype_id)
@pytest.mark.parametrize("dim", EDGE_DIMS)
def test_odd_row_lengths(backend, dtype, dim):
    check_gaussian_ops(*gaussian_inputs(EDGE_ROWS, dim, dtype), seed=2**35 + 9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=dtype_id)
@pytest.mark.parametrize("dim", [8, 16, 64, 256])
def test_misaligned_inputs(backend, dtype, dim):
    # Row lengths that suit 16-byte vectors, but every input and incoming gradient starts one element
    # into its buffer, so no row is 16-byte aligned.
    check_gaussian_ops(*(misaligned(t) for t in gaussian_inputs(EDGE_ROWS, dim, dtype)), seed=2**35 + 9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=dtype_id)
@pytest.mark.parametrize("shape", [(1, 1), (5, 9), (EDGE_ROWS, 33), (3, 257), (EDGE_ROWS, 16)], ids=str)
def test_outputs_are_written_everywhere(backend, dtype, shape, monkeypatch):
    # Outputs are allocated NaN-filled: an element a kernel skips stays NaN and fails the check.
    poison_allocations(monkeypatch)
    check_gaussian_ops(*gaussian_inputs(*shape, dtype), seed=31)


def strided_layouts(n_rows: int, dim: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Incoming gradients ``(grad_z (R, D), grad_rows (R,))`` in layouts autograd or a caller may hand over."""
    grad_z, grad_rows = randn(n_rows, dim, seed=8), randn(n_rows, seed=9)
    return {
        "transposed": (randn(dim, n_rows, seed=8).t(), randn(n_rows, 3, seed=9)[:, 1]),
        "every_other": (randn(n_rows, 2 * dim, seed=8)[:, ::2], randn(2 * n_rows, seed=9)[::2]),
        # Unit column stride but a row stride of D + 1: rows not 16-byte aligned.
        "padded_rows": (randn(n_rows, dim + 1, seed=8)[:, :dim], randn(n_rows, 2, seed=9)[:, 0]),
        "expanded_rows": (grad_z[:1].expand(n_rows, dim), grad_rows[:1].expand(n_rows)),
        "expanded_scalar": (grad_z[0, 0].expand(n_rows, dim), grad_rows[0].expand(n_rows)),
    }


@pytest.mark.parametrize("layout", ["transposed", "every_other", "padded_rows", "expanded_rows", "expanded_scalar"])
@pytest.mark.parametrize("dim", [9, 32])
def test_strided_incoming_gradients(backend, layout, dim):
    grad_z, grad_rows = strided_layouts(EDGE_ROWS, dim)[layout]
    assert not grad_z.is_contiguous() and not grad_rows.is_contiguous()
    mu, logvar, x, mu_p, logvar_p, _, _ = gaussian_inputs(EDGE_ROWS, dim, torch.float32)
    check_gaussian_ops(mu, logvar, x, mu_p, logvar_p, grad_z, grad_rows, seed=77)


def stream_at(rows: torch.Tensor, cols: torch.Tensor, seed: int) -> torch.Tensor:
    """The stream's float32 normals at positions ``(rows[i], cols[i])`` (int64 tensors), built from the
    Philox words as fastvae.reference.philox documents it: rows past what normal_stream enumerates."""
    mask = 2**32 - 1
    words = philox4x32((cols // 4, rows & mask, rows >> 32, torch.zeros_like(rows)), (seed & mask, seed >> 32))
    u0, u1, u2, u3 = (((w >> 9).to(torch.float32) + 0.5) * 2.0**-23 for w in words)
    lane = cols % 4
    radius = torch.where(lane < 2, torch.sqrt(-2.0 * torch.log(u0)), torch.sqrt(-2.0 * torch.log(u2)))
    angle = (2.0 * math.pi) * torch.where(lane < 2, u1, u3)
    return torch.where(lane % 2 == 0, radius * torch.cos(angle), radius * torch.sin(angle))


# (rows, D) with more than 2**31 elements: 16-byte vector rows, scalar rows, and rows past 2**32 (the
# Philox counter's high row word).
HUGE_SHAPES = [(2**31 // 1024 + 2, 1024), (2**31 // 1023 + 2, 1023), (2**32 + 2, 1)]


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("shape", HUGE_SHAPES, ids=["vector_rows", "scalar_rows", "rows_past_2_32"])
def test_sampling_past_2_31_elements(backend, shape):
    # Element offsets past 2**31 (and row indices past 2**32) must not wrap: a few positions on both
    # sides of those boundaries, and the very last, are checked against the formula.
    if backend == "torch":
        pytest.skip("the reference materialises int64 Philox counters for every element (tens of GB here)")
    n_rows, dim = shape
    numel = n_rows * dim
    # mu, logvar (and its float16 randn draw), z, kl and a second z, in float16.
    if torch.cuda.get_device_properties(0).total_memory < 6 * 2 * numel + 2 * 2 * n_rows:
        pytest.skip(f"needs about {(12 * numel + 4 * n_rows) / 2**30:.0f} GiB of GPU memory")
    seed = 2**40 + 5
    generator = torch.Generator(device="cuda").manual_seed(0)
    mu = torch.randn(n_rows, dim, device="cuda", dtype=torch.float16, generator=generator)
    logvar = 0.5 * torch.randn(n_rows, dim, device="cuda", dtype=torch.float16, generator=generator)
    z, kl = fastvae.reparameterize_kl(mu, logvar, seed=seed)
    edges = [0, dim + 3, 2**31 - 1, 2**31, 2**31 + dim, 2**32 * dim - 1, 2**32 * dim, numel - 1]
    positions = torch.tensor(sorted({p for p in edges if p < numel}), device="cuda")
    rows, cols = positions // dim, positions % dim
    eps = stream_at(rows.cpu(), cols.cpu(), seed).to(torch.float64)
    mu_at, logvar_at = f64(mu.view(-1)[positions]), f64(logvar.view(-1)[positions])
    check(z.view(-1)[positions], mu_at + (0.5 * logvar_at).exp() * eps, torch.float16)
    check(kl[rows], _kl_standard(f64(mu[rows]), f64(logvar[rows])), torch.float16)
    del kl
    without_kl = fastvae.reparameterize(mu, logvar, seed=seed).view(-1)[positions]
    check(without_kl, f64(z.view(-1)[positions]), torch.float16)


# --- backend dispatch -------------------------------------------------------------------------------


def test_use_backend_torch_matches_the_default():
    mu, logvar = randn(3, 4, 9, seed=1), randn(3, 4, 9, seed=2, scale=0.5)
    x = randn(3, 4, 9, seed=3)
    default = [
        fastvae.reparameterize(mu, logvar, seed=5),
        *fastvae.reparameterize_kl(mu, logvar, seed=5),
        fastvae.gaussian_kl(mu, logvar, x, logvar),
        fastvae.gaussian_log_prob(x, mu, logvar),
    ]
    with fastvae.use_backend("torch"):
        assert fastvae_backend.get_backend() == "torch"
        forced = [
            fastvae.reparameterize(mu, logvar, seed=5),
            *fastvae.reparameterize_kl(mu, logvar, seed=5),
            fastvae.gaussian_kl(mu, logvar, x, logvar),
            fastvae.gaussian_log_prob(x, mu, logvar),
        ]
    for got, want in zip(forced, default):
        check(got, f64(want), torch.float32)


def test_unknown_backend_names_are_rejected():
    before = fastvae_backend.get_backend()
    with pytest.raises(ValueError, match="nope"):
        fastvae.set_backend("nope")
    with pytest.raises(ValueError, match="nope"):
        with fastvae.use_backend("nope"):
            pass
    assert fastvae_backend.get_backend() == before


# --- bad inputs -------------------------------------------------------------------------------------

SAMPLERS = [
    pytest.param(lambda mu, logvar, **kw: fastvae.reparameterize(mu, logvar, **kw), id="reparameterize"),
    pytest.param(lambda mu, logvar, **kw: fastvae.reparameterize_kl(mu, logvar, **kw), id="reparameterize_kl"),
]
PAIR_OPS = SAMPLERS + [
    pytest.param(lambda mu, logvar, **kw: fastvae.gaussian_kl(mu, logvar, **kw), id="gaussian_kl"),
]


@pytest.mark.parametrize("op", PAIR_OPS)
def test_pair_ops_reject_bad_mu_and_logvar(op):
    mu, logvar = torch.zeros(3, 4), torch.zeros(3, 4)
    with pytest.raises(TypeError, match="mu"):
        op(mu.to(torch.int64), logvar.to(torch.int64))
    with pytest.raises(TypeError, match="logvar"):
        op(mu, logvar.to(torch.int32))
    with pytest.raises(TypeError, match="mu"):
        op(mu.tolist(), logvar)
    with pytest.raises(TypeError, match="logvar"):
        op(mu, logvar.double())
    with pytest.raises(ValueError, match="logvar"):
        op(mu, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="logvar"):
        op(mu, torch.zeros(4))
    with pytest.raises(ValueError, match="logvar"):
        op(mu, torch.zeros(3, 4, device="meta"))
    with pytest.raises(ValueError, match="mu"):
        op(torch.tensor(0.0), torch.tensor(0.0))


@pytest.mark.parametrize("op", SAMPLERS)
def test_samplers_reject_bad_eps_and_seed(op):
    mu, logvar = torch.zeros(3, 4), torch.zeros(3, 4)
    with pytest.raises(ValueError, match="eps"):
        op(mu, logvar, eps=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="eps"):
        op(mu, logvar, eps=torch.zeros(3, 4, device="meta"))
    with pytest.raises(TypeError, match="eps"):
        op(mu, logvar, eps=torch.zeros(3, 4, dtype=torch.float16))
    with pytest.raises(TypeError, match="eps"):
        op(mu, logvar, eps=torch.zeros(3, 4, dtype=torch.int64))
    for bad_type in (1.5, "3", True, torch.tensor(3)):
        with pytest.raises(TypeError, match="seed"):
            op(mu, logvar, seed=bad_type)
    for out_of_range in (-1, 2**63, 2**64):
        with pytest.raises(ValueError, match="seed"):
            op(mu, logvar, seed=out_of_range)


@pytest.mark.parametrize("op", [fastvae.reparameterize_kl, fastvae.gaussian_kl], ids=lambda op: op.__name__)
@pytest.mark.parametrize("reduction", ["batchmean", "", "SUM", None])
def test_unknown_reduction_is_rejected(op, reduction):
    with pytest.raises(ValueError, match="reduction"):
        op(torch.zeros(2, 3), torch.zeros(2, 3), reduction=reduction)


def test_gaussian_kl_rejects_bad_priors():
    mu, logvar = torch.zeros(3, 4), torch.zeros(3, 4)
    with pytest.raises(ValueError, match="mu_p"):
        fastvae.gaussian_kl(mu, logvar, torch.zeros(5), torch.zeros(4))
    with pytest.raises(ValueError, match="logvar_p"):
        fastvae.gaussian_kl(mu, logvar, torch.zeros(4), torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="mu_p"):
        fastvae.gaussian_kl(mu, logvar, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="logvar_p"):
        fastvae.gaussian_kl(mu, logvar, logvar_p=torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="mu_p"):
        fastvae.gaussian_kl(mu, logvar, torch.zeros(4, device="meta"))


def test_gaussian_log_prob_rejects_bad_inputs():
    x = torch.zeros(3, 4)
    with pytest.raises(TypeError, match="x"):
        fastvae.gaussian_log_prob(x.to(torch.int64))
    with pytest.raises(ValueError, match="x"):
        fastvae.gaussian_log_prob(torch.tensor(1.0))
    with pytest.raises(TypeError, match="mu"):
        fastvae.gaussian_log_prob(x, x.double())
    with pytest.raises(TypeError, match="logvar"):
        fastvae.gaussian_log_prob(x, logvar=x.to(torch.int64))
    with pytest.raises(ValueError, match="mu"):
        fastvae.gaussian_log_prob(x, torch.zeros(5))
    with pytest.raises(ValueError, match="mu"):
        fastvae.gaussian_log_prob(x, torch.zeros(2, 3, 4))  # would broadcast x itself
    with pytest.raises(ValueError, match="logvar"):
        fastvae.gaussian_log_prob(x, None, torch.zeros(3, 4, device="meta"))


def test_seeds_and_unaligned_row_lengths_share_one_jit_variant(monkeypatch):
    # A GPU compiles each distinct specialisation key once. Every seed (below or above 2**31) and every
    # row length that is not a multiple of 16 (1 included) must reuse one variant per dtype and tile,
    # and an aligned row length one more: keys counted as the JIT computes them (tests/jit_variants.py).
    import collections

    import jit_variants
    from conftest import COUNTING_VARIANTS

    if not COUNTING_VARIANTS:
        pytest.skip("variants are counted under the Triton interpreter only")
    launched = collections.defaultdict(set)
    monkeypatch.setattr(jit_variants, "VARIANTS", launched)
    with fastvae.use_backend("triton"):
        for seed in (5, 2**31 + 7, 2**40 + 3, 2**63 - 1):
            for dim in (1, 5, 7, 13):
                mu = randn(6, dim, seed=1).requires_grad_()
                logvar = randn(6, dim, seed=2).requires_grad_()
                z, kl = fastvae.reparameterize_kl(mu, logvar, seed=seed)
                (z.sum() + kl.sum()).backward()
        for dim in (1, 5, 7, 13):
            fastvae.gaussian_kl(randn(6, dim, seed=3), randn(6, dim, seed=4))
    assert len(launched["_reparameterize_fwd_kernel"]) == 1
    assert len(launched["_reparameterize_bwd_kernel"]) == 1
    assert len(launched["_gaussian_kl_fwd_kernel"]) == 1


@pytest.mark.parametrize("prior_shape", [(9,), (1, 9), ()], ids=["row", "row_2d", "scalar"])
def test_a_prior_shared_by_every_row_is_not_copied_out(backend, prior_shape, monkeypatch):
    # gaussian_kl with a (D,)-style prior: the backend gets a row-stride-0 view, never an (R, D) copy,
    # and the values and gradients are those of the formula.
    if backend in ("cuda", "cpu"):
        pytest.skip(f"the {backend} backend copies the prior out (its kernels read contiguous rows)")
    seen = []
    impls = fastvae_backend._IMPLS
    monkeypatch.setattr(fastvae_backend, "_RESOLVED", {})
    for op in ("gaussian_kl_fwd", "gaussian_kl_bwd"):
        original = impls[op][backend]
        monkeypatch.setitem(impls[op], backend, lambda *a, _f=original: seen.append(a[-2:]) or _f(*a))
    mu = randn(4, 6, 9, seed=1).requires_grad_()
    logvar = randn(4, 6, 9, seed=2, scale=0.5).requires_grad_()
    mu_p = randn(*prior_shape, seed=3).requires_grad_()
    logvar_p = randn(*prior_shape, seed=4, scale=0.5).requires_grad_()
    kl = fastvae.gaussian_kl(mu, logvar, mu_p, logvar_p)
    kl.sum().backward()
    assert len(seen) == 2 and all(t.stride(0) == 0 for pair in seen for t in pair)
    m, v, mp, vp = (f64(t.detach()) for t in (mu, logvar, mu_p, logvar_p))
    check(kl, 0.5 * (torch.expm1(v - vp) - (v - vp) + (m - mp) ** 2 * torch.exp(-vp)).sum(-1), torch.float32)
    # d/dmu_p of the total: the per-row gradients summed over the 24 rows (24 rounded terms).
    expected_grad = (-(m - mp) * torch.exp(-vp)).sum(dim=(0, 1)) if prior_shape else (-(m - mp) * torch.exp(-vp)).sum()
    assert_close(mu_p.grad.reshape(expected_grad.shape), expected_grad, torch.float32, scale=math.sqrt(24 * 9))
