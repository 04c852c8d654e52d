"""The VAE zoo: one interface (:class:`VAEModel`), a registry, and the models.

``fastvae.models.available()`` lists the names; ``fastvae.models.create(name, input_shape=...,
latent_dim=..., **hparams)`` builds one. Every model module registers itself; see
:mod:`fastvae.models.base` for the interface and the loss scale.
"""

from fastvae.models.base import GaussianVAE, ModelOutput, ObservationModel, VAEModel
from fastvae.models.registry import (
    available,
    create,
    hyperparameters,
    model_class,
    register,
)

__all__ = [
    "GaussianVAE",
    "ModelOutput",
    "ObservationModel",
    "VAEModel",
    "available",
    "create",
    "hyperparameters",
    "model_class",
    "register",
]
