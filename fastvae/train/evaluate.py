"""Evaluating and sampling trained runs: ``fastvae evaluate`` and ``fastvae sample``.

A run directory (written by :mod:`fastvae.train.trainer`) is loaded by :func:`load_run`: the model is
rebuilt from ``config.json`` through :func:`fastvae.models.create` and its weights read from
``checkpoint.safetensors``.

:func:`evaluate` scores the model on ``batches`` batches of its training data (a fixed draw,
independent of the run's seed, so runs compare; the embedded data has no held-out split):

``recon_bce`` or ``recon_sse``
    Per-image reconstruction error of the posterior-mean reconstruction (``model.reconstruct``),
    summed over pixels and averaged over images: binary cross-entropy for Bernoulli models (and
    models that state no likelihood), the summed squared error for Gaussian ones.
``mse``
    The mean squared error per pixel.
``elbo``
    The evidence lower bound per image, for models with ``elbo(x)`` (nats).
``log_likelihood``
    The importance-sampled ``log p(x)`` with ``k`` samples, for models with ``log_likelihood(x, k)``.
``codebooks``
    For VQ models, per :class:`fastvae.nn.VectorQuantizer` submodule (or the ``indices`` the forward
    returns): ``num_codes`` (when known), ``codes_used`` (distinct codes over the evaluated data),
    ``usage`` (their fraction) and ``perplexity`` (``exp`` of the entropy of the empirical code
    distribution: ``num_codes`` for uniform use, 1 for a single code).
``disentanglement``
    MIG, SAP, DCI, the FactorVAE and beta-VAE scores on dSprites, from :func:`_disentanglement`
    (:func:`fastvae.metrics.disentanglement`), with fast or full sample sizes.

With ``progress``, a bar on stderr follows the batches, and another the images the
disentanglement metrics render (the slow part on a CPU).
"""

from __future__ import annotations

import importlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fastvae import models
from fastvae.nn import VectorQuantizer
from fastvae.train.checkpoint import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    EVAL_NAME,
    RunFileError,
    load_checkpoint,
    read_config,
    write_json,
)
from fastvae.train.cli_args import restore_types
from fastvae.train.images import as_images, make_grid, save_png
from fastvae.train.sampling import BatchFetcher, StepSampler, class_labels, derive_seed
from fastvae.train.trainer import SettingError, load_data, resolve_device

__all__ = ["DISENTANGLEMENT_MODES", "EVAL_NAME", "Run", "evaluate", "load_run", "sample"]

#: Values of :func:`evaluate`'s ``disentanglement``.
DISENTANGLEMENT_MODES: tuple[str, ...] = ("fast", "full", "off")
#: Seeds the evaluation batches' draw (the same for every run).
EVAL_SALT = 0xE7A1


@dataclass
class Run:
    """A trained run, loaded.

    Attributes:
        path: the run directory.
        model: the model, in eval mode, on the requested device.
        config: ``config.json`` (keys ``model``, ``train``, ``step``...).
        step: optimiser steps done when the checkpoint was written.
    """

    path: Path
    model: models.VAEModel
    config: dict[str, Any]
    step: int


def load_run(run_dir: str | Path, *, device: str = "auto") -> Run:
    """Load the run in ``run_dir``: the model from ``config.json`` and ``checkpoint.safetensors``.

    Raises:
        SettingError: ``run_dir`` holds no run (the message names what is missing).
        RunFileError: ``config.json`` or ``checkpoint.safetensors`` is truncated, corrupt, not
            fastvae's, or the two do not match (the message names the file).
    """
    path = Path(run_dir)
    config_path, checkpoint_path = path / CONFIG_NAME, path / CHECKPOINT_NAME
    if not path.is_dir():
        raise SettingError(
            lambda s: f"{s('run_dir')}: {path} is not a directory; name a run directory written by fastvae train"
        )
    for required in (config_path, checkpoint_path):
        if not required.is_file():
            raise SettingError(
                lambda s, name=required.name: f"{s('run_dir')}: {path} holds no fastvae run (no {name}); "
                "train one with fastvae train"
            )
    config = read_config(config_path)
    try:
        spec = config["model"]
        model = models.create(
            spec["name"],
            input_shape=tuple(spec["input_shape"]),
            latent_dim=spec["latent_dim"],
            **restore_types(spec["name"], spec["hparams"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise RunFileError(config_path, f"its model cannot be built ({' '.join(str(error).split())})") from None
    checkpoint = load_checkpoint(checkpoint_path, optimizers=False)
    try:
        model.load_state_dict(checkpoint.model_state)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:200]
        raise RunFileError(checkpoint_path, f"its weights do not fit the model in {CONFIG_NAME} ({detail})") from None
    model.to(resolve_device(device)).eval()
    return Run(path=path, model=model, config=config, step=int(checkpoint.run["step"]))


def _labels_for(model: models.VAEModel, n: int) -> torch.Tensor | None:
    """Class labels cycling through the classes, ``(n,)`` int64, for conditional models."""
    if not model.conditional:
        return None
    return torch.arange(n, device=model.device) % int(model.config["hparams"]["num_classes"])


def _call(method: Any, *args: Any, labels: torch.Tensor | None) -> Any:
    return method(*args, labels) if labels is not None else method(*args)


class _CountedRenders:
    """A factor source (:class:`fastvae.metrics.sampling.FactorSource`) that advances ``bar`` by the
    observations ``dataset`` renders for it."""

    def __init__(self, dataset: Any, bar: tqdm) -> None:
        self.FACTOR_SIZES = dataset.FACTOR_SIZES
        self._dataset = dataset
        self._bar = bar

    def sample_factors(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._dataset.sample_factors(n, generator)

    def render_factors(self, factors: torch.Tensor) -> torch.Tensor:
        observations = self._dataset.render_factors(factors)
        self._bar.update(factors.shape[0])
        return observations


def _disentanglement(
    model: models.VAEModel, dataset: object, *, mode: str = "fast", seed: int = 0, progress: bool = False
) -> dict[str, float]:
    """Disentanglement metrics of ``model`` on dSprites (``mode``: ``"fast"``, ``"full"`` or ``"off"``).

    :func:`fastvae.metrics.disentanglement` (MIG, SAP, DCI, the FactorVAE and beta-VAE scores) with
    the fast or the full (disentanglement_lib) sample sizes; ``{}`` when ``mode`` is ``"off"``, the
    data is not dSprites, the model is conditional (its encoder needs labels the factors do not
    give), or :mod:`fastvae.metrics` is not importable. ``progress`` shows a bar on stderr over the
    images the metrics render.
    """
    from fastvae.data import DSprites

    if mode == "off" or not isinstance(dataset, DSprites) or model.conditional:
        return {}
    try:
        metrics = importlib.import_module("fastvae.metrics")
    except ImportError:
        return {}
    fast = mode == "fast"
    sizes = metrics.suite.FAST if fast else metrics.suite.FULL
    with tqdm(total=sizes.observations, desc=f"disentanglement ({mode})", unit="image", unit_scale=True,
              file=sys.stderr, dynamic_ncols=True, disable=not progress) as bar:
        source = _CountedRenders(dataset, bar) if progress else dataset
        return dict(metrics.disentanglement(model, source, seed=seed, fast=fast))


class _CodeCounter:
    """Counts the codes each VectorQuantizer of a model picks while :attr:`active`."""

    def __init__(self, model: models.VAEModel) -> None:
        self.active = False
        self.counts: dict[str, torch.Tensor] = {}
        self.num_codes: dict[str, int | None] = {}
        self._handles = []
        for name, module in model.named_modules():
            if isinstance(module, VectorQuantizer):
                key = name or "quantizer"
                self.num_codes[key] = module.num_codes
                self._handles.append(module.register_forward_hook(self._hook(key)))

    @property
    def has_quantizers(self) -> bool:
        return bool(self._handles)

    def _hook(self, key: str) -> Any:
        def record(module: VectorQuantizer, inputs: object, output: Any) -> None:
            if self.active:
                self.add(key, output.indices)

        return record

    def add(self, key: str, indices: torch.Tensor) -> None:
        counts = torch.bincount(indices.reshape(-1).long().cpu(), minlength=self.num_codes.get(key) or 0)
        if key in self.counts and counts.numel() != self.counts[key].numel():
            size = max(counts.numel(), self.counts[key].numel())
            counts = F.pad(counts, (0, size - counts.numel()))
            self.counts[key] = F.pad(self.counts[key], (0, size - self.counts[key].numel()))
        self.counts[key] = self.counts.get(key, 0) + counts

    def report(self) -> dict[str, dict[str, Any]]:
        out = {}
        for key, counts in self.counts.items():
            total = counts.sum().item()
            p = counts[counts > 0].double() / max(total, 1)
            entry: dict[str, Any] = {
                "codes_used": int((counts > 0).sum()),
                "perplexity": math.exp(float(-(p * p.log()).sum())),
            }
            num_codes = self.num_codes.get(key)
            if num_codes:
                entry = {"num_codes": num_codes, **entry, "usage": entry["codes_used"] / num_codes}
            out[key] = entry
        return out

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@torch.no_grad()
def evaluate(
    run_dir: str | Path,
    *,
    batches: int = 10,
    k: int = 100,
    batch_size: int | None = None,
    device: str = "auto",
    seed: int = 0,
    disentanglement: str = "fast",
    write: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Score the run in ``run_dir`` (metrics in the module docstring) and write ``<run>/eval.json``.

    Args:
        run_dir: a run directory.
        batches: batches to evaluate.
        k: importance samples per image for ``log_likelihood`` (0 skips it).
        batch_size: examples per batch (default: the run's training batch size).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        seed: seeds the posterior samples of ``elbo`` and ``log_likelihood``, and the metrics' draws.
        disentanglement: ``"fast"``, ``"full"`` or ``"off"``: the disentanglement metrics' sample
            sizes on dSprites (see :mod:`fastvae.metrics.suite`; fast takes a minute or two on a CPU,
            full an hour or more).
        write: write ``eval.json``.
        progress: show progress bars on stderr (module docstring).

    Returns:
        The report: ``run``, ``model``, ``step``, ``data``, ``images``, the metrics, and ``k``.

    Raises:
        SettingError: bad arguments (naming them), or ``run_dir`` holds no run.
        RunFileError: a file of the run is truncated or corrupt (naming it).
    """
    if disentanglement not in DISENTANGLEMENT_MODES:
        valid = ", ".join(DISENTANGLEMENT_MODES)
        raise SettingError(lambda s: f"{s('disentanglement')} must be one of {valid}, got {disentanglement!r}")
    for name, value, low in (("batches", batches, 1), ("k", k, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SettingError(lambda s, name=name, value=value, low=low: f"{s(name)} must be an int >= {low}, got {value!r}")
    run = load_run(run_dir, device=device)
    model = run.model
    train = run.config["train"]
    size = train["batch_size"] if batch_size is None else batch_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise SettingError(lambda s: f"{s('batch_size')} must be a positive int, got {size!r}")
    dataset = load_data(train["data"])
    fetch = BatchFetcher(dataset)
    sampler = StepSampler(len(dataset), min(size, len(dataset)), seed=derive_seed(EVAL_SALT), stop=batches)
    gaussian = getattr(model, "likelihood", "bernoulli") == "gaussian"
    counter = _CodeCounter(model)
    totals: dict[str, float] = {}
    images = 0
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for positions in tqdm(sampler, desc="evaluate", unit="batch", file=sys.stderr, dynamic_ncols=True,
                                  disable=not progress):
                x, y = fetch[positions]
                x = x.to(model.device)
                labels = class_labels(dataset, y).to(model.device) if model.conditional else None
                recon = _call(model.reconstruct, x, labels=labels).float()
                flat_x, flat_recon = x.float().flatten(1), recon.flatten(1)
                if gaussian:
                    error = (flat_recon - flat_x).square().sum(1)
                else:
                    error = F.binary_cross_entropy(flat_recon.clamp(1e-6, 1 - 1e-6), flat_x, reduction="none").sum(1)
                batch_totals = {
                    "recon_sse" if gaussian else "recon_bce": error.sum().item(),
                    "mse": (flat_recon - flat_x).square().mean(1).sum().item(),
                }
                if hasattr(model, "elbo"):
                    batch_totals["elbo"] = _call(model.elbo, x, labels=labels).float().sum().item()
                if k > 0 and hasattr(model, "log_likelihood"):
                    batch_totals["log_likelihood"] = _call(model.log_likelihood, x, k, labels=labels).float().sum().item()
                counter.active = True
                out = _call(model, x, labels=labels)
                counter.active = False
                if not counter.has_quantizers and "indices" in out:
                    counter.add("indices", out["indices"])
                for name, value in batch_totals.items():
                    totals[name] = totals.get(name, 0.0) + value
                images += x.shape[0]
    finally:
        counter.close()
    report: dict[str, Any] = {
        "run": str(run.path),
        "model": model.config["name"],
        "step": run.step,
        "data": train["data"],
        "images": images,
        **{name: total / images for name, total in totals.items()},
    }
    if "log_likelihood" in totals:
        report["k"] = k
    codebooks = counter.report()
    if codebooks:
        report["codebooks"] = codebooks
    scores = _disentanglement(model, dataset, mode=disentanglement, seed=seed, progress=progress)
    if scores:
        report["disentanglement"] = scores
    if write:
        write_json(run.path / EVAL_NAME, report)
    return report


@torch.no_grad()
def sample(
    run_dir: str | Path,
    *,
    n: int = 64,
    out: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
) -> Path:
    """Write a grid of ``n`` samples from the run in ``run_dir`` as a PNG.

    Args:
        n: samples (conditional models cycle through the classes).
        out: the PNG path (default ``<run>/samples.png``, the run's own file, replaced on every call).
        seed: seeds the prior draws.
        overwrite: replace ``out`` if it exists; without it an existing ``out`` is an error, raised
            before the run is loaded.

    Returns:
        The PNG's path.

    Raises:
        SettingError: a bad ``n``, ``out`` exists (without ``overwrite``) or is a directory, or
            ``run_dir`` holds no run.
        RunFileError: a file of the run is truncated or corrupt (naming it).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SettingError(lambda s: f"{s('n')} must be a positive int, got {n!r}")
    named = None if out is None else Path(out)
    if named is not None and named.is_dir():
        raise SettingError(lambda s: f"{s('out')}: {out} is a directory; name the PNG file to write")
    if named is not None and named.exists() and not overwrite:
        raise SettingError(
            lambda s: f"{s('out')}: {out} already exists; choose another {s('out')}, or pass {s('overwrite')} "
            "to replace it"
        )
    run = load_run(run_dir, device=device)
    model = run.model
    path = named if named is not None else run.path / "samples.png"
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        images, row = as_images(model.sample(n, _labels_for(model, n)).float(), model.input_shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_png(make_grid(images, row), path)
