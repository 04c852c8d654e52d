"""Triton kernels of the Gaussian ops: reparameterised sampling (with its KL), KL divergence, log-density.

Every kernel works on the canonical contiguous ``(R, D)`` layout of :mod:`fastvae.ops.gaussian`,
except that the incoming gradients of backward passes may have any strides (autograd hands over
expanded gradients for summed outputs), which the kernels read in place. A program owns ``BLOCK_R``
whole rows and walks along ``D`` in ``BLOCK_D``-wide tiles (coalesced loads, vectorised where ``D``
is a multiple of 16); the row-sum kernels loop over all of ``D`` in one program, the element-wise
ones take a second grid axis of ``D`` tiles. Row sums accumulate per element in the loop and reduce
across threads once, after it: no barrier in a loop. Arithmetic runs in float32 (float64 for float64
inputs) and results are stored in the input dtype, as :mod:`fastvae.reference.gaussian` computes
them; ``e^x - 1`` stays accurate near 0 (:func:`_exp_excess`, :func:`_expm1_from`).

The noise is the stream of :mod:`fastvae.reference.philox`: element ``(r, d)`` is lane ``d % 4`` of
Philox4x32-10 of the counter ``(d // 4, r mod 2**32, r div 2**32, 0)`` under the seed's two words,
through Box-Muller in float32. The sampling kernels tile rows as chunks of ``VEC`` columns (16 bytes,
at least one Philox call: :func:`_chunks`) that a thread holds whole: it makes one Philox call per
four elements and takes each element's lane by a select that compiles away. Backward passes
regenerate the noise from the seed. Box-Muller runs on the hardware's approximate log2, sine, cosine
and square root (under the interpreter, which cannot call them, numpy's functions stand in:
:func:`_radius`, :func:`_cos_sin_2pi`): the noise then differs from the float64 stream by at most
``NOISE_ATOL`` of ``tests/tolerances.py`` (8e-6, absolute; derived there), where the float32 stream
of :func:`~fastvae.reference.philox.normal_stream` differs by up to 1.4e-6.

Outputs are allocated, and empty inputs decided, by :mod:`fastvae.plan.gaussian`, which the cuda and
cpu backends share: empty inputs launch nothing, and a row sum over ``D = 0`` is zero.
"""

from __future__ import annotations

import inspect
import math

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import libdevice

from fastvae.kernels import _block_base, _row_length, aligned_rows, aot, on_input_device
from fastvae.kernels.aot import AotConfig
from fastvae.plan import gaussian as plan

_LOG_2PI = tl.constexpr(math.log(2.0 * math.pi))
_TWO_PI = tl.constexpr(2.0 * math.pi)
_LOG2E = tl.constexpr(1.0 / math.log(2.0))
_TWO_LN2 = tl.constexpr(2.0 * math.log(2.0))
#: Whether Triton runs these kernels in its interpreter (it decides when ``triton.jit`` wraps them, from
#: TRITON_INTERPRET): there numpy's log2, sin and cos stand in for the hardware's approximate ones,
#: which the interpreter cannot call.
_INTERPRETED = tl.constexpr(bool(triton.knobs.runtime.interpret))

#: Below this ``1 - u``, :func:`_radius` takes ``-2 ln u`` from a series, not the approximate log2.
_NEAR_ONE = tl.constexpr(2.0**-5)

# Philox4x32-10 (Salmon et al., SC'11): round multipliers and key increments.
_PHILOX_M0 = tl.constexpr(0xD2511F53)
_PHILOX_M1 = tl.constexpr(0xCD9E8D57)
_PHILOX_W0 = tl.constexpr(0x9E3779B9)
_PHILOX_W1 = tl.constexpr(0xBB67AE85)

# (e^x - 1 - x) / x^2 on |x| <= 1/2: the minimax polynomial of degree 4 for the relative error, which
# is 7.8e-7 there (Remez in 40-digit arithmetic).
_EXCESS_C0 = tl.constexpr(0.49999995973705597)
_EXCESS_C1 = tl.constexpr(0.16666280115022364)
_EXCESS_C2 = tl.constexpr(0.04166747685011223)
_EXCESS_C3 = tl.constexpr(0.008395411035583862)
_EXCESS_C4 = tl.constexpr(0.001391465327715826)


# --- helpers shared by the kernels -----------------------------------------------------------------


@triton.jit
def _widen(x):
    """``x`` in its compute dtype: float64 stays float64, every other dtype becomes float32.

    bfloat16 is the top half of a float32, widened as the bits ``x << 16``: of a pair of bfloat16 in
    one 32-bit register, the high one is then a single AND (a conversion instruction takes two).
    """
    if x.dtype == tl.bfloat16:
        x = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    elif x.dtype != tl.float64:
        x = x.to(tl.float32)
    return x


@triton.jit
def _exp(x, scale: tl.constexpr = 1.0):
    """``e^(scale x)``: float32 as ``2^(x (scale log2 e))`` on the hardware's ``ex2.approx.ftz``
    (relative error 2**-22, plus the rounding of the exponent; results below 2**-126 flush to 0),
    float64 by libdevice's exp."""
    if x.dtype == tl.float64:
        y = tl.exp(x * scale)
    else:
        y = tl.exp2(x * (scale * _LOG2E))
    return y


@triton.jit
def _expm1_f64(x):
    """``e^x - 1`` in float64 without cancellation near 0: for ``|x| < 1/2`` the Taylor series
    ``x (1 + x/2 (1 + x/3 (1 + ... (1 + x/15))))``, whose truncation error relative to the result,
    ``|x|^15 / 16!``, is below 1.5e-18 there; elsewhere ``exp(x) - 1``, where ``e^x / |e^x - 1| <= 2.6``
    bounds how much the subtraction magnifies the error of ``exp``.
    """
    N: tl.constexpr = 15
    series = 1.0 + x * (1.0 / N)
    for i in tl.static_range(1, N - 1):
        series = 1.0 + x * (1.0 / (N - i)) * series
    return tl.where(tl.abs(x) < 0.5, x * series, tl.exp(x) - 1.0)


@triton.jit
def _excess_ratio(x):
    """``(e^x - 1 - x) / x^2`` for float32 ``|x| <= 1/2``, relative error 7.8e-7 (four FMAs)."""
    q = tl.fma(x, _EXCESS_C4, _EXCESS_C3)
    q = tl.fma(x, q, _EXCESS_C2)
    q = tl.fma(x, q, _EXCESS_C1)
    return tl.fma(x, q, _EXCESS_C0)


@triton.jit
def _exp_excess(x, exp_x):
    """``e^x - 1 - x`` without cancellation near 0, given ``exp_x`` = :func:`_exp` of ``x``.

    float32: ``x^2 (e^x - 1 - x) / x^2`` by :func:`_excess_ratio` where ``|x| < 1/2``, else
    ``(exp_x - 1) - x``, whose error is that of ``exp_x`` (relative 2**-22) magnified by at most
    ``e^x / (e^x - 1 - x) <= 11.1`` (at ``x = 1/2``): relative error below 3e-6 everywhere, as
    ``expm1(x) - x`` with a Taylor series for ``expm1`` on ``|x| < 1/2`` gives. float64:
    :func:`_expm1_f64` less ``x``.
    """
    if x.dtype == tl.float64:
        excess = _expm1_f64(x) - x
    else:
        excess = tl.where(tl.abs(x) < 0.5, x * x * _excess_ratio(x), (exp_x - 1.0) - x)
    return excess


@triton.jit
def _expm1_from(x, exp_x):
    """``e^x - 1`` without cancellation near 0, given ``exp_x`` = :func:`_exp` of ``x``.

    float32: ``x + x^2 (e^x - 1 - x) / x^2`` where ``|x| < 1/2``, else ``exp_x - 1`` (relative error
    below 7e-7 everywhere: the subtraction magnifies that of ``exp_x`` by at most 2.6); float64:
    :func:`_expm1_f64`.
    """
    if x.dtype == tl.float64:
        result = _expm1_f64(x)
    else:
        result = tl.where(tl.abs(x) < 0.5, tl.fma(x * x, _excess_ratio(x), x), exp_x - 1.0)
    return result


@triton.jit
def _kl_standard_terms(mu, logvar, exp_logvar):
    """``mu^2 + e^logvar - 1 - logvar``, the per-element KL to N(0, 1) times two (``exp_logvar`` =
    :func:`_exp` of ``logvar``)."""
    return tl.fma(mu, mu, _exp_excess(logvar, exp_logvar))


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
def _prior_offsets(offsets, cols, start, SHARED_PRIOR: tl.constexpr):
    """Where a block's prior elements are, from the prior pointer advanced by ``start`` as every other
    row pointer is (:func:`~fastvae.kernels._block_base`: its ALIGNED hint, lost on a bare kernel
    argument, is what makes the loads 16-byte vectors): ``offsets`` for a per-row prior, column
    ``cols`` of the one shared row in every row with SHARED_PRIOR, that is ``cols - start``."""
    if SHARED_PRIOR:
        offsets = tl.broadcast_to(cols[None, :] - start, offsets.shape).to(offsets.dtype)
    return offsets


# --- the noise stream ------------------------------------------------------------------------------


@triton.jit
def _log2_approx(x):
    """``log2 x`` by the hardware's ``lg2.approx.ftz.f32`` (absolute error at most 2**-22 on
    [1/2, 2], 2 ulp elsewhere); numpy's log2 under the interpreter."""
    if _INTERPRETED:
        y = tl.log2(x)
    else:
        y = libdevice.fast_log2f(x)
    return y


@triton.jit
def _philox(c0, c1, c2, k0, k1):
    """Philox4x32-10 of the counter ``(c0, c1, c2, 0)`` (uint32 tensors of one shape) under the key
    ``(k0, k1)`` (uint32 scalars): the four output words, as ``tl.philox`` gives them.

    Each round's two 32 x 32 -> 64-bit products are one widening multiply each (a single
    ``IMAD.WIDE.U32`` for both halves), where ``tl.philox`` forms the high and low words apart.
    """
    c3 = tl.zeros_like(c0)
    for _ in tl.static_range(10):
        product0 = c0.to(tl.uint64) * _PHILOX_M0
        product1 = c2.to(tl.uint64) * _PHILOX_M1
        c0 = (product1 >> 32).to(tl.uint32) ^ c1 ^ k0
        c2 = (product0 >> 32).to(tl.uint32) ^ c3 ^ k1
        c1 = product1.to(tl.uint32)
        c3 = product0.to(tl.uint32)
        k0 = tl.add(k0, _PHILOX_W0, sanitize_overflow=False)
        k1 = tl.add(k1, _PHILOX_W1, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def _mantissa(word):
    """``1 + (word >> 9) 2**-23``: the word's top 23 bits as the mantissa of a float32 in [1, 2)."""
    return ((word >> 9) | 0x3F800000).to(tl.float32, bitcast=True)


@triton.jit
def _radius(word, SCALE: tl.constexpr):
    """``SCALE sqrt(-2 ln u)`` for the stream's uniform ``u = ((word >> 9) + 1/2) 2**-23`` of a Philox
    word, ``SCALE`` a power of two.

    ``u`` is :func:`_mantissa` less ``1 - 2**-24``, and ``v = 1 - u``, both exact (multiples of 2**-24
    below 1). ``-2 ln u`` is ``-2 ln 2 log2 u`` by :func:`_log2_approx`, except where
    ``v < _NEAR_ONE = 2**-5``: there the absolute error 2**-22 of the approximate log2 would be a
    large part of ``-2 ln u`` (as small as 1.2e-7), and the series ``2v + v^2 + 2v^3/3 + v^4/2``
    (truncation below 2e-7 of the result) takes its place. The square root is ``sqrt.approx``, of
    ``SCALE^2 (-2 ln u)``: the scale rides on the constants, exactly.
    """
    SQUARE: tl.constexpr = SCALE * SCALE
    u = _mantissa(word) - 0.99999994039535522
    v = 1.0 - u
    near_one = v * tl.fma(v, tl.fma(v, tl.fma(v, 0.5 * SQUARE, 0.6666666666666666 * SQUARE), SQUARE), 2.0 * SQUARE)
    return tl.sqrt(tl.where(v < _NEAR_ONE, near_one, (-SQUARE * _TWO_LN2) * _log2_approx(u)))


@triton.jit
def _cos_sin_2pi(word):
    """``(cos 2 pi u, sin 2 pi u)`` for the stream's uniform ``u`` of a Philox word.

    On the GPU ``2 pi u = a + pi`` with ``a = 2 pi (u - 1/2)`` in ``(-pi, pi)``, the range where
    cos/sin.approx.f32 err by at most 2**-20.9: ``cos 2 pi u = -cos a`` and ``sin 2 pi u = -sin a``.
    ``u - 1/2`` is :func:`_mantissa` less 3/2 (exact) plus 2**-24, which the one rounding of ``a``
    absorbs. Under the interpreter numpy's cos and sin take ``2 pi u`` rounded to float32 as
    :func:`~fastvae.reference.philox.normal_stream` rounds it, so that sampled outputs agree with that
    float32 stream to float32's relative tolerance, as the CPU suite checks: accurate functions of
    the same float32 angle agree to an ulp or two even where cos or sin is near 0 (and a large
    ``e^(logvar/2)`` multiplies the noise), which an absolute error, however small, does not give.
    """
    if _INTERPRETED:
        a = _TWO_PI * (_mantissa(word) - 0.99999994039535522)
        cos_a = tl.cos(a)
        sin_a = tl.sin(a)
    else:
        a = tl.fma(_mantissa(word) - 1.5, _TWO_PI, _TWO_PI * 5.9604644775390625e-08)
        cos_a = -libdevice.fast_cosf(a)
        sin_a = -libdevice.fast_sinf(a)
    return cos_a, sin_a


@triton.jit
def _group_normals(c0, c1, c2, k0, k1, lane, SCALE: tl.constexpr):
    """``SCALE`` times normal ``n_lane`` of Philox call ``(c0, c1, c2, 0)`` under ``(k0, k1)``: the
    counters are ``(M,)`` uint32 tensors and ``lane`` (values 0..3) a ``(1, V)`` tensor, the result
    ``(M, V)`` float32, ``[m, i]`` lane ``lane[i]`` of call ``m``.

    Box-Muller on both pairs: ``n0, n1 = r01 (cos, sin)(2 pi u1)`` and ``n2, n3 = r23 (cos, sin)(2 pi u3)``
    with ``r01``/``r23`` the :func:`_radius` of words 0 and 2. A thread holds all ``V`` lanes of its
    chunks (:func:`_chunks`), so ``lane`` is a constant of each register and the selects fold away:
    no lane is moved between threads.
    """
    w0, w1, w2, w3 = _philox(c0, c1, c2, k0, k1)
    cos1, sin1 = _cos_sin_2pi(w1)
    cos3, sin3 = _cos_sin_2pi(w3)
    radius = tl.where(lane < 2, _radius(w0, SCALE)[:, None], _radius(w2, SCALE)[:, None])
    first = tl.where(lane == 0, cos1[:, None], sin1[:, None])
    second = tl.where(lane == 2, cos3[:, None], sin3[:, None])
    return radius * tl.where(lane < 2, first, second)


@triton.jit
def _normals(seed_lo, seed_hi, rows, cols, VEC: tl.constexpr, SCALE: tl.constexpr):
    """``SCALE`` (a power of two) times the stream's normals of a chunk tile (:func:`_chunks`): ``rows``
    (int64, ``(M,)``) the chunks' rows and ``cols`` (``(M,)``) their first columns, a multiple of
    ``VEC``, itself a multiple of 4. Returns float32 ``(M, VEC)``, ``[m, i]`` column ``cols[m] + i``.

    ``seed_lo`` and ``seed_hi`` are the seed's low and high 32-bit words as int32 (see
    :func:`_seed_words`). Column ``d`` is lane ``d % 4`` of Philox call ``d // 4``: a chunk is
    ``VEC / 4`` whole calls, each made once.
    """
    k0 = seed_lo.to(tl.uint32, bitcast=True)
    k1 = seed_hi.to(tl.uint32, bitcast=True)
    chunk = tl.arange(0, VEC)[None, :]
    group = (cols // 4).to(tl.uint32)
    c1 = (rows & 0xFFFFFFFF).to(tl.uint32)
    c2 = (rows >> 32).to(tl.uint32)
    normals = _group_normals(group, c1, c2, k0, k1, chunk % 4, SCALE)
    for h in tl.static_range(1, VEC // 4):
        normals = tl.where(chunk // 4 == h, _group_normals(group + h, c1, c2, k0, k1, chunk % 4, SCALE), normals)
    return normals


@triton.jit
def _chunks(n_rows, dim, ALIGNED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, VEC: tl.constexpr):
    """This program's ``BLOCK_R`` rows as ``M = BLOCK_R * BLOCK_D / VEC`` chunks of ``VEC`` columns of
    a ``BLOCK_D`` tile: ``(dim, start, local, rows, row_mask, first)``, all but the first two ``(M,)``.

    Chunk ``m`` is columns ``first[m] .. first[m] + VEC`` (from the tile's start) of local row
    ``local[m]`` (global ``rows[m]``, int64). Tiles are ``(M, VEC)``: the columns of a chunk are the
    only contiguous axis, so Triton gives each thread whole chunks (16-byte vectors of aligned rows,
    and whole Philox calls), and neighbouring threads neighbouring chunks of a row.
    """
    J: tl.constexpr = BLOCK_D // VEC
    dim = _row_length(dim, ALIGNED)
    row_start = tl.program_id(0).to(tl.int64) * BLOCK_R
    m = tl.arange(0, BLOCK_R * J)
    local = (m // J).to(tl.int64)
    rows = row_start + local
    return dim, row_start * dim, local, rows, rows < n_rows, (m % J) * VEC


@triton.jit
def _chunk_tile(local, row_mask, first, dim, d0, VEC: tl.constexpr):
    """The ``(M, VEC)`` tile of columns ``d0 + first[m] + i`` of local rows ``local[m]`` (:func:`_chunks`):
    ``(cols, mask, offsets)``."""
    cols = d0 + first[:, None] + tl.arange(0, VEC)[None, :]
    mask = row_mask[:, None] & (cols < dim)
    return cols, mask, local[:, None] * dim + cols


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
    VEC: tl.constexpr,
):
    """``z = mu + e^(logvar/2) * eps`` (eps from the stream unless HAS_EPS) and, with HAS_KL, the row KL.

    Tiles are chunks of ``VEC`` columns (:func:`_chunks`). Grid: (row blocks, D tiles); each program
    strides over D by the second grid axis, which is 1 with HAS_KL so that one program sums a whole
    row: per element into a tile of partial sums, reduced across threads once, after the loop.
    """
    dim, start, local, rows, row_mask, first = _chunks(n_rows, dim, ALIGNED, BLOCK_R, BLOCK_D, VEC)
    mu_ptr = _block_base(mu_ptr, start, ALIGNED)
    logvar_ptr = _block_base(logvar_ptr, start, ALIGNED)
    eps_ptr = _block_base(eps_ptr, start, ALIGNED)
    z_ptr = _block_base(z_ptr, start, ALIGNED)
    kl = tl.zeros((BLOCK_R * (BLOCK_D // VEC), VEC), dtype=tl.float32)
    if mu_ptr.dtype.element_ty == tl.float64:
        kl = kl.to(tl.float64)
    for d0 in range(tl.program_id(1) * BLOCK_D, dim, tl.num_programs(1) * BLOCK_D):
        _, mask, offsets = _chunk_tile(local, row_mask, first, dim, d0, VEC)
        mu = _widen(tl.load(mu_ptr + offsets, mask=mask, other=0.0))
        logvar = _widen(tl.load(logvar_ptr + offsets, mask=mask, other=0.0))
        if HAS_EPS:
            eps = _widen(tl.load(eps_ptr + offsets, mask=mask, other=0.0))
        else:
            eps = _normals(seed_lo, seed_hi, rows, d0 + first, VEC, 1.0).to(mu.dtype)
        z = tl.fma(_exp(logvar, 0.5), eps, mu)
        tl.store(z_ptr + offsets, z.to(z_ptr.dtype.element_ty), mask=mask)
        if HAS_KL:
            # Masked elements load mu = logvar = 0, whose term is 0.
            kl += _kl_standard_terms(mu, logvar, _exp(logvar))
    if HAS_KL:
        block_rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        kl_rows = tl.sum(tl.reshape(tl.sum(kl, axis=1), (BLOCK_R, BLOCK_D // VEC)), axis=1)
        tl.store(kl_ptr + block_rows, (0.5 * kl_rows).to(kl_ptr.dtype.element_ty), mask=block_rows < n_rows)


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
    VEC: tl.constexpr,
):
    """Gradients of :func:`_reparameterize_fwd_kernel` with stream noise, regenerated from ``seed``.

    ``d logvar = g_z e^(logvar/2) eps / 2``; with HAS_KL also ``d mu = g_z + g_kl mu`` and
    ``d logvar += g_kl (e^logvar - 1) / 2``. The incoming gradients may have any strides (autograd
    hands over expanded ones for summed outputs). Tiles as in the forward kernel (one Philox call per
    four elements). Grid: (row blocks, D tiles), striding over D.
    """
    dim, start, local, rows, row_mask, first = _chunks(n_rows, dim, ALIGNED, BLOCK_R, BLOCK_D, VEC)
    mu_ptr = _block_base(mu_ptr, start, ALIGNED)
    logvar_ptr = _block_base(logvar_ptr, start, ALIGNED)
    grad_mu_ptr = _block_base(grad_mu_ptr, start, ALIGNED)
    grad_logvar_ptr = _block_base(grad_logvar_ptr, start, ALIGNED)
    if HAS_KL:
        grad_kl = _widen(tl.load(grad_kl_ptr + rows * stride_gkl, mask=row_mask, other=0.0))[:, None]
    for d0 in range(tl.program_id(1) * BLOCK_D, dim, tl.num_programs(1) * BLOCK_D):
        cols, mask, offsets = _chunk_tile(local, row_mask, first, dim, d0, VEC)
        grad_z_offsets = rows[:, None] * stride_gz_r + cols * stride_gz_d
        grad_z = _widen(tl.load(grad_z_ptr + grad_z_offsets, mask=mask, other=0.0))
        logvar = _widen(tl.load(logvar_ptr + offsets, mask=mask, other=0.0))
        # The factor 1/2 of d logvar rides on the noise (exactly: see _radius) and on g_kl.
        half_eps = _normals(seed_lo, seed_hi, rows, d0 + first, VEC, 0.5).to(logvar.dtype)
        std = _exp(logvar, 0.5)
        grad_logvar = grad_z * std * half_eps
        if HAS_KL:
            mu = _widen(tl.load(mu_ptr + offsets, mask=mask, other=0.0))
            tl.store(grad_mu_ptr + offsets, tl.fma(grad_kl, mu, grad_z).to(grad_mu_ptr.dtype.element_ty), mask=mask)
            grad_logvar = tl.fma(0.5 * grad_kl, _expm1_from(logvar, std * std), grad_logvar)
        tl.store(grad_logvar_ptr + offsets, grad_logvar.to(grad_logvar_ptr.dtype.element_ty), mask=mask)


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
    mu_p_ptr = _block_base(mu_p_ptr, start, ALIGNED)
    logvar_p_ptr = _block_base(logvar_p_ptr, start, ALIGNED)
    kl = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
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
            prior_offsets = _prior_offsets(offsets, cols, start, SHARED_PRIOR)
            diff = mu - _widen(tl.load(mu_p_ptr + prior_offsets, mask=mask, other=0.0))
            logvar_p = _widen(tl.load(logvar_p_ptr + prior_offsets, mask=mask, other=0.0))
            log_ratio = logvar - logvar_p
            kl += tl.fma(diff * diff, tl.exp(-logvar_p), _exp_excess(log_ratio, _exp(log_ratio)))
        else:
            kl += _kl_standard_terms(mu, logvar, _exp(logvar))
    # Per-element partial sums, reduced across threads once.
    tl.store(kl_ptr + rows, (0.5 * tl.sum(kl, axis=1)).to(kl_ptr.dtype.element_ty), mask=row_mask)


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
            prior_offsets = _prior_offsets(offsets, cols, start, SHARED_PRIOR)
            logvar_p = _widen(tl.load(logvar_p_ptr + prior_offsets, mask=mask, other=0.0))
            diff = mu - _widen(tl.load(mu_p_ptr + prior_offsets, mask=mask, other=0.0))
            scaled_diff = diff * tl.exp(-logvar_p)
            log_ratio = logvar - logvar_p
            half_expm1_ratio = 0.5 * _expm1_from(log_ratio, _exp(log_ratio))
            grad_mu = grad * scaled_diff
            grad_logvar_p = -grad * (half_expm1_ratio + 0.5 * scaled_diff * diff)
            tl.store(grad_mu_p_ptr + offsets, (-grad_mu).to(grad_mu_p_ptr.dtype.element_ty), mask=mask)
            tl.store(grad_logvar_p_ptr + offsets, grad_logvar_p.to(grad_logvar_p_ptr.dtype.element_ty), mask=mask)
            grad_logvar = grad * half_expm1_ratio
        else:
            grad_mu = grad * mu
            grad_logvar = 0.5 * grad * _expm1_from(logvar, _exp(logvar))
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
    total = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
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
        total += tl.where(mask, terms + _LOG_2PI, 0.0)
    # Per-element partial sums, reduced across threads once.
    tl.store(out_ptr + rows, (-0.5 * tl.sum(total, axis=1)).to(out_ptr.dtype.element_ty), mask=row_mask)


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


def _vec(dtype: torch.dtype) -> int:
    """VEC of the sampling kernels' tiles for ``dtype``: the elements of a 16-byte vector, and at least
    one Philox call's four."""
    return max(4, 16 // dtype.itemsize)


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
        BLOCK_R=block_r, BLOCK_D=block_d, VEC=_vec(mu.dtype), num_warps=NUM_WARPS,
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
        HAS_KL=False, ALIGNED=aligned_rows(dim, logvar, grad_logvar), BLOCK_R=block_r, BLOCK_D=block_d,
        VEC=_vec(logvar.dtype), num_warps=NUM_WARPS,
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
        BLOCK_R=block_r, BLOCK_D=block_d, VEC=_vec(mu.dtype), num_warps=NUM_WARPS,
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
        HAS_KL=True, ALIGNED=aligned_rows(dim, mu, logvar, grad_mu, grad_logvar), BLOCK_R=block_r, BLOCK_D=block_d,
        VEC=_vec(mu.dtype), num_warps=NUM_WARPS,
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
        ALIGNED=aligned_rows(dim, mu, logvar, *((mu_p, logvar_p) if has_prior else ())),
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
        HAS_PRIOR=has_prior, SHARED_PRIOR=shared, ALIGNED=aligned_rows(dim, mu, logvar, *prior, *grads),
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


#: Triton's pointer type of each dtype the AOT configurations cover.
_POINTERS = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}


def _config(kernel, dtype: torch.dtype, constexprs: dict[str, object]) -> AotConfig:
    """``kernel`` launched on ``dtype`` tensors (``dim`` and the seed words i32, other integers i64) with
    ``constexprs``, and ``VEC`` as the host functions pass it."""
    parameters = inspect.signature(kernel.fn).parameters
    if "VEC" in parameters:
        constexprs = {**constexprs, "VEC": _vec(dtype)}

    def kind(name: str) -> str:
        if name in constexprs:
            return "constexpr"
        if name.endswith("_ptr"):
            return _POINTERS[dtype]
        return "i32" if name in ("dim", "seed_lo", "seed_hi") else "i64"

    signature = {name: kind(name) for name in parameters}
    # A contiguous incoming gradient has column stride 1, which the JIT makes a constant.
    unit = ("stride_gz_d",) if "stride_gz_d" in signature else ()
    elements = constexprs["BLOCK_R"] * constexprs["BLOCK_D"]
    return AotConfig(kernel, signature, constexprs, num_warps=NUM_WARPS, elements=elements, unit=unit)


def _tiles(dtype: torch.dtype) -> list[tuple[int, int]]:
    """Every ``(BLOCK_R, BLOCK_D)`` :func:`_blocks` picks for ``dtype`` at some D in ``aot.SIZES``, narrowest first."""
    return sorted({_blocks(dim, dtype) for dim in aot.SIZES}, key=lambda tile: tile[1])


def _aot_configs() -> list[AotConfig]:
    """Each kernel's heaviest variant at every tile the heuristic picks, for float32, bfloat16 and
    float16 tensors; its other variants once, at the narrowest float32 tile (the most registers per
    element)."""
    configs = []
    for kernel, variants in _VARIANTS.items():
        for dtype in _POINTERS:
            for block_r, block_d in _tiles(dtype):
                configs.append(_config(kernel, dtype, dict(variants[0], ALIGNED=True, BLOCK_R=block_r, BLOCK_D=block_d)))
        block_r, block_d = _tiles(torch.float32)[0]
        for variant in variants[1:]:
            configs.append(_config(kernel, torch.float32, dict(variant, ALIGNED=True, BLOCK_R=block_r, BLOCK_D=block_d)))
    return configs


#: The launch configurations the host functions above can choose (see fastvae.kernels.aot).
AOT_CONFIGS: list[AotConfig] = _aot_configs()
