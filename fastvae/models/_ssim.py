"""SSIM and multi-scale SSIM (Wang, Simoncelli & Bovik 2003), differentiable, for image losses.

Definitions (Wang et al. 2004, "Image quality assessment: from error visibility to structural
similarity"; Wang et al. 2003, "Multiscale structural similarity for image quality assessment"):

* window: the 1-D Gaussian ``g_i = exp(-d_i^2 / (2 sigma^2)) / sum_j exp(-d_j^2 / (2 sigma^2))`` with
  ``d_i = i - (size - 1) / 2``, applied separably (rows then columns, so the 2-D window is the outer
  product ``g g^T``, which also sums to 1), per channel, with no padding ("valid"): an ``H x W``
  image gives ``(H - size + 1) x (W - size + 1)`` local statistics. Defaults ``size = 11``,
  ``sigma = 1.5``.
* local statistics with that window ``w``: ``mu_x = w * x``, ``sigma_x^2 = w * x^2 - mu_x^2``,
  ``sigma_xy = w * (x y) - mu_x mu_y``;
* ``l = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)``, ``cs = (2 sigma_xy + C2) / (sigma_x^2 + sigma_y^2 + C2)``,
  ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with ``L`` the data range (1 for images in [0, 1]);
* ``SSIM(x, y)``: the mean over positions (and channels) of the map ``l * cs``;
* ``MS-SSIM(x, y) = SSIM_S^{w_S} * prod_{j < S} CS_j^{w_j}`` per channel, then averaged over
  channels. Scale 1 is the image itself; each next scale is the previous one 2 x 2 average-pooled
  (stride 2, odd sides floored). ``CS_j`` is the mean of the ``cs`` map at scale ``j``, ``SSIM_S``
  the mean of ``l * cs`` at the coarsest scale ``S`` (the luminance term enters at the coarsest
  scale only, as in the paper and its common implementations).

Negative means. A negative ``CS_j`` or ``SSIM_S`` (anti-correlated images at that scale) has no real
fractional power. As in pytorch-msssim and TensorFlow's ``tf.image.ssim_multiscale``, the value
clamps every mean at 0 (ReLU) before its power: ``MS-SSIM = prod_j max(v_j, 0)^{w_j}``, which is 0
whenever a scale with a positive weight has a mean ``v_j <= 0``. That function is flat (zero
gradient) wherever it is 0 and its derivative is infinite at ``v_j = 0+``, so the backward pass uses
a surrogate (:func:`clamped_weighted_product`): the derivative with respect to ``v_k`` is::

    w_k * max(|v_k|, FLOOR)^(w_k - 1) * prod_{j != k} max(v_j, FLOOR)^{w_j}

which is the exact derivative wherever every mean is at least :data:`FLOOR`. Elsewhere it stays
finite and positive in every mean: a clamped mean gets the slope of the odd extension
``sign(v) |v|^w`` (so a gradient step raises an anti-correlated scale back towards correlation
instead of stalling on a zero gradient), and the other scales see each clamped factor as
``FLOOR^w``.

Scales on small images: the standard MS-SSIM has 5 scales with weights
:data:`MS_SSIM_WEIGHTS` (finest to coarsest); 5 scales need sides of at least ``11 * 2^4 = 176``
pixels. Here every scale's image must be at least the window on its smaller side, so a 64 x 64 image
gets 3 scales (64, 32, 16; the next, 8, is smaller than 11) with the 3 finest weights renormalised
to sum to 1: ``(0.0448, 0.2856, 0.3001) / 0.6305``. :func:`max_scales` gives the number that fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "FLOOR",
    "K1",
    "K2",
    "MS_SSIM_WEIGHTS",
    "gaussian_window",
    "clamped_weighted_product",
    "max_scales",
    "ms_ssim",
    "ms_ssim_weights",
    "ssim",
    "ssim_maps",
]

#: The five scale weights of Wang et al. (2003), finest scale first.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: SSIM's stabilising constants: ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2``.
K1 = 0.01
K2 = 0.03
#: Where the backward surrogate of :func:`clamped_weighted_product` floors a mean (module docstring).
FLOOR = 1e-8


def gaussian_window(
    size: int = 11, sigma: float = 1.5, *, dtype: torch.dtype = torch.float64, device: torch.device | None = None
) -> torch.Tensor:
    """The normalised 1-D Gaussian window ``exp(-d^2 / (2 sigma^2)) / sum``, ``d = i - (size - 1) / 2``.

    Args:
        size: odd positive number of taps.
        sigma: positive standard deviation in pixels.

    Returns:
        ``(size,)`` in ``dtype``, summing to 1.

    Raises:
        ValueError: ``size`` not a positive odd int, ``sigma`` not positive and finite.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd int, got {size!r}")
    if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and 0 < sigma < math.inf):
        raise ValueError(f"window_sigma must be a positive finite number, got {sigma!r}")
    d = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(d * d) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _check_pair(x: object, y: object) -> tuple[torch.Tensor, torch.Tensor]:
    for name, value in (("x", x), ("y", y)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got {getattr(value, 'dtype', type(value))}")
        if value.dim() != 4:
            raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(value.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    acc = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    return x.to(acc), y.to(acc)


def _filter(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable valid filtering of every channel: ``(N, C, H, W) -> (N, C, H - s + 1, W - s + 1)``."""
    channels, size = images.shape[1], window.numel()
    rows = window.reshape(1, 1, size, 1).expand(channels, 1, size, 1)
    cols = window.reshape(1, 1, 1, size).expand(channels, 1, 1, size)
    return F.conv2d(F.conv2d(images, rows, groups=channels), cols, groups=channels)


def ssim_maps(
    x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, data_range: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSIM map ``l * cs`` and the contrast-structure map ``cs`` (module docstring).

    Args:
        x, y: ``(B, C, H, W)`` images, same dtype (the arithmetic dtype); ``H, W >= window`` size.
        window: ``(size,)`` 1-D window, applied separably.
        data_range: ``L``, the dynamic range of the pixel values.

    Returns:
        ``(ssim_map, cs_map)``, each ``(B, C, H - size + 1, W - size + 1)``.
    """
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    channels = x.shape[1]
    stats = _filter(torch.cat([x, y, x * x, y * y, x * y], dim=1), window.to(x))
    mu_x, mu_y, xx, yy, xy = stats.split(channels, dim=1)
    var_x = xx - mu_x * mu_x
    var_y = yy - mu_y * mu_y
    cov = xy - mu_x * mu_y
    cs = (2.0 * cov + c2) / (var_x + var_y + c2)
    luminance = (2.0 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return luminance * cs, cs


def _check_window_fits(height: int, width: int, size: int) -> None:
    if min(height, width) < size:
        raise ValueError(f"images must be at least window_size={size} pixels on each side, got {height} x {width}")


def ssim(
    x: torch.Tensor, y: torch.Tensor, *, window_size: int = 11, sigma: float = 1.5, data_range: float = 1.0
) -> torch.Tensor:
    """Single-scale SSIM per example: the mean of the SSIM map over channels and positions.

    Args:
        x, y: ``(B, C, H, W)`` floating images of one shape.
        window_size, sigma: the Gaussian window (:func:`gaussian_window`).
        data_range: ``L`` (1 for images in [0, 1]).

    Returns:
        ``(B,)`` in float32 (float64 when an input is float64).
    """
    x, y = _check_pair(x, y)
    _check_window_fits(x.shape[-2], x.shape[-1], window_size)
    window = gaussian_window(window_size, sigma, dtype=x.dtype, device=x.device)
    return ssim_maps(x, y, window, data_range)[0].mean(dim=(1, 2, 3))


def max_scales(height: int, width: int, window_size: int = 11, limit: int = len(MS_SSIM_WEIGHTS)) -> int:
    """How many MS-SSIM scales (at most ``limit``) keep every scale's image at least ``window_size``
    on its smaller side, halving (floored) between scales; 0 when the image itself is smaller."""
    scales, side = 0, min(height, width)
    while scales < limit and side >= window_size:
        scales += 1
        side //= 2
    return scales


def ms_ssim_weights(scales: int) -> tuple[float, ...]:
    """The ``scales`` finest of :data:`MS_SSIM_WEIGHTS`, renormalised to sum to 1."""
    if isinstance(scales, bool) or not isinstance(scales, int) or not 1 <= scales <= len(MS_SSIM_WEIGHTS):
        raise ValueError(f"scales must be an int in [1, {len(MS_SSIM_WEIGHTS)}], got {scales!r}")
    kept = MS_SSIM_WEIGHTS[:scales]
    total = sum(kept)
    return tuple(w / total for w in kept)


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    scales: int | None = None,
    weights: Sequence[float] | None = None,
    window_size: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Multi-scale SSIM per example (module docstring), differentiable in both images.

    Args:
        x, y: ``(B, C, H, W)`` floating images of one shape.
        scales: number of scales ``S``; None for :func:`max_scales` (3 for 64 x 64 with 11 taps).
        weights: ``S`` non-negative exponents, finest first; None for :func:`ms_ssim_weights` ``(S)``.
        window_size, sigma: the Gaussian window (:func:`gaussian_window`).
        data_range: ``L`` (1 for images in [0, 1]).

    Returns:
        ``(B,)`` in float32 (float64 when an input is float64): the per-channel MS-SSIM averaged over
        channels; 1 for identical images.

    Raises:
        ValueError: ``scales`` that do not fit the image (the coarsest image smaller than the window),
            ``weights`` of the wrong length or with a negative or non-finite entry.
    """
    x, y = _check_pair(x, y)
    height, width = x.shape[-2:]
    fit = max_scales(height, width, window_size)
    _check_window_fits(height, width, window_size)
    if scales is None:
        scales = fit
    elif isinstance(scales, bool) or not isinstance(scales, int) or not 1 <= scales <= fit:
        raise ValueError(
            f"scales must be an int in [1, {fit}] for {height} x {width} images and window_size={window_size} "
            f"(every scale's image at least the window), got {scales!r}"
        )
    weights = ms_ssim_weights(scales) if weights is None else tuple(float(w) for w in weights)
    if len(weights) != scales:
        raise ValueError(f"weights must have one entry per scale ({scales}), got {len(weights)}")
    if not all(0.0 <= w < math.inf for w in weights):
        raise ValueError(f"weights must be non-negative finite numbers, got {weights!r}")
    window = gaussian_window(window_size, sigma, dtype=x.dtype, device=x.device)
    means = []
    for j in range(scales):
        ssim_map, cs_map = ssim_maps(x, y, window, data_range)
        if j == scales - 1:
            means.append(ssim_map.mean(dim=(-2, -1)))
        else:
            means.append(cs_map.mean(dim=(-2, -1)))
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    values = torch.stack(means)  # (S, B, C)
    exponents = torch.tensor(weights, dtype=values.dtype, device=values.device)
    return clamped_weighted_product(values, exponents).mean(dim=1)


class _ClampedWeightedProduct(torch.autograd.Function):
    """``prod_j max(v_j, 0)^{w_j}`` over dim 0 with the surrogate backward of the module docstring."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, values: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
        exponents = exponents.reshape(-1, *([1] * (values.dim() - 1)))
        ctx.save_for_backward(values, exponents)
        return values.clamp_min(0.0).pow(exponents).prod(dim=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        values, exponents = ctx.saved_tensors
        factors = values.clamp_min(FLOOR).pow(exponents)  # each >= FLOOR^w > 0, so the division is safe
        others = factors.prod(dim=0, keepdim=True) / factors
        slope = exponents * values.abs().clamp_min(FLOOR).pow(exponents - 1.0)
        return grad * slope * others, None


def clamped_weighted_product(values: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """``prod_j max(values_j, 0)^{exponents_j}`` over dim 0, with a finite surrogate gradient.

    The value is exact (0 as soon as a factor with a positive exponent has ``values_j <= 0``, as in
    pytorch-msssim and TensorFlow); the gradient is the surrogate of the module docstring: exact where
    every value is at least :data:`FLOOR`, finite and positive in every value elsewhere.

    Args:
        values: ``(S, ...)`` floating tensor, one slice per factor (MS-SSIM: per-scale means).
        exponents: ``(S,)`` non-negative weights in the dtype of ``values`` (not differentiated).

    Returns:
        ``values.shape[1:]`` in the dtype of ``values``.
    """
    return _ClampedWeightedProduct.apply(values, exponents)
