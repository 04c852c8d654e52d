"""Sample-based divergences between two distributions, shared by the zoo's latent regularisers.

* :func:`mmd`: the squared maximum mean discrepancy with an RBF or inverse multiquadratic (IMQ)
  kernel, as the unbiased U-statistic (Gretton et al. 2012; Algorithm 2 of Tolstikhin et al. 2018).
  Used by InfoVAE and WAE-MMD.
* :func:`sliced_wasserstein`: the sliced Wasserstein distance ``SW_p^p`` estimated with ``L``
  projection directions (Kolouri et al. 2018). Used by SWAE.

Both take samples ``x (N, D)`` and ``y (M, D)`` (any floating dtype, one device) and return a 0-dim
tensor in their dtype, differentiable with respect to both.
"""

from __future__ import annotations

import math

import torch

__all__ = ["KERNELS", "kernel_matrix", "mmd", "random_directions", "sliced_wasserstein"]

#: Values of the ``kernel`` argument of :func:`mmd`.
KERNELS: tuple[str, ...] = ("rbf", "imq")


def _check_samples(x: object, y: object) -> tuple[torch.Tensor, torch.Tensor]:
    checked = []
    for name, value in (("x", x), ("y", y)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() != 2:
            shape = getattr(value, "shape", value)
            raise ValueError(f"{name} must be a floating-point tensor of shape (N, D), got {shape!r}")
        checked.append(value)
    x, y = checked
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension D, got {tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


def kernel_matrix(x: torch.Tensor, y: torch.Tensor, kernel: str, scale: float) -> torch.Tensor:
    """``k(x_i, y_j)`` for every pair: ``x (N, D)``, ``y (M, D)`` -> ``(N, M)``.

    ``"rbf"``: ``exp(-||x - y||^2 / scale)`` (a Gaussian kernel of variance ``scale / 2``);
    ``"imq"``: ``scale / (scale + ||x - y||^2)``. Squared distances are taken from explicit
    differences, so gradients are exact (and zero) at coincident points.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(map(repr, KERNELS))}, got {kernel!r}")
    squared = (x.unsqueeze(1) - y.unsqueeze(0)).pow(2).sum(-1)
    if kernel == "rbf":
        return torch.exp(-squared / scale)
    return scale / (scale + squared)


def mmd(x: torch.Tensor, y: torch.Tensor, *, kernel: str = "rbf", scale: float | None = None) -> torch.Tensor:
    """Unbiased estimate (U-statistic) of ``MMD^2`` between the distributions of ``x`` and ``y``::

        1/(N(N-1)) sum_{i != j} k(x_i, x_j) + 1/(M(M-1)) sum_{i != j} k(y_i, y_j) - 2/(NM) sum_{i,j} k(x_i, y_j)

    Args:
        x: ``(N, D)`` samples of one distribution (e.g. ``q(z)``), ``N >= 2``.
        y: ``(M, D)`` samples of the other (e.g. the prior), ``M >= 2``.
        kernel: ``"rbf"`` or ``"imq"`` (see :func:`kernel_matrix`).
        scale: the kernel's scale ``C``; None for ``2 D``, the expected squared distance between two
            draws of ``N(0, I_D)`` (Tolstikhin et al. 2018, section 4: ``C = 2 d_z sigma_z^2``).

    Returns:
        A 0-dim tensor (can be slightly negative: the estimate is unbiased).
    """
    x, y = _check_samples(x, y)
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples on each side, got N={n}, M={m}")
    if scale is None:
        scale = 2.0 * x.shape[1]
    if not (isinstance(scale, (int, float)) and 0 < scale < math.inf):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    k_xx = kernel_matrix(x, x, kernel, scale)
    k_yy = kernel_matrix(y, y, kernel, scale)
    k_xy = kernel_matrix(x, y, kernel, scale)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2.0 * k_xy.mean()


def random_directions(
    count: int, dim: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """``count`` directions drawn uniformly on the unit sphere ``S^(dim-1)``: ``(count, dim)``.

    Normalised standard-normal draws from torch's default generator (so ``torch.manual_seed`` repeats them).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    directions = torch.randn(count, dim, dtype=dtype, device=device)
    return directions / directions.norm(dim=1, keepdim=True)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor, *, p: float = 2.0) -> torch.Tensor:
    """Monte-Carlo sliced Wasserstein distance ``SW_p^p`` between the empirical measures of ``x`` and ``y``::

        (1/L) sum_l (1/N) sum_n | sort(x theta_l)_n - sort(y theta_l)_n |^p

    For each direction the inner sum is the exact ``W_p^p`` between the two 1-D projected empirical
    measures (equal sizes: the optimal coupling pairs order statistics).

    Args:
        x: ``(N, D)`` samples (e.g. encoded data).
        y: ``(N, D)`` samples of the target (e.g. prior draws), the same ``N``.
        directions: ``(L, D)`` unit projection directions (see :func:`random_directions`).
        p: the power of the ground cost ``|a - b|^p``, ``p >= 1``.

    Returns:
        A 0-dim tensor.
    """
    x, y = _check_samples(x, y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same number of samples, got {x.shape[0]} and {y.shape[0]}")
    if not isinstance(directions, torch.Tensor) or directions.dim() != 2 or directions.shape[1] != x.shape[1]:
        raise ValueError(f"directions must have shape (L, {x.shape[1]}), got {getattr(directions, 'shape', directions)!r}")
    if not (isinstance(p, (int, float)) and 1 <= p < math.inf):
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")
    projected_x = (x @ directions.T).sort(dim=0).values
    projected_y = (y @ directions.T).sort(dim=0).values
    return (projected_x - projected_y).abs().pow(p).mean()
