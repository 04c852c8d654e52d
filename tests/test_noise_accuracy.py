"""The sampling kernels' noise against the float64 stream: within ``NOISE_ATOL`` (tests/tolerances.py).

The Triton kernels run Box-Muller on the hardware's approximate log2, cosine, sine and square root;
under the interpreter numpy's functions stand in for them. Two checks:

- the bound follows from the instructions' documented maximum errors for every uniform the stream
  can produce (2**23 of them), each instruction erring by its maximum in the worst direction;
- the kernels, forward and backward, draw 2**20 normals that are the float64 stream's within the
  bound: on a GPU with the approximate instructions themselves, here with the interpreter.

The float64 stream is the one :mod:`fastvae.reference.philox` specifies: the same Philox words, the
uniforms ``((w >> 9) + 1/2) 2**-23``, Box-Muller in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from backends import DEVICE
from tolerances import NOISE_ATOL, NOISE_COS_SIN_ATOL

from fastvae.reference.philox import philox4x32

gaussian = pytest.importorskip("fastvae.kernels.gaussian", reason="triton is not installed")

MASK32 = 0xFFFFFFFF
#: Documented maximum errors (PTX ISA; CUDA C++ programming guide, intrinsic functions), the larger
#: where the two differ: cos/sin.approx.f32 absolute on [-pi, pi]; lg2.approx.f32 absolute on
#: [1/2, 2], in ulp elsewhere; sqrt.approx.f32 relative (two ulp taken).
SIN_COS_ABS = 2.0**-20.9
LG2_ABS, LG2_ULPS = 2.0**-22, 2
SQRT_REL = 2.0**-22
F32_REL = 2.0**-24  # one float32 rounding


def float64_stream(rows: int, dim: int, seed: int) -> torch.Tensor:
    """The stream's first ``dim`` normals of rows ``0 .. rows - 1`` for ``seed``, in float64."""
    groups = (dim + 3) // 4
    row = torch.arange(rows, dtype=torch.int64)[:, None].expand(rows, groups)
    group = torch.arange(groups, dtype=torch.int64)[None, :].expand(rows, groups)
    words = philox4x32((group, row & MASK32, row >> 32, torch.zeros_like(row)), (seed & MASK32, seed >> 32))
    u0, u1, u2, u3 = (((w >> 9).to(torch.float64) + 0.5) * 2.0**-23 for w in words)
    r01, r23 = torch.sqrt(-2.0 * torch.log(u0)), torch.sqrt(-2.0 * torch.log(u2))
    a1, a3 = 2.0 * math.pi * u1, 2.0 * math.pi * u3
    normals = torch.stack((r01 * torch.cos(a1), r01 * torch.sin(a1), r23 * torch.cos(a3), r23 * torch.sin(a3)), -1)
    return normals.reshape(rows, groups * 4)[:, :dim]


def _float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to float32 and back: one float32 rounding of a float64 value."""
    return x.to(torch.float32).to(torch.float64)


def _ulp32(x: torch.Tensor) -> torch.Tensor:
    """The float32 ulp of ``|x|`` (normal range)."""
    return torch.exp2(torch.floor(torch.log2(x.abs())) - 23.0)


def _radius_error(x: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Worst ``|sqrt.approx(x')| - sqrt(x)|`` over ``|x' - x| <= dx``."""
    r = torch.sqrt(x)
    return torch.maximum(torch.sqrt(x + dx) - r, r - torch.sqrt((x - dx).clamp(min=0.0))) + torch.sqrt(x + dx) * SQRT_REL


def _radius_errors(series_below: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r, worst |dr|)`` of the kernels' radius for every uniform, the series taking over below
    ``1 - u = series_below``."""
    k = torch.arange(2**23, dtype=torch.float64)
    u = (k + 0.5) * 2.0**-23
    v = 1.0 - u
    x = -2.0 * torch.log(u)
    # lg2.approx: absolute error on [1/2, 2), ulps elsewhere; then two roundings (constant, product).
    log2_u = torch.log2(u)
    d_log2 = torch.where(u >= 0.5, torch.full_like(u, LG2_ABS), LG2_ULPS * _ulp32(log2_u))
    dx_lg2 = 2.0 * math.log(2.0) * d_log2 + 2.0 * F32_REL * x
    # The series 2v + v^2 + 2v^3/3 + v^4/2: its truncation, and four float32 roundings of the result.
    series = v * (2.0 + v * (1.0 + v * (2.0 / 3.0 + v * 0.5)))
    dx_series = (series - x).abs() + 4.0 * F32_REL * x
    dx = torch.where(v < series_below, dx_series, dx_lg2)
    return torch.sqrt(x), _radius_error(x, dx)


def _angle_error() -> float:
    """Worst error of the kernels' float32 angle ``fma(m - 3/2, 2 pi, 2 pi 2**-24)`` against
    ``2 pi (u - 1/2)`` over every uniform (``m`` the word's mantissa in [1, 2))."""
    k = torch.arange(2**23, dtype=torch.float64)
    shifted = k * 2.0**-23 - 0.5  # m - 3/2, exact in float32
    two_pi = _float32(torch.tensor(2.0 * math.pi, dtype=torch.float64))
    half_step = _float32(torch.tensor(2.0 * math.pi * 2.0**-24, dtype=torch.float64))
    angle = _float32(shifted * two_pi + half_step)  # an FMA: the product is exact in float64
    exact = 2.0 * math.pi * ((k + 0.5) * 2.0**-23 - 0.5)
    return (angle - exact).abs().max().item()


def test_noise_bound_follows_from_the_documented_instruction_errors():
    r, dr = _radius_errors(gaussian._NEAR_ONE.value)
    dc = SIN_COS_ABS + _angle_error()
    assert dc < NOISE_COS_SIN_ATOL
    worst = (dr + (r + dr) * dc + (r + dr) * F32_REL).max().item()
    assert worst <= NOISE_ATOL
    # The series is what holds it near u = 1, where -2 ln u is tiny: lg2.approx all the way would not.
    r_lg2, dr_lg2 = _radius_errors(0.0)
    assert (dr_lg2 + (r_lg2 + dr_lg2) * dc).max().item() > NOISE_ATOL


@pytest.mark.parametrize("rows, dim", [(1024, 1024), (250, 1000)], ids=["aligned_2**20", "unaligned"])
def test_kernel_noise_is_the_float64_stream_within_the_bound(rows, dim):
    seed = 2**40 + 77
    zeros = torch.zeros(rows, dim, device=DEVICE)
    expected = float64_stream(rows, dim, seed)
    # mu = logvar = 0: z = 1 * eps exactly, and d logvar = g exp(0) eps / 2 with g = 1.
    eps = gaussian.reparameterize_fwd(zeros, zeros, None, seed).cpu().to(torch.float64)
    assert (eps - expected).abs().max().item() <= NOISE_ATOL
    if rows * dim <= 2**18:  # the backward's noise too, on the smaller case (the interpreter is slow)
        half_eps = gaussian.reparameterize_bwd(torch.ones_like(zeros), zeros, seed).cpu().to(torch.float64)
        assert (2.0 * half_eps - expected).abs().max().item() <= NOISE_ATOL

