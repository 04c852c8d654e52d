"""Seeds for the sampling ops: a 0-dim int64 CPU tensor, so ``torch.compile`` traces the draw."""

from __future__ import annotations

import threading

import torch

from fastvae.reference.philox import MAX_SEED

#: Seeds drawn from torch's generator are uniform in ``[0, _DRAW_HIGH)``.
_DRAW_HIGH = 2**62


#: Per thread, the 0-dim tensor an eager call that keeps no seed draws into (see seed_tensor).
_scratch = threading.local()


def seed_tensor(seed: int | None, *, transient: bool = False) -> torch.Tensor:
    """``seed`` as a 0-dim int64 CPU tensor; None draws one from torch's default CPU generator.

    Drawing from torch's generator makes ``torch.manual_seed`` repeat runs. An explicit seed must be
    an int in ``[0, 2**63)``. ``transient=True`` says the caller reads the seed once and keeps no
    reference (an eager call that records no gradient): the seed then goes into a per-thread tensor
    that is reused (a draw is the value ``torch.randint`` would give), not a new one per call.
    While compiling or tracing a fresh tensor is always drawn.
    """
    reuse = transient and not torch.compiler.is_compiling() and not torch._C._len_torch_dispatch_stack()
    if seed is None:
        if reuse:
            return _scratch_seed().random_(0, _DRAW_HIGH)
        return torch.randint(0, _DRAW_HIGH, (), dtype=torch.int64)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    if reuse:
        return _scratch_seed().fill_(seed)
    return torch.tensor(seed, dtype=torch.int64)


def _scratch_seed() -> torch.Tensor:
    """This thread's reusable 0-dim int64 seed tensor."""
    scratch = getattr(_scratch, "seed", None)
    if scratch is None:
        scratch = _scratch.seed = torch.empty((), dtype=torch.int64)
    return scratch
