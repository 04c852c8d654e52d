"""Host side of the ``cuda`` and ``cpu`` backends' importance-weighted ops: launchers of the kernels
in csrc/iwae.cu (CUDA tensors) and csrc/cpu/iwae.cpp (CPU tensors), one plan for both.

The functions and signatures are those of :mod:`fastvae.kernels.iwae` (the Triton backend), so
:mod:`fastvae.ops.iwae` registers either module the same way. Tensors come in the op's canonical
layouts, sample dim first: ``log_px_z (K, B)``, ``z (K, B, D)``, ``mu``/``logvar (B, D)``,
``log_w (K, B)`` or ``(K, M, B)`` for MIWAE, all of one dtype (float32, float16, bfloat16 or float64)
on one device. These are made contiguous here (a no-op for what the op passes); incoming
gradients (``grad``) are read in place through their strides, since autograd hands over expanded
(stride-0) gradients of sums, after a cast to the inputs' dtype if theirs differs. The log-sum-exps are float32 (float64 for float64 inputs).

Outputs are allocated, and empty inputs decided, by :mod:`fastvae.plan.iwae` (shared with the triton
backend): empty inputs launch nothing, sums over an empty dim are zeros, the mean over ``M = 0``
groups and the log-mean-exp over ``K = 0`` samples NaN (the op itself rejects both). CUDA kernels run
on the input device's current stream, CPU kernels on the calling thread (large calls also on
PyTorch's OpenMP threads: csrc/cpu/dtype.h).
"""

from __future__ import annotations

import torch

from fastvae.cuda import dtype_code, run_kernel
from fastvae.plan import accumulation_dtype
from fastvae.plan import iwae as plan

__all__ = [
    "iwae_bound_bwd",
    "iwae_bound_fwd",
    "iwae_log_weights_bwd",
    "iwae_log_weights_fwd",
    "miwae_bound_bwd",
    "miwae_bound_fwd",
]


def iwae_log_weights_fwd(
    log_px_z: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """``log_px_z + log N(z; 0, I) - log N(z; mu, e^logvar)`` summed over D, in one pass over ``z``.

    Args:
        log_px_z: ``(K, B)``. z: ``(K, B, D)``. mu, logvar: ``(B, D)``. One dtype and device.

    Returns:
        ``log_w (K, B)`` in the input dtype.
    """
    log_px_z, z, mu, logvar = (t.contiguous() for t in (log_px_z, z, mu, logvar))
    samples, batch, dim = z.shape
    log_w, launch = plan.iwae_log_weights_fwd(log_px_z, z)
    if not launch:
        return log_w
    run_kernel(
        z, "iwae_log_weights_fwd",
        dtype_code(z, "z"), log_px_z.data_ptr(), z.data_ptr(), mu.data_ptr(), logvar.data_ptr(),
        log_w.data_ptr(), samples, batch, dim,
    )  # fmt: skip
    return log_w


def iwae_log_weights_bwd(
    grad: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> list[torch.Tensor]:
    """Gradients of :func:`iwae_log_weights_fwd` with respect to ``z``, ``mu`` and ``logvar``.

    Args:
        grad: ``(K, B)`` incoming gradient, any strides. z: ``(K, B, D)``. mu, logvar: ``(B, D)``.

    Returns:
        ``[grad_z (K, B, D), grad_mu (B, D), grad_logvar (B, D)]`` in the input dtype; the last two
        are sums over the ``K`` samples (zeros when ``K = 0``).
    """
    z, mu, logvar = (t.contiguous() for t in (z, mu, logvar))
    grad = grad.to(z.dtype)
    samples, batch, dim = z.shape
    (grad_z, grad_mu, grad_logvar), launch = plan.iwae_log_weights_bwd(z)
    if not launch:
        return [grad_z, grad_mu, grad_logvar]
    run_kernel(
        z, "iwae_log_weights_bwd",
        dtype_code(z, "z"), grad.data_ptr(), grad.stride(0), grad.stride(1), z.data_ptr(), mu.data_ptr(),
        logvar.data_ptr(), grad_z.data_ptr(), grad_mu.data_ptr(), grad_logvar.data_ptr(), samples, batch,
        dim,
    )  # fmt: skip
    return [grad_z, grad_mu, grad_logvar]


def _bound_fwd(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared by both bounds: ``log_w (K, M, B)`` -> ``(bound (B,), lse (M, B))``."""
    log_w = log_w.contiguous()
    samples, groups, batch = log_w.shape
    (bound, lse), launch = plan.bound_fwd(log_w)
    if not launch:
        return bound, lse
    run_kernel(
        log_w, "iwae_bound_fwd",
        dtype_code(log_w, "log_w"), log_w.data_ptr(), bound.data_ptr(), lse.data_ptr(), samples, groups,
        batch,
    )  # fmt: skip
    return bound, lse


def _bound_bwd(grad: torch.Tensor, log_w: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Shared by both bounds: ``grad (B,)``, ``log_w (K, M, B)``, ``lse (M, B)`` -> ``grad_log_w``."""
    log_w, grad = log_w.contiguous(), grad.to(log_w.dtype)
    lse = lse.to(accumulation_dtype(log_w.dtype)).contiguous()
    samples, groups, batch = log_w.shape
    grad_log_w, launch = plan.bound_bwd(log_w)
    if not launch:
        return grad_log_w
    run_kernel(
        log_w, "iwae_bound_bwd",
        dtype_code(log_w, "log_w"), grad.data_ptr(), grad.stride(0), log_w.data_ptr(), lse.data_ptr(),
        grad_log_w.data_ptr(), samples, groups, batch,
    )  # fmt: skip
    return grad_log_w


def iwae_bound_fwd(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log (1/K) sum_k exp(log_w[k])``, an online log-sum-exp over the ``K`` samples.

    Args:
        log_w: ``(K, B)`` log-weights.

    Returns:
        ``(bound (B,), lse (B,))``: the bound in ``log_w``'s dtype, ``-inf`` where every weight is
        ``-inf``; the log-sum-exp in float32 (float64 for float64), for the backward pass.
    """
    bound, lse = _bound_fwd(log_w.unsqueeze(1))
    return bound, lse.squeeze(0)


def iwae_bound_bwd(grad: torch.Tensor, log_w: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`iwae_bound_fwd`: ``grad * exp(log_w - lse)``, the normalised weights.

    Args:
        grad: ``(B,)``, any stride. log_w: ``(K, B)``. lse: ``(B,)`` from :func:`iwae_bound_fwd`.

    Returns:
        ``grad_log_w (K, B)`` in ``log_w``'s dtype; zero in columns whose ``lse`` is not finite.
    """
    return _bound_bwd(grad, log_w.unsqueeze(1), lse.unsqueeze(0)).squeeze(1)


def miwae_bound_fwd(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean_m log (1/K) sum_k exp(log_w[k, m])``, each log-sum-exp online over the ``K`` samples.

    Args:
        log_w: ``(K, M, B)`` log-weights.

    Returns:
        ``(bound (B,), lse (M, B))``: the bound in ``log_w``'s dtype; the log-sum-exps in float32
        (float64 for float64), for the backward pass.
    """
    return _bound_fwd(log_w)


def miwae_bound_bwd(grad: torch.Tensor, log_w: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`miwae_bound_fwd`: ``grad / M * exp(log_w - lse)``.

    Args:
        grad: ``(B,)``, any stride. log_w: ``(K, M, B)``. lse: ``(M, B)`` from :func:`miwae_bound_fwd`.

    Returns:
        ``grad_log_w (K, M, B)`` in ``log_w``'s dtype; zero where ``lse`` is not finite.
    """
    return _bound_bwd(grad, log_w, lse)
