"""Categorical latents: Gumbel noise, the Gumbel-softmax relaxation, and the KL to a uniform prior.

Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax" (ICLR 2017), and Maddison,
Mnih & Teh, "The Concrete Distribution" (ICLR 2017). A categorical variable with (log-)probabilities
``log pi`` is drawn by the Gumbel-max trick, ``c = argmax_k (log pi_k + g_k)`` with ``g_k`` i.i.d.
Gumbel(0, 1), and relaxed by replacing the argmax with a softmax at temperature ``tau``::

    y = softmax((log pi + g) / tau)

which tends to the one-hot ``c`` as ``tau -> 0``. The straight-through variant (``hard=True``)
returns the one-hot ``c`` in the forward pass and back-propagates through ``y``.

Shapes: every function works along the last dimension (the categories) and broadcasts over the rest.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "categorical_kl_uniform",
    "check_categories",
    "check_positive",
    "check_steps",
    "gumbel_softmax",
    "log_uniform_capacity",
    "one_hot_mode",
    "sample_gumbel",
    "uniform_one_hot",
]


def check_positive(name: str, value: object) -> float:
    """``value`` as a float; ValueError naming ``name`` unless it is a positive finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_steps(name: str, value: object) -> int:
    """``value`` as an int; ValueError naming ``name`` unless it is a positive int."""
    try:
        if isinstance(value, bool):
            raise TypeError
        steps = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be a positive int, got {value!r}") from None
    if steps < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return steps


def check_categories(name: str, value: object) -> tuple[int, ...]:
    """``value`` (a non-empty sequence of ints ``>= 2``) as a tuple; ValueError naming ``name`` otherwise."""
    if not isinstance(value, Sequence) or isinstance(value, str) or not value or not all(
        isinstance(k, int) and not isinstance(k, bool) and k >= 2 for k in value
    ):
        raise ValueError(f"{name} must be a non-empty sequence of ints >= 2 (categories per variable), got {value!r}")
    return tuple(value)


def log_uniform_capacity(categories: Sequence[int]) -> float:
    """``sum_i log K_i``: the largest KL a set of categorical variables can have to uniform priors."""
    return sum(math.log(k) for k in categories)


def sample_gumbel(
    shape: Sequence[int], *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """I.i.d. Gumbel(0, 1) noise ``g = -log(-log u)``, ``u ~ U(0, 1)`` (clamped away from 0), of ``shape``,
    in ``dtype`` promoted to at least float32 (half precision would truncate the tails)."""
    dtype = torch.promote_types(dtype, torch.float32)
    u = torch.rand(*shape, device=device, dtype=dtype).clamp_min(torch.finfo(dtype).tiny)
    return -torch.log(-torch.log(u))


def gumbel_softmax(
    log_probs: torch.Tensor, gumbel: torch.Tensor, temperature: float, *, hard: bool = False
) -> torch.Tensor:
    """The Gumbel-softmax sample ``softmax((log_probs + gumbel) / temperature)`` over the last dim.

    Args:
        log_probs: ``(..., K)`` log-probabilities (or logits: the softmax is shift-invariant).
        gumbel: ``(..., K)`` Gumbel(0, 1) noise (from :func:`sample_gumbel`), passed in so a sample can be
            redrawn at another temperature with the same noise.
        temperature: ``tau > 0``.
        hard: straight-through: the forward value is the one-hot ``argmax(log_probs + gumbel)`` and the
            gradient is that of the relaxed sample.

    Returns:
        ``(..., K)`` in ``log_probs``' dtype; rows on the simplex (one-hot when ``hard``).
    """
    perturbed = log_probs + gumbel
    soft = torch.softmax(perturbed / temperature, dim=-1).to(log_probs.dtype)
    if not hard:
        return soft
    index = perturbed.argmax(dim=-1)
    one_hot = F.one_hot(index, log_probs.shape[-1]).to(soft.dtype)
    return one_hot - soft.detach() + soft


def categorical_kl_uniform(log_probs: torch.Tensor) -> torch.Tensor:
    """``KL(q || Uniform(K)) = sum_k q_k log q_k + log K`` along the last dim: ``(..., K) -> (...)``.

    ``log_probs`` must be normalised (``log_softmax`` of finite logits); a ``q_k`` that underflows to 0
    contributes 0, with a zero gradient.
    """
    return (log_probs.exp() * log_probs).sum(-1) + math.log(log_probs.shape[-1])


def one_hot_mode(log_probs: torch.Tensor) -> torch.Tensor:
    """The one-hot most probable category, ``(..., K)`` in ``log_probs``' dtype."""
    return F.one_hot(log_probs.argmax(dim=-1), log_probs.shape[-1]).to(log_probs.dtype)


def uniform_one_hot(
    shape: Sequence[int], categories: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One-hot draws from the uniform categorical prior: ``(*shape, categories)``."""
    index = torch.randint(categories, tuple(shape), device=device)
    return F.one_hot(index, categories).to(dtype)
