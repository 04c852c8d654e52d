"""Triton kernels of the importance-weighted ops: IWAE log-weights, and the IWAE and MIWAE bounds.

Layouts are the canonical ones of :mod:`fastvae.reference.iwae` (contiguous, sample dim first):
``log_px_z (K, B)``, ``z (K, B, D)``, ``mu``/``logvar (B, D)``, ``log_w (K, B)``, or ``(K, M, B)`` for
MIWAE. Every program owns a block of the contiguous batch dim ``B``, so its loads coalesce, and loops
over the ``K`` samples:

- ``iwae_log_weights`` reads ``z`` once, in ``[BLOCK_K, BLOCK_B, BLOCK_D]`` tiles vectorised along
  ``D``. When ``D`` fits one block, the block's ``mu``, ``e^-logvar`` and ``sum_D logvar`` are loaded
  before the ``K`` loop and stay in registers. Each ``(k, b)`` result is independent, so when the
  blocks of ``B`` alone are too few programs, ``K`` is split over a second grid axis.
- its backward writes ``grad_z`` and sums ``grad_mu``/``grad_logvar`` over ``K`` in registers: each
  program owns a ``[BLOCK_B, BLOCK_D]`` block of ``mu`` and loops over every sample (no atomics), one
  sample a step, in 2-D tiles laid out like the block, so the sums are element-wise (no reduction and
  no barrier in the loop, whatever layout the compiler picks). Each step loads the next sample before
  it computes and stores its own, so two samples' loads are in flight. About 90 registers in float32
  (5 programs per SM at sm_90): at K = 64, B = 4096, D = 128 the 512 programs run in one wave.
- the bounds stream a log-sum-exp over ``K`` in ``BLOCK_K`` steps (running max, rescaled running
  sum), one group after another for MIWAE; IWAE is the case ``M = 1``. The backward recomputes the
  normalised weights ``exp(log_w - lse)`` from the saved log-sum-exp.

Arithmetic runs in the ``ACC`` constexpr, float32 (float64 for float64 inputs); results are stored in
the input dtype, the log-sum-exp in ``ACC``. A column whose log-weights are all ``-inf`` has
log-sum-exp ``-inf`` and zero weights: the running max is replaced by 0 wherever it is infinite, so
that ``exp(-inf - -inf)`` is never formed.

Outputs are allocated, and empty inputs decided, by :mod:`fastvae.plan.iwae`, which the cuda and cpu
backends share.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastvae.kernels import aot, on_input_device
from fastvae.kernels.aot import AotConfig
from fastvae.plan import accumulation_dtype
from fastvae.plan import iwae as plan

__all__ = [
    "AOT_CONFIGS",
    "iwae_bound_bwd",
    "iwae_bound_fwd",
    "iwae_log_weights_bwd",
    "iwae_log_weights_fwd",
    "miwae_bound_bwd",
    "miwae_bound_fwd",
]


# --- kernels ----------------------------------------------------------------------------------------


@triton.jit
def _log_ratio_terms(z, mu, inv_var):
    """``(z - mu)^2 e^-logvar - z^2``: twice ``log N(z; 0, I) - log N(z; mu, e^logvar)``, less ``logvar``."""
    diff = z - mu
    return diff * diff * inv_var - z * z


@triton.jit
def _finite_or_zero(x):
    """``x`` where it is finite, 0 where it is +-inf: a safe shift for ``exp(log_w - max)``."""
    return tl.where(tl.abs(x) == float("inf"), 0.0, x)


@triton.jit(do_not_specialize=["K", "B", "K_CHUNK"])
def _iwae_log_weights_fwd_kernel(
    log_px_z_ptr,
    z_ptr,
    mu_ptr,
    logvar_ptr,
    log_w_ptr,
    K,
    B,
    D,
    K_CHUNK,
    ACC: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ONE_D_BLOCK: tl.constexpr,
):
    """``log_w[k, b] = log_px_z[k, b] + sum_d ((z - mu)^2 e^-logvar + logvar - z^2)[k, b, d] / 2``.

    Program ``(i, j)`` owns rows ``b`` of block ``i`` and samples ``[j K_CHUNK, (j + 1) K_CHUNK)``, in
    steps of ``BLOCK_K``. ``ONE_D_BLOCK``: ``D <= BLOCK_D``, and the ``mu``/``logvar`` block is loaded
    once, before the sample loop; otherwise each step loops over ``D`` in ``BLOCK_D`` steps.
    """
    b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    b_mask = b < B
    k_start = tl.program_id(1) * K_CHUNK
    k_end = tl.minimum(k_start + K_CHUNK, K)
    d = tl.arange(0, BLOCK_D)
    if ONE_D_BLOCK:
        bd_mask = b_mask[:, None] & (d < D)[None, :]
        bd = b[:, None] * D + d[None, :]
        mu = tl.load(mu_ptr + bd, mask=bd_mask, other=0.0).to(ACC)
        logvar = tl.load(logvar_ptr + bd, mask=bd_mask, other=0.0).to(ACC)
        inv_var = tl.exp(-logvar)
        logvar_sum = tl.sum(logvar, axis=1)
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kb_mask = (k < k_end)[:, None] & b_mask[None, :]
        kb = k.to(tl.int64)[:, None] * B + b[None, :]
        if ONE_D_BLOCK:
            z_mask = kb_mask[:, :, None] & bd_mask[None, :, :]
            z = tl.load(z_ptr + kb[:, :, None] * D + d[None, None, :], mask=z_mask, other=0.0).to(ACC)
            terms = tl.sum(_log_ratio_terms(z, mu[None, :, :], inv_var[None, :, :]), axis=2)
            terms += logvar_sum[None, :]
        else:
            terms = tl.zeros([BLOCK_K, BLOCK_B], ACC)
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + d
                bd_mask = b_mask[:, None] & (dd < D)[None, :]
                bd = b[:, None] * D + dd[None, :]
                mu = tl.load(mu_ptr + bd, mask=bd_mask, other=0.0).to(ACC)
                logvar = tl.load(logvar_ptr + bd, mask=bd_mask, other=0.0).to(ACC)
                z_mask = kb_mask[:, :, None] & bd_mask[None, :, :]
                z = tl.load(z_ptr + kb[:, :, None] * D + dd[None, None, :], mask=z_mask, other=0.0).to(ACC)
                terms += tl.sum(_log_ratio_terms(z, mu[None, :, :], tl.exp(-logvar)[None, :, :]), axis=2)
                terms += tl.sum(logvar, axis=1)[None, :]
        log_px_z = tl.load(log_px_z_ptr + kb, mask=kb_mask, other=0.0).to(ACC)
        tl.store(log_w_ptr + kb, (log_px_z + 0.5 * terms).to(log_w_ptr.dtype.element_ty), mask=kb_mask)


@triton.jit(do_not_specialize=["K", "B"])
def _iwae_log_weights_bwd_kernel(
    grad_ptr,
    z_ptr,
    mu_ptr,
    logvar_ptr,
    grad_z_ptr,
    grad_mu_ptr,
    grad_logvar_ptr,
    K,
    B,
    D,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """With ``s = (z - mu) e^-logvar`` and ``g = grad[k, b]``: ``grad_z = g (s - z)``,
    ``grad_mu = -sum_k g s`` and ``grad_logvar = sum_k g (1 - s (z - mu)) / 2``.

    Program ``(i, j)`` owns the ``[BLOCK_B, BLOCK_D]`` block ``(i, j)`` of ``mu`` and loops over the
    ``K >= 1`` samples one at a time: each step works on a 2-D tile laid out like ``mu``'s block, so the
    sums over ``K`` are element-wise additions in registers (no reduction, no barrier), and loads the
    next sample's ``z`` and ``grad`` before it computes and stores this one's (the last step reloads
    the last sample), so two samples' loads are in flight.
    """
    b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    b_mask = b < B
    bd_mask = b_mask[:, None] & (d < D)[None, :]
    bd = b[:, None] * D + d[None, :]
    mu = tl.load(mu_ptr + bd, mask=bd_mask, other=0.0).to(ACC)
    inv_var = tl.exp(-tl.load(logvar_ptr + bd, mask=bd_mask, other=0.0).to(ACC))
    acc_mu = tl.zeros([BLOCK_B, BLOCK_D], ACC)
    acc_logvar = tl.zeros([BLOCK_B, BLOCK_D], ACC)
    sample = B.to(tl.int64) * D
    g_next = tl.load(grad_ptr + b, mask=b_mask, other=0.0)
    z_next = tl.load(z_ptr + bd, mask=bd_mask, other=0.0)
    for k in range(0, K):
        g = g_next.to(ACC)[:, None]
        z = z_next.to(ACC)
        k_next = tl.minimum(k + 1, K - 1).to(tl.int64)  # (K, B) may pass 2**31 elements
        g_next = tl.load(grad_ptr + k_next * B + b, mask=b_mask, other=0.0)
        z_next = tl.load(z_ptr + k_next * sample + bd, mask=bd_mask, other=0.0)
        diff = z - mu
        scaled = diff * inv_var
        tl.store(grad_z_ptr + k * sample + bd, (g * (scaled - z)).to(grad_z_ptr.dtype.element_ty), mask=bd_mask)
        acc_mu += g * scaled
        acc_logvar += g * (1.0 - scaled * diff)
    tl.store(grad_mu_ptr + bd, (-acc_mu).to(grad_mu_ptr.dtype.element_ty), mask=bd_mask)
    tl.store(grad_logvar_ptr + bd, (0.5 * acc_logvar).to(grad_logvar_ptr.dtype.element_ty), mask=bd_mask)


@triton.jit(do_not_specialize=["K", "M"])
def _iwae_bound_fwd_kernel(
    log_w_ptr,
    bound_ptr,
    lse_ptr,
    K,
    M,
    B,
    ACC: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """``lse[m, b] = log sum_k exp(log_w[k, m, b])`` and ``bound[b] = mean_m lse[m, b] - log K``.

    IWAE is ``M = 1``. Program ``i`` owns columns ``b`` of block ``i`` and, group by group, streams
    the log-sum-exp over ``K`` in steps of ``BLOCK_K``: a running max and a sum rescaled to it.
    """
    b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    b_mask = b < B
    column = b
    lse_sum = tl.zeros([BLOCK_B], ACC)
    for _ in range(M):
        run_max = tl.full([BLOCK_B], float("-inf"), ACC)
        run_sum = tl.zeros([BLOCK_B], ACC)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            mask = (k < K)[:, None] & b_mask[None, :]
            offsets = k.to(tl.int64)[:, None] * M * B + column[None, :]
            x = tl.load(log_w_ptr + offsets, mask=mask, other=float("-inf")).to(ACC)
            new_max = tl.maximum(run_max, tl.max(x, axis=0))
            shift = _finite_or_zero(new_max)
            run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(x - shift[None, :]), axis=0)
            run_max = new_max
        lse = _finite_or_zero(run_max) + tl.log(run_sum)
        tl.store(lse_ptr + column, lse, mask=b_mask)
        lse_sum += lse
        column += B
    bound = lse_sum / M - tl.log(tl.zeros([BLOCK_B], ACC) + K)
    tl.store(bound_ptr + b, bound.to(bound_ptr.dtype.element_ty), mask=b_mask)


@triton.jit(do_not_specialize=["K", "M", "K_CHUNK"])
def _iwae_bound_bwd_kernel(
    grad_ptr,
    log_w_ptr,
    lse_ptr,
    grad_log_w_ptr,
    K,
    C,
    B,
    M,
    K_CHUNK,
    ACC: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """``grad_log_w[k, c] = grad[c mod B] / M * exp(log_w[k, c] - lse[c])``, 0 where ``lse[c]`` is not finite.

    ``log_w`` is viewed as ``(K, C)``, its ``C = M * B`` columns contiguous (IWAE: ``M = 1``).
    Program ``(i, j)`` owns columns ``c`` of block ``i`` and samples ``[j K_CHUNK, (j + 1) K_CHUNK)``.
    """
    c = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    scale = tl.load(grad_ptr + c % B, mask=c_mask, other=0.0).to(ACC) / M
    lse = tl.load(lse_ptr + c, mask=c_mask, other=0.0).to(ACC)
    finite = tl.abs(lse) < float("inf")
    shift = tl.where(finite, lse, 0.0)
    k_start = tl.program_id(1) * K_CHUNK
    k_end = tl.minimum(k_start + K_CHUNK, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mask = (k < k_end)[:, None] & c_mask[None, :]
        offsets = k.to(tl.int64)[:, None] * C + c[None, :]
        x = tl.load(log_w_ptr + offsets, mask=mask, other=float("-inf")).to(ACC)
        weights = tl.where(finite[None, :], tl.exp(x - shift[None, :]), 0.0)
        tl.store(grad_log_w_ptr + offsets, (scale[None, :] * weights).to(grad_log_w_ptr.dtype.element_ty), mask=mask)


# --- launch heuristics ------------------------------------------------------------------------------

#: Warps per program, for every kernel here.
_NUM_WARPS = 4
#: Elements of the ``[BLOCK_B, BLOCK_D]`` tile of the log-weight kernels (times BLOCK_K for ``z``).
_BD_TILE = 1024
#: The choices of BLOCK_D: powers of two from 16 (one 16-byte vector of four lanes) to 256; longer
#: latent dims loop over D in 256-element steps.
_BLOCK_DS = (16, 32, 64, 128, 256)
#: Samples per step of the forward pass: 4 when D fits one block, so a step loads 4096 elements of
#: ``z``; 2 in its loop over D (where 4 spills with Triton 3.6 on sm_90). The backward pass steps one
#: sample at a time, with the next one's loads in flight.
_FWD_BLOCK_K, _FWD_LOOP_BLOCK_K = 4, 2
#: (BLOCK_K, BLOCK_B) of the bound kernels: wide tiles of 64 columns, and tall ones of 512 samples for
#: 4 columns or fewer (evaluating one data point with thousands of samples).
_BOUND_WIDE, _BOUND_TALL = (32, 64), (512, 4)
#: Programs worth launching before splitting the sample dim over a second grid axis: a few per SM.
_MIN_PROGRAMS = 1024


def _compute_type(dtype: torch.dtype) -> tl.dtype:
    """The ``ACC`` constexpr for inputs of ``dtype``: their accumulation dtype (float64 stays, the others
    compute in float32)."""
    return tl.float64 if accumulation_dtype(dtype) == torch.float64 else tl.float32


def _block_d(dim: int) -> int:
    """BLOCK_D for latent size ``dim``: the smallest choice that holds it, else the largest."""
    return next((block for block in _BLOCK_DS if block >= dim), _BLOCK_DS[-1])


def _log_weights_fwd_blocks(dim: int) -> dict[str, object]:
    """The block constexprs of the log-weights' forward kernel for latent size ``dim``."""
    block_d = _block_d(dim)
    one_d_block = dim <= block_d
    return {
        "BLOCK_K": _FWD_BLOCK_K if one_d_block else _FWD_LOOP_BLOCK_K,
        "BLOCK_B": _BD_TILE // block_d,
        "BLOCK_D": block_d,
        "ONE_D_BLOCK": one_d_block,
    }


def _log_weights_bwd_blocks(dim: int) -> dict[str, int]:
    """The block constexprs of the log-weights' backward kernel for latent size ``dim``."""
    block_d = _block_d(dim)
    return {"BLOCK_B": _BD_TILE // block_d, "BLOCK_D": block_d}


def _log_weights_bwd_grid(batch: int, dim: int) -> tuple[int, int]:
    """The backward kernel's grid: the ``[BLOCK_B, BLOCK_D]`` blocks of the ``(B, D)`` plane."""
    blocks = _log_weights_bwd_blocks(dim)
    return triton.cdiv(batch, blocks["BLOCK_B"]), triton.cdiv(dim, blocks["BLOCK_D"])


def _bound_blocks(columns: int) -> tuple[int, int]:
    """(BLOCK_K, BLOCK_B) of the bound kernels for ``columns`` contiguous columns."""
    return _BOUND_TALL if columns <= _BOUND_TALL[1] else _BOUND_WIDE


def _k_chunk(samples: int, block_k: int, programs: int) -> int:
    """Samples per program along the second grid axis: all of them when ``programs`` blocks of
    columns are enough to fill the GPU, else a multiple of ``block_k`` that splits ``K`` up to
    ``_MIN_PROGRAMS`` programs in all."""
    steps = triton.cdiv(samples, block_k)
    splits = min(steps, max(1, triton.cdiv(_MIN_PROGRAMS, programs)))
    return triton.cdiv(steps, splits) * block_k


# --- host functions ---------------------------------------------------------------------------------


@on_input_device
def iwae_log_weights_fwd(
    log_px_z: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """``log_px_z + log N(z; 0, I) - log N(z; mu, e^logvar)`` summed over D, in one pass over ``z``.

    Args:
        log_px_z: ``(K, B)``. z: ``(K, B, D)``. mu, logvar: ``(B, D)``. Contiguous, one dtype.

    Returns:
        ``log_w`` of shape ``(K, B)`` in the input dtype.
    """
    samples, batch, dim = z.shape
    log_w, launch = plan.iwae_log_weights_fwd(log_px_z, z)
    if not launch:
        return log_w
    blocks = _log_weights_fwd_blocks(dim)
    blocks_b = triton.cdiv(batch, blocks["BLOCK_B"])
    k_chunk = _k_chunk(samples, blocks["BLOCK_K"], blocks_b)
    _iwae_log_weights_fwd_kernel[(blocks_b, triton.cdiv(samples, k_chunk))](
        log_px_z, z, mu, logvar, log_w, samples, batch, dim, k_chunk, ACC=_compute_type(z.dtype), **blocks,
        num_warps=_NUM_WARPS,
    )  # fmt: skip
    return log_w


@on_input_device
def iwae_log_weights_bwd(
    grad: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> list[torch.Tensor]:
    """Gradients of :func:`iwae_log_weights_fwd` with respect to ``z``, ``mu`` and ``logvar``.

    Args:
        grad: ``(K, B)`` incoming gradient. z: ``(K, B, D)``. mu, logvar: ``(B, D)``. Contiguous, one dtype.

    Returns:
        ``[grad_z (K, B, D), grad_mu (B, D), grad_logvar (B, D)]`` in the input dtype; the last two
        are sums over the ``K`` samples.
    """
    samples, batch, dim = z.shape
    grad = grad.contiguous()
    (grad_z, grad_mu, grad_logvar), launch = plan.iwae_log_weights_bwd(z)
    if not launch:
        return [grad_z, grad_mu, grad_logvar]
    _iwae_log_weights_bwd_kernel[_log_weights_bwd_grid(batch, dim)](
        grad, z, mu, logvar, grad_z, grad_mu, grad_logvar, samples, batch, dim, ACC=_compute_type(z.dtype),
        **_log_weights_bwd_blocks(dim), num_warps=_NUM_WARPS,
    )  # fmt: skip
    return [grad_z, grad_mu, grad_logvar]


def _bound_fwd(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared by both bounds: ``log_w (K, M, B)`` -> ``(bound (B,), lse (M, B))``."""
    (bound, lse), launch = plan.bound_fwd(log_w)
    if not launch:
        return bound, lse
    samples, groups, batch = log_w.shape
    block_k, block_b = _bound_blocks(batch)
    _iwae_bound_fwd_kernel[(triton.cdiv(batch, block_b),)](
        log_w, bound, lse, samples, groups, batch,
        ACC=_compute_type(log_w.dtype), BLOCK_K=block_k, BLOCK_B=block_b, num_warps=_NUM_WARPS,
    )  # fmt: skip
    return bound, lse


def _bound_bwd(grad: torch.Tensor, log_w: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Shared by both bounds: ``grad (B,)``, ``log_w (K, M, B)``, ``lse (M, B)`` -> ``grad_log_w (K, M, B)``."""
    grad_log_w, launch = plan.bound_bwd(log_w)
    if not launch:
        return grad_log_w
    samples, groups, batch = log_w.shape
    columns = groups * batch
    grad = grad.contiguous()
    block_k, block_c = _bound_blocks(columns)
    blocks_c = triton.cdiv(columns, block_c)
    k_chunk = _k_chunk(samples, block_k, blocks_c)
    _iwae_bound_bwd_kernel[(blocks_c, triton.cdiv(samples, k_chunk))](
        grad, log_w, lse, grad_log_w, samples, columns, batch, groups, k_chunk,
        ACC=_compute_type(log_w.dtype), BLOCK_K=block_k, BLOCK_C=block_c, num_warps=_NUM_WARPS,
    )  # fmt: skip
    return grad_log_w


@on_input_device
def iwae_bound_fwd(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log (1/K) sum_k exp(log_w[k])``, streamed over the ``K`` samples.

    Args:
        log_w: ``(K, B)`` contiguous log-weights.

    Returns:
        ``(bound (B,), lse (B,))``: the bound in ``log_w``'s dtype, ``-inf`` where every weight is
        ``-inf``; the log-sum-exp in float32 (float64 for float64), for the backward pass.
    """
    bound, lse = _bound_fwd(log_w.unsqueeze(1))
    return bound, lse.squeeze(0)


@on_input_device
def iwae_bound_bwd(grad: torch.Tensor, log_w: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`iwae_bound_fwd`: ``grad * exp(log_w - lse)``, the normalised weights.

    Args:
        grad: ``(B,)``. log_w: ``(K, B)``. lse: ``(B,)`` from :func:`iwae_bound_fwd`.

    Returns:
        ``grad_log_w (K, B)`` in ``log_w``'s dtype; zero in columns whose ``lse`` is not finite.
    """
    return _bound_bwd(grad, log_w.unsqueeze(1), lse.unsqueeze(0)).squeeze(1)


@on_input_device
def miwae_bound_fwd(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean_m log (1/K) sum_k exp(log_w[k, m])``, each log-sum-exp streamed over the ``K`` samples.

    Args:
        log_w: ``(K, M, B)`` contiguous log-weights.

    Returns:
        ``(bound (B,), lse (M, B))``: the bound in ``log_w``'s dtype; the log-sum-exps in float32
        (float64 for float64), for the backward pass.
    """
    return _bound_fwd(log_w)


@on_input_device
def miwae_bound_bwd(grad: torch.Tensor, log_w: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`miwae_bound_fwd`: ``grad / M * exp(log_w - lse)``.

    Args:
        grad: ``(B,)``. log_w: ``(K, M, B)``. lse: ``(M, B)`` from :func:`miwae_bound_fwd`.

    Returns:
        ``grad_log_w (K, M, B)`` in ``log_w``'s dtype; zero where ``lse`` is not finite.
    """
    return _bound_bwd(grad, log_w, lse)


# --- ahead-of-time compile check ----------------------------------------------------------------------


def _tile(blocks: dict[str, object]) -> int:
    """Elements of ``z`` one step of a log-weight kernel's loop processes: ``BLOCK_K * BLOCK_B * BLOCK_D``
    (``BLOCK_K = 1`` in the backward kernel, which steps one sample at a time)."""
    return blocks.get("BLOCK_K", 1) * blocks["BLOCK_B"] * blocks["BLOCK_D"]


def _aot_configs() -> list[AotConfig]:
    """Every configuration the host functions above can launch, for each half/single pointer type: the
    block heuristics evaluated at every latent size and column count in ``aot.SIZES``."""
    configs: list[AotConfig] = []
    for pointer, dtype in (("*fp32", torch.float32), ("*fp16", torch.float16), ("*bf16", torch.bfloat16)):
        acc = {"ACC": _compute_type(dtype)}
        lse = "*fp64" if accumulation_dtype(dtype) == torch.float64 else "*fp32"
        for dim in aot.SIZES:
            configs.append(AotConfig(
                _iwae_log_weights_fwd_kernel,
                {**dict.fromkeys(("log_px_z_ptr", "z_ptr", "mu_ptr", "logvar_ptr", "log_w_ptr"), pointer),
                 **dict.fromkeys(("K", "B", "D", "K_CHUNK"), "i32"),
                 **dict.fromkeys(("ACC", "BLOCK_K", "BLOCK_B", "BLOCK_D", "ONE_D_BLOCK"), "constexpr")},
                {**acc, **_log_weights_fwd_blocks(dim)},
                num_warps=_NUM_WARPS, elements=_tile(_log_weights_fwd_blocks(dim)),
            ))  # fmt: skip
            configs.append(AotConfig(
                _iwae_log_weights_bwd_kernel,
                {**dict.fromkeys(("grad_ptr", "z_ptr", "mu_ptr", "logvar_ptr", "grad_z_ptr", "grad_mu_ptr",
                                  "grad_logvar_ptr"), pointer),
                 **dict.fromkeys(("K", "B", "D"), "i32"),
                 **dict.fromkeys(("ACC", "BLOCK_B", "BLOCK_D"), "constexpr")},
                {**acc, **_log_weights_bwd_blocks(dim)},
                num_warps=_NUM_WARPS, elements=_tile(_log_weights_bwd_blocks(dim)),
            ))  # fmt: skip
        for columns in aot.SIZES:
            block_k, block_b = _bound_blocks(columns)
            configs.append(AotConfig(
                _iwae_bound_fwd_kernel,
                {"log_w_ptr": pointer, "bound_ptr": pointer, "lse_ptr": lse,
                 **dict.fromkeys(("K", "M", "B"), "i32"),
                 **dict.fromkeys(("ACC", "BLOCK_K", "BLOCK_B"), "constexpr")},
                {**acc, "BLOCK_K": block_k, "BLOCK_B": block_b},
                num_warps=_NUM_WARPS, elements=block_k * block_b,
            ))  # fmt: skip
            configs.append(AotConfig(
                _iwae_bound_bwd_kernel,
                {"grad_ptr": pointer, "log_w_ptr": pointer, "lse_ptr": lse, "grad_log_w_ptr": pointer,
                 **dict.fromkeys(("K", "C", "B", "M", "K_CHUNK"), "i32"),
                 **dict.fromkeys(("ACC", "BLOCK_K", "BLOCK_C"), "constexpr")},
                {**acc, "BLOCK_K": block_k, "BLOCK_C": block_b},
                num_warps=_NUM_WARPS, elements=block_k * block_b,
            ))  # fmt: skip
    return aot.distinct(configs)


#: Every launch configuration of this module, for ``python -m fastvae.kernels.aot --module iwae``.
AOT_CONFIGS: list[AotConfig] = _aot_configs()
