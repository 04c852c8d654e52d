"""Planning of the Gaussian ops' host functions, shared by the triton, cuda and cpu backends.

Inputs are the op's canonical ``(R, D)`` rows of one dtype on one device. Outputs are contiguous, in
the input dtype, on the input's device. Empty inputs launch nothing: element-wise outputs of an
empty tensor are empty, and a sum over ``D = 0`` is zero in every row.
"""

from __future__ import annotations

import torch

__all__ = [
    "gaussian_kl_bwd",
    "gaussian_kl_fwd",
    "gaussian_log_prob_bwd",
    "gaussian_log_prob_fwd",
    "reparameterize_bwd",
    "reparameterize_fwd",
    "reparameterize_kl_bwd",
    "reparameterize_kl_fwd",
]


def _like(t: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous tensor of ``t``'s shape, dtype and device."""
    if t.is_contiguous():
        return torch.empty_like(t)  # keyword-free: the call costs less, and keeps the layout
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _row_sums(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The ``(R,)`` output of a sum over the rows of ``t (R, D)``: zeros when ``D = 0`` (sums of nothing),
    and whether a kernel must fill it (``R > 0`` and ``D > 0``)."""
    rows, dim = t.shape
    if dim == 0:
        return torch.zeros(rows, dtype=t.dtype, device=t.device), False
    return torch.empty(rows, dtype=t.dtype, device=t.device), rows > 0


def reparameterize_fwd(mu: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``z (R, D)`` for ``mu (R, D)``, and whether to launch (``z`` not empty)."""
    z = _like(mu)
    return z, z.numel() > 0


def reparameterize_kl_fwd(mu: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], bool]:
    """``(z (R, D), kl (R,))`` for ``mu (R, D)`` (``kl`` zero when ``D = 0``), and whether to launch."""
    z, launch = reparameterize_fwd(mu)
    kl, _ = _row_sums(mu)
    return (z, kl), launch


def reparameterize_bwd(logvar: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``grad_logvar (R, D)`` for ``logvar (R, D)``, and whether to launch (not empty)."""
    grad_logvar = _like(logvar)
    return grad_logvar, grad_logvar.numel() > 0


def reparameterize_kl_bwd(mu: torch.Tensor) -> tuple[list[torch.Tensor], bool]:
    """``[grad_mu, grad_logvar]``, each ``(R, D)`` like ``mu``, and whether to launch (not empty)."""
    return [_like(mu), _like(mu)], mu.numel() > 0


def gaussian_kl_fwd(mu: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``kl (R,)`` for ``mu (R, D)`` (zero when ``D = 0``), and whether to launch (``R, D > 0``)."""
    return _row_sums(mu)


def gaussian_kl_bwd(mu: torch.Tensor, has_prior: bool) -> tuple[list[torch.Tensor], bool]:
    """``[grad_mu, grad_logvar]``, plus ``[grad_mu_p, grad_logvar_p]`` with a prior, each ``(R, D)``
    like ``mu``, and whether to launch (not empty)."""
    return [_like(mu) for _ in range(4 if has_prior else 2)], mu.numel() > 0


def gaussian_log_prob_fwd(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``log_prob (R,)`` for ``x (R, D)`` (zero when ``D = 0``), and whether to launch (``R, D > 0``)."""
    return _row_sums(x)


def gaussian_log_prob_bwd(
    x: torch.Tensor, has_mu: bool, has_logvar: bool
) -> tuple[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None], bool]:
    """``(grad_x, grad_mu, grad_logvar)``, each ``(R, D)`` like ``x`` or None where that input is absent,
    and whether to launch (not empty)."""
    grads = (_like(x), _like(x) if has_mu else None, _like(x) if has_logvar else None)
    return grads, x.numel() > 0
