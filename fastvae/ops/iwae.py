"""Importance-weighted bounds: IWAE log-weights, and the IWAE and MIWAE log-mean-exp bounds.

The public functions check their arguments and bring inputs to the canonical layouts of
:mod:`fastvae.reference.iwae` (sample dim first, batch dims flattened, contiguous). The bounds'
backward passes use the normalised importance weights ``softmax(log_w)`` over the sample dim,
recomputed from the log-sum-exp (a second, non-differentiable output of each bound's custom op,
kept in float32 or float64) rather than stored.
"""

import math

import torch

from fastvae import backend
from fastvae.ops import _checks
from fastvae.ops._dispatch import define

__all__ = ["iwae_log_weights", "iwae_bound", "miwae_bound"]

#: The backend ops of this family, as every backend names them (``<op>_fwd`` / ``<op>_bwd``).
OP_NAMES: tuple[str, ...] = (
    "iwae_log_weights_fwd",
    "iwae_log_weights_bwd",
    "iwae_bound_fwd",
    "iwae_bound_bwd",
    "miwae_bound_fwd",
    "miwae_bound_bwd",
)
backend.register("torch", "fastvae.reference.iwae", OP_NAMES)
backend.register("triton", "fastvae.kernels.iwae", OP_NAMES)
backend.register("cuda", "fastvae.cuda.iwae", OP_NAMES)
backend.register("cpu", "fastvae.cuda.iwae", OP_NAMES)


# --- iwae_log_weights: log p(x|z) + log N(z; 0, I) - log N(z; mu, e^logvar) -----------------------

_iwae_log_weights_bwd = define(
    "iwae_log_weights_bwd",
    "(Tensor grad, Tensor z, Tensor mu, Tensor logvar) -> Tensor[]",
    lambda grad, z, mu, logvar: [torch.empty_like(z), torch.empty_like(mu), torch.empty_like(logvar)],
)


def _iwae_log_weights_setup(ctx, inputs, output):
    _, z, mu, logvar = inputs
    ctx.save_for_backward(z, mu, logvar)


def _iwae_log_weights_grad(ctx, grad):
    z, mu, logvar = ctx.saved_tensors
    grad_z, grad_mu, grad_logvar = _iwae_log_weights_bwd(grad, z, mu, logvar)
    return grad, grad_z, grad_mu, grad_logvar


_iwae_log_weights = define(
    "iwae_log_weights_fwd",
    "(Tensor log_px_z, Tensor z, Tensor mu, Tensor logvar) -> Tensor",
    lambda log_px_z, z, mu, logvar: z.new_empty(z.shape[:-1]),
    setup_context=_iwae_log_weights_setup,
    backward=_iwae_log_weights_grad,
)


# --- iwae_bound and miwae_bound: log-mean-exp over K, and its mean over M ---------------------------
# Each returns the log-sum-exp too (in float32, float64 for float64; no gradient): backward
# recomputes the normalised weights softmax(log_w) from it.


def _lse_like(log_w: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Fake log-sum-exp output: kept in the compute dtype (float32, float64 for float64)."""
    return log_w.new_empty(shape, dtype=torch.float64 if log_w.dtype == torch.float64 else torch.float32)


def _bound_setup(ctx, inputs, output):
    """Shared by both bounds: save log_w and the log-sum-exp output, which takes no gradient."""
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(inputs[0], output[1])


_BOUND_BWD_SCHEMA = "(Tensor grad, Tensor log_w, Tensor lse) -> Tensor"

_iwae_bound_bwd = define(
    "iwae_bound_bwd", _BOUND_BWD_SCHEMA, lambda grad, log_w, lse: torch.empty_like(log_w)
)


def _iwae_bound_grad(ctx, grad, _grad_lse):
    log_w, lse = ctx.saved_tensors
    return _iwae_bound_bwd(grad, log_w, lse)


_iwae_bound = define(
    "iwae_bound_fwd",
    "(Tensor log_w) -> (Tensor, Tensor)",
    lambda log_w: (log_w.new_empty(log_w.shape[1:]), _lse_like(log_w, log_w.shape[1:])),
    setup_context=_bound_setup,
    backward=_iwae_bound_grad,
)

_miwae_bound_bwd = define(
    "miwae_bound_bwd", _BOUND_BWD_SCHEMA, lambda grad, log_w, lse: torch.empty_like(log_w)
)


def _miwae_bound_grad(ctx, grad, _grad_lse):
    log_w, lse = ctx.saved_tensors
    return _miwae_bound_bwd(grad, log_w, lse)


_miwae_bound = define(
    "miwae_bound_fwd",
    "(Tensor log_w) -> (Tensor, Tensor)",
    lambda log_w: (log_w.new_empty(log_w.shape[2:]), _lse_like(log_w, log_w.shape[1:])),
    setup_context=_bound_setup,
    backward=_miwae_bound_grad,
)


# --- public functions -----------------------------------------------------------------------------


def iwae_log_weights(
    log_px_z: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """Importance log-weights ``log p(x|z) + log N(z; 0, I) - log N(z; mu, e^logvar)``.

    The Gaussian terms are summed over the latent dim ``D`` in one pass over ``z``.

    Args:
        log_px_z: ``(K, ...)`` decoder log-likelihoods ``log p(x|z_k)``.
        z: ``(K, ..., D)`` samples from the posterior, sample dim first.
        mu: ``(..., D)`` posterior means (shared by the ``K`` samples).
        logvar: ``(..., D)`` posterior log-variances.
            All four of one floating dtype (float16, bfloat16, float32, float64) and device.

    Returns:
        ``log_w`` of shape ``(K, ...)`` in the input dtype.

    Raises:
        TypeError: non-floating or mixed dtypes.
        ValueError: shapes that disagree with ``z``'s, mixed devices, ``z`` with fewer than 2 dims.
    """
    z = _checks.tensor(z, "z", min_dim=2)
    log_px_z = _checks.tensor(log_px_z, "log_px_z")
    mu = _checks.tensor(mu, "mu")
    logvar = _checks.tensor(logvar, "logvar")
    _checks.same_dtype_and_device([("z", z), ("log_px_z", log_px_z), ("mu", mu), ("logvar", logvar)])
    _checks.same_shape("mu", mu, z.shape[1:], "z's shape without the sample dim")
    _checks.same_shape("logvar", logvar, z.shape[1:], "z's shape without the sample dim")
    _checks.same_shape("log_px_z", log_px_z, z.shape[:-1], "z's shape without the latent dim")
    samples, dim = z.shape[0], z.shape[-1]
    batch = math.prod(z.shape[1:-1])
    log_w = _iwae_log_weights(
        log_px_z.reshape(samples, batch).contiguous(),
        z.reshape(samples, batch, dim).contiguous(),
        mu.reshape(batch, dim).contiguous(),
        logvar.reshape(batch, dim).contiguous(),
    )
    return log_w.reshape(z.shape[:-1])


def _check_log_w(log_w: object, min_dim: int) -> torch.Tensor:
    return _checks.tensor(log_w, "log_w", min_dim=min_dim)


def _check_samples(log_w: torch.Tensor, dim: int, name: str, what: str) -> None:
    if log_w.shape[dim] == 0:
        raise ValueError(f"log_w must have at least one {what} along {name}={dim}, got shape {tuple(log_w.shape)}")


def iwae_bound(log_w: torch.Tensor, *, dim: int = 0) -> torch.Tensor:
    """The importance-weighted bound ``log (1/K) sum_k exp(log_w_k)``: a log-mean-exp over ``dim``.

    Its gradient with respect to ``log_w`` is the normalised importance weights
    ``softmax(log_w, dim)`` (times the incoming gradient), computed from the saved bound.

    Args:
        log_w: ``(..., K, ...)`` log importance weights with the ``K`` samples along ``dim``.
        dim: the sample dim.

    Returns:
        The bound, ``log_w``'s shape without ``dim``, in ``log_w``'s dtype. Where every weight is
        ``-inf`` the bound is ``-inf`` and its gradient zero.

    Raises:
        TypeError: non-floating ``log_w``, non-int ``dim``.
        ValueError: ``dim`` out of range, no samples (``K = 0``).
    """
    log_w = _check_log_w(log_w, 1)
    dim = _checks.dim_index(dim, "dim", log_w.dim())
    _check_samples(log_w, dim, "dim", "sample")
    moved = log_w.movedim(dim, 0)
    rest = moved.shape[1:]
    bound, _ = _iwae_bound(moved.reshape(moved.shape[0], math.prod(rest)).contiguous())
    return bound.reshape(rest)


def miwae_bound(log_w: torch.Tensor, *, k_dim: int = 0, m_dim: int = 1) -> torch.Tensor:
    """The MIWAE bound: the mean over ``m_dim`` of the IWAE bound over ``k_dim``.

    ``(1/M) sum_m log (1/K) sum_k exp(log_w[k, m])`` (Rainforth et al. 2018); its gradient is the
    normalised weights over ``k_dim`` divided by ``M``.

    Args:
        log_w: log importance weights with ``K`` samples along ``k_dim`` and ``M`` groups along
            ``m_dim``, other dims batch.
        k_dim: the importance-sample dim.
        m_dim: the dim averaged over; must differ from ``k_dim``.

    Returns:
        The bound, ``log_w``'s shape without both dims, in ``log_w``'s dtype.

    Raises:
        TypeError: non-floating ``log_w``, non-int dims.
        ValueError: dims out of range or equal, ``K = 0`` or ``M = 0``.
    """
    log_w = _check_log_w(log_w, 2)
    k_dim = _checks.dim_index(k_dim, "k_dim", log_w.dim())
    m_dim = _checks.dim_index(m_dim, "m_dim", log_w.dim())
    if k_dim == m_dim:
        raise ValueError(f"k_dim and m_dim must name different dims, both are {k_dim}")
    _check_samples(log_w, k_dim, "k_dim", "sample")
    _check_samples(log_w, m_dim, "m_dim", "group")
    moved = log_w.movedim((k_dim, m_dim), (0, 1))
    rest = moved.shape[2:]
    canonical = moved.reshape(moved.shape[0], moved.shape[1], math.prod(rest)).contiguous()
    bound, _ = _miwae_bound(canonical)
    return bound.reshape(rest)
