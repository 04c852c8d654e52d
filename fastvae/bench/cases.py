"""Benchmark cases: per op, its inputs, its callables per backend, and the work one call does.

A :class:`Case` is one op at one shape, dtype, precision, mode and backend. :func:`build` turns it into a
:class:`Step`: a zero-argument callable that runs the case once on the next input set of a rotating
pool (so that, on a GPU, each timed call reads inputs that are not in the L2 cache), for ``fwd``
without autograd, for ``fwd+bwd`` followed by ``torch.autograd.grad`` of every differentiable output
with respect to every input, with gradient seeds that are part of the pool too.

The backends of a case:

``eager``
    The plain PyTorch a user would write without fastvae: ``eps = torch.randn_like(mu)``,
    ``z = mu + exp(0.5 lv) * eps`` and ``kl = -0.5 * sum(1 + lv - mu^2 - exp(lv))``; the IWAE
    log-densities written out and ``torch.logsumexp``; for VQ the full ``N x K`` distance matrix
    ``|x|^2 - 2 x E^T + |E|^2``, its arg-min, a gather, ``F.mse_loss`` losses with ``.detach()`` and
    the straight-through trick.
``compile``
    ``torch.compile(dynamic=False)`` of that same eager function.
``torch``, ``triton``, ``cuda``
    fastvae's op with that fastvae backend forced (globally, with :func:`fastvae.set_backend`, so
    that the backward pass, which the autograd engine may run on another thread, uses it too).

An fp32 VQ case has a precision: ``ieee`` (exact float32 products, PyTorch's default) or ``tf32``
(fastvae's ``precision="tf32"``, and for every backend ``torch.backends.cuda.matmul.allow_tf32``
on while the case runs: what the eager code, ``torch.compile`` and fastvae's torch backend read).

The same builders serve ``fastvae bench`` (:mod:`fastvae.bench.runner`) and the pytest-benchmark
suites in ``benchmarks/``, so both measure exactly the same calls.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import fastvae
from fastvae import backend as fastvae_backend
from fastvae.bench.shapes import DTYPES, Shape
from fastvae.reference.vq import CHUNK_BYTES

__all__ = [
    "BETA",
    "FASTVAE_BACKENDS",
    "Case",
    "OpSpec",
    "OP_SPECS",
    "Step",
    "build",
    "copy_step",
    "default_cpu_budget_bytes",
    "eager_gaussian_kl",
    "eager_gaussian_log_prob",
    "eager_iwae",
    "eager_reparameterize",
    "eager_reparameterize_kl",
    "eager_vector_quantize",
    "eager_vq_nearest",
    "estimated_bytes",
    "backend_cannot_run",
    "fastvae_backend_scope",
    "matmul_rows",
    "matmul_step",
    "module_step",
    "skip_reason",
]

#: Commitment weight of the VQ cases (the VQ-VAE paper's 0.25).
BETA = 0.25

_LOG_2PI = math.log(2.0 * math.pi)

Tensors = tuple[torch.Tensor, ...]
Dims = dict[str, int]


# --- eager: what a user writes without fastvae -------------------------------------------------------


def eager_reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> Tensors:
    """``z = mu + exp(logvar / 2) * eps`` with ``eps = torch.randn_like(mu)``. Returns ``(z,)``."""
    eps = torch.randn_like(mu)
    return (mu + torch.exp(0.5 * logvar) * eps,)


def eager_gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> Tensors:
    """Per-row ``KL(N(mu, e^logvar) || N(0, I)) = -0.5 * sum(1 + lv - mu^2 - e^lv)``. Returns ``(kl,)``."""
    return (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1),)


def eager_gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> Tensors:
    """Per-row ``log N(x; mu, e^lv) = -0.5 * sum(log 2 pi + lv + (x - mu)^2 e^-lv)``. Returns ``(log_p,)``."""
    return (-0.5 * torch.sum(_LOG_2PI + logvar + (x - mu).pow(2) * torch.exp(-logvar), dim=-1),)


def eager_reparameterize_kl(mu: torch.Tensor, logvar: torch.Tensor) -> Tensors:
    """:func:`eager_reparameterize` and :func:`eager_gaussian_kl`. Returns ``(z, kl)``."""
    return eager_reparameterize(mu, logvar) + eager_gaussian_kl(mu, logvar)


def eager_iwae(log_px_z: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> Tensors:
    """IWAE bound over dim 0 from ``log p(x|z) + log N(z; 0, I) - log N(z; mu, e^lv)``. Returns ``(bound,)``."""
    log_pz = -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)
    log_qz = -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + _LOG_2PI).sum(-1)
    log_w = log_px_z + log_pz - log_qz
    return (torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0]),)


def _eager_distances(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The full ``(N, K)`` matrix of squared distances ``|x|^2 - 2 x E^T + |E|^2``."""
    return x.pow(2).sum(1, keepdim=True) - 2 * x @ codebook.T + codebook.pow(2).sum(1)


def eager_vq_nearest(x: torch.Tensor, codebook: torch.Tensor) -> Tensors:
    """Nearest code by the full distance matrix. Returns ``(distances, indices)``."""
    distances, indices = _eager_distances(x, codebook).min(dim=1)
    return distances, indices


def eager_vector_quantize(x: torch.Tensor, codebook: torch.Tensor) -> Tensors:
    """The VQ-VAE bottleneck as usually written. Returns ``(quantized, loss, indices)``.

    The losses are ``F.mse_loss``, means over the ``N D`` elements, as fastvae's are.
    """
    indices = _eager_distances(x, codebook).argmin(dim=1)
    codes = codebook[indices]
    commitment = F.mse_loss(x, codes.detach())
    codebook_loss = F.mse_loss(codes, x.detach())
    quantized = x + (codes - x).detach()
    return quantized, codebook_loss + BETA * commitment, indices


# --- fastvae -----------------------------------------------------------------------------------------


def _fastvae_reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> Tensors:
    return (fastvae.reparameterize(mu, logvar),)


def _fastvae_reparameterize_kl(mu: torch.Tensor, logvar: torch.Tensor) -> Tensors:
    return fastvae.reparameterize_kl(mu, logvar)


def _fastvae_gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> Tensors:
    return (fastvae.gaussian_kl(mu, logvar),)


def _fastvae_gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> Tensors:
    return (fastvae.gaussian_log_prob(x, mu, logvar),)


def _fastvae_iwae(log_px_z: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> Tensors:
    return (fastvae.iwae_bound(fastvae.iwae_log_weights(log_px_z, z, mu, logvar), dim=0),)


def _fastvae_vq_nearest(x: torch.Tensor, codebook: torch.Tensor, *, precision: str = "ieee") -> Tensors:
    indices, distances = fastvae.vq_nearest(x, codebook, precision=precision)
    return distances, indices


def _fastvae_vector_quantize(x: torch.Tensor, codebook: torch.Tensor, *, precision: str = "ieee") -> Tensors:
    out = fastvae.vector_quantize(x, codebook, beta=BETA, precision=precision)
    return out.quantized, out.loss, out.indices


# --- inputs ------------------------------------------------------------------------------------------


def _randn(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, generator: torch.Generator,
           scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(shape, generator=generator, device=device, dtype=torch.float32)).to(dtype)


def _gaussian_inputs(dims: Dims, dtype: torch.dtype, device: torch.device, generator: torch.Generator) -> Tensors:
    shape = (dims["B"], dims["D"])
    return _randn(shape, dtype, device, generator), _randn(shape, dtype, device, generator, scale=0.5)


def _log_prob_inputs(dims: Dims, dtype: torch.dtype, device: torch.device, generator: torch.Generator) -> Tensors:
    shape = (dims["B"], dims["D"])
    return _randn(shape, dtype, device, generator), *_gaussian_inputs(dims, dtype, device, generator)


def _iwae_inputs(dims: Dims, dtype: torch.dtype, device: torch.device, generator: torch.Generator) -> Tensors:
    k, b, d = dims["K"], dims["B"], dims["D"]
    return (
        _randn((k, b), dtype, device, generator, scale=10.0),
        _randn((k, b, d), dtype, device, generator),
        _randn((b, d), dtype, device, generator),
        _randn((b, d), dtype, device, generator, scale=0.5),
    )


def _vq_inputs(dims: Dims, dtype: torch.dtype, device: torch.device, generator: torch.Generator) -> Tensors:
    x = _randn((dims["N"], dims["D"]), dtype, device, generator)
    return x, _randn((dims["K"], dims["D"]), dtype, device, generator)


# --- the ops -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpSpec:
    """How to benchmark one op.

    Attributes:
        name: the op's benchmark name (see :data:`fastvae.bench.shapes.OPS`).
        fastvae_ops: the fastvae ops (as registered with :mod:`fastvae.backend`) its calls dispatch.
        make_inputs: ``(dims, dtype, device, generator) -> inputs``, all floating and differentiable.
        eager: the plain-PyTorch function (also what ``compile`` compiles).
        fastvae: the same computation through fastvae's public ops (the VQ ops take ``precision=``).
        input_elements: ``dims -> number of input elements``.
        elements_moved: for memory-bound ops, ``(dims, mode) -> elements`` the op must read and
            write (the rule is stated above :data:`OP_SPECS`); None for compute-bound ops.
        flops: for compute-bound ops, ``dims -> floating-point operations`` of the nearest-code
            search, ``2 N K D`` in either mode; None for memory-bound ops.
        naive_workspace: ``(dims, itemsize) -> bytes`` of temporaries the eager code holds beyond
            inputs, outputs and gradients (the VQ distance matrices), for the CPU memory guard.
    """

    name: str
    fastvae_ops: tuple[str, ...]
    make_inputs: Callable[[Dims, torch.dtype, torch.device, torch.Generator], Tensors]
    eager: Callable[..., Tensors]
    fastvae: Callable[..., Tensors]
    input_elements: Callable[[Dims], int]
    elements_moved: Callable[[Dims, str], int] | None = None
    flops: Callable[[Dims], int] | None = None
    naive_workspace: Callable[[Dims, int], int] = lambda dims, itemsize: 0


def _fwd_bwd(mode: str, fwd: int, bwd: int) -> int:
    return fwd + (bwd if mode == "fwd+bwd" else 0)


def _vq_flops(dims: Dims) -> int:
    return 2 * dims["N"] * dims["K"] * dims["D"]


def _vq_workspace(dims: Dims, itemsize: int) -> int:
    # The naive search holds two N x K matrices at once (one term of the sum and the next).
    return 2 * dims["N"] * dims["K"] * itemsize


def _gaussian_elements(dims: Dims) -> int:
    return 2 * dims["B"] * dims["D"]


def _vq_elements(dims: Dims) -> int:
    return (dims["N"] + dims["K"]) * dims["D"]


#: Every benchmarked op by name. Bytes moved count each tensor of the op's interface once per pass:
#: forward reads the inputs and writes the outputs; backward reads the output gradients and the
#: saved inputs it needs and writes the input gradients (a gradient that equals an incoming one,
#: like ``d mu = d z`` of ``reparameterize``, is not counted). ``iwae`` counts the traffic of
#: fastvae's two ops, including the ``(K, B)`` log-weights between them.
OP_SPECS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec(
            "reparameterize",
            ("reparameterize_fwd", "reparameterize_bwd"),
            _gaussian_inputs,
            eager_reparameterize,
            _fastvae_reparameterize,
            _gaussian_elements,
            # fwd: mu, logvar -> z; bwd: d z, logvar -> d logvar.
            elements_moved=lambda d, mode: _fwd_bwd(mode, 3 * d["B"] * d["D"], 3 * d["B"] * d["D"]),
        ),
        OpSpec(
            "reparameterize_kl",
            ("reparameterize_kl_fwd", "reparameterize_kl_bwd"),
            _gaussian_inputs,
            eager_reparameterize_kl,
            _fastvae_reparameterize_kl,
            _gaussian_elements,
            # fwd: mu, logvar -> z, kl; bwd: d z, d kl, mu, logvar -> d mu, d logvar.
            elements_moved=lambda d, mode: _fwd_bwd(
                mode, 3 * d["B"] * d["D"] + d["B"], 5 * d["B"] * d["D"] + d["B"]
            ),
        ),
        OpSpec(
            "gaussian_kl",
            ("gaussian_kl_fwd", "gaussian_kl_bwd"),
            _gaussian_inputs,
            eager_gaussian_kl,
            _fastvae_gaussian_kl,
            _gaussian_elements,
            # fwd: mu, logvar -> kl; bwd: d kl, mu, logvar -> d mu, d logvar.
            elements_moved=lambda d, mode: _fwd_bwd(
                mode, 2 * d["B"] * d["D"] + d["B"], 4 * d["B"] * d["D"] + d["B"]
            ),
        ),
        OpSpec(
            "gaussian_log_prob",
            ("gaussian_log_prob_fwd", "gaussian_log_prob_bwd"),
            _log_prob_inputs,
            eager_gaussian_log_prob,
            _fastvae_gaussian_log_prob,
            lambda d: 3 * d["B"] * d["D"],
            # fwd: x, mu, logvar -> log_p; bwd: d log_p, x, mu, logvar -> d x, d mu, d logvar.
            elements_moved=lambda d, mode: _fwd_bwd(
                mode, 3 * d["B"] * d["D"] + d["B"], 6 * d["B"] * d["D"] + d["B"]
            ),
        ),
        OpSpec(
            "iwae",
            ("iwae_log_weights_fwd", "iwae_log_weights_bwd", "iwae_bound_fwd", "iwae_bound_bwd"),
            _iwae_inputs,
            eager_iwae,
            _fastvae_iwae,
            lambda d: d["K"] * d["B"] * (d["D"] + 1) + 2 * d["B"] * d["D"],
            # fwd: log_px_z, z, mu, logvar -> log_w -> bound; bwd: d bound, log_w -> d log_w
            # (= d log_px_z); d log_w, z, mu, logvar -> d z, d mu, d logvar.
            elements_moved=lambda d, mode: _fwd_bwd(
                mode,
                d["K"] * d["B"] * d["D"] + 2 * d["B"] * d["D"] + 3 * d["K"] * d["B"] + d["B"],
                2 * d["K"] * d["B"] * d["D"] + 4 * d["B"] * d["D"] + 3 * d["K"] * d["B"] + d["B"],
            ),
        ),
        OpSpec(
            "vq_nearest",
            ("vq_nearest_fwd",),
            _vq_inputs,
            eager_vq_nearest,
            _fastvae_vq_nearest,
            _vq_elements,
            flops=_vq_flops,
            naive_workspace=_vq_workspace,
        ),
        OpSpec(
            "vector_quantize",
            ("vector_quantize_fwd", "vector_quantize_bwd"),
            _vq_inputs,
            eager_vector_quantize,
            _fastvae_vector_quantize,
            _vq_elements,
            flops=_vq_flops,
            naive_workspace=_vq_workspace,
        ),
    )
}


# --- cases -------------------------------------------------------------------------------------------

#: Backends that run fastvae's op (the others run the eager function, plain or compiled).
FASTVAE_BACKENDS: tuple[str, ...] = ("torch", "triton", "cuda", "cpu")


@dataclass(frozen=True)
class Case:
    """One op at one shape, dtype (``"fp32"``...), mode (``"fwd"``/``"fwd+bwd"``) and backend.

    ``backend`` is one of :data:`~fastvae.bench.shapes.BACKENDS`, or ``"auto"`` for fastvae's op
    under its own backend choice. ``precision`` is ``"ieee"`` or ``"tf32"`` for an fp32 VQ case (see
    the module docstring), else None.
    """

    op: str
    shape: Shape
    dtype: str
    mode: str
    backend: str
    precision: str | None = None

    @property
    def id(self) -> str:
        """``op-shape-dtype[-precision]-mode-backend``, e.g. ``vq_nearest-N4096xK1024xD64-fp32-ieee-fwd-torch``."""
        dtype = self.dtype if self.precision is None else f"{self.dtype}-{self.precision}"
        return f"{self.op}-{self.shape.name}-{dtype}-{self.mode}-{self.backend}"


def estimated_bytes(case: Case) -> int:
    """A rough upper estimate of the memory ``case`` needs: inputs, outputs and gradients (three
    times the inputs), plus the naive distance matrices (``eager``, ``compile``) or one search chunk
    (fastvae's ``torch`` backend) of the VQ ops."""
    spec = OP_SPECS[case.op]
    itemsize = DTYPES[case.dtype].itemsize
    total = 3 * spec.input_elements(case.shape.dims) * itemsize
    if case.backend in ("eager", "compile"):
        total += spec.naive_workspace(case.shape.dims, itemsize)
    elif spec.flops is not None:
        total += min(CHUNK_BYTES, case.shape.dims["N"] * case.shape.dims["K"] * 4)
    return total


def default_cpu_budget_bytes() -> int:
    """The default CPU memory budget of :func:`skip_reason`: half the physical memory (8 GB if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 10**9


def backend_cannot_run(backend: str, fastvae_ops: tuple[str, ...], device: torch.device) -> str | None:
    """Why fastvae backend ``backend`` is not benchmarked running the fastvae ops ``fastvae_ops`` (as
    :mod:`fastvae.backend` names them, e.g. ``OP_SPECS[op].fastvae_ops``) on ``device``, or None when it
    is: triton and cuda run on CUDA devices only (Triton's CPU interpreter is not a performance path),
    and the backend must be available here and implement every op."""
    if backend in ("triton", "cuda") and device.type != "cuda":
        return f"the {backend} backend is benchmarked on CUDA devices only"
    try:
        with fastvae.use_backend(backend):
            for name in fastvae_ops:
                fastvae_backend.resolve(name, device)
    except fastvae.BackendUnavailableError as error:
        return str(error)
    return None


def skip_reason(case: Case, device: torch.device, *, cpu_budget_bytes: int) -> str | None:
    """Why ``case`` is not run on ``device``, or None when it runs.

    A fastvae backend must be one :func:`backend_cannot_run` allows for the op; on the CPU a case
    whose :func:`estimated_bytes` exceed ``cpu_budget_bytes`` is refused rather than let the machine swap.
    """
    if case.backend in FASTVAE_BACKENDS:
        reason = backend_cannot_run(case.backend, OP_SPECS[case.op].fastvae_ops, device)
        if reason is not None:
            return reason
    if device.type == "cpu":
        needs = estimated_bytes(case)
        if needs > cpu_budget_bytes:
            return f"needs {needs / 1e9:.1f} GB, over the CPU memory budget of {cpu_budget_bytes / 1e9:.1f} GB"
    return None


@contextlib.contextmanager
def _tf32_scope(enabled: bool) -> Iterator[None]:
    """With ``enabled``, ``torch.backends.cuda.matmul.allow_tf32`` on while inside, then restored."""
    if not enabled:
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


@contextlib.contextmanager
def fastvae_backend_scope(name: str | None) -> Iterator[None]:
    """Force fastvae backend ``name`` globally while inside (no-op for None), then restore the previous one.

    Global (:func:`fastvae.set_backend`) rather than :func:`fastvae.use_backend`: the autograd engine
    runs CUDA backward passes on its own threads, which do not see the caller's context variables.
    """
    if name is None:
        yield
        return
    previous = fastvae_backend.get_backend()
    fastvae.set_backend(name)
    try:
        yield
    finally:
        fastvae.set_backend(previous)


class Step:
    """A benchmark call: each ``step()`` runs ``fn`` once on the next input set of a rotating pool.

    Use it inside ``with step.active():``, which forces its fastvae backend (if any) for the forward
    and backward passes alike, and TF32 matmuls for a ``tf32`` case.

    Args:
        fn: ``(*inputs) -> outputs`` (a tuple of tensors).
        inputs: one input set (the pool's first; it is copied to fill the pool).
        mode: ``"fwd"`` (under ``torch.no_grad``) or ``"fwd+bwd"`` (every floating input takes a
            gradient; each call ends with ``torch.autograd.grad`` of every output that requires one,
            seeded with ones).
        rotation_bytes: the pool holds enough copies of the inputs (and gradient seeds) that their
            total exceeds this many bytes (at least one set). 0: a single set.
        backend: fastvae backend to force while active, or None.
        tf32: turn ``torch.backends.cuda.matmul.allow_tf32`` on while active.
    """

    def __init__(
        self,
        fn: Callable[..., Tensors],
        inputs: Tensors,
        *,
        mode: str,
        rotation_bytes: int = 0,
        backend: str | None = None,
        tf32: bool = False,
    ) -> None:
        self._fn = fn
        self._backward = mode == "fwd+bwd"
        self._backend = backend
        self._tf32 = tf32
        first = tuple(t.detach().requires_grad_(self._backward) for t in inputs)
        seeds: Tensors = ()
        if self._backward:
            with self.active():
                outputs = fn(*first)
            seeds = tuple(torch.ones_like(out) for out in outputs if out.requires_grad)
            del outputs
        set_bytes = sum(t.numel() * t.element_size() for t in first + seeds)
        copies = rotation_bytes // max(set_bytes, 1) + 1 if rotation_bytes > 0 else 1
        self._pool = [(first, seeds)] + [
            (
                tuple(t.detach().clone().requires_grad_(self._backward) for t in first),
                tuple(s.clone() for s in seeds),
            )
            for _ in range(copies - 1)
        ]
        self._next = 0

    @property
    def pool_size(self) -> int:
        """How many input sets the pool rotates through."""
        return len(self._pool)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Context manager forcing this step's fastvae backend (see :func:`fastvae_backend_scope`) and TF32."""
        with fastvae_backend_scope(self._backend), _tf32_scope(self._tf32):
            yield

    def __call__(self) -> None:
        inputs, seeds = self._pool[self._next]
        self._next = (self._next + 1) % len(self._pool)
        if not self._backward:
            with torch.no_grad():
                self._fn(*inputs)
            return
        outputs = self._fn(*inputs)
        torch.autograd.grad([out for out in outputs if out.requires_grad], inputs, seeds)


def build(case: Case, device: torch.device, *, rotation_bytes: int = 0) -> Step:
    """The :class:`Step` of ``case`` on ``device`` (inputs drawn with a fixed seed).

    For ``compile`` this resets TorchDynamo's caches and compiles the eager function afresh with
    ``dynamic=False`` (one static graph per case; the first call, made here for ``fwd+bwd`` or by
    the caller's warm-up, pays the compile).

    Raises:
        torch.OutOfMemoryError: the inputs do not fit.
        fastvae.BackendUnavailableError: the fastvae backend cannot run (see :func:`skip_reason`).
    """
    spec = OP_SPECS[case.op]
    generator = torch.Generator(device=device).manual_seed(0)
    inputs = spec.make_inputs(case.shape.dims, DTYPES[case.dtype], device, generator)
    if case.backend == "eager":
        fn = spec.eager
    elif case.backend == "compile":
        torch._dynamo.reset()
        fn = torch.compile(spec.eager, dynamic=False)
    elif case.precision is not None:
        fn = functools.partial(spec.fastvae, precision=case.precision)
    else:
        fn = spec.fastvae
    backend = None if case.backend in ("eager", "compile") else case.backend
    return Step(fn, inputs, mode=case.mode, rotation_bytes=rotation_bytes, backend=backend,
                tf32=case.precision == "tf32")


# --- ceilings and modules ----------------------------------------------------------------------------


def copy_step(nbytes: int, device: torch.device) -> Step:
    """A device-to-device copy of ``nbytes`` bytes (one buffer into another): the bandwidth ceiling.

    It moves ``2 * nbytes`` (read and write) per call.
    """
    source = torch.ones(nbytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    return Step(lambda src, dst: (dst.copy_(src),), (source, target), mode="fwd")


def matmul_rows(dims: Dims, dtype: str, *, max_output_bytes: int) -> int:
    """How many of a VQ shape's ``N`` rows :func:`matmul_step` can multiply with an ``N x K`` product
    of at most ``max_output_bytes``: ``N``, halved until it fits."""
    rows = dims["N"]
    while rows > 1 and rows * dims["K"] * DTYPES[dtype].itemsize > max_output_bytes:
        rows //= 2
    return rows


def matmul_step(dims: Dims, dtype: str, device: torch.device, *, rotation_bytes: int) -> Step:
    """``torch.matmul(x, E.T)`` of a VQ shape's ``(N, D) x (D, K)``: the compute ceiling of the search.

    It does ``2 N K D`` flops per call, into one preallocated product (so that a CPU's page faults on
    a fresh ``N x K`` allocation are not timed). For shapes whose product does not fit, pass fewer rows
    (:func:`matmul_rows`): the throughput, not the time, is what the VQ rows are compared with.
    """
    x, codebook = _vq_inputs(dims, DTYPES[dtype], device, torch.Generator(device=device).manual_seed(0))
    product = torch.empty((dims["N"], dims["K"]), dtype=DTYPES[dtype], device=device)
    return Step(lambda a, b: (torch.matmul(a, b.T, out=product),), (x, codebook), mode="fwd",
                rotation_bytes=rotation_bytes)


def module_step(module: torch.nn.Module, dims: Dims, dtype: str, device: torch.device, *,
                rotation_bytes: int = 0, backend: str | None = None) -> Step:
    """Forward and backward of a quantiser layer in training mode on ``x (N, D)``.

    ``module`` is moved to ``device`` and ``dtype`` and called as ``module(x)``; it must return a VQ
    layer's ``(quantized, indices, loss, ...)`` (a fastvae :class:`~fastvae.VQOutput`, or
    vector-quantize-pytorch's tuple) or an FSQ layer's ``(quantized, indices)``. Gradients flow from
    ``quantized`` and the loss, where there is one, to ``x``.
    """
    module = module.to(device=device, dtype=DTYPES[dtype]).train()

    def call(x: torch.Tensor) -> Tensors:
        out = module(x)
        return (out[0], out[2]) if len(out) > 2 else (out[0],)

    x = _randn((dims["N"], dims["D"]), DTYPES[dtype], device, torch.Generator(device=device).manual_seed(0))
    return Step(call, (x,), mode="fwd+bwd", rotation_bytes=rotation_bytes, backend=backend)
