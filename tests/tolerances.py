"""The one table of comparison tolerances per dtype, and helpers that use it.

Results are compared against independent float64 formulas. A tolerance here is a property of the
dtype's rounding, never widened to make a test pass.
"""

from __future__ import annotations

import torch

#: (rtol, atol) for comparing a result computed in ``dtype`` with a float64 ground truth.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1e-2, 1e-2),
}

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

#: Largest difference between the Triton sampling kernels' float32 normals and the float64 normal
#: stream (Box-Muller of the same Philox words in float64), on any device. The kernels take
#: ``-2 ln u`` from lg2.approx.f32 (absolute error 2**-22 on [1/2, 2], 2 ulp elsewhere; a series in
#: ``1 - u`` where ``1 - u < 2**-5``), the radius from sqrt.approx.f32 (2**-22 relative taken) and the
#: angle's cosine and sine from cos/sin.approx.f32 (absolute error 2**-20.9 on [-pi, pi]), as the PTX
#: ISA and the CUDA programming guide document them. So a normal ``n = r c`` errs by at most
#: ``|dr| + r |dc| + 2**-24 |n|``: ``|dc| <= 2**-20.9 + 2.1e-7 = 7.2e-7`` (2.1e-7: the rounding of
#: the angle), ``|dr|`` below 7.4e-7 for ``u >= 1/2`` and 3.8e-7 r below it. The largest radius,
#: ``r = sqrt(-2 ln 2**-24) = 5.77``, gives the most: 2.2e-6 + 4.1e-6 + 3.4e-7 = 6.7e-6, rounded up
#: to 8e-6. tests/test_noise_accuracy.py computes this over every uniform and checks the kernels
#: over 2**20 draws. The float32 stream of fastvae.reference.philox is within 1.4e-6 of the float64 one.
NOISE_ATOL = 8e-6


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, *, scale: float = 1.0) -> None:
    """Assert ``actual`` (computed in ``dtype``) matches the float64 ``expected`` within ``dtype``'s tolerance.

    ``scale`` multiplies both tolerances; a caller passes it only for results that add up many
    rounded terms (a sum over ``D`` elements, say) and says in a comment why the factor is honest.
    """
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.detach().to(torch.float64), expected.detach().to(torch.float64), rtol=rtol * scale, atol=atol * scale
    )


#: Relative error of one float32 product ``x_i e_i`` made of three TF32 products, as the nearest-code
#: search computes it with ``precision="3xtf32"``. Each operand ``v`` is split into ``hi``, ``v`` rounded
#: to TF32 (11 significant bits, to nearest: ``|v - hi| <= 2^-11 |v|``), and ``lo``, ``v - hi`` rounded
#: the same way (``|(v - hi) - lo| <= 2^-11 |v - hi| <= 2^-22 |v|``); ``x_hi e_hi + x_hi e_lo + x_lo e_hi``
#: misses ``x_hi (e - e_hi - e_lo)``, ``(x - x_hi - x_lo) e_hi`` and ``(x - x_hi)(e - e_hi)``, each at most
#: ``2^-22 (1 + 2^-11) |x_i e_i|``: in all at most ``(3 + 2^-10) 2^-22 |x_i e_i| <= 2^-20 |x_i e_i|``. The
#: products of TF32 numbers are exact in float32, so this is all the split loses.
THREE_TF32_PRODUCT_RTOL = 2.0**-20

#: Unit roundoff assumed for float32 sums on tensor cores, whose adders may truncate: one float32 ulp,
#: ``2^-23``, twice that of round-to-nearest.
TENSOR_CORE_FP32_UNIT = 2.0**-23


def three_tf32_score_error(rows: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Bound ``(N, K)`` on the error of the search score ``|e_k|^2 / 2 - x_n . e_k`` computed with
    ``precision="3xtf32"`` for float32 ``rows (N, D)`` and ``codebook (K, D)``, in float64.

    The split loses at most ``2^-20 sum_i |x_i e_ki|`` (:data:`THREE_TF32_PRODUCT_RTOL`). The dot
    product then sums ``3 D`` products whose magnitudes add up to at most ``(1 + 2^-9) sum_i |x_i e_ki|``,
    ``|e|^2 / 2`` sums ``D`` squares, and the score is one subtraction: with ``u =``
    :data:`TENSOR_CORE_FP32_UNIT` and ``gamma_m = m u / (1 - m u)`` these add at most
    ``(gamma_3D (1 + 2^-9) + u) sum_i |x_i e_ki| + (gamma_D + u) |e_k|^2 / 2`` (to first order in ``u``),
    within ``gamma_{4D+2} (sum_i |x_i e_ki| + |e_k|^2 / 2)`` with room for the higher orders (as
    ``gamma_3D 2^-9 <= gamma_D`` and ``gamma_a + gamma_b <= gamma_{a+b}``). A chosen code ``c`` thus
    lies within ``2 (error_c + error_b)`` in squared distance of the nearest ``b``: its score is no
    higher, and a squared distance is twice the score plus ``|x|^2``.
    """
    x64, e64 = rows.detach().cpu().double(), codebook.detach().cpu().double()
    terms = 4 * x64.shape[1] + 2
    gamma = terms * TENSOR_CORE_FP32_UNIT / (1.0 - terms * TENSOR_CORE_FP32_UNIT)
    magnitude = x64.abs() @ e64.abs().T + 0.5 * (e64 * e64).sum(-1)[None, :]
    return (THREE_TF32_PRODUCT_RTOL + gamma) * magnitude
