"""The trainer: any zoo model, any fastvae data set, one process or a ``torchrun`` job.

One training step reads the batch that :mod:`fastvae.train.sampling` assigns to ``(seed, step,
rank)``, runs the model's forward and ``loss(x, out, y, step=step)`` (under autocast on a GPU), checks
that every loss term is finite, back-propagates and steps the optimiser(s):

* ``"loss"`` trains :meth:`~fastvae.models.VAEModel.generator_parameters` with Adam;
* for models with ``has_discriminator``, ``"disc_loss"`` from the same forward trains
  :meth:`~fastvae.models.VAEModel.discriminator_parameters` with a second Adam, each loss reaching
  only its own parameters (``torch.autograd.backward(..., inputs=...)``).

Conditional models (``model.conditional``) get integer class labels ``(B,)``: the label of labelled
data, the shape factor on dSprites; their ``num_classes`` hyper-parameter defaults to the data's.

Outputs in the run directory ``out`` (only rank 0 writes): ``metrics.jsonl``
(:mod:`~fastvae.train.metrics_log`), ``checkpoint.safetensors`` and ``config.json``
(:mod:`~fastvae.train.checkpoint`) every ``checkpoint_every`` steps and at the end, and
``samples_<step>.png`` / ``recon_<step>.png`` every ``sample_every`` steps and at the end.

The run directory: a new run needs ``out`` to be new or empty; one that holds a run needs
``resume`` (continue it) or ``overwrite``, and one that holds anything else needs ``overwrite``.
``overwrite`` removes fastvae's own files there (:data:`~fastvae.train.checkpoint.RUN_FILES`) and
leaves every other file alone. The directory is created only once the data and the model are
built, and a new run that fails before its first step removes the directory it created.

Exactness: the data order is a function of ``(seed, step, rank)`` and every random generator's state
is checkpointed, so ``resume`` continues to the same weights as an uninterrupted run. Image grids
draw their noise from a fixed seed inside ``torch.random.fork_rng``, so writing them changes nothing.
Building a :class:`Trainer` seeds this process's torch, Python and numpy generators (from ``seed``
and the rank) or, on resume, restores them.

Failure handling: a first SIGINT or SIGTERM asks the run to stop after the current step; it saves a
checkpoint and raises :class:`TrainingInterrupted`. A non-finite loss term stops the run before the
bad update, saves the state from before that step (generators and buffers included) and raises
:class:`NonFiniteLossError` naming the step and the term.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.utils.data
from torch import nn
from tqdm import tqdm

import fastvae
from fastvae import models
from fastvae.train import distributed
from fastvae.train.checkpoint import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    FORMAT,
    METRICS_NAME,
    RUN_FILES,
    capture_rng,
    clear_run,
    load_checkpoint,
    read_run_record,
    restore_rng,
    rng_from_json,
    rng_to_json,
    save_checkpoint,
    state_digest,
    write_json,
)
from fastvae.train.images import as_images, make_grid, reconstruction_grid, save_png
from fastvae.train.metrics_log import MetricsLog
from fastvae.train.sampling import (
    MODEL_SALT,
    RANK_SALT,
    BatchFetcher,
    StepSampler,
    class_labels,
    derive_seed,
    num_classes_of,
    step_positions,
)

__all__ = [
    "NonFiniteLossError",
    "SettingError",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "load_data",
    "resolve_device",
    "train",
]

#: Salt of the fixed examples shown in reconstruction grids.
PREVIEW_SALT = 0x9E1E
#: Examples in a samples grid, and originals in a reconstruction grid.
SAMPLE_GRID = 64
RECON_GRID = 32

#: Training arguments that shape the trajectory: a resumed run must keep them.
_FIXED_ON_RESUME = ("model", "data", "batch_size", "lr", "seed", "latent_dim", "hparams")


class _Unset:
    """A hyper-parameter left to the model's default, in messages."""

    def __repr__(self) -> str:
        return "unset"


_UNSET = _Unset()


class SettingError(ValueError):
    """A bad argument of training, evaluation or sampling, in one line.

    ``str(error)`` names the arguments as Python spells them (``batch_size``); :meth:`spelled`
    renders the same message with another spelling, such as the command line's ``--batch-size``.

    Args:
        render: builds the message from a function that spells an argument's name.
    """

    def __init__(self, render: Callable[[Callable[[str], str]], str]) -> None:
        self._render = render
        super().__init__(render(str))

    def spelled(self, spell: Callable[[str], str]) -> str:
        """The message with every argument name passed through ``spell``."""
        return self._render(spell)


@dataclass
class TrainConfig:
    """The arguments of a training run (the ``fastvae train`` flags).

    Attributes:
        model: a name from :func:`fastvae.models.available`.
        data: ``"dsprites"`` or a path :func:`fastvae.data.load` understands.
        steps: train until this many optimiser steps are done (counting those before a resume).
        batch_size: examples per step on each process.
        out: the run directory (default ``runs/<model>``).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        lr: Adam's learning rate (both optimisers).
        seed: seeds the model's initialisation, the data order and the training noise.
        latent_dim: the model's latent size.
        log_every: steps between metrics records.
        checkpoint_every: steps between checkpoints (one is always written at the end).
        sample_every: steps between sample and reconstruction grids (also written at the end).
        resume: continue the run in ``out`` from its checkpoint.
        overwrite: start afresh in an ``out`` that holds a run or other files: fastvae's own files
            there (checkpoint, config, metrics, evaluation, image grids) are deleted, others kept.
        backend: the fastvae op backend (:func:`fastvae.use_backend`).
        amp: mixed precision: None for "on with CUDA", True (CUDA only) or False.
        num_workers: ``DataLoader`` worker processes rendering batches (0: in the training process).
        progress: show the progress bar (rank 0).
        hparams: the model's hyper-parameters (see :func:`fastvae.models.hyperparameters`).
    """

    model: str
    data: str = "dsprites"
    steps: int = 5000
    batch_size: int = 64
    out: str | None = None
    device: str = "auto"
    lr: float = 1e-3
    seed: int = 0
    latent_dim: int = 10
    log_every: int = 50
    checkpoint_every: int = 1000
    sample_every: int = 1000
    resume: bool = False
    overwrite: bool = False
    backend: str = "auto"
    amp: bool | None = None
    num_workers: int = 0
    progress: bool = True
    hparams: dict[str, Any] = field(default_factory=dict)

    def validated(self) -> TrainConfig:
        """A copy with ``out`` filled in, after checking every field.

        Raises:
            SettingError: a field out of range, naming it.
            ValueError: an unknown model, listing the valid ones.
        """
        models.model_class(self.model)
        for name in ("steps", "batch_size", "latent_dim", "log_every", "checkpoint_every", "sample_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingError(lambda s, name=name, value=value: f"{s(name)} must be a positive int, got {value!r}")
        workers, seed, lr, backend, amp = self.num_workers, self.seed, self.lr, self.backend, self.amp
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise SettingError(lambda s: f"{s('num_workers')} must be a non-negative int, got {workers!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SettingError(lambda s: f"{s('seed')} must be a non-negative int, got {seed!r}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
            raise SettingError(lambda s: f"{s('lr')} must be a positive number, got {lr!r}")
        if backend not in fastvae.backend.BACKENDS:
            valid = ", ".join(fastvae.backend.BACKENDS)
            raise SettingError(lambda s: f"{s('backend')} must be one of {valid}, got {backend!r}")
        if amp not in (None, True, False):
            raise SettingError(lambda s: f"{s('amp')} must be None, True or False, got {amp!r}")
        if self.resume and self.overwrite:
            raise SettingError(lambda s: f"{s('resume')} and {s('overwrite')} exclude each other")
        return dataclasses.replace(
            self, data=os.fspath(self.data), out=os.fspath(self.out or Path("runs") / self.model), lr=float(self.lr)
        )

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (tuples in ``hparams`` become lists)."""
        return dataclasses.asdict(self)


class NonFiniteLossError(RuntimeError):
    """A loss term was NaN or infinite; the run stopped before applying that step's update.

    Attributes:
        step: the 0-based step whose loss was non-finite (``step`` steps were done before it).
        terms: every loss term of that step (averaged over ranks), by name.
        bad: the names of the non-finite terms.
        checkpoint: where the state from before the step was saved.
    """

    def __init__(self, step: int, terms: dict[str, float], checkpoint: Path) -> None:
        self.step = step
        self.terms = terms
        self.bad = [name for name, value in terms.items() if not math.isfinite(value)]
        self.checkpoint = checkpoint
        described = ", ".join(f"{name!r} is {terms[name]}" for name in self.bad)
        # Steps count from 1 in messages, as in the progress bar and metrics.jsonl: the step after
        # ``step`` good ones is step ``step + 1``.
        super().__init__(
            f"non-finite loss in step {step + 1}: {described}; saved the last good state "
            f"({step} steps done) to {checkpoint}"
        )


class TrainingInterrupted(KeyboardInterrupt):
    """The run was interrupted (SIGINT / Ctrl-C, or SIGTERM) and saved a checkpoint.

    Attributes:
        step: steps done, as saved.
        checkpoint: the checkpoint written, or None when none could be.
        signal_number: the signal that stopped the run (``signal.SIGINT`` for a KeyboardInterrupt).
    """

    def __init__(self, step: int, checkpoint: Path | None, signal_number: int = signal.SIGINT) -> None:
        self.step = step
        self.checkpoint = checkpoint
        self.signal_number = signal_number
        saved = f"saved a checkpoint to {checkpoint}" if checkpoint else "no checkpoint could be saved"
        super().__init__(f"interrupted after {step} steps; {saved} (continue with --resume)")


def resolve_device(spec: str) -> torch.device:
    """The device for ``spec``: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"``,
    ``"cuda:N"``.

    Raises:
        SettingError: an unknown spec, or CUDA asked for where none is visible.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unknown = SettingError(lambda s: f"{s('device')} must be auto, cpu, cuda or cuda:N, got {spec!r}")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise unknown from None
    if device.type not in ("cpu", "cuda"):
        raise unknown
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SettingError(
            lambda s: f"{s('device')} {spec!r} asked for, but no CUDA device is visible; use {s('device')} cpu"
        )
    return device


def load_data(spec: str) -> torch.utils.data.Dataset:
    """The data set ``spec`` names, through :func:`fastvae.data.load`.

    Raises:
        SettingError: a path that does not exist or holds no usable data; a one-line message that
            names ``data`` and lists the valid forms.
    """
    from fastvae import data
    from fastvae.data.files import VALID_FORMS

    try:
        return data.load(spec)
    except (FileNotFoundError, ValueError) as error:
        message = " ".join(str(error).split())
        if "valid" not in message:
            message += f"; valid: {VALID_FORMS}"
        raise SettingError(lambda s: f"{s('data')} {str(spec)!r}: {message}") from None


def _autocast_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """The autocast dtype: bf16 where the GPU supports it, else fp16; None for full precision."""
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return None
    if device.type != "cuda":
        raise SettingError(
            lambda s: f"{s('amp')} (mixed precision) needs a CUDA device; turn it off or set {s('device')} to cuda"
        )
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _ignore_stop_signals(worker_id: int) -> None:
    """``DataLoader`` worker init: leave SIGINT / SIGTERM to the training process, which stops at the
    end of the step and then shuts the workers down (PyTorch's workers otherwise die on a SIGTERM
    sent to the whole process group, and the training process with them, mid-step)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _LossStep(nn.Module):
    """Forward and loss in one module, so that DDP sees every parameter a step uses."""

    def __init__(self, model: models.VAEModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        out = self.model(x, y) if y is not None else self.model(x)
        return self.model.loss(x, out, y, step=step)


class _StopRequests:
    """Turns the first SIGINT / SIGTERM into a request to stop at the end of the step (a second
    SIGINT interrupts at once). Handlers are installed only in the main thread."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal_number is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = signum
        print(f"\nfastvae train: {signal.Signals(signum).name} received; stopping after this step "
              "(press Ctrl-C again to stop now)", file=sys.stderr)

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


@dataclass
class _Snapshot:
    """The state a step may change before its update: generators and buffers."""

    rng: dict[str, Any]
    buffers: dict[str, torch.Tensor]


class Trainer:
    """Trains one model as :class:`TrainConfig` describes (see the module docstring).

    Construction builds everything (process group, data, model, optimisers) and, with ``resume``,
    restores the checkpoint; :meth:`fit` trains. Use as a context manager, or call :meth:`close`, to
    leave the process group.

    Attributes:
        config: the validated configuration.
        model: the model (unwrapped), on ``device``.
        dataset: the training data.
        step: optimiser steps done.
        out: the run directory.
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config = config.validated()
        with fastvae.use_backend(config.backend):
            pass
        self.device = resolve_device(config.device)
        self.job = distributed.setup(self.device.type)
        try:
            self._build()
        except BaseException:
            self.job.close()
            raise

    # --- construction -------------------------------------------------------------------------------

    def _build(self) -> None:
        config = self.config
        if self.job.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.job.local_rank)
        self.out = Path(config.out)
        checkpoint_path = self.out / CHECKPOINT_NAME
        self._check_out()
        if config.resume:
            self._check_resumable(read_run_record(checkpoint_path))
        self.dataset = load_data(config.data)
        self.model_class = models.model_class(config.model)
        hparams = dict(config.hparams)
        self.num_classes = num_classes_of(self.dataset)
        if self.model_class.conditional:
            if self.num_classes is None:
                raise ValueError(
                    f"model {config.model!r} is conditional and needs class labels, but data {config.data!r} has none"
                )
            if "num_classes" in models.hyperparameters(config.model):
                hparams.setdefault("num_classes", self.num_classes)
        torch.manual_seed(derive_seed(MODEL_SALT, config.seed))
        model = models.create(
            config.model, input_shape=tuple(self.dataset.input_shape), latent_dim=config.latent_dim, **hparams
        )
        self.model = model.to(self.device)
        self.autocast_dtype = _autocast_dtype(self.device, config.amp)
        self.optimizers = {"generator": torch.optim.Adam(list(model.generator_parameters()), lr=config.lr)}
        if model.has_discriminator:
            self.optimizers["discriminator"] = torch.optim.Adam(list(model.discriminator_parameters()), lr=config.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.step = 0
        self.elapsed = 0.0
        self._updating = False
        if config.resume:
            self._restore(checkpoint_path)
        else:
            self._seed_training()
        self.step_module: nn.Module = _LossStep(model)
        if self.job.enabled:
            unused = distributed.find_unused(self.step_module, self._probe)
            self.step_module = distributed.wrap(self.step_module, self.device, find_unused_parameters=unused)
        self.preview = None
        self._made_out = False
        if self.job.is_main:
            positions = step_positions(
                0, length=len(self.dataset), batch_size=min(RECON_GRID, len(self.dataset)),
                seed=derive_seed(PREVIEW_SALT, config.seed),
            )
            self.preview = BatchFetcher(self.dataset)[positions]
            # Only now that data and model are built is the directory touched.
            if config.overwrite:
                clear_run(self.out)
            self._made_out = not self.out.exists()
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise SettingError(lambda s: f"{s('out')}: cannot create {self.out} ({error.strerror})") from None

    def _check_out(self) -> None:
        """Refuse an ``out`` that is a file, that holds no run to resume, or, for a new run, that
        holds a run or other files (see the module docstring). Reads only: every rank calls it."""
        config, out = self.config, self.out
        if out.exists() and not out.is_dir():
            raise SettingError(lambda s: f"{s('out')}: {out} is a file, not a directory; name a run directory")
        if config.resume:
            if not (out / CHECKPOINT_NAME).exists():
                raise SettingError(lambda s: f"{s('resume')}: no checkpoint to resume in {out} (no {CHECKPOINT_NAME})")
            return
        if config.overwrite or not out.exists():
            return
        if (out / CHECKPOINT_NAME).exists():
            raise SettingError(
                lambda s: f"{s('out')}: {out} already holds a run; pass {s('resume')} to continue it, "
                f"{s('overwrite')} to start afresh, or choose another {s('out')}"
            )
        found = sorted(path.name for path in out.iterdir())
        if found:
            shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            raise SettingError(
                lambda s: f"{s('out')}: {out} holds files that are not a fastvae run ({shown}); choose a new or empty "
                f"{s('out')}, or pass {s('overwrite')} to start there anyway (deleting any {', '.join(RUN_FILES)} "
                "there and keeping the other files)"
            )

    def _check_resumable(self, run: dict[str, Any]) -> None:
        """Refuse to resume a run (record ``run``) with settings that change its trajectory."""
        saved, current = run["train"], json.loads(json.dumps(self.config.to_json()))
        pairs = [(name, saved.get(name), current.get(name)) for name in _FIXED_ON_RESUME if name != "hparams"]
        saved_hparams, hparams = saved.get("hparams", {}), current["hparams"]
        pairs += [
            (name, saved_hparams.get(name, _UNSET), hparams.get(name, _UNSET))
            for name in sorted({*saved_hparams, *hparams})
        ]
        differ = [(name, before, now) for name, before, now in pairs if before != now]
        processes = [] if run.get("world_size", 1) == self.job.world_size else [
            f"{run.get('world_size', 1)} processes (now {self.job.world_size})"
        ]
        if differ or processes:
            out = self.out

            def render(s: Callable[[str], str]) -> str:
                settings = [f"{s(name)} {before!r} (now {now!r})" for name, before, now in differ]
                return (f"{s('resume')}: the run in {out} was trained with {', '.join(settings + processes)}; "
                        "resume with the same settings")

            raise SettingError(render)

    def _seed_training(self) -> None:
        """Seed the generators the training steps draw from, differently on each rank."""
        seed = derive_seed(RANK_SALT, self.config.seed, self.job.rank)
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            import numpy
        except ImportError:
            return
        numpy.random.seed(seed % 2**32)

    def _restore(self, path: Path) -> None:
        checkpoint = load_checkpoint(path)
        run = checkpoint.run
        self.model.load_state_dict(checkpoint.model_state)
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(checkpoint.optimizers[name])
        if self.scaler.is_enabled() and run.get("scaler"):
            self.scaler.load_state_dict(run["scaler"])
        self.step = int(run["step"])
        self.elapsed = float(run.get("elapsed", 0.0))
        restore_rng(rng_from_json(run["rng"][self.job.rank]), self.device)

    # --- one step -----------------------------------------------------------------------------------

    def _labels(self, y: torch.Tensor) -> torch.Tensor | None:
        if not self.model.conditional:
            return None
        return class_labels(self.dataset, y).to(self.device, non_blocking=True)

    def _losses(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor | None, step: int) -> dict[str, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            losses = module(x, y, step)
        required = ("loss", "disc_loss") if self.model.has_discriminator else ("loss",)
        for name in required:
            if name not in losses:
                raise ValueError(f"model {self.config.model!r}: loss() returned no {name!r} term (it returned {list(losses)})")
        return losses

    def _probe(self, module: nn.Module) -> list[tuple[torch.Tensor, list[nn.Parameter]]]:
        """One step's losses on ``module`` (a copy of the step module), with what each trains."""
        x, y = BatchFetcher(self.dataset)[self._sampler(self.step, self.step + 1).positions(self.step)]
        losses = self._losses(module, x.to(self.device), self._labels(y), self.step)
        model = module.model
        pairs = [(losses["loss"], list(model.generator_parameters()))]
        if model.has_discriminator:
            pairs.append((losses["disc_loss"], list(model.discriminator_parameters())))
        return pairs

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(
            rng=capture_rng(self.device),
            buffers={name: buffer.detach().clone() for name, buffer in self.model.named_buffers()},
        )

    def _rewind(self, snapshot: _Snapshot) -> None:
        """Put back the generators and buffers as they were before the current step."""
        restore_rng(snapshot.rng, self.device)
        with torch.no_grad():
            for name, buffer in self.model.named_buffers():
                buffer.copy_(snapshot.buffers[name])

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, stop: _StopRequests) -> tuple[dict[str, float], bool]:
        """Run step ``self.step`` on a batch; returns its loss terms (averaged over ranks) and whether
        any rank has been asked to stop (checked after the forward, together with the terms). Raises
        ``_NonFinite`` before updating when a term is not finite."""
        x = x.to(self.device, non_blocking=True)
        labels = self._labels(y)
        losses = self._losses(self.step_module, x, labels, self.step)
        names = list(losses)
        stats = []
        for name in names:
            value = torch.as_tensor(losses[name], device=self.device).detach().float()
            if value.numel() != 1:
                raise ValueError(f"model {self.config.model!r}: loss term {name!r} must be a scalar, got shape {tuple(value.shape)}")
            stats.append(value.reshape(()))
        stats.append(torch.tensor(float(stop.signal_number is not None), device=self.device))
        totals = distributed.all_reduce_sum(torch.stack(stats), self.job).tolist()
        terms = {name: total / self.job.world_size for name, total in zip(names, totals)}
        if not all(math.isfinite(value) for value in terms.values()):
            raise _NonFinite(terms)

        self._updating = True
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        if self.model.has_discriminator:
            generator = [p for p in self.model.generator_parameters() if p.requires_grad]
            discriminator = [p for p in self.model.discriminator_parameters() if p.requires_grad]
            torch.autograd.backward(self.scaler.scale(losses["loss"]), inputs=generator, retain_graph=True)
            torch.autograd.backward(self.scaler.scale(losses["disc_loss"]), inputs=discriminator)
        else:
            self.scaler.scale(losses["loss"]).backward()
        for optimizer in self.optimizers.values():
            self.scaler.step(optimizer)
        self.scaler.update()
        self.step += 1
        self._updating = False
        return terms, totals[-1] > 0

    # --- outputs ------------------------------------------------------------------------------------

    def run_record(self, rng: list[dict[str, Any]], digests: list[str]) -> dict[str, Any]:
        """The run record of the current state (see :mod:`fastvae.train.checkpoint`)."""
        return {
            "format": FORMAT,
            "step": self.step,
            "model": self.model.config,
            "train": self.config.to_json(),
            "world_size": self.job.world_size,
            "elapsed": self.elapsed,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "weights_sha256": digests,
            "rng": rng,
        }

    def save(self) -> Path:
        """Checkpoint the current state to ``out`` (a collective: every rank must call it).

        Returns:
            The checkpoint's path.

        Raises:
            RuntimeError: the ranks' weights differ (every rank raises).
        """
        model_state = self.model.state_dict()
        mine = {"rng": rng_to_json(capture_rng(self.device)), "digest": state_digest(model_state)}
        gathered = distributed.all_gather_objects(mine, self.job)
        digests = [entry["digest"] for entry in gathered]
        if len(set(digests)) > 1:
            raise RuntimeError(f"the ranks' weights diverged at step {self.step}: SHA-256 per rank {digests}")
        path = self.out / CHECKPOINT_NAME
        if self.job.is_main:
            record = self.run_record([entry["rng"] for entry in gathered], digests)
            optimizers = {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}
            save_checkpoint(path, model_state=model_state, optimizers=optimizers, run=record)
            write_json(self.out / CONFIG_NAME, record)
        return path

    @torch.no_grad()
    def write_images(self) -> tuple[Path, Path]:
        """Write ``samples_<step>.png`` and ``recon_<step>.png`` (rank 0); returns their paths.

        Samples use fixed noise (seeded by the run's seed) so grids of successive steps compare; the
        training generators are left as they were.
        """
        model = self.model
        shape = model.input_shape
        samples_path = self.out / f"samples_{self.step}.png"
        recon_path = self.out / f"recon_{self.step}.png"
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.config.seed)
                labels = None
                if model.conditional:
                    labels = torch.arange(SAMPLE_GRID, device=self.device) % self.num_classes
                samples, row = as_images(model.sample(SAMPLE_GRID, labels).float(), shape)
                save_png(make_grid(samples, row), samples_path)
                x, y = self.preview
                x = x.to(self.device)
                recon = model.reconstruct(x, self._labels(y)).float()
                images, row = as_images(x, shape)
                pairs, row = reconstruction_grid(images, as_images(recon, shape)[0], row or 8)
                save_png(make_grid(pairs, row), recon_path)
        finally:
            model.train(was_training)
        return samples_path, recon_path

    # --- the loop -----------------------------------------------------------------------------------

    def _sampler(self, start: int, stop: int) -> StepSampler:
        return StepSampler(
            len(self.dataset), self.config.batch_size, seed=self.config.seed, rank=self.job.rank,
            world_size=self.job.world_size, start=start, stop=stop,
        )

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(
            BatchFetcher(self.dataset),
            batch_size=None,
            sampler=self._sampler(self.step, self.config.steps),
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.config.seed),
            worker_init_fn=_ignore_stop_signals if self.config.num_workers else None,
        )
        return iter(loader)

    def _say(self, message: str) -> None:
        if self.job.is_main:
            tqdm.write(message, file=sys.stderr)

    def fit(self) -> dict[str, float]:
        """Train until ``config.steps`` steps are done.

        Returns:
            The loss terms of the last metrics record (empty if nothing was left to train).

        Raises:
            NonFiniteLossError: a loss term was not finite (the state before it is checkpointed).
            TrainingInterrupted: SIGINT / SIGTERM / KeyboardInterrupt (a checkpoint is saved).
        """
        config = self.config
        if self.step >= config.steps:
            self._say(f"fastvae train: {self.out} is already at step {self.step} (>= --steps {config.steps}); nothing to do")
            return {}
        log = MetricsLog(self.out / METRICS_NAME, self.step if config.resume else None) if self.job.is_main else None
        bar = tqdm(
            total=config.steps, initial=self.step, desc=config.model, unit="step", dynamic_ncols=True,
            disable=not (self.job.is_main and config.progress), mininterval=0.5 if sys.stderr.isatty() else 30.0,
        )
        sums: dict[str, float] = {}
        logged_steps = 0
        last: dict[str, float] = {}
        session_start = mark = time.perf_counter()
        elapsed_before = self.elapsed
        images_per_step = config.batch_size * self.job.world_size
        snapshot: _Snapshot | None = None
        try:
            with fastvae.use_backend(config.backend), _StopRequests() as stop:
                self.model.train()
                for x, y in self._batches():
                    snapshot = self._snapshot()
                    try:
                        terms, stopping = self._train_step(x, y, stop)
                    except _NonFinite as bad:
                        self._rewind(snapshot)
                        raise NonFiniteLossError(self.step, bad.terms, self.save()) from None
                    snapshot = None
                    self.elapsed = elapsed_before + time.perf_counter() - session_start
                    for name, value in terms.items():
                        sums[name] = sums.get(name, 0.0) + value
                    logged_steps += 1
                    bar.update(1)
                    bar.set_postfix({name: f"{value:.4g}" for name, value in terms.items()}, refresh=False)
                    final = self.step == config.steps
                    if self.step % config.log_every == 0 or final or stopping:
                        now = time.perf_counter()
                        last = {name: total / logged_steps for name, total in sums.items()}
                        if log is not None:
                            rates = {"images_per_s": logged_steps * images_per_step / max(now - mark, 1e-9)}
                            lrs = {("lr" if name == "generator" else "disc_lr"): opt.param_groups[0]["lr"]
                                   for name, opt in self.optimizers.items()}
                            log.write({"step": self.step, **last, **rates, **lrs, "time": self.elapsed})
                        sums, logged_steps, mark = {}, 0, now
                    if self.step % config.checkpoint_every == 0 or final or stopping:
                        self._show_stage(bar, f"saving {CHECKPOINT_NAME}")
                        self.save()
                    if self.job.is_main and (self.step % config.sample_every == 0 or final):
                        # Sampling can take long (VQ models draw their codes position by position).
                        self._show_stage(bar, f"drawing samples_{self.step}.png and recon_{self.step}.png")
                        self.write_images()
                    self._show_stage(bar, None)
                    if stopping:
                        raise TrainingInterrupted(self.step, self.out / CHECKPOINT_NAME, stop.signal_number or signal.SIGINT)
        except (TrainingInterrupted, NonFiniteLossError):
            raise
        except Exception:
            self._discard_if_unused()
            raise
        except KeyboardInterrupt:
            # Interrupted at once (a second Ctrl-C, or a KeyboardInterrupt raised by code): before a
            # step's update begins, the state from before the step is restored and saved. Midway
            # through an update, or on one rank of a job (saving is collective), nothing consistent
            # can be saved and the last checkpoint stands.
            if self.job.enabled or self._updating:
                raise TrainingInterrupted(self.step, None) from None
            if snapshot is not None:
                self._rewind(snapshot)
            raise TrainingInterrupted(self.step, self.save()) from None
        finally:
            bar.close()
        # Rank 0 may still be drawing the final grids; leaving the job before it would abort it.
        distributed.barrier(self.job)
        self._say(
            f"fastvae train: {config.model} step {self.step}/{config.steps} in {self.elapsed:.1f} s; "
            + ", ".join(f"{name} {value:.4g}" for name, value in last.items())
            + f"; run in {self.out}"
        )
        return last

    def _show_stage(self, bar: tqdm, stage: str | None) -> None:
        """Show what the run is doing between steps in the progress bar's description (None: clear)."""
        described = self.config.model if stage is None else f"{self.config.model} ({stage})"
        if not bar.disable and bar.desc != described:
            bar.set_description_str(described, refresh=True)

    def _discard_if_unused(self) -> None:
        """After a new run failed before its first step: remove the directory it created (holding at
        most the empty metrics log), so that a failed start leaves nothing behind."""
        if not (self.job.is_main and self._made_out and self.step == 0):
            return
        (self.out / METRICS_NAME).unlink(missing_ok=True)
        try:
            self.out.rmdir()
        except OSError:
            pass  # something else was written there meanwhile: keep it

    def close(self) -> None:
        """Leave the process group if this trainer joined it."""
        self.job.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _NonFinite(Exception):
    def __init__(self, terms: dict[str, float]) -> None:
        super().__init__(terms)
        self.terms = terms


def train(
    model_name: str,
    *,
    data: str | os.PathLike[str] = "dsprites",
    steps: int = TrainConfig.steps,
    batch_size: int = TrainConfig.batch_size,
    out: str | os.PathLike[str] | None = None,
    device: str = "auto",
    lr: float = TrainConfig.lr,
    seed: int = 0,
    latent_dim: int = TrainConfig.latent_dim,
    log_every: int = TrainConfig.log_every,
    checkpoint_every: int = TrainConfig.checkpoint_every,
    sample_every: int = TrainConfig.sample_every,
    resume: bool = False,
    overwrite: bool = False,
    backend: str = "auto",
    amp: bool | None = None,
    num_workers: int = 0,
    progress: bool = True,
    **hparams: Any,
) -> Path:
    """Train model ``model_name`` (see :class:`TrainConfig` for every argument; ``**hparams`` are the
    model's hyper-parameters) and return the run directory.

    Example::

        run = fastvae.train.train("vae", steps=200, batch_size=64, out="runs/vae", likelihood="bernoulli")

    Raises:
        ValueError: a bad argument, naming it (unknown models and hyper-parameters list the valid ones).
        NonFiniteLossError, TrainingInterrupted: see :meth:`Trainer.fit`.
    """
    config = TrainConfig(
        model=model_name, data=os.fspath(data), steps=steps, batch_size=batch_size,
        out=None if out is None else os.fspath(out),
        device=device, lr=lr, seed=seed, latent_dim=latent_dim, log_every=log_every,
        checkpoint_every=checkpoint_every, sample_every=sample_every, resume=resume, overwrite=overwrite,
        backend=backend, amp=amp, num_workers=num_workers, progress=progress, hparams=hparams,
    )
    with Trainer(config) as trainer:
        trainer.fit()
        return trainer.out
