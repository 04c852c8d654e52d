"""Hypothesis fuzzing: every compiled backend agrees with float64 formulas on drawn inputs.

Hypothesis draws shapes (including 1, primes and sizes past a block), memory layouts (contiguous,
transposed, sliced with a step), dtypes and value ranges. The ground truth is each op's formula
written out here in float64 (not fastvae's own torch backend) on the same, already rounded values,
and the compiled backend's result in the drawn dtype must match it within the dtype's tolerance from
tests/tolerances.py. Sampled outputs use an explicit seed, whose noise is the specified Philox stream
(``fastvae.reference.philox.normal_stream``, checked against Random123's known answers in
tests/test_philox.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastvae
from backends import DEVICE
from fastvae.reference.philox import normal_stream
from tolerances import NOISE_ATOL, TOLERANCES

_LOG_2PI = math.log(2.0 * math.pi)

COMPILED = [name for name in fastvae.available_backends() if name != "torch"]


def _compiled_with(op: str) -> list[str]:
    """The compiled backends here that implement ``op`` for DEVICE (the cpu backend has no VQ ops)."""
    names = []
    for name in COMPILED:
        with fastvae.use_backend(name):
            try:
                fastvae.backend.resolve(op, DEVICE)
            except fastvae.BackendUnavailableError:
                continue
        names.append(name)
    return names


pytestmark = pytest.mark.skipif(not COMPILED, reason="no compiled backend runs here")

FUZZ = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

DTYPES = st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64])
SIZES = st.sampled_from([1, 2, 3, 4, 5, 7, 16, 31, 64, 65, 127, 130])


@st.composite
def matrices(draw: st.DrawFn) -> tuple[int, int, str, int]:
    """(rows, cols, layout, seed) of a 2-D input."""
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    return draw(SIZES), draw(SIZES), layout, draw(st.integers(0, 2**31))


def _make(rows: int, cols: int, layout: str, seed: int, dtype: torch.dtype, scale: float, shift: float) -> torch.Tensor:
    """A (rows, cols) tensor of ``dtype`` with the drawn memory layout and values ``shift + scale * N(0, 1)``."""
    generator = torch.Generator().manual_seed(seed)
    side = 2 * max(rows, cols)
    values = shift + scale * torch.randn(side, side, generator=generator, dtype=torch.float64)
    if layout == "transposed":
        tensor = values[:cols, :rows].to(dtype).T
    elif layout == "strided":
        tensor = values[::2, ::2][:rows, :cols].to(dtype)
    else:
        tensor = values[:rows, :cols].to(dtype).contiguous()
    return tensor.to(DEVICE)


def _compare(
    backend: str,
    fn,
    formula,
    inputs: list[torch.Tensor],
    dtype: torch.dtype,
    *,
    scale: float = 1.0,
    tolerance_dtypes: tuple[torch.dtype, ...] | None = None,
) -> None:
    """Run ``fn`` on ``backend`` with ``inputs``; compare every output with ``formula`` of their float64 copies.

    Each output is compared at the tolerance of ``dtype``, or of its entry in ``tolerance_dtypes``.
    """
    with fastvae.use_backend(backend):
        actual = fn(*inputs)
    expected = formula(*(t.detach().cpu().double() for t in inputs))
    actual = actual if isinstance(actual, tuple) else (actual,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        assert got.dtype == dtype
        rtol, atol = TOLERANCES[tolerance_dtypes[index] if tolerance_dtypes else dtype]
        torch.testing.assert_close(got.cpu().double(), want, rtol=rtol * scale, atol=atol * scale, equal_nan=True)


# --- float64 formulas -------------------------------------------------------------------------------


def _kl_standard(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (mu * mu + torch.expm1(logvar) - logvar).sum(-1)


def _kl(mu: torch.Tensor, logvar: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    ratio = logvar - logvar_p
    return 0.5 * (torch.expm1(ratio) - ratio + (mu - mu_p) ** 2 * torch.exp(-logvar_p)).sum(-1)


def _log_normal(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * (_LOG_2PI + logvar + (x - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def _log_mean_exp(log_w: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


@pytest.mark.parametrize("backend", COMPILED)
@FUZZ
@given(shape=matrices(), dtype=DTYPES, logvar_scale=st.sampled_from([0.1, 1.0, 10.0]), seed=st.integers(0, 2**62))
def test_reparameterize_kl_agrees(backend, shape, dtype, logvar_scale, seed):
    rows, cols, layout, data_seed = shape
    if dtype == torch.float16:
        # Keep e^logvar summed over D inside float16's range (65504); other dtypes take |logvar| ~ 40.
        logvar_scale = min(logvar_scale, 1.0)
    mu = _make(rows, cols, layout, data_seed, dtype, 1.0, 0.0)
    logvar = _make(rows, cols, layout, data_seed + 1, dtype, logvar_scale, 0.0)
    # The noise is the float32 stream in every dtype, its log/sin/cos rounded by each backend's own
    # float32 functions, within NOISE_ATOL of the float64 stream (tests/tolerances.py): an absolute
    # bound (the GPU's approximate sin/cos err absolutely), so z = mu + std eps may differ from the
    # float64 formula by std * NOISE_ATOL beyond float32's (for float64 inputs) or the dtype's own
    # rounding of z.
    z_tolerance = torch.float32 if dtype == torch.float64 else dtype
    with fastvae.use_backend(backend):
        z, kl = fastvae.reparameterize_kl(mu, logvar, seed=seed)
    m, v = mu.detach().cpu().double(), logvar.detach().cpu().double()
    std = torch.exp(0.5 * v)
    expected_z = m + std * normal_stream(rows, cols, seed).double()
    rtol, atol = TOLERANCES[z_tolerance]
    bound = rtol * expected_z.abs() + atol + std * NOISE_ATOL
    assert z.dtype == dtype and kl.dtype == dtype
    error = (z.cpu().double() - expected_z).abs()
    assert bool((error <= bound).all()), f"z is off by {float((error - bound).max()):.3g} beyond its bound"
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(kl.cpu().double(), _kl_standard(m, v), rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("backend", COMPILED)
@FUZZ
@given(shape=matrices(), dtype=DTYPES, with_prior=st.booleans())
def test_gaussian_kl_and_log_prob_agree(backend, shape, dtype, with_prior):
    rows, cols, layout, data_seed = shape
    mu, logvar, mu_p, logvar_p = (_make(rows, cols, layout, data_seed + i, dtype, 1.0, 0.0) for i in range(4))
    if with_prior:
        _compare(backend, fastvae.gaussian_kl, _kl, [mu, logvar, mu_p, logvar_p], dtype)
    else:
        _compare(backend, fastvae.gaussian_kl, _kl_standard, [mu, logvar], dtype)
    _compare(backend, fastvae.gaussian_log_prob, _log_normal, [mu_p, mu, logvar], dtype)


@pytest.mark.parametrize("backend", COMPILED)
@FUZZ
@given(shape=matrices(), dtype=DTYPES, samples=SIZES, shift=st.sampled_from([0.0, -100.0, 1e3]))
def test_iwae_bounds_agree(backend, shape, dtype, samples, shift):
    rows, cols, layout, data_seed = shape
    cols = min(cols, 5)  # batch of rows x cols columns: keeps the interpreter's work bounded
    log_w = _make(samples, rows * cols, "contiguous", data_seed, dtype, 3.0, shift).reshape(samples, rows, cols)
    log_w = log_w if layout == "contiguous" else log_w.transpose(1, 2)
    # Weights exp(log_w - lse) are recomputed from a float32 log-sum-exp whose rounding is
    # |lse| * 2**-24: at |log_w| ~ 1e3 that is 6e-5 of each weight, the conditioning of the bound there.
    _compare(backend, lambda w: fastvae.iwae_bound(w, dim=0), lambda w: _log_mean_exp(w, 0), [log_w], dtype)
    _compare(
        backend,
        lambda w: fastvae.miwae_bound(w, k_dim=0, m_dim=2),
        lambda w: _log_mean_exp(w, 0).mean(-1),
        [log_w],
        dtype,
    )


@pytest.mark.parametrize("backend", COMPILED)
@FUZZ
@given(shape=matrices(), dtype=DTYPES, samples=st.sampled_from([1, 3, 8]))
def test_iwae_log_weights_agree(backend, shape, dtype, samples):
    rows, cols, layout, data_seed = shape
    mu = _make(rows, cols, layout, data_seed, dtype, 1.0, 0.0)
    logvar = _make(rows, cols, layout, data_seed + 1, dtype, 0.5, 0.0)
    z = torch.stack([_make(rows, cols, layout, data_seed + 2 + k, dtype, 1.0, 0.0) for k in range(samples)])
    log_px_z = _make(samples, rows, "contiguous", data_seed + 99, dtype, 10.0, -50.0)
    # The sum runs over D terms that can cancel, so it is compared relative to sqrt(D).

    def formula(log_px: torch.Tensor, zs: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return log_px + _log_normal(zs, torch.zeros_like(zs), torch.zeros_like(zs)) - _log_normal(zs, m, v)

    _compare(backend, fastvae.iwae_log_weights, formula, [log_px_z, z, mu, logvar], dtype, scale=math.sqrt(cols))


@pytest.mark.parametrize("backend", _compiled_with("vq_nearest_fwd"))
@FUZZ
@given(rows=SIZES, codes=SIZES, dim=SIZES, dtype=DTYPES, seed=st.integers(0, 2**31), metric=st.sampled_from(["l2", "cosine"]))
def test_vq_nearest_agrees(backend, rows, codes, dim, dtype, seed, metric):
    x = _make(rows, dim, "transposed", seed, dtype, 1.0, 0.0)
    codebook = _make(codes, dim, "contiguous", seed + 1, dtype, 1.0, 0.0)
    with fastvae.use_backend(backend):
        indices, distances = fastvae.vq_nearest(x, codebook, metric=metric)
    rtol, atol = TOLERANCES[dtype]
    # A near-tie may pick either code: the chosen code's exact distance must equal the minimum to rounding.
    x64 = x.cpu().double()
    e64 = codebook.cpu().double()
    if metric == "cosine":
        x64 = torch.nn.functional.normalize(x64, dim=-1)
        e64 = torch.nn.functional.normalize(e64, dim=-1)
    exact = ((x64[:, None, :] - e64[None, :, :]) ** 2).sum(-1).min(dim=1).values
    indices = indices.cpu()
    chosen_distance = ((x64 - e64[indices]) ** 2).sum(-1)
    torch.testing.assert_close(chosen_distance, exact, rtol=rtol, atol=atol)
    torch.testing.assert_close(distances.cpu().double(), chosen_distance, rtol=rtol, atol=atol)
