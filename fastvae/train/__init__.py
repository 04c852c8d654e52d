"""Training, evaluating and sampling zoo models: the engine behind ``fastvae train | evaluate | sample``.

- :func:`train` / :class:`Trainer` + :class:`TrainConfig`: train any registered model on dSprites or
  user data, on one device or data-parallel under ``torchrun``, with metrics, checkpoints, image
  grids, exact resume and mixed precision (:mod:`fastvae.train.trainer`).
- :func:`evaluate`, :func:`sample`, :func:`load_run`: score a run directory, draw from it, load its
  model (:mod:`fastvae.train.evaluate`).

Run directories and the checkpoint format are described in :mod:`fastvae.train.checkpoint`. Bad
arguments raise :class:`SettingError`, unreadable run files :class:`RunFileError` (both ValueErrors
with one-line messages).
"""

from fastvae.train.checkpoint import RunFileError
from fastvae.train.evaluate import Run, evaluate, load_run, sample
from fastvae.train.trainer import (
    NonFiniteLossError,
    SettingError,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    train,
)

__all__ = [
    "NonFiniteLossError",
    "Run",
    "RunFileError",
    "SettingError",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "evaluate",
    "load_run",
    "sample",
    "train",
]
