"""Tests of the importance-weighted ops: iwae_log_weights, iwae_bound and miwae_bound.

Expected values are independent float64 formulas (torch.distributions log-densities,
torch.logsumexp, torch.softmax) applied to the same, already rounded, inputs; tolerances come from
tests/tolerances.py. The ops accumulate in float32 (float64 for float64 inputs) and round each result
once, so the sums over D and the log-sum-exps over K are compared without scaling the tolerance.

The IWAE trap of STYLE.md is tested directly: the gradient of the bound with respect to the
log-weights must be the normalised importance weights softmax(log_w), and the gradient reaching
(z, mu, logvar) must be the weighted sum of the per-sample gradients of log p(x, z) - log q(z | x).
"""

from __future__ import annotations

import math

import backends
import pytest
import torch
from backends import DEVICE, dtype_id, randn
from kernel_edges import check_op, misaligned, poison_allocations
from tolerances import EXACT, FLOAT_DTYPES, TOLERANCES, assert_close
from torch.distributions import Normal

import fastvae
from fastvae.ops.iwae import OP_NAMES


@pytest.fixture(params=backends.PARAMS)
def backend(request):
    """Runs the test under each backend available here."""
    with backends.forced(request.param, OP_NAMES) as name:
        yield name




def f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def lse_scale(log_w: torch.Tensor, dtype: torch.dtype) -> float:
    """Tolerance scale for weights exp(log_w - lse) recomputed from a saved log-sum-exp.

    The ops keep the log-sum-exp in their compute dtype (float32; float64 for float64 inputs), whose
    rounding, |lse| * 2**-24 (2**-53), scales every weight by exp(that). It is what a one-ulp change
    of log_w does to the exact weights, so it is the conditioning of the weights at that magnitude,
    not an error of the op. Below |lse| ~ 100 it is far inside the table and the scale is 1.
    """
    unit = 2.0**-53 if dtype == torch.float64 else 2.0**-24
    rtol = TOLERANCES[dtype][0]
    return max(1.0, f64(log_w).abs().max().item() * unit / rtol)


def check(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert actual.dtype == dtype
    assert actual.shape == expected.shape
    assert_close(actual.cpu(), expected, dtype)


def iwae_inputs(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0):
    """``(log_px_z, z, mu, logvar)`` for ``z`` of ``shape = (K, ..., D)``, z drawn from N(mu, e^logvar)."""
    mu = randn(*shape[1:], dtype=torch.float64, seed=seed + 1)
    logvar = randn(*shape[1:], dtype=torch.float64, seed=seed + 2, scale=0.5)
    z = mu + (0.5 * logvar).exp() * randn(*shape, dtype=torch.float64, seed=seed + 3)
    # Decoder log-likelihoods of a realistic size (tens of nats).
    log_px_z = randn(*shape[:-1], dtype=torch.float64, seed=seed + 4, scale=10.0, shift=-50.0)
    return tuple(t.to(dtype) for t in (log_px_z, z, mu, logvar))


# --- independent float64 formulas -------------------------------------------------------------------


def log_weights_f64(log_px_z, z, mu, logvar) -> torch.Tensor:
    """log p(x|z) + log N(z; 0, I) - log N(z; mu, e^logvar), by torch.distributions (differentiable)."""
    log_px_z, z, mu, logvar = (t.to("cpu", torch.float64) for t in (log_px_z, z, mu, logvar))
    log_prior = Normal(torch.zeros((), dtype=torch.float64), 1.0).log_prob(z).sum(-1)
    log_q = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    return log_px_z + log_prior - log_q


def iwae_bound_f64(log_w: torch.Tensor, dim: int) -> torch.Tensor:
    log_w = f64(log_w)
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


def miwae_bound_f64(log_w: torch.Tensor, k_dim: int, m_dim: int) -> torch.Tensor:
    canonical = f64(log_w).movedim((k_dim, m_dim), (0, 1))
    return (torch.logsumexp(canonical, 0) - math.log(canonical.shape[0])).mean(0)


def miwae_grad_f64(log_w: torch.Tensor, grad: torch.Tensor, k_dim: int, m_dim: int) -> torch.Tensor:
    """softmax over K, divided by M, times the incoming gradient (the bound's shape), laid out like ``log_w``."""
    canonical = f64(log_w).movedim((k_dim, m_dim), (0, 1))
    weights = torch.softmax(canonical, 0) / canonical.shape[1]
    return (weights * f64(grad)).movedim((0, 1), (k_dim, m_dim))


# --- iwae_log_weights -------------------------------------------------------------------------------

LOG_WEIGHT_SHAPES = [(1, 4, 3), (3, 5, 1), (8, 2, 17), (5, 2, 3, 4), (1, 1, 1), (7, 3, 129)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", LOG_WEIGHT_SHAPES, ids=str)
def test_iwae_log_weights_matches_formula(backend, dtype, shape):
    log_px_z, z, mu, logvar = iwae_inputs(shape, dtype)
    log_w = fastvae.iwae_log_weights(log_px_z, z, mu, logvar)
    check(log_w, log_weights_f64(log_px_z, z, mu, logvar), dtype)


@pytest.mark.parametrize("shape", [(3, 2, 4), (2, 2, 3, 2), (1, 1, 1)], ids=str)
def test_gradcheck_iwae_log_weights(backend, shape):
    inputs = tuple(t.requires_grad_() for t in iwae_inputs(shape, torch.float64))
    assert torch.autograd.gradcheck(fastvae.iwae_log_weights, inputs)


def test_iwae_log_weights_non_contiguous_inputs(backend):
    log_px_z, z, mu, logvar = iwae_inputs((4, 3, 5), torch.float32)
    views = (
        log_px_z.T.contiguous().T,
        z.permute(2, 1, 0).contiguous().permute(2, 1, 0),
        mu.T.contiguous().T,
        torch.stack((logvar, logvar), -1)[..., 0],
    )
    assert not any(v.is_contiguous() for v in views[1:])
    assert torch.equal(fastvae.iwae_log_weights(*views), fastvae.iwae_log_weights(log_px_z, z, mu, logvar))


def test_iwae_log_weights_zero_size_batch(backend):
    z, mu = torch.zeros(4, 0, 3, device=DEVICE), torch.zeros(0, 3, device=DEVICE)
    assert fastvae.iwae_log_weights(torch.zeros(4, 0, device=DEVICE), z, mu, mu).shape == (4, 0)
    z = torch.zeros(2, 3, 0, 5, device=DEVICE)
    mu = torch.zeros(3, 0, 5, device=DEVICE)
    assert fastvae.iwae_log_weights(torch.zeros(2, 3, 0, device=DEVICE), z, mu, mu).shape == (2, 3, 0)


# --- iwae_bound -------------------------------------------------------------------------------------

BOUND_CASES = [((5,), d) for d in (0, -1)] + [((4, 3), d) for d in (0, 1, -1, -2)] + [
    ((2, 7, 3), d) for d in (0, 1, 2, -1, -2, -3)
] + [((1, 6), 0), ((6, 1), 1)]

# The log-weights of a real model are tens to hundreds of nats below zero.
LOG_W_SHIFT, LOG_W_SCALE = -100.0, 3.0

@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape, dim", BOUND_CASES, ids=str)
def test_iwae_bound_matches_logsumexp(backend, dtype, shape, dim):
    log_w = randn(*shape, dtype=dtype, seed=1, scale=LOG_W_SCALE, shift=LOG_W_SHIFT)
    check(fastvae.iwae_bound(log_w, dim=dim), iwae_bound_f64(log_w, dim), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_iwae_bound_grad_is_normalised_weights(backend, dtype):
    # STYLE.md's trap: d bound / d log_w = softmax(log_w) over the sample dim, times the incoming grad.
    for case, (shape, dim) in enumerate(BOUND_CASES):
        log_w = randn(*shape, dtype=dtype, seed=case, scale=LOG_W_SCALE, shift=LOG_W_SHIFT).requires_grad_()
        bound = fastvae.iwae_bound(log_w, dim=dim)
        grad = randn(*bound.shape, dtype=dtype, seed=100 + case)
        bound.backward(grad)
        expected = torch.softmax(f64(log_w), dim) * f64(grad).unsqueeze(dim)
        check(log_w.grad, expected, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_iwae_bound_grad_is_a_distribution_over_samples(backend, dtype):
    # With a unit incoming gradient the weights of each column are a distribution over K. Log-weights
    # near 0 keep the rounding of the saved bound small, so this holds even in half precision.
    log_w = randn(6, 5, dtype=dtype, seed=3).requires_grad_()
    fastvae.iwae_bound(log_w).sum().backward()
    check(log_w.grad, torch.softmax(f64(log_w), 0), dtype)
    assert (log_w.grad >= 0).all()
    assert_close(log_w.grad.sum(0), torch.ones(5, dtype=torch.float64), dtype)


def test_gradcheck_iwae_bound(backend):
    for case, (shape, dim) in enumerate(BOUND_CASES):
        log_w = randn(*shape, dtype=torch.float64, seed=case, scale=3.0).requires_grad_()
        assert torch.autograd.gradcheck(lambda lw: fastvae.iwae_bound(lw, dim=dim), (log_w,)), (shape, dim)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_iwae_bound_all_minus_inf_column(backend, dtype):
    log_w = randn(4, 3, dtype=dtype, seed=1, scale=2.0)
    log_w[:, 1] = -math.inf
    log_w[1:3, 2] = -math.inf
    log_w.requires_grad_()
    bound = fastvae.iwae_bound(log_w)
    assert bound[1].item() == -math.inf
    check(bound[[0, 2]], iwae_bound_f64(log_w, 0)[[0, 2]], dtype)
    bound.sum().backward()
    assert torch.all(log_w.grad[:, 1] == 0)
    # Samples of weight zero get no gradient; the rest share the normalised weights.
    check(log_w.grad, torch.softmax(f64(log_w), 0).nan_to_num(0.0), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("shift", [1e4, -1e4])
def test_iwae_bound_is_stable_for_large_log_weights(backend, dtype, shift):
    log_w = randn(8, 3, dtype=dtype, seed=2, scale=2.0, shift=shift).requires_grad_()
    bound = fastvae.iwae_bound(log_w)
    assert torch.isfinite(bound).all()
    check(bound, iwae_bound_f64(log_w, 0), dtype)
    bound.sum().backward()
    assert torch.isfinite(log_w.grad).all()
    assert_close(log_w.grad, torch.softmax(f64(log_w), 0), dtype, scale=lse_scale(log_w, dtype))


def test_iwae_bound_of_one_sample_is_the_log_weight(backend):
    log_w = randn(1, 4, seed=5, scale=10.0).requires_grad_()
    bound = fastvae.iwae_bound(log_w)
    assert torch.equal(bound, log_w[0].detach())
    bound.sum().backward()
    assert torch.equal(log_w.grad, torch.ones_like(log_w))


def test_iwae_bound_of_a_vector_is_a_scalar(backend):
    log_w = randn(5, seed=6)
    bound = fastvae.iwae_bound(log_w)
    assert bound.shape == ()
    check(bound, iwae_bound_f64(log_w, 0), torch.float32)


def test_iwae_bound_zero_size_batch(backend):
    assert fastvae.iwae_bound(torch.zeros(4, 0, device=DEVICE)).shape == (0,)
    assert fastvae.iwae_bound(torch.zeros(4, 0, 3, device=DEVICE), dim=0).shape == (0, 3)
    assert fastvae.iwae_bound(torch.zeros(2, 0, 3, device=DEVICE), dim=2).shape == (2, 0)


def test_iwae_gradient_through_log_weights_is_the_weighted_per_sample_gradient(backend):
    # End to end in float64 against autograd through the formulas: the weights of the estimator
    # come from log p(x, z) - log q(z | x), and reach every input of iwae_log_weights.
    inputs = tuple(t.requires_grad_() for t in iwae_inputs((6, 3, 4), torch.float64))
    fastvae.iwae_bound(fastvae.iwae_log_weights(*inputs)).sum().backward()
    reference = tuple(f64(t).requires_grad_() for t in inputs)
    log_w = log_weights_f64(*reference)
    (torch.logsumexp(log_w, 0) - math.log(6)).sum().backward()
    for got, want in zip(inputs, reference):
        check(got.grad, want.grad, torch.float64)
    check(inputs[0].grad, torch.softmax(log_w.detach(), 0), torch.float64)


# --- miwae_bound ------------------------------------------------------------------------------------

MIWAE_CASES = [
    ((4, 3), 0, 1),
    ((3, 4), 1, 0),
    ((4, 3, 5), 0, 1),
    ((3, 4, 5), 1, 0),
    ((5, 3, 4), 2, 0),
    ((4, 5, 3), 0, 2),
    ((5, 4, 3), -1, 1),
    ((4, 3, 5), 0, -2),
    ((4, 2, 3, 2), 0, 2),
    ((2, 3, 1, 4), -1, 1),
    ((1, 3, 2), 0, 1),
    ((4, 1, 2), 0, 1),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape, k_dim, m_dim", MIWAE_CASES, ids=str)
def test_miwae_bound_matches_mean_of_iwae_bounds(backend, dtype, shape, k_dim, m_dim):
    log_w = randn(*shape, dtype=dtype, seed=1, scale=LOG_W_SCALE, shift=LOG_W_SHIFT).requires_grad_()
    bound = fastvae.miwae_bound(log_w, k_dim=k_dim, m_dim=m_dim)
    check(bound, miwae_bound_f64(log_w, k_dim, m_dim), dtype)
    grad = randn(*bound.shape, dtype=dtype, seed=2)
    bound.backward(grad)
    # d bound / d log_w[k, m] = softmax over k of log_w[:, m], divided by M, times the incoming grad.
    check(log_w.grad, miwae_grad_f64(log_w, grad, k_dim, m_dim), dtype)


def test_miwae_bound_with_one_group_is_the_iwae_bound(backend):
    log_w = randn(6, 1, 4, seed=3, scale=3.0)
    torch.testing.assert_close(fastvae.miwae_bound(log_w), fastvae.iwae_bound(log_w[:, 0]), **EXACT)


def test_gradcheck_miwae_bound(backend):
    for case, (shape, k_dim, m_dim) in enumerate(MIWAE_CASES[:6]):
        log_w = randn(*shape, dtype=torch.float64, seed=case, scale=3.0).requires_grad_()
        assert torch.autograd.gradcheck(lambda lw: fastvae.miwae_bound(lw, k_dim=k_dim, m_dim=m_dim), (log_w,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("shift", [1e4, -1e4])
def test_miwae_bound_is_stable_for_large_log_weights(backend, dtype, shift):
    log_w = randn(8, 3, 2, dtype=dtype, seed=2, scale=2.0, shift=shift).requires_grad_()
    bound = fastvae.miwae_bound(log_w)
    check(bound, miwae_bound_f64(log_w, 0, 1), dtype)
    bound.sum().backward()
    assert torch.isfinite(log_w.grad).all()
    assert_close(log_w.grad, torch.softmax(f64(log_w), 0) / 3, dtype, scale=lse_scale(log_w, dtype))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_miwae_bound_all_minus_inf_group(backend, dtype):
    log_w = randn(4, 2, 3, dtype=dtype, seed=1, scale=2.0)
    log_w[:, 1, 0] = -math.inf
    log_w.requires_grad_()
    bound = fastvae.miwae_bound(log_w)
    assert bound[0].item() == -math.inf
    check(bound[1:], miwae_bound_f64(log_w, 0, 1)[1:], dtype)
    bound.sum().backward()
    check(log_w.grad, torch.softmax(f64(log_w), 0).nan_to_num(0.0) / 2, dtype)


def test_miwae_bound_zero_size_batch(backend):
    assert fastvae.miwae_bound(torch.zeros(4, 3, 0, device=DEVICE)).shape == (0,)
    assert fastvae.miwae_bound(torch.zeros(4, 0, 3, device=DEVICE), k_dim=0, m_dim=2).shape == (0,)


# --- block edges of the compiled kernels ------------------------------------------------------------
# Sizes around the blocks of kernels/iwae.py, run on every backend: iwae_log_weights steps 4 samples
# (2 when D > 256) over BLOCK_B = 1024 / BLOCK_D rows, BLOCK_D a power of two from 16 to 256 (longer
# D loops), and splits K over programs when B is short; the bounds step 32 samples over 64 columns,
# or 512 samples over at most 4 columns.

LOG_WEIGHT_EDGE_SHAPES = [
    (1, 70, 16),  # one sample; B one past a 64-row block
    (5, 3, 1),  # K one past a step; D = 1
    (50, 2, 3),  # K split over programs, the last one partial
    (3, 9, 300),  # D longer than one block: the loop over D, with a tail
    (2, 5, 257),  # D one past the largest block
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("shape", LOG_WEIGHT_EDGE_SHAPES, ids=str)
def test_iwae_log_weights_block_edges(backend, dtype, shape):
    log_px_z, z, mu, logvar = iwae_inputs(shape, dtype, seed=10)
    check(fastvae.iwae_log_weights(log_px_z, z, mu, logvar), log_weights_f64(log_px_z, z, mu, logvar), dtype)


@pytest.mark.parametrize("shape", LOG_WEIGHT_EDGE_SHAPES, ids=str)
def test_iwae_log_weights_grad_block_edges(backend, shape):
    # grad_mu and grad_logvar are sums over every sample, across steps and programs.
    inputs = tuple(t.requires_grad_() for t in iwae_inputs(shape, torch.float64, seed=20))
    log_w = fastvae.iwae_log_weights(*inputs)
    grad = randn(*log_w.shape, dtype=torch.float64, seed=21)
    log_w.backward(grad)
    reference = tuple(f64(t).requires_grad_() for t in inputs)
    log_weights_f64(*reference).backward(f64(grad))
    for got, want in zip(inputs, reference):
        check(got.grad, want.grad, torch.float64)


BOUND_EDGE_SHAPES = [(1, 70), (5, 3), (33, 65), (70, 130), (1100, 3), (513, 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("shape", BOUND_EDGE_SHAPES, ids=str)
def test_iwae_bound_block_edges(backend, dtype, shape):
    log_w = randn(*shape, dtype=dtype, seed=30, scale=LOG_W_SCALE, shift=LOG_W_SHIFT).requires_grad_()
    bound = fastvae.iwae_bound(log_w)
    check(bound, iwae_bound_f64(log_w, 0), dtype)
    grad = randn(*bound.shape, dtype=dtype, seed=31)
    bound.backward(grad)
    check(log_w.grad, torch.softmax(f64(log_w), 0) * f64(grad), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("shape", [(33, 3, 70), (5, 2, 1), (513, 2, 2), (70, 1, 3)], ids=str)
def test_miwae_bound_block_edges(backend, dtype, shape):
    log_w = randn(*shape, dtype=dtype, seed=40, scale=LOG_W_SCALE, shift=LOG_W_SHIFT).requires_grad_()
    bound = fastvae.miwae_bound(log_w)
    check(bound, miwae_bound_f64(log_w, 0, 1), dtype)
    grad = randn(*bound.shape, dtype=dtype, seed=41)
    bound.backward(grad)
    check(log_w.grad, miwae_grad_f64(log_w, grad, 0, 1), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("samples, batch", [(70, 6), (1100, 3)], ids=str)
def test_iwae_bound_minus_inf_across_steps(backend, dtype, samples, batch):
    # The log-sum-exp streams over K in steps; -inf weights must not poison the running max or sum,
    # whichever step the first finite weight arrives in.
    log_w = randn(samples, batch, dtype=dtype, seed=50, scale=2.0)
    log_w[:, 0] = -math.inf  # every weight zero
    log_w[: samples // 2 + 5, 1] = -math.inf  # finite weights only in later steps
    log_w[:-1, 2] = -math.inf  # a single finite weight, in the last (partial) step
    log_w.requires_grad_()
    bound = fastvae.iwae_bound(log_w)
    assert bound[0].item() == -math.inf
    check(bound[1:], iwae_bound_f64(log_w, 0)[1:], dtype)
    bound.sum().backward()
    assert torch.all(log_w.grad[:, 0] == 0)
    check(log_w.grad, torch.softmax(f64(log_w), 0).nan_to_num(0.0), dtype)


# --- what compiled kernels special-case -------------------------------------------------------------
# The compiled kernels move z, mu and logvar as 16-byte vectors where every pointer is 16-byte aligned
# and D is a multiple of the vector width (scalar access otherwise), give a latent row several lanes of
# a warp, split the K samples into slices with partial last steps, and read incoming gradients through
# their strides. These tests run on every backend.

# Latent sizes that are not multiples of any vector width (one past 8, 32 and 256 among them).
EDGE_DIMS = [1, 3, 7, 9, 33, 257]
# Samples and columns one past powers of two, so every split of K and every tile of B has a tail.
EDGE_SAMPLES, EDGE_BATCH, EDGE_GROUPS = 33, 13, 3


def _iwae_bound(log_w):
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def _miwae_bound(log_w):
    return _iwae_bound(log_w).mean(0)


def check_iwae_ops(log_px_z, z, mu, logvar, grad_log_w, log_w, log_w_groups, grad_bound) -> None:
    """Every importance-weighted op, forward and backward, against the float64 formulas: the
    log-weights of ``z (K, B, D)`` with incoming ``grad_log_w (K, B)``, and the bounds of
    ``log_w (K', B)`` and ``log_w_groups (K', M, B)`` with incoming ``grad_bound (B,)``."""
    check_op(fastvae.iwae_log_weights, log_weights_f64, (log_px_z, z, mu, logvar), (grad_log_w,))
    check_op(fastvae.iwae_bound, _iwae_bound, (log_w,), (grad_bound,))
    check_op(fastvae.miwae_bound, _miwae_bound, (log_w_groups,), (grad_bound,))


def edge_inputs(samples: int, batch: int, dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Arguments of :func:`check_iwae_ops`: ``K = samples`` for the log-weights, EDGE_SAMPLES for the
    bounds, EDGE_GROUPS groups for MIWAE."""
    log_px_z, z, mu, logvar = iwae_inputs((samples, batch, dim), dtype, seed=60)
    grad_log_w = randn(samples, batch, dtype=dtype, seed=61)
    log_w = randn(EDGE_SAMPLES, batch, dtype=dtype, seed=62, scale=3.0)
    log_w_groups = randn(EDGE_SAMPLES, EDGE_GROUPS, batch, dtype=dtype, seed=63, scale=3.0)
    return log_px_z, z, mu, logvar, grad_log_w, log_w, log_w_groups, randn(batch, dtype=dtype, seed=64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=dtype_id)
@pytest.mark.parametrize("dim", EDGE_DIMS)
def test_odd_latent_sizes(backend, dtype, dim):
    check_iwae_ops(*edge_inputs(5, EDGE_BATCH, dim, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=dtype_id)
@pytest.mark.parametrize("dim", [8, 16, 64, 256])
def test_misaligned_inputs(backend, dtype, dim):
    # Latent sizes that suit 16-byte vectors, but every input and incoming gradient starts one element
    # into its buffer, so no row is 16-byte aligned.
    check_iwae_ops(*(misaligned(t) for t in edge_inputs(5, EDGE_BATCH, dim, dtype)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=dtype_id)
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, EDGE_BATCH, 9), (2, 70, 16), (EDGE_SAMPLES, 3, 33)], ids=str)
def test_outputs_are_written_everywhere(backend, dtype, shape, monkeypatch):
    # Outputs (the saved log-sum-exps too) are allocated NaN-filled: an element a kernel skips stays
    # NaN and fails the check.
    poison_allocations(monkeypatch)
    check_iwae_ops(*edge_inputs(*shape, dtype))


def strided_layouts(samples: int, batch: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Incoming gradients ``(grad_log_w (K, B), grad_bound (B,))`` in layouts autograd or a caller may hand over."""
    grad_log_w, grad_bound = randn(samples, batch, seed=65), randn(batch, seed=66)
    return {
        "transposed": (randn(batch, samples, seed=65).t(), randn(batch, 3, seed=66)[:, 1]),
        "every_other": (randn(samples, 2 * batch, seed=65)[:, ::2], randn(2 * batch, seed=66)[::2]),
        "expanded_rows": (grad_log_w[:1].expand(samples, batch), grad_bound[:1].expand(batch)),
        "expanded_scalar": (grad_log_w[0, 0].expand(samples, batch), grad_bound[0].expand(batch)),
    }


@pytest.mark.parametrize("layout", ["transposed", "every_other", "expanded_rows", "expanded_scalar"])
def test_strided_incoming_gradients(backend, layout):
    log_px_z, z, mu, logvar, _, log_w, log_w_groups, _ = edge_inputs(7, EDGE_BATCH, 9, torch.float32)
    grad_log_w, grad_bound = strided_layouts(7, EDGE_BATCH)[layout]
    assert not grad_log_w.is_contiguous() and not grad_bound.is_contiguous()
    check_iwae_ops(log_px_z, z, mu, logvar, grad_log_w, log_w, log_w_groups, grad_bound)


# --- bad inputs -------------------------------------------------------------------------------------


def test_iwae_log_weights_rejects_bad_inputs():
    log_px_z, z, mu, logvar = (t.cpu() for t in iwae_inputs((3, 2, 4), torch.float32))
    with pytest.raises(ValueError, match="mu"):
        fastvae.iwae_log_weights(log_px_z, z, mu[:, :3], logvar)
    with pytest.raises(ValueError, match="logvar"):
        fastvae.iwae_log_weights(log_px_z, z, mu, logvar[:1])
    with pytest.raises(ValueError, match="log_px_z"):
        fastvae.iwae_log_weights(log_px_z[:2], z, mu, logvar)
    with pytest.raises(ValueError, match="log_px_z"):
        fastvae.iwae_log_weights(log_px_z[0], z, mu, logvar)
    with pytest.raises(ValueError, match="z"):
        fastvae.iwae_log_weights(log_px_z[0, 0], z[0, 0], mu[0], logvar[0])
    with pytest.raises(TypeError, match="log_px_z"):
        fastvae.iwae_log_weights(log_px_z.to(torch.int64), z, mu, logvar)
    with pytest.raises(TypeError, match="z"):
        fastvae.iwae_log_weights(log_px_z, z.to(torch.int32), mu, logvar)
    with pytest.raises(TypeError, match="mu"):
        fastvae.iwae_log_weights(log_px_z, z, mu.double(), logvar)
    with pytest.raises(ValueError, match="logvar"):
        fastvae.iwae_log_weights(log_px_z, z, mu, logvar.to("meta"))


def test_iwae_bound_rejects_bad_inputs():
    log_w = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="dim"):
        fastvae.iwae_bound(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="dim"):
        fastvae.iwae_bound(torch.zeros(3, 0), dim=1)
    for out_of_range in (2, -3):
        with pytest.raises(ValueError, match="dim"):
            fastvae.iwae_bound(log_w, dim=out_of_range)
    for not_int in (1.0, "0", True, None):
        with pytest.raises(TypeError, match="dim"):
            fastvae.iwae_bound(log_w, dim=not_int)
    with pytest.raises(TypeError, match="log_w"):
        fastvae.iwae_bound(log_w.to(torch.int64))
    with pytest.raises(TypeError, match="log_w"):
        fastvae.iwae_bound([0.0, 1.0])
    with pytest.raises(ValueError, match="log_w"):
        fastvae.iwae_bound(torch.tensor(0.0))


def test_miwae_bound_rejects_bad_inputs():
    log_w = torch.zeros(4, 3, 2)
    for k_dim, m_dim in ((0, 0), (1, 1), (0, -3), (-1, 2)):
        with pytest.raises(ValueError, match="k_dim"):
            fastvae.miwae_bound(log_w, k_dim=k_dim, m_dim=m_dim)
    with pytest.raises(ValueError, match="k_dim"):
        fastvae.miwae_bound(torch.zeros(0, 3, 2))
    with pytest.raises(ValueError, match="m_dim"):
        fastvae.miwae_bound(torch.zeros(4, 0, 2))
    with pytest.raises(ValueError, match="k_dim"):
        fastvae.miwae_bound(log_w, k_dim=3)
    with pytest.raises(ValueError, match="m_dim"):
        fastvae.miwae_bound(log_w, m_dim=-4)
    with pytest.raises(TypeError, match="k_dim"):
        fastvae.miwae_bound(log_w, k_dim=0.0)
    with pytest.raises(TypeError, match="m_dim"):
        fastvae.miwae_bound(log_w, m_dim=False)
    with pytest.raises(TypeError, match="log_w"):
        fastvae.miwae_bound(log_w.to(torch.int32))
    with pytest.raises(ValueError, match="log_w"):
        fastvae.miwae_bound(torch.zeros(4))


# --- how the log-weights' backward splits its work on a GPU ------------------------------------------
# csrc/iwae.cu's backward views the (B, D) plane as a flat run of chunks (a 16-byte vector of one row,
# or 4 scalars off the vector path) and gives a block a tile of `lanes` of them side by side, each
# chunk's samples split over 256 / lanes slices that fold through a warp butterfly and shared memory;
# the tiles narrow while they make fewer than 1,024 blocks. Each shape below takes another branch of
# that split: float32's chunks, slices and fold groups are noted, bfloat16's in parentheses where they
# differ. The Triton kernel runs them too, compiled; under the interpreter they are too slow: GPU only.

WORK_SPLIT_SHAPES = [
    (64, 64, 128),  # B = 64: 4 chunks a block, 64 slices of one sample, 8 groups across the warps
    (8, 4096, 128),  # B = 4,096: 128 (64) chunks a block, 2 (4) slices of 4 (2) samples, 2 (4) groups
    (300, 64, 128),  # K past a block's threads: 2 (1) chunks a block, 128 (256) slices of 2-3 (1-2) samples
    (64, 64, 129),  # D off the vector width: scalar chunks, each row's last one partial
    (1, 4096, 128),  # K = 1: 256 chunks a block, one slice, nothing to fold
    (1, 64, 130),  # K = 1 off the vector path, the plane's last tile partial
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("shape", WORK_SPLIT_SHAPES, ids=str)
def test_log_weights_backward_work_split(backend, dtype, shape, monkeypatch):
    poison_allocations(monkeypatch)
    log_px_z, z, mu, logvar = iwae_inputs(shape, dtype, seed=70)
    grad_log_w = randn(*shape[:2], dtype=dtype, seed=71)
    check_op(fastvae.iwae_log_weights, log_weights_f64, (log_px_z, z, mu, logvar), (grad_log_w,))


# --- launch heuristics against the static report's bounds -------------------------------------------


def test_log_weights_backward_grid_is_one_wave_at_the_benchmark_shape():
    # kernels/aot.py's BOUNDS hold the backward kernel at 4 or more programs per SM at sm_90 (issue 15,
    # point 3): its grid at the benchmark shape K = 64, B = 4096, D = 128 must fit 132 SMs at that.
    from fastvae.kernels import aot
    from fastvae.kernels import iwae as kernels

    (bound,) = (b for b in aot.BOUNDS if (b.kernel, b.metric) == ("_iwae_log_weights_bwd_kernel", "ctas_per_sm"))
    grid = kernels._log_weights_bwd_grid(4096, 128)
    assert bound.at_least and bound.enforced
    assert math.prod(grid) <= 132 * bound.limit
