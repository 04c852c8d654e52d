"""Seeds for the sampling ops: checked at the public entry (:func:`check_seed`), drawn from torch's
generator when none is given (:func:`draw`, called by :class:`fastvae.ops._dispatch.Dispatched`, which
knows whether the call is traced and so decides once per call whether the seed is an int or a tensor).
"""

from __future__ import annotations

import threading

import torch

from fastvae.reference.philox import MAX_SEED

__all__ = ["check_seed", "draw", "draw_traced"]

#: Seeds drawn from torch's generator are uniform in ``[0, _DRAW_HIGH)``.
_DRAW_HIGH = 2**62

#: Per thread, the 0-dim tensor an eager draw goes into (see draw).
_scratch = threading.local()


def check_seed(seed: object) -> int | None:
    """``seed`` checked: None (draw one) or an int in ``[0, 2**63)``.

    Raises:
        TypeError: ``seed`` is neither None nor an int.
        ValueError: ``seed`` is outside ``[0, 2**63)``.
    """
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return seed


def draw() -> int:
    """A seed drawn from torch's default CPU generator, in eager mode: the value
    ``torch.randint(0, 2**62, ())`` would give, so ``torch.manual_seed`` makes runs repeatable.

    The draw goes into a reused per-thread 0-dim tensor whose memory is a ``bytearray``, and is read
    back through a ``memoryview`` of it rather than by ``int(tensor)``: at user sizes the dispatch of
    that ``item()`` was a measurable share of a sampling call (the bench's user-sized rows).
    """
    scratch = getattr(_scratch, "seed", None)
    if scratch is None:
        memory = bytearray(8)
        scratch = _scratch.seed = (torch.frombuffer(memory, dtype=torch.int64).view(()), memoryview(memory).cast("q"))
    tensor, value = scratch
    tensor.random_(0, _DRAW_HIGH)
    return value[0]


def draw_traced() -> torch.Tensor:
    """The draw of :func:`draw` as a fresh 0-dim int64 CPU tensor, for code being traced
    (``torch.compile`` records the draw, so every call of the compiled code draws anew)."""
    return torch.randint(0, _DRAW_HIGH, (), dtype=torch.int64)
