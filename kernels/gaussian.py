"""Triton kernels of the Gaussian ops: reparameterised sampling (with its KL), KL divergence, log-density.

Every kernel works on the canonical contiguous ``(R, D)`` layout of :mod:`fastvae.ops.gaussian`,
except that the incoming gradients of backward passes may have any strides (autograd hands over
expanded gradients for summed outputs), which the kernels read in place. A program owns ``BLOCK_R``
whole rows and walks along ``D`` in ``BLOCK_D``-wide tiles (coalesced loads, vectorised where ``D``
is a multiple of 16); the row-sum kernels loop over all of ``D`` in one program, the element-wise
ones take a second grid axis of ``D`` tiles. Arithmetic runs in float32 (float64 for float64
inputs) and results are stored in the input dtype, as :mod:`fastvae.reference.gaussian` computes
them.

The noise is the stream of :mod:`fastvae.reference.philox`: element ``(r, d)`` is lane ``d % 4`` of
``tl.philox(seed, d // 4, r mod 2**32, r div 2**32, 0)`` through Box-Muller in float32. A tile makes
one Philox call per group of four elements, as a ``(BLOCK_R, BLOCK_D / 4)`` block, and interleaves
the four lanes back into ``(BLOCK_R, BLOCK_D)`` with ``tl.join`` and ``tl.reshape``. Backward passes
regenerate the noise from the seed.

Outputs are allocated, and empty inputs decided, by :mod:`fastvae.plan.gaussian`, which the cuda and
cpu backends share: empty inputs launch nothing, and a row sum over ``D = 0`` is zero.
"""

from __future__ import annotations

import inspect
import math

import torch
import triton
import triton.language as tl

from fastvae.kernels import _block_base, _row_length, aligned_rows, aot, on_input_device
from fastvae.kernels.aot import AotConfig
from fastvae.plan import gaussian as plan

_LOG_2PI = tl.constexpr(math.log(2.0 * math.pi))
_TWO_PI = tl.constexpr(2.0 * math.pi)


# --- helpers shared by the kernels -----------------------------------------------------------------


@triton.jit
def _widen(x):
    """``x`` in its compute dtype: float64 stays float64, every other dtype becomes float32."""
    if x.dtype != tl.float64:
        x = x.to(tl.float32)
    return x


@triton.jit
def _expm1(x):
    """``e^x - 1`` without cancellation near 0, in the dtype of ``x`` (float32 or float64).

    For ``|x| < 1/2`` the Taylor series ``x (1 + x/2 (1 + x/3 (1 + ... (1 + x/N))))`` with
    ``N = 8`` (float32) or ``N = 15`` (float64), whose truncation error relative to the result,
    ``|x|^N / (N + 1)!``, is below 1.1e-8 and 1.5e-18 there; elsewhere ``exp(x) - 1``, where
    ``e^x / |e^x - 1| <= 2.6`` bounds how much the subtraction magnifies the error of ``exp``.
    """
    if x.dtype == tl.float64:
        N: tl.constexpr = 15
    else:
        N: tl.constexpr = 8
    series = 1.0 + x * (1.0 / N)
    for i in tl.static_range(1, N - 1):
        series = 1.0 + x * (1.0 / (N - i)) * series
    return tl.where(tl.abs(x) < 0.5, x * series, tl.exp(x) - 1.0)


@triton.jit
def _kl_standard_terms(mu, logvar):
    """``mu^2 + e^logvar - 1 - logvar``, the per-element KL to N(0, 1) times two."""
    return mu * mu + _expm1(logvar) - logvar


@triton.jit
def _row_block(n_rows, dim, ALIGNED: tl.constexpr, BLOCK_R: tl.constexpr):
    """This program's ``BLOCK_R`` rows: ``(dim, start, local, rows, row_mask)``.

    ``dim`` carries the ALIGNED hint (:func:`~fastvae.kernels._row_length`), ``start`` is the
    element offset of the block's first row (for :func:`~fastvae.kernels._block_base`), ``local`` the
    rows within the block and ``rows`` the global ones (int64), ``row_mask`` which of them exist.
    """
    dim = _row_length(dim, ALIGNED)
    row_start = tl.program_id(0).to(tl.int64) * BLOCK_R
    local = tl.arange(0, BLOCK_R).to(tl.int64)
    rows = row_start + local
    return dim, row_start * dim, local, rows, rows < n_rows


@triton.jit
def _prior_offsets(offsets, cols, SHARED_PRIOR: tl.constexpr):
    """Where a block's prior elements are: ``offsets`` for a per-row prior, column ``cols`` of the one
    shared row in every row with SHARED_PRIOR."""
    if SHARED_PRIOR:
        offsets = tl.broadcast_to(cols[None, :], offsets.shape).to(offsets.dtype)
    return offsets


@triton.jit
def _uniform(word):
    """A Philox word as a float32 uniform in (0, 1): ``((w >> 9) + 0.5) * 2**-23``, exact."""
    return ((word >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07


@triton.jit
def _cos_sin_2pi(u):
    """``(cos a, sin a)`` in float32 for the float32 angle ``a = 2 pi u`` of a uniform ``u`` in (0, 1).

    ``a`` is rounded to float32 as the reference rounds it; then ``a = q pi/2 + r`` with ``|r| <= pi/4``
    (Cody-Waite: pi/2 in three float32 parts, the first two short enough that ``q <= 4`` times them is
    exact) and Cephes' minimax polynomials for sin and cos on ``[-pi/4, pi/4]``: within 1.6 ulp of
    the exact values over all 2**23 uniforms of the stream. Written out, it carries none of the
    huge-argument reduction (and local memory) of a general sinf/cosf, which this range never needs.
    """
    a = _TWO_PI * u
    q = tl.floor(a * 0.6366197723675814 + 0.5)
    r = a - q * 1.5703125
    r = r - q * 4.837512969970703e-04
    r = r - q * 7.549790126404332e-08
    r2 = r * r
    sin_r = r + r * r2 * (-1.6666654611e-01 + r2 * (8.3321608736e-03 + r2 * -1.9515295891e-04))
    cos_r = 1.0 - 0.5 * r2 + r2 * r2 * (4.166664568e-02 + r2 * (-1.388731625e-03 + r2 * 2.443315711e-05))
    quadrant = q.to(tl.int32) & 3
    cos_a = tl.where(quadrant == 0, cos_r, tl.where(quadrant == 1, -sin_r, tl.where(quadrant == 2, -cos_r, sin_r)))
    sin_a = tl.where(quadrant == 0, sin_r, tl.where(quadrant == 1, cos_r, tl.where(quadrant == 2, -sin_r, -cos_r)))
    return cos_a, sin_a


@triton.jit
def _normals(seed_lo, seed_hi, rows, d0, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """The stream's normals of ``rows`` (int64, ``(BLOCK_R,)``) at columns ``d0 .. d0 + BLOCK_D``.

    ``d0`` is a multiple of 4. ``seed_lo`` and ``seed_hi`` are the seed's low and high 32-bit words
    as int32 (see :func:`_seed_words`). Returns float32 ``(BLOCK_R, BLOCK_D)``: one Philox call per
    group of four columns, lane ``k`` of a group taking Box-Muller normal ``n_k``.
    """
    seed = (seed_hi.to(tl.uint32, bitcast=True).to(tl.uint64) << 32) | seed_lo.to(tl.uint32, bitcast=True).to(tl.uint64)
    BLOCK_G: tl.constexpr = BLOCK_D // 4
    groups = d0 // 4 + tl.arange(0, BLOCK_G)
    c0 = tl.broadcast_to(groups[None, :].to(tl.uint32), (BLOCK_R, BLOCK_G))
    c1 = tl.broadcast_to((rows & 0xFFFFFFFF).to(tl.uint32)[:, None], (BLOCK_R, BLOCK_G))
    c2 = tl.broadcast_to((rows >> 32).to(tl.uint32)[:, None], (BLOCK_R, BLOCK_G))
    c3 = tl.zeros((BLOCK_R, BLOCK_G), dtype=tl.uint32)
    w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c3)
    radius01 = tl.sqrt_rn(-2.0 * tl.log(_uniform(w0)))
    radius23 = tl.sqrt_rn(-2.0 * tl.log(_uniform(w2)))
    cos1, sin1 = _cos_sin_2pi(_uniform(w1))
    cos3, sin3 = _cos_sin_2pi(_uniform(w3))
    n0 = radius01 * cos1
    n1 = radius01 * sin1
    n2 = radius23 * cos3
    n3 = radius23 * sin3
    # join(join(n0, n2), join(n1, n3))[r, g, i, j] = n_(2i + j): row-major, that is lanes 0, 1, 2, 3.
    return tl.reshape(tl.join(tl.join(n0, n2), tl.join(n1, n3)), (BLOCK_R, BLOCK_D))


# --- reparameterize and reparameterize_kl ----------------------------------------------------------


@triton.jit(
    do_not_specialize=["n_rows", "dim", "seed_lo", "seed_hi"],
    do_not_specialize_on_alignment=["mu_ptr", "logvar_ptr", "eps_ptr", "z_ptr"],
)
def _reparameterize_fwd_kernel(
    mu_ptr,
    logvar_ptr,
    eps_ptr,
    z_ptr,
    kl_ptr,
    n_rows,
    dim,
    seed_lo,
    seed_hi,
    HAS_EPS: tl.constexpr,
    HAS_KL: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``z = mu + e^(logvar/2) * eps`` (eps from the stream unless HAS_EPS) and, with HAS_KL, the row KL.

    Grid: (row blocks, D tiles); each program strides over D by the second grid axis, which is 1 with
    HAS_KL so that one program sums a whole row.
    """
    dim, start, local, rows, row_mask = _row_block(n_rows, dim, ALIGNED, BLOCK_R)
    mu_ptr = _block_base(mu_ptr, start, ALIGNED)
    logvar_ptr = _block_base(logvar_ptr, start, ALIGNED)
    eps_ptr = _block_base(eps_ptr, start, ALIGNED)
    z_ptr = _block_base(z_ptr, start, ALIGNED)
    kl = tl.zeros((BLOCK_R,), dtype=tl.float32)
    if mu_ptr.dtype.element_ty == tl.float64:
        kl = kl.to(tl.float64)
    for d0 in range(tl.program_id(1) * BLOCK_D, dim, tl.num_programs(1) * BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (cols < dim)[None, :]
        offsets = local[:, None] * dim + cols[None, :]
        mu = _widen(tl.load(mu_ptr + offsets, mask=mask, other=0.0))
        logvar = _widen(tl.load(logvar_ptr + offsets, mask=mask, other=0.0))
        if HAS_EPS:
            eps = _widen(tl.load(eps_ptr + offsets, mask=mask, other=0.0))
        else:
            eps = _normals(seed_lo, seed_hi, rows, d0, BLOCK_R, BLOCK_D).to(mu.dtype)
        z = mu + tl.exp(0.5 * logvar) * eps
        tl.store(z_ptr + offsets, z.to(z_ptr.dtype.element_ty), mask=mask)
        if HAS_KL:
            # Masked elements load mu = logvar = 0, whose term is 0.
            kl += tl.sum(_kl_standard_terms(mu, logvar), axis=1)
    if HAS_KL:
        tl.store(kl_ptr + rows, (0.5 * kl).to(kl_ptr.dtype.element_ty), mask=row_mask)


@triton.jit(
    do_not_specialize=["n_rows", "dim", "seed_lo", "seed_hi", "stride_gkl"],
    # grad_kl is read through its (run-time) stride: its alignment buys nothing.
    do_not_specialize_on_alignment=["grad_kl_ptr", "mu_ptr", "logvar_ptr", "grad_mu_ptr", "grad_logvar_ptr"],
)
def _reparameterize_bwd_kernel(
    grad_z_ptr,
    grad_kl_ptr,
    mu_ptr,
    logvar_ptr,
    grad_mu_ptr,
    grad_logvar_ptr,
    n_rows,
    dim,
    seed_lo,
    seed_hi,
    stride_gz_r,
    stride_gz_d,
    stride_gkl,
    HAS_KL: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Gradients of :func:`_reparameterize_fwd_kernel` with stream noise, regenerated from ``seed``.

    ``d logvar = g_z e^(logvar/2) eps / 2``; with HAS_KL also ``d mu = g_z + g_kl mu`` and
    ``d logvar += g_kl (e^logvar - 1) / 2``. The incoming gradients may have any strides (autograd
    hands over expanded ones for summed outputs). Grid: (row blocks, D tiles), striding over D.
    """
    dim, start, local, rows, row_mask = _row_block(n_rows, dim, ALIGNED, BLOCK_R)
    mu_ptr = _block_base(mu_ptr, start, ALIGNED)
    logvar_ptr = _block_base(logvar_ptr, start, ALIGNED)
    grad_mu_ptr = _block_base(grad_mu_ptr, start, ALIGNED)
    grad_logvar_ptr = _block_base(grad_logvar_ptr, start, ALIGNED)
    if HAS_KL:
        grad_kl = _widen(tl.load(grad_kl_ptr + rows * stride_gkl, mask=row_mask, other=0.0))[:, None]
    for d0 in range(tl.program_id(1) * BLOCK_D, dim, tl.num_programs(1) * BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (cols < dim)[None, :]
        offsets = local[:, None] * dim + cols[None, :]
        grad_z_offsets = rows[:, None] * stride_gz_r + cols[None, :] * stride_gz_d
        grad_z = _widen(tl.load(grad_z_ptr + grad_z_offsets, mask=mask, other=0.0))
        logvar = _widen(tl.load(logvar_ptr + offsets, mask=mask, other=0.0))
        eps = _normals(seed_lo, seed_hi, rows, d0, BLOCK_R, BLOCK_D).to(logvar.dtype)
        grad_logvar = grad_z * tl.exp(0.5 * logvar) * eps
        if HAS_KL:
            mu = _widen(tl.load(mu_ptr + offsets, mask=mask, other=0.0))
            tl.store(grad_mu_ptr + offsets, (grad_z + grad_kl * mu).to(grad_mu_ptr.dtype.element_ty), mask=mask)
            grad_logvar += grad_kl * _expm1(logvar)
        tl.store(grad_logvar_ptr + offsets, (0.5 * grad_logvar).to(grad_logvar_ptr.dtype.element_ty), mask=mask)


# --- gaussian_kl -----------------------------------------------------------------------------------


@triton.jit(
    do_not_specialize=["n_rows", "dim"],
    do_not_specialize_on_alignment=["mu_ptr", "logvar_ptr", "mu_p_ptr", "logvar_p_ptr"],
)
def _gaussian_kl_fwd_kernel(
    mu_ptr,
    logvar_ptr,
    mu_p_ptr,
    logvar_p_ptr,
    kl_ptr,
    n_rows,
    dim,
    HAS_PRIOR: tl.constexpr,
    SHARED_PRIOR: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Row KL to N(0, I), or with HAS_PRIOR to ``N(mu_p, e^logvar_p)``. Grid: (row blocks,).

    SHARED_PRIOR: the prior is one ``(D,)`` row for every row (a broadcast prior, never copied out).
    """
    dim, start, local, rows, row_mask = _row_block(n_rows, dim, ALIGNED, BLOCK_R)
    mu_ptr = _block_base(mu_ptr, start, ALIGNED)
    logvar_ptr = _block_base(logvar_ptr, start, ALIGNED)
    if not SHARED_PRIOR:
        mu_p_ptr = _block_base(mu_p_ptr, start, ALIGNED)
        logvar_p_ptr = _block_base(logvar_p_ptr, start, ALIGNED)
    kl = tl.zeros((BLOCK_R,), dtype=tl.float32)
    if mu_ptr.dtype.element_ty == tl.float64:
        kl = kl.to(tl.float64)
    for d0 in range(0, dim, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (cols < dim)[None, :]
        offsets = local[:, None] * dim + cols[None, :]
        # Masked elements load zeros everywhere, whose terms are 0.
        mu = _widen(tl.load(mu_ptr + offsets, mask=mask, other=0.0))
        logvar = _widen(tl.load(logvar_ptr + offsets, mask=mask, other=0.0))
        if HAS_PRIOR:
            prior_offsets = _prior_offsets(offsets, cols, SHARED_PRIOR)
            diff = mu - _widen(tl.load(mu_p_ptr + prior_offsets, mask=mask, other=0.0))
            logvar_p = _widen(tl.load(logvar_p_ptr + prior_offsets, mask=mask, other=0.0))
            log_ratio = logvar - logvar_p
            terms = _expm1(log_ratio) - log_ratio + diff * diff * tl.exp(-logvar_p)
        else:
            terms = _kl_standard_terms(mu, logvar)
        kl += tl.sum(terms, axis=1)
    tl.store(kl_ptr + rows, (0.5 * kl).to(kl_ptr.dtype.element_ty), mask=row_mask)


@triton.jit(
    do_not_specialize=["n_rows", "dim", "stride_g"],
    # grad is read through its (run-time) stride: its alignment buys nothing.
    do_not_specialize_on_alignment=[
        "grad_ptr", "mu_ptr", "logvar_ptr", "mu_p_ptr", "logvar_p_ptr",
        "grad_mu_ptr", "grad_logvar_ptr", "grad_mu_p_ptr", "grad_logvar_p_ptr",
    ],
)
def _gaussian_kl_bwd_kernel(
    grad_ptr,
    mu_ptr,
    logvar_ptr,
    mu_p_ptr,
    logvar_p_ptr,
    grad_mu_ptr,
    grad_logvar_ptr,
    grad_mu_p_ptr,
    grad_logvar_p_ptr,
    n_rows,
    dim,
    stride_g,
    HAS_PRIOR: tl.constexpr,
    SHARED_PRIOR: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Gradients of :func:`_gaussian_kl_fwd_kernel`, with HAS_PRIOR also the prior's.

    ``grad`` has row stride ``stride_g`` (0 when autograd expands the gradient of a sum).
    Grid: (row blocks, D tiles).
    """
    dim, start, local, rows, row_mask = _row_block(n_rows, dim, ALIGNED, BLOCK_R)
    mu_ptr = _block_base(mu_ptr, start, ALIGNED)
    logvar_ptr = _block_base(logvar_ptr, start, ALIGNED)
    if not SHARED_PRIOR:
        mu_p_ptr = _block_base(mu_p_ptr, start, ALIGNED)
        logvar_p_ptr = _block_base(logvar_p_ptr, start, ALIGNED)
    grad_mu_ptr = _block_base(grad_mu_ptr, start, ALIGNED)
    grad_logvar_ptr = _block_base(grad_logvar_ptr, start, ALIGNED)
    grad_mu_p_ptr = _block_base(grad_mu_p_ptr, start, ALIGNED)
    grad_logvar_p_ptr = _block_base(grad_logvar_p_ptr, start, ALIGNED)
    grad = _widen(tl.load(grad_ptr + rows * stride_g, mask=row_mask, other=0.0))[:, None]
    for d0 in range(tl.program_id(1) * BLOCK_D, dim, tl.num_programs(1) * BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (cols < dim)[None, :]
        offsets = local[:, None] * dim + cols[None, :]
        mu = _widen(tl.load(mu_ptr + offsets, mask=mask, other=0.0))
        logvar = _widen(tl.load(logvar_ptr + offsets, mask=mask, other=0.0))
        if HAS_PRIOR:
            prior_offsets = _prior_offsets(offsets, cols, SHARED_PRIOR)
            logvar_p = _widen(tl.load(logvar_p_ptr + prior_offsets, mask=mask, other=0.0))
            diff = mu - _widen(tl.load(mu_p_ptr + prior_offsets, mask=mask, other=0.0))
            scaled_diff = diff * tl.exp(-logvar_p)
            half_expm1_ratio = 0.5 * _expm1(logvar - logvar_p)
            grad_mu = grad * scaled_diff
            grad_logvar_p = -grad * (half_expm1_ratio + 0.5 * scaled_diff * diff)
            tl.store(grad_mu_p_ptr + offsets, (-grad_mu).to(grad_mu_p_ptr.dtype.element_ty), mask=mask)
            tl.store(grad_logvar_p_ptr + offsets, grad_logvar_p.to(grad_logvar_p_ptr.dtype.element_ty), mask=mask)
            grad_logvar = grad * half_expm1_ratio
        else:
            grad_mu = grad * mu
            grad_logvar = 0.5 * grad * _expm1(logvar)
        tl.store(grad_mu_ptr + offsets, grad_mu.to(grad_mu_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_logvar_ptr + offsets, grad_logvar.to(grad_logvar_ptr.dtype.element_ty), mask=mask)


# --- gaussian_log_prob -----------------------------------------------------------------------------


@triton.jit(do_not_specialize=["n_rows", "dim"], do_not_specialize_on_alignment=["x_ptr", "mu_ptr", "logvar_ptr"])
def _gaussian_log_prob_fwd_kernel(
    x_ptr,
    mu_ptr,
    logvar_ptr,
    out_ptr,
    n_rows,
    dim,
    HAS_MU: tl.constexpr,
    HAS_LOGVAR: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Row ``-0.5 sum(log 2pi + logvar + (x - mu)^2 e^-logvar)``; mu, logvar = 0 without HAS_MU, HAS_LOGVAR.

    Grid: (row blocks,).
    """
    dim, start, local, rows, row_mask = _row_block(n_rows, dim, ALIGNED, BLOCK_R)
    x_ptr = _block_base(x_ptr, start, ALIGNED)
    mu_ptr = _block_base(mu_ptr, start, ALIGNED)
    logvar_ptr = _block_base(logvar_ptr, start, ALIGNED)
    total = tl.zeros((BLOCK_R,), dtype=tl.float32)
    if x_ptr.dtype.element_ty == tl.float64:
        total = total.to(tl.float64)
    for d0 in range(0, dim, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (cols < dim)[None, :]
        offsets = local[:, None] * dim + cols[None, :]
        diff = _widen(tl.load(x_ptr + offsets, mask=mask, other=0.0))
        if HAS_MU:
            diff -= _widen(tl.load(mu_ptr + offsets, mask=mask, other=0.0))
        terms = diff * diff
        if HAS_LOGVAR:
            logvar = _widen(tl.load(logvar_ptr + offsets, mask=mask, other=0.0))
            terms = terms * tl.exp(-logvar) + logvar
        total += tl.sum(tl.where(mask, terms + _LOG_2PI, 0.0), axis=1)
    tl.store(out_ptr + rows, (-0.5 * total).to(out_ptr.dtype.element_ty), mask=row_mask)


@triton.jit(
    do_not_specialize=["n_rows", "dim", "stride_g"],
    # grad is read through its (run-time) stride: its alignment buys nothing.
    do_not_specialize_on_alignment=[
        "grad_ptr", "x_ptr", "mu_ptr", "logvar_ptr", "grad_x_ptr", "grad_mu_ptr", "grad_logvar_ptr"
    ],
)
def _gaussian_log_prob_bwd_kernel(
    grad_ptr,
    x_ptr,
    mu_ptr,
    logvar_ptr,
    grad_x_ptr,
    grad_mu_ptr,
    grad_logvar_ptr,
    n_rows,
    dim,
    stride_g,
    HAS_MU: tl.constexpr,
    HAS_LOGVAR: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Gradients of :func:`_gaussian_log_prob_fwd_kernel` for x, and mu / logvar where given.

    ``grad`` has row stride ``stride_g``. Grid: (row blocks, D tiles).
    """
    dim, start, local, rows, row_mask = _row_block(n_rows, dim, ALIGNED, BLOCK_R)
    x_ptr = _block_base(x_ptr, start, ALIGNED)
    mu_ptr = _block_base(mu_ptr, start, ALIGNED)
    logvar_ptr = _block_base(logvar_ptr, start, ALIGNED)
    grad_x_ptr = _block_base(grad_x_ptr, start, ALIGNED)
    grad_mu_ptr = _block_base(grad_mu_ptr, start, ALIGNED)
    grad_logvar_ptr = _block_base(grad_logvar_ptr, start, ALIGNED)
    grad = _widen(tl.load(grad_ptr + rows * stride_g, mask=row_mask, other=0.0))[:, None]
    for d0 in range(tl.program_id(1) * BLOCK_D, dim, tl.num_programs(1) * BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (cols < dim)[None, :]
        offsets = local[:, None] * dim + cols[None, :]
        diff = _widen(tl.load(x_ptr + offsets, mask=mask, other=0.0))
        if HAS_MU:
            diff -= _widen(tl.load(mu_ptr + offsets, mask=mask, other=0.0))
        scaled_diff = diff
        if HAS_LOGVAR:
            scaled_diff = diff * tl.exp(-_widen(tl.load(logvar_ptr + offsets, mask=mask, other=0.0)))
            grad_logvar = 0.5 * grad * (scaled_diff * diff - 1.0)
            tl.store(grad_logvar_ptr + offsets, grad_logvar.to(grad_logvar_ptr.dtype.element_ty), mask=mask)
        grad_mu = grad * scaled_diff
        tl.store(grad_x_ptr + offsets, (-grad_mu).to(grad_x_ptr.dtype.element_ty), mask=mask)
        if HAS_MU:
            tl.store(grad_mu_ptr + offsets, grad_mu.to(grad_mu_ptr.dtype.element_ty), mask=mask)


# --- launch heuristic ------------------------------------------------------------------------------

#: Tile widths along D the heuristic picks from: the row length rounded up to a power of two, at
#: least 16 (four Philox groups) and at most 256 (longer rows take several tiles).
BLOCK_DS: tuple[int, ...] = (16, 32, 64, 128, 256)
#: Elements per program (BLOCK_R * BLOCK_D): 8 per thread at NUM_WARPS = 4, 4 in float64. Larger
#: tiles spill registers where D is not a multiple of 16 (scalar loads, a 64-bit pointer per element).
_TILE: dict[torch.dtype, int] = {torch.float64: 512}
_TILE_DEFAULT = 1024
NUM_WARPS = 4
#: CUDA's limit on the second grid axis; programs stride over D beyond it.
_MAX_GRID_Y = 65535


def _blocks(dim: int, dtype: torch.dtype) -> tuple[int, int]:
    """``(BLOCK_R, BLOCK_D)`` for rows of ``dim`` elements of ``dtype``."""
    block_d = min(max(triton.next_power_of_2(dim), BLOCK_DS[0]), BLOCK_DS[-1])
    return _TILE.get(dtype, _TILE_DEFAULT) // block_d, block_d


def _seed_words(seed: int) -> tuple[int, int]:
    """``seed`` (in ``[0, 2**63)``) as its low and high 32-bit words, each read as a signed int32.

    Passed this way every seed launches the same JIT variant: a seed below 2**31 would otherwise
    be an i32 argument and a larger one an i64, two compiles of each sampling kernel.
    """
    lo, hi = seed & 0xFFFFFFFF, seed >> 32
    return lo - (lo >> 31 << 32), hi - (hi >> 31 << 32)


def _prior_rows(mu_p: torch.Tensor, logvar_p: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], bool]:
    """The prior as the kernels read it, and whether it is one shared row.

    The op passes a prior that does not vary across rows as ``(R, D)`` views of one row (row stride
    0); the kernels read that row in place. A prior that varies (or only one of the two shared) is
    made contiguous.
    """
    if mu_p.stride() == (0, 1) and logvar_p.stride() == (0, 1):
        return (mu_p, logvar_p), True
    return (mu_p.contiguous(), logvar_p.contiguous()), False


def _row_grid(n_rows: int, block_r: int) -> tuple[int]:
    """One program per ``block_r`` rows, for the row-sum kernels."""
    return (triton.cdiv(n_rows, block_r),)


def _tile_grid(n_rows: int, dim: int, block_r: int, block_d: int) -> tuple[int, int]:
    """Programs over (row blocks, D tiles), for the element-wise kernels."""
    return (triton.cdiv(n_rows, block_r), min(triton.cdiv(dim, block_d), _MAX_GRID_Y))


# --- host functions --------------------------------------------------------------------------------


@on_input_device
def reparameterize_fwd(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None, seed: int) -> torch.Tensor:
    """``z = mu + exp(logvar / 2) * eps``, eps from the stream of ``seed`` when None. (R, D) -> (R, D)."""
    n_rows, dim = mu.shape
    z, launch = plan.reparameterize_fwd(mu)
    if not launch:
        return z
    block_r, block_d = _blocks(dim, mu.dtype)
    _reparameterize_fwd_kernel[_tile_grid(n_rows, dim, block_r, block_d)](
        mu, logvar, mu if eps is None else eps, z, z, n_rows, dim, *_seed_words(seed),
        HAS_EPS=eps is not None, HAS_KL=False, ALIGNED=aligned_rows(dim, mu, logvar, z, *([] if eps is None else [eps])),
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )  # fmt: skip
    return z


@on_input_device
def reparameterize_bwd(grad_z: torch.Tensor, logvar: torch.Tensor, seed: int) -> torch.Tensor:
    """Gradient of :func:`reparameterize_fwd` (stream noise) for logvar: ``g * exp(logvar/2) * eps / 2``."""
    n_rows, dim = logvar.shape
    grad_logvar, launch = plan.reparameterize_bwd(logvar)
    if not launch:
        return grad_logvar
    block_r, block_d = _blocks(dim, logvar.dtype)
    _reparameterize_bwd_kernel[_tile_grid(n_rows, dim, block_r, block_d)](
        grad_z, grad_z, logvar, logvar, grad_logvar, grad_logvar, n_rows, dim, *_seed_words(seed), *grad_z.stride(), 0,
        HAS_KL=False, ALIGNED=aligned_rows(dim, logvar, grad_logvar), BLOCK_R=block_r, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )  # fmt: skip
    return grad_logvar


@on_input_device
def reparameterize_kl_fwd(
    mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`reparameterize_fwd` and the per-row KL to N(0, I) in one pass. (R, D) -> ((R, D), (R,))."""
    n_rows, dim = mu.shape
    (z, kl), launch = plan.reparameterize_kl_fwd(mu)
    if not launch:
        return z, kl
    block_r, block_d = _blocks(dim, mu.dtype)
    _reparameterize_fwd_kernel[(triton.cdiv(n_rows, block_r), 1)](
        mu, logvar, mu if eps is None else eps, z, kl, n_rows, dim, *_seed_words(seed),
        HAS_EPS=eps is not None, HAS_KL=True, ALIGNED=aligned_rows(dim, mu, logvar, z, *([] if eps is None else [eps])),
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )  # fmt: skip
    return z, kl


@on_input_device
def reparameterize_kl_bwd(
    grad_z: torch.Tensor, grad_kl: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, seed: int
) -> list[torch.Tensor]:
    """Gradients ``[d mu, d logvar]`` of :func:`reparameterize_kl_fwd` with stream noise."""
    n_rows, dim = mu.shape
    (grad_mu, grad_logvar), launch = plan.reparameterize_kl_bwd(mu)
    if not launch:
        return [grad_mu, grad_logvar]
    block_r, block_d = _blocks(dim, mu.dtype)
    _reparameterize_bwd_kernel[_tile_grid(n_rows, dim, block_r, block_d)](
        grad_z, grad_kl, mu, logvar, grad_mu, grad_logvar, n_rows, dim, *_seed_words(seed), *grad_z.stride(), grad_kl.stride(0),
        HAS_KL=True, ALIGNED=aligned_rows(dim, mu, logvar, grad_mu, grad_logvar), BLOCK_R=block_r, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )  # fmt: skip
    return [grad_mu, grad_logvar]


@on_input_device
def gaussian_kl_fwd(
    mu: torch.Tensor, logvar: torch.Tensor, mu_p: torch.Tensor | None, logvar_p: torch.Tensor | None
) -> torch.Tensor:
    """Per-row KL to ``N(mu_p, e^logvar_p)``, or to N(0, I) when the prior is None. (R, D) -> (R,)."""
    n_rows, dim = mu.shape
    kl, launch = plan.gaussian_kl_fwd(mu)
    if not launch:
        return kl
    has_prior = mu_p is not None and logvar_p is not None
    (mu_p, logvar_p), shared = _prior_rows(mu_p, logvar_p) if has_prior else ((mu, logvar), False)
    block_r, block_d = _blocks(dim, mu.dtype)
    _gaussian_kl_fwd_kernel[_row_grid(n_rows, block_r)](
        mu, logvar, mu_p, logvar_p, kl, n_rows, dim, HAS_PRIOR=has_prior, SHARED_PRIOR=shared,
        ALIGNED=aligned_rows(dim, mu, logvar, *((mu_p, logvar_p) if has_prior and not shared else ())),
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )  # fmt: skip
    return kl


@on_input_device
def gaussian_kl_bwd(
    grad: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    mu_p: torch.Tensor | None,
    logvar_p: torch.Tensor | None,
) -> list[torch.Tensor]:
    """Gradients of :func:`gaussian_kl_fwd`: ``[d mu, d logvar]``, plus ``[d mu_p, d logvar_p]`` with a prior."""
    n_rows, dim = mu.shape
    has_prior = mu_p is not None and logvar_p is not None
    grads, launch = plan.gaussian_kl_bwd(mu, has_prior)
    if not launch:
        return grads
    prior, shared = _prior_rows(mu_p, logvar_p) if has_prior else ((mu, logvar), False)
    prior_grads = grads[2:] if has_prior else grads
    block_r, block_d = _blocks(dim, mu.dtype)
    _gaussian_kl_bwd_kernel[_tile_grid(n_rows, dim, block_r, block_d)](
        grad, mu, logvar, *prior, *grads[:2], *prior_grads, n_rows, dim, grad.stride(0),
        HAS_PRIOR=has_prior, SHARED_PRIOR=shared, ALIGNED=aligned_rows(dim, mu, logvar, *(() if shared else prior), *grads),
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )  # fmt: skip
    return grads


@on_input_device
def gaussian_log_prob_fwd(x: torch.Tensor, mu: torch.Tensor | None, logvar: torch.Tensor | None) -> torch.Tensor:
    """Per-row ``log N(x; mu, e^logvar)`` summed over D; mu = 0 and logvar = 0 where None. (R, D) -> (R,)."""
    n_rows, dim = x.shape
    out, launch = plan.gaussian_log_prob_fwd(x)
    if not launch:
        return out
    block_r, block_d = _blocks(dim, x.dtype)
    _gaussian_log_prob_fwd_kernel[_row_grid(n_rows, block_r)](
        x, x if mu is None else mu, x if logvar is None else logvar, out, n_rows, dim,
        HAS_MU=mu is not None, HAS_LOGVAR=logvar is not None,
        ALIGNED=aligned_rows(dim, x, *(t for t in (mu, logvar) if t is not None)), BLOCK_R=block_r, BLOCK_D=block_d,
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return out


@on_input_device
def gaussian_log_prob_bwd(
    grad: torch.Tensor, x: torch.Tensor, mu: torch.Tensor | None, logvar: torch.Tensor | None
) -> list[torch.Tensor]:
    """Gradients of :func:`gaussian_log_prob_fwd`: ``[d x]``, then ``d mu`` if mu is given, then ``d logvar``."""
    n_rows, dim = x.shape
    (grad_x, grad_mu, grad_logvar), launch = plan.gaussian_log_prob_bwd(x, mu is not None, logvar is not None)
    grads = [t for t in (grad_x, grad_mu, grad_logvar) if t is not None]
    if not launch:
        return grads
    block_r, block_d = _blocks(dim, x.dtype)
    _gaussian_log_prob_bwd_kernel[_tile_grid(n_rows, dim, block_r, block_d)](
        grad, x, x if mu is None else mu, x if logvar is None else logvar,
        grad_x, grad_x if grad_mu is None else grad_mu, grad_x if grad_logvar is None else grad_logvar, n_rows, dim,
        grad.stride(0), HAS_MU=mu is not None, HAS_LOGVAR=logvar is not None,
        ALIGNED=aligned_rows(dim, x, *(t for t in (mu, logvar) if t is not None), *grads), BLOCK_R=block_r, BLOCK_D=block_d,
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return grads


# --- ahead-of-time compile check -------------------------------------------------------------------

#: Every feature combination of each kernel; the first is the heaviest (most registers).
_VARIANTS: dict[object, list[dict[str, bool]]] = {
    _reparameterize_fwd_kernel: [
        {"HAS_EPS": False, "HAS_KL": True},
        {"HAS_EPS": True, "HAS_KL": True},
        {"HAS_EPS": False, "HAS_KL": False},
        {"HAS_EPS": True, "HAS_KL": False},
    ],
    _reparameterize_bwd_kernel: [{"HAS_KL": True}, {"HAS_KL": False}],
    _gaussian_kl_fwd_kernel: [
        {"HAS_PRIOR": True, "SHARED_PRIOR": False},
        {"HAS_PRIOR": True, "SHARED_PRIOR": True},
        {"HAS_PRIOR": False, "SHARED_PRIOR": False},
    ],
    _gaussian_kl_bwd_kernel: [
        {"HAS_PRIOR": True, "SHARED_PRIOR": False},
        {"HAS_PRIOR": True, "SHARED_PRIOR": True},
        {"HAS_PRIOR": False, "SHARED_PRIOR": False},
    ],
    _gaussian_log_prob_fwd_kernel: [
        {"HAS_MU": True, "HAS_LOGVAR": True},
        {"HAS_MU": False, "HAS_LOGVAR": True},
        {"HAS_MU": True, "HAS_LOGVAR": False},
        {"HAS_MU": False, "HAS_LOGVAR": False},
    ],
    _gaussian_log_prob_bwd_kernel: [
        {"HAS_MU": True, "HAS_LOGVAR": True},
        {"HAS_MU": False, "HAS_LOGVAR": True},
        {"HAS_MU": True, "HAS_LOGVAR": False},
        {"HAS_MU": False, "HAS_LOGVAR": False},
    ],
}


def _config(kernel, pointer: str, constexprs: dict[str, object]) -> AotConfig:
    """``kernel`` launched on ``pointer``-typed tensors (``dim`` and the seed words i32, other integers
    i64) with ``constexprs``."""

    def kind(name: str) -> str:
        if name in constexprs:
            return "constexpr"
        if name.endswith("_ptr"):
            return pointer
        return "i32" if name in ("dim", "seed_lo", "seed_hi") else "i64"

    signature = {name: kind(name) for name in inspect.signature(kernel.fn).parameters}
    return AotConfig(kernel, signature, constexprs, num_warps=NUM_WARPS)


def _tiles(dtype: torch.dtype) -> list[tuple[int, int]]:
    """Every ``(BLOCK_R, BLOCK_D)`` :func:`_blocks` picks for ``dtype`` at some D in ``aot.SIZES``, narrowest first."""
    return sorted({_blocks(dim, dtype) for dim in aot.SIZES}, key=lambda tile: tile[1])


def _aot_configs() -> list[AotConfig]:
    """Each kernel's heaviest variant at every tile the heuristic picks, for float32, bfloat16 and
    float16 tensors; its other variants once, at the narrowest float32 tile (the most registers per
    element)."""
    configs = []
    for kernel, variants in _VARIANTS.items():
        for pointer, dtype in (("*fp32", torch.float32), ("*bf16", torch.bfloat16), ("*fp16", torch.float16)):
            for block_r, block_d in _tiles(dtype):
                configs.append(_config(kernel, pointer, dict(variants[0], ALIGNED=True, BLOCK_R=block_r, BLOCK_D=block_d)))
        block_r, block_d = _tiles(torch.float32)[0]
        for variant in variants[1:]:
            configs.append(_config(kernel, "*fp32", dict(variant, ALIGNED=True, BLOCK_R=block_r, BLOCK_D=block_d)))
    return configs


#: The launch configurations the host functions above can choose (see fastvae.kernels.aot).
AOT_CONFIGS: list[AotConfig] = _aot_configs()
