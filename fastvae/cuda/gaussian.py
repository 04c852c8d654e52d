"""Host side of the ``cuda`` and ``cpu`` backends' Gaussian ops: launchers of the kernels in
csrc/gaussian.cu (CUDA tensors) and csrc/cpu/gaussian.cpp (CPU tensors), one plan for both.

The functions and signatures are those of :mod:`fastvae.kernels.gaussian` (the Triton backend), so
:mod:`fastvae.ops.gaussian` registers either module the same way. Tensors come in the op's canonical
layout: ``(R, D)`` rows of a ``D``-dimensional latent, all of one dtype (float32, float16, bfloat16 or
float64) on one device. ``mu``, ``logvar``, ``eps``, the prior and ``x`` are made contiguous here
(a no-op for what the op passes); incoming gradients (``grad_z``, ``grad_kl``, ``grad``) are read in
place through their strides, since autograd hands over expanded (stride-0) gradients of sums, after a
cast to the inputs' dtype if theirs differs.

Outputs are allocated, and empty inputs decided, by :mod:`fastvae.plan.gaussian` (shared with the
triton backend): empty inputs launch nothing, and row outputs over ``D = 0`` are sums of nothing,
zeros. CUDA kernels run on the input device's current stream, CPU kernels on the calling thread
(large calls also on PyTorch's OpenMP threads: csrc/cpu/dtype.h).
"""

from __future__ import annotations

import torch

from fastvae.cuda import DTYPE_CODES, dtype_code, run_kernel
from fastvae.plan import gaussian as plan

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


def _ptr(t: torch.Tensor | None) -> int:
    """Device address of ``t``, 0 for an absent tensor."""
    return 0 if t is None else t.data_ptr()


def _dense(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def _sample(
    mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None, seed: int, z: torch.Tensor, kl_ptr: int
) -> None:
    """Shared by both samplers: fill ``z``, and the row KL at address ``kl_ptr`` unless it is 0.

    Pointers are taken inline and the dtype code looked up directly (the op has checked the dtype),
    with no helper calls: at user sizes each Python call costs the op a measurable share of its time.
    """
    rows, dim = mu.shape
    run_kernel(
        mu, "reparameterize_fwd",
        DTYPE_CODES[mu.dtype], mu.contiguous().data_ptr(), logvar.contiguous().data_ptr(),
        0 if eps is None else eps.contiguous().data_ptr(), z.data_ptr(), kl_ptr, rows, dim, seed,
    )  # fmt: skip


def reparameterize_fwd(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None, seed: int) -> torch.Tensor:
    """``z = mu + exp(logvar / 2) * eps``, eps from the Philox stream of ``seed`` when None.

    Args:
        mu, logvar: ``(R, D)``. eps: ``(R, D)`` or None. seed: int in ``[0, 2**63)``.

    Returns:
        ``z`` ``(R, D)`` in the input dtype.
    """
    z, launch = plan.reparameterize_fwd(mu)
    if launch:
        _sample(mu, logvar, eps, seed, z, 0)
    return z


def reparameterize_kl_fwd(
    mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`reparameterize_fwd` and the per-row ``KL(N(mu, e^logvar) || N(0, I))`` in one pass.

    Args:
        mu, logvar: ``(R, D)``. eps: ``(R, D)`` or None. seed: int in ``[0, 2**63)``.

    Returns:
        ``(z (R, D), kl (R,))`` in the input dtype.
    """
    (z, kl), launch = plan.reparameterize_kl_fwd(mu)
    if launch:
        _sample(mu, logvar, eps, seed, z, kl.data_ptr())
    return z, kl


def _reparameterize_grads(
    grad_z: torch.Tensor,
    grad_kl: torch.Tensor | None,
    mu: torch.Tensor | None,
    grad_mu: torch.Tensor | None,
    logvar: torch.Tensor,
    grad_logvar: torch.Tensor,
    seed: int,
) -> None:
    """Shared by both samplers' backward: fill ``grad_logvar``, and with ``grad_kl`` ``grad_mu``.

    Pointers and casts are taken inline (no helper calls): at user sizes each Python call costs the
    op a measurable share of its time.
    """
    logvar = logvar.contiguous()
    if grad_z.dtype is not logvar.dtype:
        grad_z = grad_z.to(logvar.dtype)
    kl_ptr = kl_stride = mu_ptr = grad_mu_ptr = 0
    if grad_kl is not None:
        if grad_kl.dtype is not logvar.dtype:
            grad_kl = grad_kl.to(logvar.dtype)
        kl_ptr, kl_stride = grad_kl.data_ptr(), grad_kl.stride(0)
        mu_ptr, grad_mu_ptr = mu.contiguous().data_ptr(), grad_mu.data_ptr()
    rows, dim = logvar.shape
    row_stride, col_stride = grad_z.stride()
    run_kernel(
        logvar, "reparameterize_bwd",
        DTYPE_CODES[logvar.dtype], grad_z.data_ptr(), row_stride, col_stride, kl_ptr, kl_stride, mu_ptr,
        logvar.data_ptr(), grad_mu_ptr, grad_logvar.data_ptr(), rows, dim, seed,
    )  # fmt: skip


def reparameterize_bwd(grad_z: torch.Tensor, logvar: torch.Tensor, seed: int) -> torch.Tensor:
    """Gradient of :func:`reparameterize_fwd` (stream noise, regenerated) for logvar.

    Args:
        grad_z: ``(R, D)``, any strides. logvar: ``(R, D)``. seed: the forward pass's seed.

    Returns:
        ``grad_logvar = grad_z * exp(logvar / 2) * eps / 2``, ``(R, D)`` in the input dtype.
    """
    grad_logvar, launch = plan.reparameterize_bwd(logvar)
    if launch:
        _reparameterize_grads(grad_z, None, None, None, logvar, grad_logvar, seed)
    return grad_logvar


def reparameterize_kl_bwd(
    grad_z: torch.Tensor, grad_kl: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, seed: int
) -> list[torch.Tensor]:
    """Gradients of :func:`reparameterize_kl_fwd` (stream noise, regenerated) for mu and logvar.

    Args:
        grad_z: ``(R, D)``, any strides. grad_kl: ``(R,)``, any stride. mu, logvar: ``(R, D)``.
        seed: the forward pass's seed.

    Returns:
        ``[grad_mu, grad_logvar]``, each ``(R, D)`` in the input dtype.
    """
    (grad_mu, grad_logvar), launch = plan.reparameterize_kl_bwd(mu)
    if launch:
        _reparameterize_grads(grad_z, grad_kl, mu, grad_mu, logvar, grad_logvar, seed)
    return [grad_mu, grad_logvar]


def gaussian_kl_fwd(
    mu: torch.Tensor, logvar: torch.Tensor, mu_p: torch.Tensor | None, logvar_p: torch.Tensor | None
) -> torch.Tensor:
    """Per-row ``KL(N(mu, e^logvar) || N(mu_p, e^logvar_p))``, to N(0, I) when the prior is None.

    Args:
        mu, logvar: ``(R, D)``. mu_p, logvar_p: ``(R, D)`` (the op broadcasts the prior), or both None.

    Returns:
        ``kl (R,)`` in the input dtype.
    """
    mu, logvar = mu.contiguous(), logvar.contiguous()
    has_prior = mu_p is not None and logvar_p is not None
    mu_p, logvar_p = (_dense(mu_p), _dense(logvar_p)) if has_prior else (None, None)
    rows, dim = mu.shape
    kl, launch = plan.gaussian_kl_fwd(mu)
    if not launch:
        return kl
    run_kernel(
        mu, "gaussian_kl_fwd",
        dtype_code(mu, "mu"), mu.data_ptr(), logvar.data_ptr(), _ptr(mu_p), _ptr(logvar_p), kl.data_ptr(),
        rows, dim,
    )  # fmt: skip
    return kl


def gaussian_kl_bwd(
    grad: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    mu_p: torch.Tensor | None,
    logvar_p: torch.Tensor | None,
) -> list[torch.Tensor]:
    """Gradients of :func:`gaussian_kl_fwd`.

    Args:
        grad: ``(R,)``, any stride. mu, logvar: ``(R, D)``. mu_p, logvar_p: ``(R, D)`` or both None.

    Returns:
        ``[grad_mu, grad_logvar]``, plus ``[grad_mu_p, grad_logvar_p]`` with a prior; each ``(R, D)``
        in the input dtype.
    """
    mu, logvar, grad = mu.contiguous(), logvar.contiguous(), grad.to(mu.dtype)
    has_prior = mu_p is not None and logvar_p is not None
    mu_p, logvar_p = (_dense(mu_p), _dense(logvar_p)) if has_prior else (None, None)
    rows, dim = mu.shape
    grads, launch = plan.gaussian_kl_bwd(mu, has_prior)
    if not launch:
        return grads
    prior_grads = grads[2:] if has_prior else [None, None]
    run_kernel(
        mu, "gaussian_kl_bwd",
        dtype_code(mu, "mu"), grad.data_ptr(), grad.stride(0), mu.data_ptr(), logvar.data_ptr(), _ptr(mu_p),
        _ptr(logvar_p), grads[0].data_ptr(), grads[1].data_ptr(), _ptr(prior_grads[0]), _ptr(prior_grads[1]),
        rows, dim,
    )  # fmt: skip
    return grads


def gaussian_log_prob_fwd(x: torch.Tensor, mu: torch.Tensor | None, logvar: torch.Tensor | None) -> torch.Tensor:
    """Per-row ``log N(x; mu, e^logvar)`` summed over D; mu = 0 and logvar = 0 where None.

    Args:
        x: ``(R, D)``. mu, logvar: ``(R, D)`` (the op broadcasts them) or None.

    Returns:
        ``(R,)`` in the input dtype.
    """
    x, mu, logvar = x.contiguous(), _dense(mu), _dense(logvar)
    rows, dim = x.shape
    out, launch = plan.gaussian_log_prob_fwd(x)
    if not launch:
        return out
    run_kernel(
        x, "gaussian_log_prob_fwd",
        dtype_code(x, "x"), x.data_ptr(), _ptr(mu), _ptr(logvar), out.data_ptr(), rows, dim,
    )
    return out


def gaussian_log_prob_bwd(
    grad: torch.Tensor, x: torch.Tensor, mu: torch.Tensor | None, logvar: torch.Tensor | None
) -> list[torch.Tensor]:
    """Gradients of :func:`gaussian_log_prob_fwd`.

    Args:
        grad: ``(R,)``, any stride. x: ``(R, D)``. mu, logvar: ``(R, D)`` or None.

    Returns:
        ``[grad_x]``, then ``grad_mu`` if mu is given, then ``grad_logvar`` if logvar is given; each
        ``(R, D)`` in the input dtype.
    """
    x, mu, logvar, grad = x.contiguous(), _dense(mu), _dense(logvar), grad.to(x.dtype)
    rows, dim = x.shape
    (grad_x, grad_mu, grad_logvar), launch = plan.gaussian_log_prob_bwd(x, mu is not None, logvar is not None)
    grads = [t for t in (grad_x, grad_mu, grad_logvar) if t is not None]
    if not launch:
        return grads
    run_kernel(
        x, "gaussian_log_prob_bwd",
        dtype_code(x, "x"), grad.data_ptr(), grad.stride(0), x.data_ptr(), _ptr(mu), _ptr(logvar),
        grad_x.data_ptr(), _ptr(grad_mu), _ptr(grad_logvar), rows, dim,
    )  # fmt: skip
    return grads
