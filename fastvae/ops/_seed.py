"""Seeds for the sampling ops: a 0-dim int64 CPU tensor, so ``torch.compile`` traces the draw."""

from __future__ import annotations

import torch

from fastvae.reference.philox import MAX_SEED

#: Seeds drawn from torch's generator are uniform in ``[0, _DRAW_HIGH)``.
_DRAW_HIGH = 2**62


def seed_tensor(seed: int | None) -> torch.Tensor:
    """``seed`` as a 0-dim int64 CPU tensor; None draws one from torch's default CPU generator.

    Drawing from torch's generator makes ``torch.manual_seed`` repeat runs. An explicit seed must be
    an int in ``[0, 2**63)``.
    """
    if seed is None:
        return torch.randint(0, _DRAW_HIGH, (), dtype=torch.int64)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return torch.tensor(seed, dtype=torch.int64)
