"""Reference (pure PyTorch) importance-weighted bounds: log-weights and log-mean-exp.

Canonical layouts, as :mod:`fastvae.ops.iwae` passes them: ``K`` samples of a batch of ``B`` rows,
latent size ``D``; ``log_px_z (K, B)``, ``z (K, B, D)``, ``mu``/``logvar (B, D)``, ``log_w (K, B)`` or
``(K, M, B)`` for MIWAE. Arithmetic in float32 (float64 for float64 inputs); results in the input dtype.
"""

from __future__ import annotations

import math

import torch

from fastvae.reference.gaussian import compute_dtype


def iwae_log_weights_fwd(
    log_px_z: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """``log p(x|z) + log N(z; 0, I) - log N(z; mu, e^logvar)``, summed over D. Returns (K, B).

    The ``log 2 pi`` terms cancel: the sum is ``sum(-z^2/2 + logvar/2 + (z - mu)^2 e^-logvar / 2)``.
    """
    acc = compute_dtype(z.dtype)
    z_a, lv_a = z.to(acc), logvar.to(acc)
    diff = z_a - mu.to(acc)
    terms = diff * diff * torch.exp(-lv_a) + lv_a - z_a * z_a
    return (log_px_z.to(acc) + 0.5 * terms.sum(-1)).to(z.dtype)


def iwae_log_weights_bwd(
    grad: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> list[torch.Tensor]:
    """Gradients ``[d z, d mu, d logvar]`` of :func:`iwae_log_weights_fwd` (``d log_px_z`` is ``grad`` itself)."""
    acc = compute_dtype(z.dtype)
    g = grad.to(acc).unsqueeze(-1)
    z_a = z.to(acc)
    diff = z_a - mu.to(acc)
    scaled_diff = diff * torch.exp(-logvar.to(acc))
    grad_z = g * (scaled_diff - z_a)
    grad_mu = -(g * scaled_diff).sum(0)
    grad_logvar = (0.5 * g * (1.0 - scaled_diff * diff)).sum(0)
    return [grad_z.to(z.dtype), grad_mu.to(z.dtype), grad_logvar.to(z.dtype)]


def _normalised_weights(log_w: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """``exp(log_w - lse)`` along dim 0, with zero weights where every log-weight is -inf."""
    finite = torch.isfinite(lse)
    return torch.where(finite, torch.exp(log_w - torch.where(finite, lse, 0.0)), 0.0)


def iwae_bound_fwd(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log (1/K) sum_k exp(log_w[k])`` over dim 0. (K, B) -> ((B,), log-sum-exp (B,) for backward).

    The log-sum-exp stays in the compute dtype: rebuilt from a float16/bfloat16 bound, its rounding
    would scale every importance weight and the weights would no longer sum to one.
    """
    acc = compute_dtype(log_w.dtype)
    lse = torch.logsumexp(log_w.to(acc), dim=0)
    return (lse - math.log(log_w.shape[0])).to(log_w.dtype), lse


def iwae_bound_bwd(grad: torch.Tensor, log_w: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`iwae_bound_fwd`: ``grad`` times the normalised importance weights, from the saved log-sum-exp."""
    acc = compute_dtype(log_w.dtype)
    return (grad.to(acc) * _normalised_weights(log_w.to(acc), lse.to(acc))).to(log_w.dtype)


def miwae_bound_fwd(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over M of the IWAE bound over K. (K, M, B) -> ((B,), log-sum-exp (M, B) for backward)."""
    acc = compute_dtype(log_w.dtype)
    lse = torch.logsumexp(log_w.to(acc), dim=0)
    bound = lse.mean(0) - math.log(log_w.shape[0])
    return bound.to(log_w.dtype), lse


def miwae_bound_bwd(grad: torch.Tensor, log_w: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`miwae_bound_fwd`: normalised weights over K, divided by M, times ``grad``."""
    acc = compute_dtype(log_w.dtype)
    scale = grad.to(acc) / log_w.shape[1]
    return (scale * _normalised_weights(log_w.to(acc), lse.to(acc))).to(log_w.dtype)
