"""The one canonical table of benchmark shapes, and the names the benchmarks accept.

Both ``fastvae bench`` and the pytest-benchmark suites in ``benchmarks/`` take their shapes from
:data:`SHAPES` and nowhere else. A shape is named by its dims (``N65536xK1024xD64``); each is
flagged ``quick`` (the small set of ``fastvae bench --quick`` and of the suites' CI mode, sized so
that the whole quick run takes seconds on two CPU cores) and ``cpu`` (run by default when there is
no GPU: sizes a CPU finishes in minutes and a laptop's memory holds).

Dims per op family:

* Gaussian ops (``reparameterize``, ``reparameterize_kl``, ``gaussian_kl``): ``B`` rows of a
  ``D``-dimensional latent.
* ``iwae`` (``iwae_log_weights`` then ``iwae_bound``): ``K`` importance samples of a batch of ``B``
  rows, latent size ``D``.
* VQ ops (``vq_nearest``, ``vector_quantize``): ``N`` vectors of size ``D``, a codebook of ``K``
  codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = [
    "BACKENDS",
    "DTYPES",
    "MODES",
    "OPS",
    "SHAPES",
    "Shape",
    "shapes_for",
]

#: Every op the benchmarks measure.
OPS: tuple[str, ...] = ("reparameterize", "reparameterize_kl", "gaussian_kl", "iwae", "vq_nearest", "vector_quantize")

#: Benchmark backends: ``eager`` is the plain PyTorch a user would write without fastvae, ``compile``
#: is ``torch.compile`` of that same function, and ``torch``/``triton``/``cuda`` are fastvae's op with
#: that fastvae backend forced.
BACKENDS: tuple[str, ...] = ("eager", "compile", "torch", "triton", "cuda")

#: Benchmark dtype names and their torch dtypes.
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

#: ``fwd``: forward only, inputs without gradients. ``fwd+bwd``: forward, then the gradients of every
#: differentiable output with respect to every floating input.
MODES: tuple[str, ...] = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class Shape:
    """One benchmark shape of an op family.

    Attributes:
        name: the dims joined, e.g. ``"N65536xK1024xD64"``; what ``--shapes`` takes.
        dims: dim letter -> size, in the family's order (see the module docstring).
        quick: in the quick set (``fastvae bench --quick``, the suites' CI mode).
        cpu: run by default on a machine without a GPU.
    """

    name: str
    dims: dict[str, int] = field(hash=False)
    quick: bool = False
    cpu: bool = False


def _shape(*, quick: bool = False, cpu: bool = False, **dims: int) -> Shape:
    return Shape("x".join(f"{letter}{size}" for letter, size in dims.items()), dims, quick=quick, cpu=cpu or quick)


_GAUSSIAN: tuple[Shape, ...] = (
    _shape(B=1024, D=64, quick=True),
    _shape(B=16384, D=128, cpu=True),
    _shape(B=65536, D=512),  # the Triton issue's target for reparameterize_kl fwd+bwd
    _shape(B=262144, D=1024),
)

_IWAE: tuple[Shape, ...] = (
    _shape(K=8, B=256, D=32, quick=True),
    _shape(K=64, B=4096, D=128, cpu=True),  # the Triton issue's target for iwae_log_weights + iwae_bound
    _shape(K=256, B=8192, D=64),
)

# The large-batch VQ shapes (N, K, D) = (65,536, 1,024, 64), (1,048,576, 16,384, 64) -- the Triton
# issue's target for vq_nearest -- and (4,194,304, 16,384, 64). The quick shape's N x K distance
# matrix is 16 times the size of x, so the naive search's temporaries dominate its memory.
_VQ: tuple[Shape, ...] = (
    _shape(N=4096, K=1024, D=64, quick=True),
    _shape(N=65536, K=1024, D=64, cpu=True),
    _shape(N=1048576, K=16384, D=64),
    _shape(N=4194304, K=16384, D=64),
)

#: Op -> its shapes, smallest first.
SHAPES: dict[str, tuple[Shape, ...]] = {
    "reparameterize": _GAUSSIAN,
    "reparameterize_kl": _GAUSSIAN,
    "gaussian_kl": _GAUSSIAN,
    "iwae": _IWAE,
    "vq_nearest": _VQ,
    "vector_quantize": _VQ,
}


def shapes_for(op: str, *, names: tuple[str, ...] | None = None, quick: bool = False, cpu: bool = False) -> list[Shape]:
    """The shapes of ``op`` to run.

    Args:
        op: one of :data:`OPS`.
        names: shape names to keep (others are dropped); None keeps the set chosen by the flags.
        quick: with ``names`` None, only the quick shapes.
        cpu: with ``names`` None and not ``quick``, only the shapes flagged ``cpu``.

    Returns:
        The selected shapes in table order (possibly empty when ``names`` match none of ``op``'s).
    """
    if op not in SHAPES:
        raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")
    table = SHAPES[op]
    if names is not None:
        return [shape for shape in table if shape.name in names]
    if quick:
        return [shape for shape in table if shape.quick]
    if cpu:
        return [shape for shape in table if shape.cpu]
    return list(table)
