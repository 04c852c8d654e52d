"""Where the image-based metrics get their data: factor sources, representation functions, encoding.

A **factor source** (:class:`FactorSource`) is anything with the three members of
:class:`fastvae.data.DSprites` the metrics use:

- ``FACTOR_SIZES``: the number of classes of each of the ``K`` factors;
- ``sample_factors(n, generator)``: ``n`` factor rows, int64 ``(n, K)``, drawn independently and
  uniformly (the metrics pass a seeded CPU ``torch.Generator``);
- ``render_factors(factors)``: the observations of factor rows ``(n, K)``, a tensor ``(n, ...)``
  (dSprites: images float32 ``(n, 1, 64, 64)``, through ``images(index_of(factors))``), on the device
  of ``factors``.

The metrics sample factor rows, set the factors their protocol fixes, render them and call the
**representation function** ``represent(observations) -> codes (n, L)``. So a test (or a user with
another simulator) can pass any source: one whose ``render_factors`` returns the factor values
themselves as float ``(n, K)`` "observations" lets a ``represent`` built from the known factors
(a perfect code, a rotation, noise) be scored without rendering images and without inverting the
renderer.

:func:`model_representation` is the default ``represent`` of a zoo model: the posterior mean for
models whose ``encode(x)`` returns ``(mu, logvar)``, the code itself where ``encode`` returns one
tensor (AAE), and ``forward(x).z`` flattened to ``(n, -1)`` for models without ``encode`` (WAE,
SWAE: the deterministic code; VQ-VAE: the quantised feature map).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch

from fastvae.ops._checks import check_int

__all__ = ["FactorSource", "Represent", "check_source", "encode_factors", "model_representation", "sample_factors"]

#: ``represent(observations (n, ...)) -> codes (n, L)``, any real dtype and device.
Represent = Callable[[torch.Tensor], torch.Tensor]

#: Observations passed to ``represent`` per call unless a metric is told otherwise.
DEFAULT_CHUNK_SIZE = 1024


@runtime_checkable
class FactorSource(Protocol):
    """Data with known factors, as the image-based metrics use it (see the module docstring)."""

    FACTOR_SIZES: Sequence[int]

    def sample_factors(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` factor rows, int64 ``(n, K)``, uniform and independent."""
        ...

    def render_factors(self, factors: torch.Tensor) -> torch.Tensor:
        """Observations ``(n, ...)`` of factor rows ``factors`` int64 ``(n, K)``."""
        ...


def check_source(dataset: object) -> int:
    """The number of factors ``K`` of ``dataset``; ``TypeError`` naming ``dataset`` unless it is a :class:`FactorSource`."""
    if not isinstance(dataset, FactorSource):
        raise TypeError(
            "dataset must have FACTOR_SIZES, sample_factors(n, generator) and render_factors(factors) "
            f"(as fastvae.data.DSprites does), got {type(dataset).__name__}"
        )
    sizes = tuple(dataset.FACTOR_SIZES)
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"dataset.FACTOR_SIZES must be a non-empty sequence of positive ints, got {sizes!r}")
    return len(sizes)


def sample_factors(dataset: FactorSource, n: int, generator: torch.Generator) -> torch.Tensor:
    """``dataset.sample_factors(n, generator)`` checked: int64 ``(n, K)``."""
    num_factors = len(dataset.FACTOR_SIZES)
    factors = dataset.sample_factors(n, generator)
    if not isinstance(factors, torch.Tensor) or factors.is_floating_point() or tuple(factors.shape) != (n, num_factors):
        raise ValueError(
            f"dataset.sample_factors({n}, generator) must return an integer tensor of shape ({n}, {num_factors}), "
            f"got {getattr(factors, 'dtype', type(factors).__name__)} {tuple(getattr(factors, 'shape', ()))}"
        )
    return factors.long()


def encode_factors(
    represent: Represent,
    dataset: FactorSource,
    factors: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Codes of factor rows ``factors`` int64 ``(n, K)``: float64 ``(n, L)`` on the CPU.

    Renders ``chunk_size`` rows at a time on ``device`` (default: where ``factors`` are, the CPU) and
    calls ``represent`` on them under ``torch.no_grad()``. ``ValueError`` naming ``represent`` when
    it returns anything but a finite ``(rows, L)`` tensor with the same ``L`` every call.
    """
    check_int(chunk_size, "chunk_size")
    codes = []
    for start in range(0, factors.shape[0], chunk_size):
        rows = factors[start : start + chunk_size]
        observations = dataset.render_factors(rows if device is None else rows.to(device))
        with torch.no_grad():
            code = represent(observations)
        if not isinstance(code, torch.Tensor) or code.dim() != 2 or code.shape[0] != rows.shape[0] or code.shape[1] < 1:
            raise ValueError(
                f"represent must map observations ({rows.shape[0]}, ...) to codes ({rows.shape[0]}, L), "
                f"got {type(code).__name__} {tuple(getattr(code, 'shape', ()))}"
            )
        if codes and code.shape[1] != codes[0].shape[1]:
            raise ValueError(f"represent returned codes of {codes[0].shape[1]} and then {code.shape[1]} dimensions")
        if code.is_complex() or code.dtype == torch.bool:
            raise ValueError(f"represent must return real codes, got dtype {code.dtype}")
        code = code.detach().to("cpu", torch.float64)
        if not bool(code.isfinite().all()):
            raise ValueError(f"represent returned {int((~code.isfinite()).sum())} non-finite code values")
        codes.append(code)
    return torch.cat(codes)


def model_representation(model: torch.nn.Module) -> Represent:
    """The default ``represent`` of ``model`` (module docstring): observations go to the model's device and dtype.

    Raises ``ValueError`` naming ``model`` for conditional models (they need labels, which factor
    sources do not give).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if getattr(model, "conditional", False):
        raise ValueError(f"model {getattr(model, 'name', '')!r} is conditional: it needs class labels to encode")
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    encode = getattr(model, "encode", None)

    def represent(observations: torch.Tensor) -> torch.Tensor:
        x = observations.to(device=device, dtype=dtype)
        with torch.no_grad():
            if encode is None:
                return model(x).z.flatten(1)
            encoded = encode(x)
            return (encoded[0] if isinstance(encoded, tuple) else encoded).flatten(1)

    return represent
