"""Triton kernels of finite scalar quantisation: codes and indices in one pass, and the backward.

Layout: ``x (R, d)`` contiguous, ``d`` the number of levels (at most 63, since the indices are int64),
taken as the ``DIM`` constexpr: one compiled variant per ``d`` (a model has one or two), whose rows
the compiler knows the length of, so a block of ``BLOCK_R`` whole rows is one contiguous run of
memory. The per-level constants (:mod:`fastvae.plan.fsq`: ``half_l``, ``shift``, ``offset`` in
float32, ``half_width`` and ``basis`` in int64) are loaded once per program.

The forward kernel reads ``x`` once and writes ``quantized`` and the row's index: ``bounded =
tanh(x + shift) * half_l - offset``, rounded half to even, divided by ``half_width`` with a correctly
rounded division, and ``index = sum (round(bounded) + half_width) * basis``. The backward kernel
recomputes ``tanh`` from ``x`` (nothing else is saved) for the straight-through gradient
``grad / half_width * half_l * (1 - tanh^2)``.

Arithmetic runs in float32 (float64 for float64 inputs), as :mod:`fastvae.reference.fsq`, with the
same float32 constants and in the same order, so that the bound rounds at the same points as the
reference's (and vector-quantize-pytorch's): on CUDA ``tanh`` is libdevice's, the CUDA math
library's ``tanhf``/``tanh`` that PyTorch's CUDA kernel calls too, and ``tanh * half_l`` is rounded
before ``offset`` is subtracted (no fused multiply-add there); the division is correctly rounded.
Triton's interpreter has no libdevice: on CPU tensors ``tanh`` is evaluated in float64 and rounded
(:func:`_tanh_from_exp`).

Outputs are allocated, and empty inputs decided, by :mod:`fastvae.plan.fsq`.
"""

from __future__ import annotations

import inspect

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from fastvae.kernels import on_input_device
from fastvae.kernels.aot import AotConfig
from fastvae.plan import fsq as plan

__all__ = ["AOT_CONFIGS", "fsq_bwd", "fsq_fwd"]


# --- helpers ----------------------------------------------------------------------------------------


@triton.jit
def _widen(x):
    """``x`` in its compute dtype: float64 stays float64, every other dtype becomes float32."""
    if x.dtype != tl.float64:
        x = x.to(tl.float32)
    return x


@triton.jit
def _tanh_from_exp(y):
    """``tanh(y)`` in ``y``'s dtype, evaluated in float64 (Cephes' rational approximation below 0.625,
    ``1 - 2 / (e^2|y| + 1)`` above: within 1 ulp of float64) and rounded once."""
    w = y.to(tl.float64)
    z = w * w
    p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z - 1.61468768441708447952e3
    q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z + 4.84406305325125486048e3
    large = 1.0 - 2.0 / (tl.exp(2.0 * tl.abs(w)) + 1.0)
    return tl.where(tl.abs(w) < 0.625, w + w * z * (p / q), tl.where(w < 0.0, -large, large)).to(y.dtype)


@triton.jit
def _tanh(y, LIBDEVICE: tl.constexpr):
    """``tanh(y)`` in ``y``'s dtype (float32 or float64): libdevice's with LIBDEVICE (CUDA), else
    :func:`_tanh_from_exp` (the interpreter, which cannot call libdevice)."""
    if LIBDEVICE:
        result = libdevice.tanh(y)
    else:
        result = _tanh_from_exp(y)
    return result


@triton.jit
def _bound(y, half_l, offset, LIBDEVICE: tl.constexpr):
    """``tanh(y) * half_l - offset``, the product rounded before the difference as PyTorch's separate
    element-wise ops round it. With LIBDEVICE the product is libdevice's ``mul_rn``, which the
    compiler never fuses into a multiply-add (the FMAs inside libdevice's ``tanh`` stay, as nvcc
    compiles them); the interpreter rounds every operation anyway."""
    if LIBDEVICE:
        result = libdevice.mul_rn(_tanh(y, LIBDEVICE), half_l.to(y.dtype)) - offset
    else:
        result = _tanh(y, LIBDEVICE) * half_l - offset
    return result


@triton.jit
def _round_half_even(x):
    """``torch.round(x)``: the nearest integer, halves to even, the sign of ``x`` kept on a zero."""
    down = tl.floor(x)
    frac = x - down  # exact: the fractional part of a float is representable in its dtype
    odd = down - 2.0 * tl.floor(0.5 * down) != 0.0
    rounded = tl.where((frac > 0.5) | ((frac == 0.5) & odd), down + 1.0, down)
    return tl.where(rounded == 0.0, x * 0.0, rounded)


@triton.jit
def _rounded_to(x, dtype: tl.constexpr):
    """``x`` (float32 or float64) rounded to nearest even in ``dtype``. A float32 to bfloat16 rounding
    is done on the bits, since Triton's interpreter truncates that conversion (a GPU rounds to nearest
    even, and the bits below give the same result there); the final cast is then exact. NaN stays
    NaN (its bits could carry into the sign)."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
    return x.to(dtype)


@triton.jit
def _divide(a, b):
    """``a / b`` correctly rounded, as PyTorch divides: ``div_rn`` in float32 (Triton's ``/`` may be
    approximate there), ``/`` in float64 (always correctly rounded)."""
    if a.dtype == tl.float64:
        result = a / b
    else:
        result = tl.div_rn(a, b)
    return result


@triton.jit
def _level_constants(const_f_ptr, const_i_ptr, DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """The columns ``cols`` and the ``(1, BLOCK_D)`` rows ``(half_l, shift, offset, half_width, basis)``
    of the constants tables (float32 ``(3, DIM)``, int64 ``(2, DIM)``); zeros past ``DIM``."""
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < DIM
    half_l = tl.load(const_f_ptr + cols, mask=col_mask, other=1.0)[None, :]
    shift = tl.load(const_f_ptr + DIM + cols, mask=col_mask, other=0.0)[None, :]
    offset = tl.load(const_f_ptr + 2 * DIM + cols, mask=col_mask, other=0.0)[None, :]
    half_width = tl.load(const_i_ptr + cols, mask=col_mask, other=1)[None, :]
    basis = tl.load(const_i_ptr + DIM + cols, mask=col_mask, other=0)[None, :]
    return cols, half_l, shift, offset, half_width, basis


@triton.jit
def _row_block(n_rows, cols, DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's rows (int64, ``(BLOCK_R,)``), which of them exist, the element offsets
    ``(BLOCK_R, BLOCK_D)`` of its block and their mask. When ``DIM == BLOCK_D`` the mask is the
    rows' alone, constant along a row, so that the compiler vectorises the loads and stores."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_mask = rows < n_rows
    if DIM == BLOCK_D:
        mask = tl.broadcast_to(row_mask[:, None], (BLOCK_R, BLOCK_D))
    else:
        mask = row_mask[:, None] & (cols < DIM)[None, :]
    return rows, row_mask, rows[:, None] * DIM + cols[None, :], mask


# --- kernels ----------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["n_rows"])
def _fsq_fwd_kernel(
    x_ptr,
    const_f_ptr,
    const_i_ptr,
    quantized_ptr,
    indices_ptr,
    n_rows,
    DIM: tl.constexpr,
    LIBDEVICE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``quantized = round(tanh(x + shift) * half_l - offset) / half_width`` and each row's index.

    Grid: (row blocks,); a program owns ``BLOCK_R`` whole rows of ``DIM <= BLOCK_D`` elements.
    """
    cols, half_l, shift, offset, half_width, basis = _level_constants(const_f_ptr, const_i_ptr, DIM, BLOCK_D)
    rows, row_mask, offsets, mask = _row_block(n_rows, cols, DIM, BLOCK_R, BLOCK_D)
    x = _widen(tl.load(x_ptr + offsets, mask=mask, other=0.0))
    bounded = _bound(x + shift, half_l, offset, LIBDEVICE)
    rounded = _round_half_even(bounded)
    quantized = _divide(rounded, half_width.to(rounded.dtype))
    tl.store(quantized_ptr + offsets, _rounded_to(quantized, quantized_ptr.dtype.element_ty), mask=mask)
    # Past DIM the basis is 0, so the padding columns add nothing to the index.
    index = tl.sum((rounded.to(tl.int64) + half_width) * basis, axis=1)
    tl.store(indices_ptr + rows, index, mask=row_mask)


@triton.jit(do_not_specialize=["n_rows", "stride_g_r", "stride_g_d"])
def _fsq_bwd_kernel(
    grad_ptr,
    x_ptr,
    const_f_ptr,
    const_i_ptr,
    grad_x_ptr,
    n_rows,
    stride_g_r,
    stride_g_d,
    DIM: tl.constexpr,
    CONTIGUOUS_GRAD: tl.constexpr,
    LIBDEVICE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``grad_x = grad / half_width * half_l * (1 - tanh(x + shift)^2)``, tanh recomputed from ``x``.

    ``grad`` may have any strides (autograd hands over expanded gradients); CONTIGUOUS_GRAD: it is
    laid out as ``x``, and read with ``x``'s offsets (vectorised). Grid: (row blocks,).
    """
    cols, half_l, shift, _, half_width, _ = _level_constants(const_f_ptr, const_i_ptr, DIM, BLOCK_D)
    rows, _, offsets, mask = _row_block(n_rows, cols, DIM, BLOCK_R, BLOCK_D)
    x = _widen(tl.load(x_ptr + offsets, mask=mask, other=0.0))
    if CONTIGUOUS_GRAD:
        grad_offsets = offsets
    else:
        grad_offsets = rows[:, None] * stride_g_r + cols[None, :] * stride_g_d
    grad = _widen(tl.load(grad_ptr + grad_offsets, mask=mask, other=0.0))
    tanh = _tanh(x + shift, LIBDEVICE)
    grad_x = grad / half_width.to(grad.dtype) * half_l * (1.0 - tanh * tanh)
    tl.store(grad_x_ptr + offsets, _rounded_to(grad_x, grad_x_ptr.dtype.element_ty), mask=mask)


# --- launch heuristic -------------------------------------------------------------------------------

#: Elements per program (BLOCK_R * BLOCK_D): 8 per thread at NUM_WARPS = 4, 4 in float64.
_TILE: dict[torch.dtype, int] = {torch.float64: 512}
_TILE_DEFAULT = 1024
NUM_WARPS = 4


def _blocks(dim: int, dtype: torch.dtype) -> tuple[int, int]:
    """``(BLOCK_R, BLOCK_D)`` for rows of ``dim`` elements of ``dtype``: the row padded to a power of two."""
    block_d = triton.next_power_of_2(dim)
    return _TILE.get(dtype, _TILE_DEFAULT) // block_d, block_d


# --- host functions ---------------------------------------------------------------------------------


@on_input_device
def fsq_fwd(x: torch.Tensor, levels: list[int] | tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantised codes and their indices in one pass. ``x (R, d)`` -> ``(quantized (R, d), indices (R,) int64)``."""
    n_rows, dim = x.shape
    (quantized, indices), launch = plan.fsq_fwd(x)
    if not launch:
        return quantized, indices
    tables = plan.constants(levels, x.device)
    block_r, block_d = _blocks(dim, x.dtype)
    _fsq_fwd_kernel[(triton.cdiv(n_rows, block_r),)](
        x, tables.floats, tables.ints, quantized, indices, n_rows,
        DIM=dim, LIBDEVICE=x.is_cuda, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )  # fmt: skip
    return quantized, indices


@on_input_device
def fsq_bwd(grad: torch.Tensor, x: torch.Tensor, levels: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Gradient of :func:`fsq_fwd`'s ``quantized`` for ``x`` (straight through the rounding). (R, d)."""
    n_rows, dim = x.shape
    grad_x, launch = plan.fsq_bwd(x)
    if not launch:
        return grad_x
    tables = plan.constants(levels, x.device)
    block_r, block_d = _blocks(dim, x.dtype)
    _fsq_bwd_kernel[(triton.cdiv(n_rows, block_r),)](
        grad, x, tables.floats, tables.ints, grad_x, n_rows, *grad.stride(),
        DIM=dim, CONTIGUOUS_GRAD=grad.is_contiguous(), LIBDEVICE=x.is_cuda, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )  # fmt: skip
    return grad_x


# --- ahead-of-time compile check -------------------------------------------------------------------

#: The largest number of levels (``prod(levels) <= 2**63`` with every level ``>= 2``).
MAX_DIM = 63


def _config(kernel, pointer: str, dtype: torch.dtype, dim: int, **variant: bool) -> AotConfig:
    """``kernel`` launched as on CUDA (LIBDEVICE) on ``pointer``-typed tensors of ``dtype`` with rows of ``dim``."""
    block_r, block_d = _blocks(dim, dtype)
    constexprs = {"DIM": dim, "LIBDEVICE": True, "BLOCK_R": block_r, "BLOCK_D": block_d, **variant}
    kinds = {"const_f_ptr": "*fp32", "const_i_ptr": "*i64", "indices_ptr": "*i64"}
    signature = {
        name: "constexpr" if name in constexprs else kinds.get(name, pointer if name.endswith("_ptr") else "i64")
        for name in inspect.signature(kernel.fn).parameters
    }
    return AotConfig(kernel, signature, constexprs, num_warps=NUM_WARPS)


def _aot_configs() -> list[AotConfig]:
    """Both kernels at every tile :func:`_blocks` picks for ``d`` in ``[1, MAX_DIM]``: the widest ``d``
    of each tile for float32, bfloat16 and float16 tensors, the narrowest (the most masked columns)
    for float32; the backward's heavier variant (a strided gradient) everywhere, its other once per
    tile in float32."""
    widest: dict[tuple[int, int], int] = {}
    narrowest: dict[tuple[int, int], int] = {}
    for dim in range(1, MAX_DIM + 1):
        tile = _blocks(dim, torch.float32)
        widest[tile] = dim
        narrowest.setdefault(tile, dim)
    dtypes = (("*fp32", torch.float32), ("*bf16", torch.bfloat16), ("*fp16", torch.float16))
    launches = [(pointer, dtype, dim) for pointer, dtype in dtypes for dim in widest.values()]
    launches += [("*fp32", torch.float32, dim) for dim in narrowest.values() if dim not in widest.values()]
    configs = [_config(_fsq_fwd_kernel, *launch) for launch in launches]
    configs += [_config(_fsq_bwd_kernel, *launch, CONTIGUOUS_GRAD=False) for launch in launches]
    configs += [_config(_fsq_bwd_kernel, "*fp32", torch.float32, dim, CONTIGUOUS_GRAD=True) for dim in widest.values()]
    return configs


#: The launch configurations the host functions above can choose (see fastvae.kernels.aot).
AOT_CONFIGS: list[AotConfig] = _aot_configs()
