"""Gaussian ops: reparameterised sampling (with its KL), KL divergence and log-density.

Public functions check their arguments, flatten ``(..., D)`` inputs to the canonical ``(R, D)``
layout (contiguous: a non-contiguous input is copied once), and call custom ops in the ``fastvae``
namespace. Each custom op has a fake (shape) implementation and an autograd formula whose backward
is itself a custom op, and dispatches at run time to the backend in force (:mod:`fastvae.backend`),
so ``torch.compile(fullgraph=True)`` traces code that uses them without a graph break.

Sampling ops draw their noise from the Philox stream of :mod:`fastvae.reference.philox`; backward
regenerates it from the seed instead of storing it.
"""

import math
from typing import Optional

import torch

from fastvae import backend
from fastvae.ops import _checks
from fastvae.ops._dispatch import define
from fastvae.ops._seed import check_seed
from fastvae.reference import gaussian as reference

__all__ = ["reparameterize", "reparameterize_kl", "gaussian_kl", "gaussian_log_prob"]

#: The backend ops of this family, as every backend names them (``<op>_fwd`` / ``<op>_bwd``).
OP_NAMES: tuple[str, ...] = (
    "reparameterize_fwd",
    "reparameterize_bwd",
    "reparameterize_kl_fwd",
    "reparameterize_kl_bwd",
    "gaussian_kl_fwd",
    "gaussian_kl_bwd",
    "gaussian_log_prob_fwd",
    "gaussian_log_prob_bwd",
)
backend.register("torch", "fastvae.reference.gaussian", OP_NAMES)
backend.register("triton", "fastvae.kernels.gaussian", OP_NAMES)
backend.register("cuda", "fastvae.cuda.gaussian", OP_NAMES)
backend.register("cpu", "fastvae.cuda.gaussian", OP_NAMES)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``(..., D)`` -> contiguous ``(R, D)`` (the tensor itself when it is that already)."""
    if t.dim() == 2 and t.is_contiguous():
        return t
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1]).contiguous()


def _shaped(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``t`` viewed as ``shape`` (itself when it has that shape: a 2-D input needs no view)."""
    return t if t.shape == shape else t.reshape(shape)


def _prior_rows(prior: torch.Tensor) -> torch.Tensor:
    """A prior expanded to ``(..., D)`` as ``(R, D)`` rows, without copying a prior that is the same
    for every row (shape ``(D,)``, ``(1, D)`` or a scalar): that comes back as a view of one
    contiguous ``(D,)`` row with row stride 0, which the torch and triton backends read in place (the
    cuda and cpu backends copy it out). A prior that varies across rows is made contiguous."""
    rows = prior.reshape(math.prod(prior.shape[:-1]), prior.shape[-1])
    if rows.shape[0] > 1 and rows.stride(0) == 0:
        return rows if rows.stride(1) == 1 else rows[0].contiguous().expand(rows.shape)
    return rows.contiguous()


def _row_grad(grad: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(like.shape[:-1], dtype=like.dtype, device=like.device) if grad is None else grad


def _explicit_eps_grads(
    grad_z: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d logvar, d eps)`` of ``z = mu + exp(logvar / 2) * eps`` for a caller-given eps."""
    acc = reference.compute_dtype(logvar.dtype)
    scaled = grad_z.to(acc) * torch.exp(0.5 * logvar.to(acc))
    return (0.5 * scaled * eps.to(acc)).to(logvar.dtype), scaled.to(eps.dtype)


# --- reparameterize: z = mu + exp(logvar / 2) * eps -----------------------------------------------
# Backward regenerates eps from the seed: d z / d mu = 1, d z / d logvar = exp(logvar / 2) eps / 2.

_reparameterize_bwd = define(
    "reparameterize_bwd",
    "(Tensor grad_z, Tensor logvar, Tensor seed) -> Tensor",
    lambda grad_z, logvar, seed: torch.empty_like(logvar),
)


def _reparameterize_setup(ctx, inputs, output):
    _, logvar, eps, ctx.seed = inputs
    ctx.save_for_backward(logvar, eps)


def _reparameterize_grad(ctx, grad_z):
    logvar, eps = ctx.saved_tensors
    if eps is not None:
        grad_logvar, grad_eps = _explicit_eps_grads(grad_z, logvar, eps)
        return grad_z, grad_logvar, grad_eps, None
    grad_logvar = _reparameterize_bwd(grad_z, logvar, ctx.seed) if ctx.needs_input_grad[1] else None
    return grad_z, grad_logvar, None, None


_reparameterize = define(
    "reparameterize_fwd",
    "(Tensor mu, Tensor logvar, Tensor? eps, Tensor seed) -> Tensor",
    lambda mu, logvar, eps, seed: torch.empty_like(mu),
    setup_context=_reparameterize_setup,
    backward=_reparameterize_grad,
)


# --- reparameterize_kl: z as above, and kl = 0.5 sum_D(mu^2 + e^logvar - 1 - logvar) -------------

_reparameterize_kl_bwd = define(
    "reparameterize_kl_bwd",
    "(Tensor grad_z, Tensor grad_kl, Tensor mu, Tensor logvar, Tensor seed) -> Tensor[]",
    lambda grad_z, grad_kl, mu, logvar, seed: [torch.empty_like(mu), torch.empty_like(logvar)],
)


def _reparameterize_kl_setup(ctx, inputs, output):
    mu, logvar, eps, ctx.seed = inputs
    ctx.save_for_backward(mu, logvar, eps)


def _reparameterize_kl_grad(ctx, grad_z, grad_kl):
    mu, logvar, eps = ctx.saved_tensors
    grad_z = torch.zeros_like(mu) if grad_z is None else grad_z
    grad_kl = _row_grad(grad_kl, mu)
    if eps is None:
        grad_mu, grad_logvar = _reparameterize_kl_bwd(grad_z, grad_kl, mu, logvar, ctx.seed)
        return grad_mu, grad_logvar, None, None
    grad_mu_kl, grad_logvar_kl = reference.gaussian_kl_bwd(grad_kl, mu, logvar, None, None)
    grad_logvar_z, grad_eps = _explicit_eps_grads(grad_z, logvar, eps)
    return grad_z + grad_mu_kl, grad_logvar_z + grad_logvar_kl, grad_eps, None


_reparameterize_kl = define(
    "reparameterize_kl_fwd",
    "(Tensor mu, Tensor logvar, Tensor? eps, Tensor seed) -> (Tensor, Tensor)",
    lambda mu, logvar, eps, seed: (torch.empty_like(mu), mu.new_empty(mu.shape[:-1])),
    setup_context=_reparameterize_kl_setup,
    backward=_reparameterize_kl_grad,
)


# --- gaussian_kl: KL(N(mu, e^logvar) || N(mu_p, e^logvar_p)) per row ------------------------------

_gaussian_kl_bwd = define(
    "gaussian_kl_bwd",
    "(Tensor grad, Tensor mu, Tensor logvar, Tensor? mu_p, Tensor? logvar_p) -> Tensor[]",
    lambda grad, mu, logvar, mu_p, logvar_p: [torch.empty_like(mu) for _ in range(2 if mu_p is None else 4)],
)


def _gaussian_kl_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _gaussian_kl_grad(ctx, grad):
    mu, logvar, mu_p, logvar_p = ctx.saved_tensors
    grads = _gaussian_kl_bwd(grad, mu, logvar, mu_p, logvar_p)
    return tuple(grads) + (None, None) * (mu_p is None)


_gaussian_kl = define(
    "gaussian_kl_fwd",
    "(Tensor mu, Tensor logvar, Tensor? mu_p, Tensor? logvar_p) -> Tensor",
    lambda mu, logvar, mu_p, logvar_p: mu.new_empty(mu.shape[:-1]),
    setup_context=_gaussian_kl_setup,
    backward=_gaussian_kl_grad,
)


# --- gaussian_log_prob: log N(x; mu, e^logvar) per row --------------------------------------------

_gaussian_log_prob_bwd = define(
    "gaussian_log_prob_bwd",
    "(Tensor grad, Tensor x, Tensor? mu, Tensor? logvar) -> Tensor[]",
    lambda grad, x, mu, logvar: [torch.empty_like(x) for _ in range(1 + (mu is not None) + (logvar is not None))],
)


def _gaussian_log_prob_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _gaussian_log_prob_grad(ctx, grad):
    x, mu, logvar = ctx.saved_tensors
    grads = iter(_gaussian_log_prob_bwd(grad, x, mu, logvar))
    grad_x = next(grads)
    grad_mu = None if mu is None else next(grads)
    grad_logvar = None if logvar is None else next(grads)
    return grad_x, grad_mu, grad_logvar


_gaussian_log_prob = define(
    "gaussian_log_prob_fwd",
    "(Tensor x, Tensor? mu, Tensor? logvar) -> Tensor",
    lambda x, mu, logvar: x.new_empty(x.shape[:-1]),
    setup_context=_gaussian_log_prob_setup,
    backward=_gaussian_log_prob_grad,
)


# --- public functions -----------------------------------------------------------------------------


def _pair_rows(mu: object, logvar: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``mu`` and ``logvar`` checked, as ``(R, D)`` rows (:func:`_rows`).

    The common case (two contiguous 2-D tensors of one float dtype, shape and device) is decided in
    one expression, which for CPU tensors builds no object (no ``torch.device``): at user sizes each
    such call costs the op measurable time. Anything else takes the checks that name what is wrong.
    """
    if (
        isinstance(mu, torch.Tensor)
        and isinstance(logvar, torch.Tensor)
        and mu.dtype in _checks.FLOAT_DTYPE_SET
        and logvar.dtype is mu.dtype
        and mu.ndim == 2
        and logvar.shape == mu.shape
        and (mu.is_cpu and logvar.is_cpu or mu.device == logvar.device)
        and mu.is_contiguous()
        and logvar.is_contiguous()
    ):
        return mu, logvar
    mu = _checks.tensor(mu, "mu", min_dim=1)
    logvar = _checks.tensor(logvar, "logvar", min_dim=1)
    _checks.same_dtype_and_device([("mu", mu), ("logvar", logvar)])
    _checks.same_shape("logvar", logvar, mu.shape, "the shape of mu")
    return _rows(mu), _rows(logvar)


def _check_eps(eps: object, mu: torch.Tensor) -> Optional[torch.Tensor]:
    """``eps`` checked against ``mu`` (the caller's, of any shape ``(..., D)``), as ``(R, D)`` rows;
    None stays None."""
    if eps is None:
        return None
    eps = _checks.tensor(eps, "eps")
    _checks.same_dtype_and_device([("mu", mu), ("eps", eps)])
    _checks.same_shape("eps", eps, mu.shape, "the shape of mu")
    return _rows(eps)


def _seed_for(eps: Optional[torch.Tensor], seed: object) -> Optional[int]:
    """The seed argument of a sampling op: ``seed`` checked (:func:`check_seed`), None to have the op
    draw one; with an explicit eps and no seed, 0 (the noise stream is unused: nothing is drawn)."""
    seed = check_seed(seed)
    return 0 if seed is None and eps is not None else seed


def _reduce(rows: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return rows.sum()
    if reduction == "mean":
        return rows.mean()
    return rows


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, *, eps: Optional[torch.Tensor] = None, seed: Optional[int] = None
) -> torch.Tensor:
    """Sample ``z = mu + exp(logvar / 2) * eps`` from ``N(mu, e^logvar)`` by the reparameterisation trick.

    Args:
        mu: ``(..., D)`` means; float16, bfloat16, float32 or float64.
        logvar: ``(..., D)`` log-variances, same dtype and device as ``mu``.
        eps: optional ``(..., D)`` standard-normal noise to use instead of sampling (gradients flow
            to it too).
        seed: optional int in ``[0, 2**63)`` selecting the noise stream; None draws one from torch's
            default CPU generator, so ``torch.manual_seed`` makes runs repeatable. Ignored with ``eps``.

    Returns:
        ``z`` of shape ``(..., D)`` in the dtype of ``mu``. Backward regenerates the noise from the
        seed rather than storing it.

    Raises:
        TypeError: non-tensor or non-floating inputs, mixed dtypes, a non-int seed.
        ValueError: mismatched shapes or devices, a 0-dim input, a seed out of range.
    """
    rows_mu, rows_logvar = _pair_rows(mu, logvar)
    rows_eps = None
    if eps is not None or seed is not None:
        rows_eps = _check_eps(eps, mu)
        seed = _seed_for(rows_eps, seed)
    z = _reparameterize(rows_mu, rows_logvar, rows_eps, seed)
    return z if mu.ndim == 2 else z.reshape(mu.shape)


def reparameterize_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    eps: Optional[torch.Tensor] = None,
    seed: Optional[int] = None,
    reduction: str = "none",
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`reparameterize` and ``KL(N(mu, e^logvar) || N(0, I))`` in one pass.

    Args:
        mu, logvar, eps, seed: as for :func:`reparameterize`.
        reduction: ``"none"`` for the per-row KL summed over ``D`` (shape ``mu.shape[:-1]``),
            ``"sum"`` for its total, ``"mean"`` for its mean over rows (the usual ``kld_loss``).

    Returns:
        ``(z, kl)``: ``z`` ``(..., D)`` and ``kl`` as ``reduction`` says, both in the dtype of ``mu``.
        ``kl = 0.5 * sum_D(mu^2 + e^logvar - 1 - logvar)``. The mean over zero rows is NaN, as
        ``torch.mean``'s.

    Raises:
        TypeError, ValueError: as for :func:`reparameterize`; an unknown ``reduction``.
    """
    rows_mu, rows_logvar = _pair_rows(mu, logvar)
    rows_eps = None
    if eps is not None or seed is not None:
        rows_eps = _check_eps(eps, mu)
        seed = _seed_for(rows_eps, seed)
    if reduction != "none":
        reduction = _checks.choice(reduction, "reduction", _checks.REDUCTIONS)
    z, kl = _reparameterize_kl(rows_mu, rows_logvar, rows_eps, seed)
    if mu.ndim != 2:
        z, kl = z.reshape(mu.shape), kl.reshape(mu.shape[:-1])
    return z, _reduce(kl, reduction)


def gaussian_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    mu_p: Optional[torch.Tensor] = None,
    logvar_p: Optional[torch.Tensor] = None,
    *,
    reduction: str = "none",
) -> torch.Tensor:
    """``KL(N(mu, e^logvar) || N(mu_p, e^logvar_p))`` for diagonal Gaussians, summed over the last dim.

    Args:
        mu: ``(..., D)`` posterior means; float16, bfloat16, float32 or float64.
        logvar: ``(..., D)`` posterior log-variances, same dtype and device.
        mu_p: prior means broadcastable to ``mu``'s shape (e.g. ``(D,)``), or None for 0.
        logvar_p: prior log-variances broadcastable to ``mu``'s shape, or None for 0 (unit variance).
            With both None the prior is ``N(0, I)``. A prior that is the same for every row
            (``(D,)``, ``(1, D)``, a scalar) is read in place by the torch and triton backends, never
            copied out to ``mu``'s shape (the cuda and cpu backends copy it).
        reduction: ``"none"`` (per row, shape ``mu.shape[:-1]``), ``"sum"`` or ``"mean"`` over rows.

    Returns:
        The KL in the dtype of ``mu``: ``0.5 * sum_D(mu^2 + e^lv - 1 - lv)`` for the standard prior,
        ``0.5 * sum_D(e^(lv - lv_p) - 1 - (lv - lv_p) + (mu - mu_p)^2 e^-lv_p)`` otherwise.
        The sum over zero rows is 0 and the mean over zero rows is NaN, as ``torch.mean``'s.

    Raises:
        TypeError: non-floating or mixed dtypes.
        ValueError: shapes that do not match or broadcast, mixed devices, an unknown ``reduction``.
    """
    rows_mu, rows_logvar = _pair_rows(mu, logvar)
    if reduction != "none":
        reduction = _checks.choice(reduction, "reduction", _checks.REDUCTIONS)
    if mu_p is None and logvar_p is None:
        kl = _gaussian_kl(rows_mu, rows_logvar, None, None)
    else:
        prior = []
        for name, value in (("mu_p", mu_p), ("logvar_p", logvar_p)):
            if value is None:
                value = torch.zeros((), dtype=mu.dtype, device=mu.device)
            value = _checks.tensor(value, name)
            _checks.same_dtype_and_device([("mu", mu), (name, value)])
            prior.append(_prior_rows(_checks.broadcast_to(name, value, mu.shape, "mu")))
        kl = _gaussian_kl(rows_mu, rows_logvar, prior[0], prior[1])
    return _reduce(kl if mu.ndim == 2 else kl.reshape(mu.shape[:-1]), reduction)


def gaussian_log_prob(
    x: torch.Tensor, mu: Optional[torch.Tensor] = None, logvar: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``log N(x; mu, e^logvar)`` of a diagonal Gaussian, summed over the last dim.

    Args:
        x: ``(..., D)`` points; float16, bfloat16, float32 or float64.
        mu: means broadcastable to ``x``'s shape, or None for 0.
        logvar: log-variances broadcastable to ``x``'s shape, or None for 0 (unit variance).

    Returns:
        ``-0.5 * sum_D(log 2 pi + logvar + (x - mu)^2 e^-logvar)``, shape ``x.shape[:-1]``, dtype of ``x``.

    Raises:
        TypeError: non-floating or mixed dtypes.
        ValueError: shapes that do not broadcast to ``x``'s, mixed devices, a 0-dim ``x``.
    """
    x = _checks.tensor(x, "x", min_dim=1)
    params = []
    for name, value in (("mu", mu), ("logvar", logvar)):
        if value is not None:
            value = _checks.tensor(value, name)
            _checks.same_dtype_and_device([("x", x), (name, value)])
            value = _rows(_checks.broadcast_to(name, value, x.shape, "x"))
        params.append(value)
    return _shaped(_gaussian_log_prob(_rows(x), params[0], params[1]), x.shape[:-1])
