"""Finite scalar quantisation (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

Each of the ``d`` latent dims is bounded and rounded to one of ``L_i`` values; the code is the tuple
of the rounded values, and its index the mixed-radix number of their levels (first dim least
significant). There is no codebook to search: the implicit codebook has ``prod(levels)`` entries.

The public function checks its arguments, flattens ``(..., d)`` to contiguous ``(R, d)`` rows and
calls the custom op ``fastvae::fsq`` (levels as ``int[]``), whose fake implementation and autograd
formula let ``torch.compile(fullgraph=True)`` trace it; its backward ``fastvae::fsq_backward``
recomputes the bound from ``x``. Backends: ``torch`` (:mod:`fastvae.reference.fsq`, the ground truth)
and ``triton`` (``fastvae.kernels.fsq``, one fused pass); there is no cuda or cpu kernel, so ``auto``
runs triton on CUDA tensors and the reference on CPU tensors.
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from fastvae import backend
from fastvae.ops import _checks
from fastvae.ops._dispatch import define

__all__ = ["FSQOutput", "MAX_CODEBOOK_SIZE", "check_levels", "fsq", "fsq_indices_to_codes"]

#: The backend ops of this family, as every backend names them (``<op>_fwd`` / ``<op>_bwd``).
OP_NAMES: tuple[str, ...] = ("fsq_fwd", "fsq_bwd")
backend.register("torch", "fastvae.reference.fsq", OP_NAMES)
backend.register("triton", "fastvae.kernels.fsq", OP_NAMES)

#: The largest ``prod(levels)``: indices are int64 in ``[0, prod(levels))``.
MAX_CODEBOOK_SIZE = 2**63


class FSQOutput(NamedTuple):
    """What :func:`fsq` and :class:`fastvae.nn.FSQ` return; unpacks as ``quantized, indices``.

    Attributes:
        quantized: the codes, ``x``'s shape and dtype, carrying the straight-through gradient.
        indices: int64 code index per vector, in ``[0, prod(levels))`` (``x``'s shape without the
            channel dim).
    """

    quantized: torch.Tensor
    indices: torch.Tensor


# --- fsq: bounded, rounded, scaled codes and their indices ------------------------------------------
# d quantized / d x = half_l (1 - tanh^2(x + shift)) / half_width: straight through the rounding only.

_fsq_bwd = define(
    "fsq_bwd",
    "(Tensor grad, Tensor x, int[] levels) -> Tensor",
    lambda grad, x, levels: torch.empty_like(x),
)


def _fsq_setup(ctx, inputs, output):
    x, ctx.levels = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x)


def _fsq_grad(ctx, grad_quantized, _grad_indices):
    (x,) = ctx.saved_tensors
    return _fsq_bwd(grad_quantized, x, ctx.levels), None


_fsq = define(
    "fsq_fwd",
    "(Tensor x, int[] levels) -> (Tensor, Tensor)",
    lambda x, levels: (torch.empty_like(x), x.new_empty(x.shape[:-1], dtype=torch.int64)),
    setup_context=_fsq_setup,
    backward=_fsq_grad,
)


# --- public functions -----------------------------------------------------------------------------


def check_levels(levels: object) -> tuple[int, ...]:
    """``levels`` as a tuple of ints ``>= 2`` whose product is at most :data:`MAX_CODEBOOK_SIZE`.

    Raises:
        TypeError: ``levels`` is not a list or tuple of ints.
        ValueError: it is empty, holds a level below 2, or its product passes ``2**63``.
    """
    if not isinstance(levels, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) for v in levels):
        raise TypeError(f"levels must be a list or tuple of ints, got {levels!r}")
    if not levels:
        raise ValueError("levels must hold at least one level, got an empty sequence")
    if min(levels) < 2:
        raise ValueError(f"levels must all be >= 2, got {list(levels)}")
    if math.prod(levels) > MAX_CODEBOOK_SIZE:
        raise ValueError(f"levels must have a product of at most 2**63 (int64 indices), got {math.prod(levels)}")
    return tuple(levels)


def fsq(x: torch.Tensor, levels: Sequence[int]) -> FSQOutput:
    """Finite scalar quantisation of ``x``, with a straight-through gradient (Mentzer et al. 2023).

    Per dim ``i`` with ``L = levels[i]``: ``half_l = (L - 1)(1 + 1e-3) / 2``, ``offset = 0.5`` if ``L``
    is even else 0, ``shift = atanh(offset / half_l)`` (these three in float32, as the paper's
    reference code computes them, for every input dtype), then

    ``bounded = tanh(x + shift) * half_l - offset`` and ``quantized = round(bounded) / (L // 2)``

    with ``torch.round`` (half to even). So each dim takes ``L`` values spaced ``1 / (L // 2)``: for odd
    ``L`` symmetric in ``[-1, 1]``, for even ``L`` from ``-1`` to ``1 - 2 / L``. The gradient passes
    straight through the rounding only: ``d quantized / d x = half_l (1 - tanh^2(x + shift)) / (L // 2)``.
    The index of a code is ``sum_i (round(bounded_i) + L_i // 2) * basis_i`` with
    ``basis = cumprod([1] + levels[:-1])`` (the first dim least significant), as in
    vector-quantize-pytorch's ``FSQ``, whose quantized outputs and indices these equal. ``L = 2``, which
    that ``FSQ`` refuses without its ``preserve_symmetry`` option, follows the same formula here: the
    codes are ``{-1, 0}`` (index 0 or 1), and since ``shift = atanh(0.999)`` about 3.8, only
    ``x < -3.8`` or so gives ``-1``; levels of 3 or more are the ones to use.

    Args:
        x: ``(..., d)`` with ``d = len(levels)``; float16, bfloat16, float32 or float64. float16 and
            bfloat16 are computed in float32 (float64 in float64), the result cast back.
        levels: a list or tuple of ``d`` ints ``>= 2``, with ``prod(levels) <= 2**63``.

    Returns:
        :class:`FSQOutput` ``(quantized, indices)``: ``quantized`` of ``x``'s shape and dtype,
        ``indices`` int64 of shape ``x.shape[:-1]`` in ``[0, prod(levels))`` (not differentiable).
        A NaN in a row gives NaN codes and an unspecified index for that row.

    Raises:
        TypeError: a non-tensor or non-floating ``x``; ``levels`` not a list or tuple of ints.
        ValueError: a 0-dim ``x``, ``x.shape[-1] != len(levels)``, a level below 2, an empty
            ``levels``, or ``prod(levels) > 2**63``.
    """
    x = _checks.tensor(x, "x", min_dim=1)
    levels = check_levels(levels)
    if x.shape[-1] != len(levels):
        raise ValueError(
            f"x must have len(levels) = {len(levels)} elements in its last dim, got shape {tuple(x.shape)}"
        )
    rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1]).contiguous()
    quantized, indices = _fsq(rows, levels)
    return FSQOutput(quantized.reshape(x.shape), indices.reshape(x.shape[:-1]))


def fsq_indices_to_codes(indices: torch.Tensor, levels: Sequence[int], *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The codes of FSQ ``indices``: the inverse of :func:`fsq`'s index map.

    Level ``i`` of index ``n`` is ``(n // basis_i) % L_i`` and its code ``(level - L_i // 2) / (L_i // 2)``,
    computed in ``dtype``; ``fsq_indices_to_codes(fsq(x, levels).indices, levels)`` equals
    ``fsq(x, levels).quantized`` (in float32 and float64; float16 and bfloat16 are its rounding).
    An index outside ``[0, prod(levels))`` is taken modulo ``prod(levels)``.

    Args:
        indices: integer tensor of any shape (int64, or int32 as vector-quantize-pytorch returns).
        levels: as for :func:`fsq`.
        dtype: a floating dtype for the codes.

    Returns:
        ``(*indices.shape, len(levels))`` codes in ``dtype`` on ``indices``' device. Not differentiable.

    Raises:
        TypeError: non-integer ``indices``, a non-floating ``dtype``, bad ``levels`` (as for :func:`fsq`).
        ValueError: bad ``levels`` (as for :func:`fsq`).
    """
    levels = check_levels(levels)
    if not isinstance(indices, torch.Tensor) or indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise TypeError(f"indices must be an integer tensor, got {getattr(indices, 'dtype', type(indices).__name__)}")
    if dtype not in _checks.FLOAT_DTYPE_SET:
        raise TypeError(f"dtype must be float16, bfloat16, float32 or float64, got {dtype}")
    level = torch.tensor(levels, dtype=torch.int64, device=indices.device)
    basis = torch.tensor([1, *levels[:-1]], dtype=torch.int64).cumprod(0).to(indices.device)
    half_width = level // 2
    digits = (indices.to(torch.int64).unsqueeze(-1) // basis) % level
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return ((digits - half_width).to(compute) / half_width).to(dtype)
