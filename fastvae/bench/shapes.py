"""The one canonical table of benchmark shapes, the named selections of it, and the names the benchmarks accept.

Both ``fastvae bench`` and the pytest-benchmark suites in ``benchmarks/`` take their shapes from
:data:`SHAPES` and nowhere else. A shape is named by its dims (``N65536xK1024xD64``); each is
flagged ``quick`` (the small set of ``fastvae bench --quick`` and of the suites' CI mode, sized so
that the whole quick run takes seconds on two CPU cores), ``cpu`` (in ``--full`` on a machine
without a GPU: sizes a CPU finishes in minutes and a laptop's memory holds) and ``user`` (the
sizes a user's model calls the ops with, where launch and host overhead decide).

What one run measures is a list of :class:`Entry` (an op at a shape, in some dtypes, precisions and
modes), made by :func:`plan` from one of :data:`SELECTIONS`:

* ``core`` (``fastvae bench`` on a GPU): :data:`CORE`, the large shapes against the hardware limit
  and the user-sized calls of the GPU proof, then the ``user`` rows.
* ``user`` (``fastvae bench --user``, and the default on a CPU): every op at the ``user`` shapes,
  fp32, forward and forward + backward, against eager PyTorch.
* ``full`` (``--full``): every shape of the table (the ``cpu`` ones without a GPU), fp32 and bf16,
  both modes, both fp32 search precisions of the VQ ops.
* ``quick`` (``--quick``, CI): the ``quick`` shapes, fp32 and bf16, both modes.

Dims per op family:

* Gaussian ops (``reparameterize``, ``reparameterize_kl``, ``gaussian_kl``, ``gaussian_log_prob``):
  ``B`` rows of a ``D``-dimensional latent.
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
    "CORE",
    "DTYPES",
    "Entry",
    "MODES",
    "OPS",
    "PRECISIONS",
    "SELECTIONS",
    "SHAPES",
    "Shape",
    "FSQ_LEVELS",
    "FSQ_SHAPES",
    "LFQ_SHAPES",
    "PEER_SHAPES",
    "RVQ_SHAPES",
    "find_shape",
    "peer_shapes",
    "plan",
    "precisions_for",
    "shapes_for",
]

#: Every op the benchmarks measure.
OPS: tuple[str, ...] = (
    "reparameterize", "reparameterize_kl", "gaussian_kl", "gaussian_log_prob", "iwae", "vq_nearest", "vector_quantize",
)

#: Benchmark backends: ``eager`` is the plain PyTorch a user would write without fastvae, ``compile``
#: is ``torch.compile`` of that same function, and ``torch``/``triton``/``cuda``/``cpu`` are fastvae's op
#: with that fastvae backend forced.
BACKENDS: tuple[str, ...] = ("eager", "compile", "torch", "triton", "cuda", "cpu")

#: Benchmark dtype names and their torch dtypes.
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

#: ``fwd``: forward only, inputs without gradients. ``fwd+bwd``: forward, then the gradients of every
#: differentiable output with respect to every floating input.
MODES: tuple[str, ...] = ("fwd", "fwd+bwd")

#: How the float32 nearest-code search multiplies (the ``precision`` argument of the VQ ops):
#: ``ieee`` exact float32 products, ``tf32`` TF32 tensor cores. Only fp32 VQ cases have a precision.
PRECISIONS: tuple[str, ...] = ("ieee", "tf32")

#: The named selections :func:`plan` makes (see the module docstring).
SELECTIONS: tuple[str, ...] = ("core", "user", "full", "quick")

_VQ_OPS = ("vq_nearest", "vector_quantize")


@dataclass(frozen=True)
class Shape:
    """One benchmark shape of an op family.

    Attributes:
        name: the dims joined, e.g. ``"N65536xK1024xD64"``; what ``--shapes`` takes.
        dims: dim letter -> size, in the family's order (see the module docstring).
        quick: in the quick set (``fastvae bench --quick``, the suites' CI mode).
        cpu: in ``--full`` on a machine without a GPU.
        user: a size a user's model calls the op with (the ``user`` selection).
    """

    name: str
    dims: dict[str, int] = field(hash=False)
    quick: bool = False
    cpu: bool = False
    user: bool = False


def _shape(*, quick: bool = False, cpu: bool = False, user: bool = False, **dims: int) -> Shape:
    name = "x".join(f"{letter}{size}" for letter, size in dims.items())
    return Shape(name, dims, quick=quick, cpu=cpu or quick or user, user=user)


_GAUSSIAN: tuple[Shape, ...] = (
    _shape(B=64, D=16, user=True),
    _shape(B=256, D=32, user=True),
    _shape(B=1024, D=64, quick=True),
    _shape(B=1024, D=128, user=True),
    _shape(B=16384, D=128, cpu=True),
    _shape(B=65536, D=512),  # the Triton issue's target for reparameterize_kl fwd+bwd
    _shape(B=262144, D=1024),
)

_IWAE: tuple[Shape, ...] = (
    _shape(K=16, B=64, D=16, user=True),
    _shape(K=8, B=256, D=32, quick=True),
    _shape(K=64, B=4096, D=128, cpu=True),  # the Triton issue's target for iwae_log_weights + iwae_bound
    _shape(K=256, B=8192, D=64),
)

# The large-batch VQ shapes (N, K, D) = (65,536, 1,024, 64) -- also a VQ-VAE's 64 x 32 x 32 feature
# map, a user-sized call on a GPU -- (1,048,576, 16,384, 64) -- the Triton issue's target for
# vq_nearest -- and (4,194,304, 16,384, 64). The quick shape's N x K distance matrix is 16 times the
# size of x, so the naive search's temporaries dominate its memory.
_VQ: tuple[Shape, ...] = (
    _shape(N=4096, K=512, D=64, user=True),
    _shape(N=4096, K=1024, D=64, quick=True),
    _shape(N=65536, K=1024, D=64, cpu=True),
    _shape(N=1048576, K=16384, D=64),
    _shape(N=4194304, K=16384, D=64),
)

#: The levels of the FSQ layer in the peer comparison (``--peer``): the paper's codebook of 1,000
#: codes, D = 4 dims, no projections.
FSQ_LEVELS: tuple[int, ...] = (8, 5, 5, 5)

#: The FSQ layer's shapes in the peer comparison, ``N`` vectors of ``D = len(FSQ_LEVELS)``: a
#: user-sized call, a CPU-sized batch and the issue's N = 2^20 (16 MiB of float32 input, which a
#: CPU holds as well).
FSQ_SHAPES: tuple[Shape, ...] = (
    _shape(N=4096, D=4, quick=True, user=True),
    _shape(N=65536, D=4, cpu=True),
    _shape(N=1048576, D=4, cpu=True),
)

#: The LFQ layer's shapes in the peer comparison, ``N`` vectors of ``D = 16`` bits (a codebook of
#: 65,536 codes, the issue's memory row): the peer forms ``N x 2^D`` code probabilities (256 KiB
#: per vector in float32), fastvae the per-bit factorisation and one ``2^D`` distribution. The
#: quick shape (10 bits) keeps CI's run short; the user-sized call is one the peer still holds on a
#: CPU (about 10 s a call there); N = 2^20 is the issue's shape.
LFQ_SHAPES: tuple[Shape, ...] = (
    _shape(N=256, D=10, quick=True),
    _shape(N=1024, D=16, user=True),
    _shape(N=65536, D=16, cpu=True),
    _shape(N=1048576, D=16, cpu=True),
)

#: The residual quantiser's shapes in the peer comparison: ``N`` vectors of ``D = 128`` through
#: ``Q = 8`` codebooks of ``K = 1,024`` codes (EnCodec's and DAC's scale), the peer's ``N x K``
#: distances per stage against fastvae's fused search. N = 2^20 (4 GiB of distances per stage) is
#: the issue's shape: a GPU's, as its eight searches of 2^37 multiply-adds each take minutes on a CPU.
RVQ_SHAPES: tuple[Shape, ...] = (
    _shape(N=256, Q=8, K=1024, D=128, quick=True),
    _shape(N=1024, Q=8, K=1024, D=128, user=True),
    _shape(N=16384, Q=8, K=1024, D=128, cpu=True),
    _shape(N=1048576, Q=8, K=1024, D=128),
)

#: The quantiser layers of the peer comparison (``--peer``) with shapes of their own, by the ``op``
#: of their rows (the VQ layer runs at the VQ ops' shapes).
PEER_SHAPES: dict[str, tuple[Shape, ...]] = {"fsq": FSQ_SHAPES, "lfq": LFQ_SHAPES, "residual_vq": RVQ_SHAPES}

#: Op -> its shapes, smallest first.
SHAPES: dict[str, tuple[Shape, ...]] = {
    "reparameterize": _GAUSSIAN,
    "reparameterize_kl": _GAUSSIAN,
    "gaussian_kl": _GAUSSIAN,
    "gaussian_log_prob": _GAUSSIAN,
    "iwae": _IWAE,
    "vq_nearest": _VQ,
    "vector_quantize": _VQ,
}


def find_shape(op: str, name: str) -> Shape:
    """The shape of ``op`` named ``name``.

    Raises:
        ValueError: ``op`` is not one of :data:`OPS`, or has no shape ``name``.
    """
    if op not in SHAPES:
        raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")
    for shape in SHAPES[op]:
        if shape.name == name:
            return shape
    raise ValueError(f"name: {op} has no shape {name!r} (choose from {', '.join(s.name for s in SHAPES[op])})")


def shapes_for(op: str, *, names: tuple[str, ...] | None = None, quick: bool = False, cpu: bool = False,
               user: bool = False) -> list[Shape]:
    """The shapes of ``op`` to run.

    Args:
        op: one of :data:`OPS`.
        names: shape names to keep (others are dropped); None keeps the set chosen by the flags.
        quick: with ``names`` None, only the quick shapes.
        cpu: with ``names`` None and neither ``quick`` nor ``user``, only the shapes flagged ``cpu``.
        user: with ``names`` None and not ``quick``, only the user shapes.

    Returns:
        The selected shapes in table order (possibly empty when ``names`` match none of ``op``'s).
    """
    if op not in SHAPES:
        raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")
    return _select(SHAPES[op], names=names, quick=quick, cpu=cpu, user=user)


def _select(table: tuple[Shape, ...], *, names: tuple[str, ...] | None, quick: bool, cpu: bool,
            user: bool) -> list[Shape]:
    """The shapes of ``table`` that :func:`shapes_for`'s ``names`` and flags choose, in table order."""
    if names is not None:
        return [shape for shape in table if shape.name in names]
    if quick:
        return [shape for shape in table if shape.quick]
    if user:
        return [shape for shape in table if shape.user]
    if cpu:
        return [shape for shape in table if shape.cpu]
    return list(table)


def peer_shapes(layer: str, selection: str, names: tuple[str, ...] | None = None, *, cpu: bool = False) -> list[Shape]:
    """The shapes of :data:`PEER_SHAPES` ``[layer]`` (``"fsq"``, ``"lfq"`` or ``"residual_vq"``) that
    the peer comparison of ``selection`` runs: those named ``names`` when given, else the quick ones
    (``quick``), the user-sized ones (``user``), or the others' shapes: with ``cpu`` (measuring on the
    CPU) the ones flagged ``cpu``, else all of them."""
    return _select(PEER_SHAPES[layer], names=names, quick=selection == "quick", cpu=cpu, user=selection == "user")


def precisions_for(op: str, dtype: str, precisions: tuple[str, ...]) -> tuple[str | None, ...]:
    """The precisions a case of ``op`` in ``dtype`` runs in: ``precisions`` for an fp32 VQ op, else ``(None,)``."""
    return precisions if op in _VQ_OPS and dtype == "fp32" else (None,)


@dataclass(frozen=True)
class Entry:
    """One line of a benchmark plan: ``op`` at ``shape`` in every dtype x precision x mode listed.

    Attributes:
        op: one of :data:`OPS`.
        shape: one of ``SHAPES[op]``.
        dtypes: dtype names (keys of :data:`DTYPES`).
        modes: of :data:`MODES`.
        precisions: of :data:`PRECISIONS`, for the fp32 cases of the VQ ops (others have none).
        compile: also time ``torch.compile`` of the eager function (each such case compiles one graph).
        user_sized: a call whose time launch and host overhead decide: more repeats, inputs not
            rotated (they stay in cache, as the output of the layer before would), and on CUDA also
            timed as CUDA graph replays.
    """

    op: str
    shape: Shape
    dtypes: tuple[str, ...]
    modes: tuple[str, ...]
    precisions: tuple[str, ...] = ("ieee",)
    compile: bool = False
    user_sized: bool = False


def _entry(op: str, name: str, dtypes: tuple[str, ...], modes: tuple[str, ...], **flags: object) -> Entry:
    return Entry(op, find_shape(op, name), dtypes, modes, **flags)


_BOTH = ("fp32", "bf16")
_LARGE_VQ = "N1048576xK16384xD64"

#: The core set (``fastvae bench`` on a GPU, before the ``user`` rows): the large shapes against the
#: hardware limit -- ``reparameterize_kl`` 65,536 x 512 and ``iwae`` K=64, B=4,096, D=128 forward +
#: backward; ``vq_nearest`` forward and ``vector_quantize`` forward + backward at N = 2^20,
#: K = 16,384, D = 64 in bf16 and in fp32 with both search precisions -- and the VQ user-sized call,
#: ``vector_quantize`` on a 64 x 32 x 32 feature map (N = 65,536, K = 1,024, D = 64), per call and
#: as CUDA graph replays. ``torch.compile`` is timed on the large shapes in bf16 and fp32, and on
#: the VQ ones in bf16 only (the fp32 eager search's N x K matrices, 64 GiB each, do not fit).
CORE: tuple[Entry, ...] = (
    _entry("reparameterize_kl", "B65536xD512", _BOTH, ("fwd+bwd",), compile=True),
    _entry("iwae", "K64xB4096xD128", _BOTH, ("fwd+bwd",), compile=True),
    _entry("vq_nearest", _LARGE_VQ, ("bf16",), ("fwd",), compile=True),
    _entry("vq_nearest", _LARGE_VQ, ("fp32",), ("fwd",), precisions=PRECISIONS),
    _entry("vector_quantize", _LARGE_VQ, ("bf16",), ("fwd+bwd",), compile=True),
    _entry("vector_quantize", _LARGE_VQ, ("fp32",), ("fwd+bwd",), precisions=PRECISIONS),
    _entry("vector_quantize", "N65536xK1024xD64", ("fp32",), MODES, user_sized=True),
)


def plan(
    selection: str,
    *,
    cuda: bool,
    ops: tuple[str, ...] = OPS,
    names: tuple[str, ...] | None = None,
    dtypes: tuple[str, ...] | None = None,
    modes: tuple[str, ...] | None = None,
) -> list[Entry]:
    """What a run measures: the entries of ``selection`` (see the module docstring), in table order.

    Args:
        selection: one of :data:`SELECTIONS`.
        cuda: the run is on a CUDA device (``full`` takes every shape and both precisions there, the
            ``cpu`` shapes and ``ieee`` otherwise).
        ops: keep only the entries of these ops.
        names: instead of the selection's shapes, these shape names of every op in ``ops`` (fp32 and
            bf16, both modes, ``torch.compile`` too; user shapes are user-sized).
        dtypes: replace every entry's dtypes with these.
        modes: replace every entry's modes with these.

    Raises:
        ValueError: an unknown ``selection``.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    entries: list[Entry] = []
    if names is not None:
        entries = [Entry(op, shape, _BOTH, MODES, compile=True, user_sized=shape.user)
                   for op in ops for shape in shapes_for(op, names=names)]
    elif selection == "quick":
        entries = [Entry(op, shape, _BOTH, MODES, compile=True) for op in OPS for shape in shapes_for(op, quick=True)]
    elif selection == "full":
        # TF32 is a CUDA matmul mode: on the CPU a tf32 case would time the ieee one again.
        precisions = PRECISIONS if cuda else ("ieee",)
        entries = [Entry(op, shape, _BOTH, MODES, precisions=precisions, compile=True, user_sized=shape.user)
                   for op in OPS for shape in shapes_for(op, cpu=not cuda)]
    else:
        user = [Entry(op, shape, ("fp32",), MODES, user_sized=True)
                for op in OPS for shape in shapes_for(op, user=True)]
        entries = [*CORE, *user] if selection == "core" else user
    return [
        Entry(entry.op, entry.shape, dtypes or entry.dtypes, modes or entry.modes, entry.precisions, entry.compile,
              entry.user_sized)
        for entry in entries
        if entry.op in ops
    ]
