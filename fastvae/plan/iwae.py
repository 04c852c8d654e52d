"""Planning of the importance-weighted ops' host functions, shared by the triton, cuda and cpu backends.

Inputs are the canonical layouts, sample dim first: ``log_px_z (K, B)``, ``z (K, B, D)``,
``mu``/``logvar (B, D)``, ``log_w (K, M, B)`` (``M = 1`` for IWAE), of one dtype on one device.
Outputs are contiguous, in the input dtype on the input's device, except the log-sum-exps, kept in
the accumulation dtype (float32, float64 for float64). Empty inputs launch nothing: sums over an
empty dim are zeros, the log-mean-exp over ``K = 0`` samples (and the mean over ``M = 0`` groups) is
NaN with log-sum-exps ``-inf``.
"""

from __future__ import annotations

import math

import torch

from fastvae.plan import accumulation_dtype

__all__ = ["bound_bwd", "bound_fwd", "iwae_log_weights_bwd", "iwae_log_weights_fwd"]


def iwae_log_weights_fwd(log_px_z: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``log_w (K, B)`` for ``log_px_z (K, B)`` and ``z (K, B, D)``, and whether to launch.

    With ``D = 0`` both log-densities of ``z`` are sums of nothing: ``log_w`` is a copy of ``log_px_z``.
    """
    samples, batch, dim = z.shape
    if dim == 0:
        return log_px_z.clone(memory_format=torch.contiguous_format), False
    log_w = torch.empty((samples, batch), dtype=z.dtype, device=z.device)
    return log_w, log_w.numel() > 0


def iwae_log_weights_bwd(z: torch.Tensor) -> tuple[list[torch.Tensor], bool]:
    """``[grad_z (K, B, D), grad_mu (B, D), grad_logvar (B, D)]`` for ``z (K, B, D)``, and whether to launch.

    ``grad_mu`` and ``grad_logvar`` are sums over the samples: zeros when ``K = 0``.
    """
    samples, batch, dim = z.shape
    grad_z = torch.empty_like(z, memory_format=torch.contiguous_format)
    new = torch.zeros if samples == 0 else torch.empty
    grad_mu, grad_logvar = (new((batch, dim), dtype=z.dtype, device=z.device) for _ in range(2))
    return [grad_z, grad_mu, grad_logvar], samples > 0 and batch * dim > 0


def bound_fwd(log_w: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], bool]:
    """``(bound (B,), lse (M, B))`` for ``log_w (K, M, B)``, and whether to launch.

    The bound is in ``log_w``'s dtype, the log-sum-exps in the accumulation dtype; with ``K = 0`` or
    ``M = 0`` the bound is NaN and the log-sum-exps ``-inf``.
    """
    samples, groups, batch = log_w.shape
    bound = torch.empty(batch, dtype=log_w.dtype, device=log_w.device)
    lse = torch.empty((groups, batch), dtype=accumulation_dtype(log_w.dtype), device=log_w.device)
    if samples == 0 or groups == 0:
        return (bound.fill_(math.nan), lse.fill_(-math.inf)), False
    return (bound, lse), batch > 0


def bound_bwd(log_w: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``grad_log_w`` like ``log_w (K, M, B)``, and whether to launch (not empty)."""
    grad_log_w = torch.empty_like(log_w, memory_format=torch.contiguous_format)
    return grad_log_w, grad_log_w.numel() > 0
