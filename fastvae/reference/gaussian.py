"""Reference (pure PyTorch) Gaussian ops: reparameterised sampling, KL divergence and log-density.

These are the ``torch`` backend and the ground truth the fused kernels are tested against. They take
the canonical layouts the ops in :mod:`fastvae.ops.gaussian` pass: every tensor ``(R, D)``, ``R`` rows
of a ``D``-dimensional latent, all of one dtype and device. Arithmetic runs in float32 (float64 for
float64 inputs); results come back in the input dtype. Row results are sums over ``D``.
"""

from __future__ import annotations

import math

import torch

from fastvae.reference.philox import normal_stream

_LOG_2PI = math.log(2.0 * math.pi)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the reference computes in for inputs of ``dtype``: float64 stays, others use float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def noise(mu: torch.Tensor, seed: int) -> torch.Tensor:
    """The stream's standard normals for a ``(R, D)`` tensor like ``mu``, in its compute dtype."""
    rows, dim = mu.shape
    return normal_stream(rows, dim, seed, mu.device).to(compute_dtype(mu.dtype))


def reparameterize_fwd(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None, seed: int) -> torch.Tensor:
    """``z = mu + exp(logvar / 2) * eps``, eps from the noise stream of ``seed`` when None. (R, D) -> (R, D)."""
    acc = compute_dtype(mu.dtype)
    e = noise(mu, seed) if eps is None else eps.to(acc)
    return (mu.to(acc) + torch.exp(0.5 * logvar.to(acc)) * e).to(mu.dtype)


def reparameterize_bwd(grad_z: torch.Tensor, logvar: torch.Tensor, seed: int) -> torch.Tensor:
    """Gradient of :func:`reparameterize_fwd` (stream noise) with respect to logvar: ``g * exp(logvar/2) * eps / 2``."""
    acc = compute_dtype(logvar.dtype)
    std = torch.exp(0.5 * logvar.to(acc))
    return (grad_z.to(acc) * 0.5 * std * noise(logvar, seed)).to(logvar.dtype)


def _kl_standard_terms(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    # mu^2 + e^lv - 1 - lv, with expm1 so that small |lv| loses nothing to cancellation.
    return mu * mu + torch.expm1(logvar) - logvar


def reparameterize_kl_fwd(
    mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`reparameterize_fwd` and the per-row ``KL(N(mu, e^logvar) || N(0, I))``. (R, D) -> ((R, D), (R,))."""
    acc = compute_dtype(mu.dtype)
    mu_a, lv_a = mu.to(acc), logvar.to(acc)
    e = noise(mu, seed) if eps is None else eps.to(acc)
    z = mu_a + torch.exp(0.5 * lv_a) * e
    kl = 0.5 * _kl_standard_terms(mu_a, lv_a).sum(-1)
    return z.to(mu.dtype), kl.to(mu.dtype)


def reparameterize_kl_bwd(
    grad_z: torch.Tensor, grad_kl: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, seed: int
) -> list[torch.Tensor]:
    """Gradients ``[d mu, d logvar]`` of :func:`reparameterize_kl_fwd` with stream noise."""
    acc = compute_dtype(mu.dtype)
    g_z, g_kl = grad_z.to(acc), grad_kl.to(acc).unsqueeze(-1)
    mu_a, lv_a = mu.to(acc), logvar.to(acc)
    std = torch.exp(0.5 * lv_a)
    grad_mu = g_z + g_kl * mu_a
    grad_logvar = 0.5 * (g_z * std * noise(mu, seed) + g_kl * torch.expm1(lv_a))
    return [grad_mu.to(mu.dtype), grad_logvar.to(mu.dtype)]


def gaussian_kl_fwd(
    mu: torch.Tensor, logvar: torch.Tensor, mu_p: torch.Tensor | None, logvar_p: torch.Tensor | None
) -> torch.Tensor:
    """Per-row ``KL(N(mu, e^logvar) || N(mu_p, e^logvar_p))``; N(0, I) when the prior is None. (R, D) -> (R,).

    With a prior: ``0.5 * sum(e^(lv - lv_p) - 1 - (lv - lv_p) + (mu - mu_p)^2 e^-lv_p)``.
    """
    acc = compute_dtype(mu.dtype)
    mu_a, lv_a = mu.to(acc), logvar.to(acc)
    if mu_p is None or logvar_p is None:
        terms = _kl_standard_terms(mu_a, lv_a)
    else:
        diff = mu_a - mu_p.to(acc)
        log_ratio = lv_a - logvar_p.to(acc)
        terms = torch.expm1(log_ratio) - log_ratio + diff * diff * torch.exp(-logvar_p.to(acc))
    return (0.5 * terms.sum(-1)).to(mu.dtype)


def gaussian_kl_bwd(
    grad: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    mu_p: torch.Tensor | None,
    logvar_p: torch.Tensor | None,
) -> list[torch.Tensor]:
    """Gradients of :func:`gaussian_kl_fwd`: ``[d mu, d logvar]``, plus ``[d mu_p, d logvar_p]`` with a prior."""
    acc = compute_dtype(mu.dtype)
    g = grad.to(acc).unsqueeze(-1)
    mu_a, lv_a = mu.to(acc), logvar.to(acc)
    if mu_p is None or logvar_p is None:
        return [(g * mu_a).to(mu.dtype), (0.5 * g * torch.expm1(lv_a)).to(mu.dtype)]
    inv_var_p = torch.exp(-logvar_p.to(acc))
    scaled_diff = (mu_a - mu_p.to(acc)) * inv_var_p
    half_expm1_ratio = 0.5 * torch.expm1(lv_a - logvar_p.to(acc))
    grad_mu = g * scaled_diff
    grad_logvar = g * half_expm1_ratio
    grad_logvar_p = -g * (half_expm1_ratio + 0.5 * scaled_diff * (mu_a - mu_p.to(acc)))
    return [t.to(mu.dtype) for t in (grad_mu, grad_logvar, -grad_mu, grad_logvar_p)]


def gaussian_log_prob_fwd(x: torch.Tensor, mu: torch.Tensor | None, logvar: torch.Tensor | None) -> torch.Tensor:
    """Per-row ``log N(x; mu, e^logvar)`` summed over D; mu = 0 and logvar = 0 where None. (R, D) -> (R,)."""
    acc = compute_dtype(x.dtype)
    diff = x.to(acc) if mu is None else x.to(acc) - mu.to(acc)
    if logvar is None:
        terms = diff * diff + _LOG_2PI
    else:
        lv_a = logvar.to(acc)
        terms = diff * diff * torch.exp(-lv_a) + lv_a + _LOG_2PI
    return (-0.5 * terms.sum(-1)).to(x.dtype)


def gaussian_log_prob_bwd(
    grad: torch.Tensor, x: torch.Tensor, mu: torch.Tensor | None, logvar: torch.Tensor | None
) -> list[torch.Tensor]:
    """Gradients of :func:`gaussian_log_prob_fwd`: ``[d x]``, then ``d mu`` if mu is given, then ``d logvar`` if given."""
    acc = compute_dtype(x.dtype)
    g = grad.to(acc).unsqueeze(-1)
    diff = x.to(acc) if mu is None else x.to(acc) - mu.to(acc)
    scaled_diff = diff if logvar is None else diff * torch.exp(-logvar.to(acc))
    grads = [-g * scaled_diff]
    if mu is not None:
        grads.append(g * scaled_diff)
    if logvar is not None:
        grads.append(0.5 * g * (scaled_diff * diff - 1.0))
    return [t.to(x.dtype) for t in grads]
