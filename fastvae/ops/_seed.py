"""Seeds for the sampling ops: a Python int in eager mode, a 0-dim int64 CPU tensor while tracing
(so that ``torch.compile`` traces the draw)."""

from __future__ import annotations

import threading

import torch

from fastvae.ops._dispatch import tracing
from fastvae.reference.philox import MAX_SEED

#: Seeds drawn from torch's generator are uniform in ``[0, _DRAW_HIGH)``.
_DRAW_HIGH = 2**62

#: Per thread, the 0-dim tensor an eager draw goes into (see seed_value).
_scratch = threading.local()


def seed_value(seed: int | None) -> int | torch.Tensor:
    """``seed`` checked, or a seed drawn from torch's default CPU generator when it is None.

    Drawing from torch's generator makes ``torch.manual_seed`` repeat runs: a draw is the value
    ``torch.randint(0, 2**62, ())`` would give. An explicit seed must be an int in ``[0, 2**63)``.

    Returns:
        An int in eager mode (the draw goes into a reused per-thread tensor: no allocation per call);
        a fresh 0-dim int64 CPU tensor while tracing (:func:`fastvae.ops._dispatch.tracing`).

    Raises:
        TypeError: ``seed`` is neither None nor an int.
        ValueError: ``seed`` is outside ``[0, 2**63)``.
    """
    if seed is None:
        if tracing():
            return torch.randint(0, _DRAW_HIGH, (), dtype=torch.int64)
        scratch = getattr(_scratch, "seed", None)
        if scratch is None:
            scratch = _scratch.seed = torch.empty((), dtype=torch.int64)
        return int(scratch.random_(0, _DRAW_HIGH))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return torch.tensor(seed, dtype=torch.int64) if tracing() else seed

