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


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, *, scale: float = 1.0) -> None:
    """Assert ``actual`` (computed in ``dtype``) matches the float64 ``expected`` within ``dtype``'s tolerance.

    ``scale`` multiplies both tolerances; a caller passes it only for results that add up many
    rounded terms (a sum over ``D`` elements, say) and says in a comment why the factor is honest.
    """
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.detach().to(torch.float64), expected.detach().to(torch.float64), rtol=rtol * scale, atol=atol * scale
    )
