"""The model registry: every zoo model registers its class under a name; :func:`create` builds one.

Model modules register themselves with the :func:`register` decorator when imported. The registry
imports every module of :mod:`fastvae.models` the first time it is asked for names, so a new model
is one new module and nothing else.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import Any, TypeVar

from fastvae.models.base import VAEModel

__all__ = ["available", "create", "hyperparameters", "model_class", "register"]

_MODELS: dict[str, type[VAEModel]] = {}
_loaded = False

M = TypeVar("M", bound=type[VAEModel])

#: Constructor arguments every model takes that are not hyper-parameters.
_STRUCTURAL = ("self", "input_shape", "latent_dim")


def register(name: str) -> Callable[[M], M]:
    """Class decorator registering a :class:`VAEModel` subclass as ``name`` (sets ``cls.name``)."""

    def decorate(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, VAEModel)):
            raise TypeError(f"@register({name!r}) must decorate a VAEModel subclass, got {cls!r}")
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered by {_MODELS[name].__qualname__}")
        cls.name = name
        _MODELS[name] = cls
        return cls

    return decorate


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    import fastvae.models as package

    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")
    _loaded = True


def available() -> list[str]:
    """The names :func:`create` accepts, sorted."""
    _load_all()
    return sorted(_MODELS)


def model_class(name: str) -> type[VAEModel]:
    """The class registered as ``name``.

    Raises:
        ValueError: no model is registered as ``name``; the message lists the valid names.
    """
    _load_all()
    if not isinstance(name, str) or name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def hyperparameters(name: str) -> dict[str, Any]:
    """The hyper-parameters of model ``name`` with their defaults (the paper's), in signature order.

    Raises:
        ValueError: unknown model name (the message lists the valid ones).
    """
    signature = inspect.signature(model_class(name).__init__)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name not in _STRUCTURAL and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def create(
    name: str, *, input_shape: tuple[int, ...] = (1, 64, 64), latent_dim: int = 10, **hparams: Any
) -> VAEModel:
    """Build model ``name`` for data of shape ``input_shape``.

    Args:
        name: one of :func:`available`.
        input_shape: one example's shape: ``(C, H, W)`` images get the shared convolutional encoder
            and decoder, ``(D,)`` flat vectors the shared MLPs.
        latent_dim: size of the latent code (for VQ models, the code vectors' dimension).
        **hparams: the model's hyper-parameters (see :func:`hyperparameters`); unset ones keep the
            paper's defaults.

    Returns:
        The model (in training mode, on the CPU, float32). ``model.config`` holds everything needed to
        build it again: ``{"name", "input_shape", "latent_dim", "hparams"}`` with every hyper-parameter.

    Raises:
        ValueError: unknown ``name``, or a hyper-parameter the model does not take (the message lists
            the valid ones), or a bad ``input_shape``/``latent_dim``.
    """
    cls = model_class(name)
    valid = hyperparameters(name)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise ValueError(
            f"model {name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(valid) or '(none)'}"
        )
    if not (isinstance(input_shape, (tuple, list)) and input_shape and all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in input_shape
    )) or len(input_shape) not in (1, 3):
        raise ValueError(f"input_shape must be (C, H, W) or (D,) of positive ints, got {input_shape!r}")
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
    input_shape = tuple(input_shape)
    model = cls(input_shape, latent_dim, **hparams)
    model.config = {
        "name": name,
        "input_shape": list(input_shape),
        "latent_dim": latent_dim,
        "hparams": {**valid, **hparams},
    }
    return model
