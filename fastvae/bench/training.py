"""The large-batch VQ-VAE training benchmark behind ``fastvae bench --training``.

DESIGN.md's third use of fastvae: nearest-code search that never builds the ``N x K`` distance
matrix, so batches and codebooks that make eager code run out of memory just work. This benchmark
shows it on whole training steps of the ``vq_vae`` model (forward, backward, Adam step) on 64 x 64
single-channel images (``D = 64``, a 16 x 16 code grid, so ``N = 256 B`` code vectors per step),
with three quantisers in the same model:

``fastvae``
    :class:`fastvae.nn.VectorQuantizer` (EMA codebook) on fastvae's ``auto`` backend: the fused,
    tiled search and segment-reduction EMA statistics.
``eager``
    :class:`EagerVectorQuantizer`, the EMA layer as it is usually written in plain PyTorch: the full
    ``N x K`` distance matrix, its arg-min, one-hot encodings ``(N, K)`` for the codes and the EMA
    statistics. Same losses, EMA and dead-code restart.
``vector-quantize-pytorch``
    that package's ``VectorQuantize(dim=64, codebook_size=K, decay=0.99, commitment_weight=0.25,
    threshold_ema_dead_code=1.0, accept_image_fmap=True)``, its EMA codebook in training mode;
    skipped with the reason when it is not installed.

For each variant the batch size doubles from ``start_batch`` until a step runs out of memory
(``torch.OutOfMemoryError``: the row reads ``"OOM"``, the memory is released and the next variant
starts) or passes ``max_batch``. Each row reports the median time of the timed steps and their
spread (CUDA events around each step, synchronised; see :mod:`fastvae.bench.timing`; ``noisy`` past
its threshold), ``images_per_s = batch / median``,
and peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the warm-up and timed steps (the
model, its optimiser state, the batch and the step's temporaries: what training at that batch
needs); on the CPU the live tensor bytes of one step above what was allocated before it.

Inputs are random binary images drawn once per row (the data pipeline is not timed, and the time of
a step does not depend on the pixels). Without a GPU the benchmark says so and runs at CPU sizes
(batch 4 to 16, ``K = 512``) to exercise the code path; those numbers say nothing about GPU training.
Reports go to ``training.json`` and ``training.md`` (layout in ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import nn

import fastvae
from fastvae import models
from fastvae.bench import cases, timing
from fastvae.bench.report import _iqr, _number, _speedup, _spread, _table
from fastvae.bench.runner import _commit, _device_info, _failure, _release, _version
from fastvae.models.vq_vae import VQVAE
from fastvae.nn import VectorQuantizer
from fastvae.ops.vq import VQOutput
from fastvae.train.checkpoint import atomic_write, write_json

__all__ = [
    "VARIANTS",
    "EagerVectorQuantizer",
    "PeerVectorQuantizer",
    "TrainingConfig",
    "add_arguments",
    "benchmark",
    "build_model",
    "markdown",
    "run",
    "validate",
    "write_report",
]

#: Version of the JSON report's layout.
SCHEMA = 1
JSON_NAME = "training.json"
MARKDOWN_NAME = "training.md"

PEER = "vector-quantize-pytorch"
#: The quantisers compared, in run order.
VARIANTS: tuple[str, ...] = ("fastvae", "eager", PEER)
_DESCRIPTIONS = {
    "fastvae": "fastvae.nn.VectorQuantizer (EMA), backend auto",
    "eager": "eager PyTorch: N x K distances, one-hot EMA",
    PEER: "vector_quantize_pytorch.VectorQuantize (EMA)",
}

MODEL = "vq_vae"
INPUT_SHAPE = (1, 64, 64)
#: Code dimension D (the VQ-VAE paper's 64).
LATENT_DIM = 64
#: Adam's learning rate (the VQ-VAE paper's 2e-4).
LEARNING_RATE = 2e-4

#: Defaults of the unset options, per device.
_DEFAULTS = {
    "cuda": {"codebook_size": 16384, "start_batch": 256, "max_batch": 65536, "warmup": 3, "repeats": 10},
    "cpu": {"codebook_size": 512, "start_batch": 4, "max_batch": 16, "warmup": 1, "repeats": 3},
}
_QUICK = {"warmup": 1, "repeats": 3}


# --- the quantisers compared -----------------------------------------------------------------------------


class EagerVectorQuantizer(nn.Module):
    """The EMA VQ layer as usually written in plain PyTorch (DeepMind Sonnet's ``VectorQuantizerEMA``
    as the widely copied PyTorch VQ-VAE notebooks port it), the eager reference of the benchmark.

    ``distances = |x|^2 - 2 x E^T + |E|^2`` as a full ``(N, K)`` matrix, ``argmin``, one-hot
    ``encodings (N, K)``, ``codes = encodings @ E``, ``F.mse_loss`` losses (means over the ``N x D``
    elements) with ``.detach()``,
    the straight-through ``x + (codes - x).detach()``, and in training mode the EMA update from
    ``encodings.sum(0)`` and ``encodings.T @ x`` with Laplace smoothing and the dead-code restart of
    :class:`fastvae.nn.VectorQuantizer` (same formulas, same initial codebook). Input and output
    ``(B, D, h, w)``; returns a :class:`fastvae.VQOutput`.
    """

    codebook: torch.Tensor
    ema_sum: torch.Tensor
    ema_count: torch.Tensor

    def __init__(
        self, codebook: torch.Tensor, *, beta: float, decay: float, eps: float, dead_code_threshold: float
    ) -> None:
        super().__init__()
        self.beta = beta
        self.decay = decay
        self.eps = eps
        self.dead_code_threshold = dead_code_threshold
        self.register_buffer("codebook", codebook.detach().clone())
        self.register_buffer("ema_sum", codebook.detach().clone())
        self.register_buffer("ema_count", torch.ones(codebook.shape[0], dtype=codebook.dtype))

    @classmethod
    def like(cls, quantizer: VectorQuantizer) -> EagerVectorQuantizer:
        """The eager layer with ``quantizer``'s settings and initial codebook."""
        return cls(quantizer.codebook, beta=quantizer.beta, decay=quantizer.decay, eps=quantizer.eps,
                   dead_code_threshold=quantizer.dead_code_threshold)

    def forward(self, z: torch.Tensor) -> VQOutput:
        """Quantise ``z (B, D, h, w)``, updating the codebook in training mode."""
        batch, dim, height, width = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, dim)
        rows = flat.detach()
        distances = rows.pow(2).sum(1, keepdim=True) - 2 * rows @ self.codebook.T + self.codebook.pow(2).sum(1)
        indices = distances.argmin(dim=1)
        del distances
        encodings = torch.zeros(flat.shape[0], self.codebook.shape[0], dtype=flat.dtype, device=flat.device)
        encodings.scatter_(1, indices.unsqueeze(1), 1.0)
        codes = encodings @ self.codebook
        commitment = F.mse_loss(flat, codes.detach())
        codebook_loss = F.mse_loss(codes, rows)
        quantized = flat + (codes - flat).detach()
        usage = encodings.mean(0)
        perplexity = torch.exp(-(usage * torch.log(usage + 1e-10)).sum())
        if self.training:
            self._update(rows, encodings)
        return VQOutput(
            quantized=quantized.reshape(batch, height, width, dim).permute(0, 3, 1, 2),
            indices=indices.reshape(batch, height, width),
            loss=self.beta * commitment,
            commitment_loss=commitment,
            codebook_loss=codebook_loss,
            perplexity=perplexity,
        )

    @torch.no_grad()
    def _update(self, rows: torch.Tensor, encodings: torch.Tensor) -> None:
        num_codes = self.codebook.shape[0]
        self.ema_count.lerp_(encodings.sum(0), 1.0 - self.decay)
        self.ema_sum.lerp_(encodings.T @ rows, 1.0 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + num_codes * self.eps) * total
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        if self.dead_code_threshold > 0:
            dead = self.ema_count < self.dead_code_threshold
            replacement = rows[torch.randint(0, rows.shape[0], (num_codes,), device=rows.device)]
            reset = max(1.0, self.dead_code_threshold)
            self.codebook.copy_(torch.where(dead.unsqueeze(1), replacement, self.codebook))
            self.ema_sum.copy_(torch.where(dead.unsqueeze(1), replacement * reset, self.ema_sum))
            self.ema_count.copy_(torch.where(dead, reset, self.ema_count))


class PeerVectorQuantizer(nn.Module):
    """vector-quantize-pytorch's ``VectorQuantize`` (EMA codebook) behind the interface the model
    calls: ``(B, D, h, w) -> VQOutput``.

    Its commitment loss is ``F.mse_loss`` (a mean over elements), the scale of fastvae's, so the
    model's loss has the same scale with every quantiser. Its codebook takes no gradient
    (``codebook_loss`` 0); the perplexity is computed from the indices.
    """

    def __init__(self, num_codes: int, dim: int, *, beta: float, decay: float, dead_code_threshold: float) -> None:
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.num_codes = num_codes
        self.layer = VectorQuantize(
            dim=dim, codebook_size=num_codes, decay=decay, commitment_weight=beta,
            threshold_ema_dead_code=dead_code_threshold, accept_image_fmap=True,
        )

    @classmethod
    def like(cls, quantizer: VectorQuantizer) -> PeerVectorQuantizer:
        """The peer layer with ``quantizer``'s size, commitment weight, decay and dead-code threshold."""
        return cls(quantizer.num_codes, quantizer.dim, beta=quantizer.beta, decay=quantizer.decay,
                   dead_code_threshold=quantizer.dead_code_threshold)

    @property
    def codebook(self) -> torch.Tensor:
        """The peer's codebook ``(K, D)``."""
        return self.layer.codebook

    def forward(self, z: torch.Tensor) -> VQOutput:
        """Quantise ``z (B, D, h, w)``, updating the peer's codebook in training mode."""
        quantized, indices, loss, breakdown = self.layer(z, return_loss_breakdown=True)
        usage = torch.bincount(indices.flatten(), minlength=self.num_codes).to(z.dtype) / indices.numel()
        commitment = breakdown.commitment
        return VQOutput(
            quantized=quantized,
            indices=indices,
            loss=loss,
            commitment_loss=commitment,
            codebook_loss=torch.zeros_like(commitment),
            perplexity=torch.exp(torch.special.entr(usage).sum()),
        )


def _peer_available() -> bool:
    return importlib.util.find_spec("vector_quantize_pytorch") is not None


def build_model(variant: str, codebook_size: int, hparams: dict[str, Any] | None = None) -> VQVAE:
    """The benchmark's ``vq_vae`` (seeded, on the CPU, training mode) with ``variant``'s quantiser.

    Args:
        variant: one of :data:`VARIANTS`.
        codebook_size: ``K``.
        hparams: other ``vq_vae`` hyper-parameters (default: the model's defaults).
    """
    torch.manual_seed(0)
    model = models.create(MODEL, input_shape=INPUT_SHAPE, latent_dim=LATENT_DIM, codebook_size=codebook_size,
                          **(hparams or {}))
    if variant == "eager":
        model.quantizer = EagerVectorQuantizer.like(model.quantizer)
    elif variant == PEER:
        model.quantizer = PeerVectorQuantizer.like(model.quantizer)
    elif variant != "fastvae":
        raise ValueError(f"variant must be one of {', '.join(map(repr, VARIANTS))}, got {variant!r}")
    return model


class _TrainingStep:
    """One training step of ``model`` on a fixed batch: forward, loss, backward, Adam step."""

    def __init__(self, model: VQVAE, batch: int, device: torch.device) -> None:
        self.model = model.to(device).train()
        generator = torch.Generator(device=device).manual_seed(0)
        self.x = (torch.rand((batch, *model.input_shape), generator=generator, device=device) < 0.5).float()
        self.optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    def __call__(self) -> None:
        out = self.model(self.x)
        loss = self.model.loss(self.x, out)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


# --- configuration --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingConfig:
    """What ``fastvae bench --training`` measures; None fields take the device's defaults.

    Attributes:
        codebook_size: ``K`` (default 16384 on CUDA, 512 on the CPU).
        start_batch: the first batch size (256 on CUDA, 4 on the CPU).
        max_batch: the largest batch size tried (65536 on CUDA, 16 on the CPU).
        variants: which of :data:`VARIANTS` to run.
        device: ``"cuda"`` or ``"cpu"``; None: CUDA when a device is visible.
        warmup: untimed steps per row (3 on CUDA, 1 on the CPU and with ``quick``).
        repeats: timed steps per row (10 on CUDA, 3 on the CPU and with ``quick``).
        quick: fewer steps per row.
        hparams: other ``vq_vae`` hyper-parameters (tests shrink the model with it).
        cpu_memory_gb: on the CPU, rows whose naive ``N x K`` matrices would exceed this are skipped;
            None: half the RAM.
    """

    codebook_size: int | None = None
    start_batch: int | None = None
    max_batch: int | None = None
    variants: tuple[str, ...] = VARIANTS
    device: str | None = None
    warmup: int | None = None
    repeats: int | None = None
    quick: bool = False
    hparams: dict[str, Any] = field(default_factory=dict)
    cpu_memory_gb: float | None = None


def validate(config: TrainingConfig) -> TrainingConfig:
    """Check ``config`` and fill in the device's defaults.

    Raises:
        ValueError: the message names the offending option (``--training-start-batch``, ...).
    """
    if not config.variants or any(variant not in VARIANTS for variant in config.variants):
        raise ValueError(f"--training-variants: choose from {', '.join(VARIANTS)}, got {list(config.variants)}")
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in _DEFAULTS:
        raise ValueError(f"--device: must be 'cuda' or 'cpu', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: 'cuda' was asked for but torch sees no CUDA device")
    defaults = {**_DEFAULTS[device], **(_QUICK if config.quick else {})}
    filled = {name: default if getattr(config, name) is None else getattr(config, name)
              for name, default in defaults.items()}
    options = {"codebook_size": "--training-codebook-size", "start_batch": "--training-start-batch",
               "max_batch": "--training-max-batch", "warmup": "--warmup", "repeats": "--repeats"}
    for name, option in options.items():
        value = filled[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{option}: must be an int >= 1, got {value!r}")
    if filled["max_batch"] < filled["start_batch"]:
        raise ValueError(
            f"--training-max-batch: must be >= --training-start-batch ({filled['start_batch']}), got {filled['max_batch']}"
        )
    if config.cpu_memory_gb is not None and config.cpu_memory_gb <= 0:
        raise ValueError(f"--cpu-memory-gb: must be > 0, got {config.cpu_memory_gb}")
    return dataclasses.replace(
        config, device=device, cpu_memory_gb=config.cpu_memory_gb or cases.default_cpu_budget_bytes() / 1e9, **filled
    )


# --- the run ---------------------------------------------------------------------------------------------


def _row(variant: str, batch: int, positions: int, status: str) -> dict[str, Any]:
    return {
        "variant": variant,
        "quantizer": _DESCRIPTIONS[variant],
        "backend": "auto" if variant == "fastvae" else None,
        "batch_size": batch,
        "code_vectors": batch * positions,
        "status": status,
        **dict.fromkeys(("min_ms", "q25_ms", "median_ms", "q75_ms", "max_ms", "iqr_fraction", "noisy")),
        "images_per_s": None,
        "peak_memory_mb": None,
        "speedup_vs_eager": None,
        "speedup_vs_eager_noisy": None,
    }


class _Run:
    def __init__(self, config: TrainingConfig, out: TextIO, err: TextIO) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.out = out
        self.err = err
        self.notes: list[str] = []
        self.hparams = {**models.hyperparameters(MODEL), "codebook_size": config.codebook_size, **config.hparams}
        self.grid = [side >> self.hparams["downsamples"] for side in INPUT_SHAPE[1:]]
        self.positions = self.grid[0] * self.grid[1]

    def note(self, message: str) -> None:
        self.notes.append(message)
        print(message, file=self.out, flush=True)

    def _cpu_refusal(self, variant: str, batch: int) -> str | None:
        """On the CPU, why a row would not fit the memory budget (the naive ``N x K`` matrices), or None."""
        if self.device.type != "cpu" or variant == "fastvae":
            return None
        needs = 2 * batch * self.positions * self.config.codebook_size * 4
        budget = self.config.cpu_memory_gb * 1e9
        if needs > budget:
            return f"skipped: its N x K matrices need {needs / 1e9:.1f} GB, over the CPU memory budget of {budget / 1e9:.1f} GB"
        return None

    def _measure(self, variant: str, batch: int) -> dict[str, Any]:
        row = _row(variant, batch, self.positions, "ok")
        refusal = self._cpu_refusal(variant, batch)
        if refusal is not None:
            row["status"] = refusal
            return row
        step = None
        try:
            with cases.fastvae_backend_scope("auto" if variant == "fastvae" else None):
                step = _TrainingStep(build_model(variant, self.config.codebook_size, self.config.hparams), batch,
                                     self.device)
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                (times,) = timing.time_round_robin([step], self.device, warmup=self.config.warmup,
                                                   repeats=self.config.repeats)
                if self.device.type == "cuda":
                    peak = torch.cuda.max_memory_allocated(self.device)
                else:
                    peak = timing.peak_memory_bytes(step, self.device)
            spread = timing.spread(times)
            row.update(**spread.to_json(), images_per_s=batch / (spread.median_ms / 1e3), peak_memory_mb=peak / 2**20)
        except Exception as error:  # noqa: BLE001 -- an out-of-memory (or any failure) ends this variant, not the run
            row["status"] = _failure(error)
        finally:
            del step
            _release(self.device)
        return row

    def _variant_rows(self, variant: str) -> list[dict[str, Any]]:
        if variant == PEER and not _peer_available():
            self.note(f"{PEER} is not installed: its rows are skipped (pip install 'fastvae[peer]')")
            return [_row(variant, self.config.start_batch, self.positions, f"skipped: {PEER} not installed")]
        rows = []
        batch = self.config.start_batch
        while batch <= self.config.max_batch:
            print(f"training {MODEL} [{variant}] batch {batch} ...", file=self.err, flush=True)
            rows.append(self._measure(variant, batch))
            if rows[-1]["status"] != "ok":
                break
            batch *= 2
        else:
            self.note(f"{variant}: reached the largest batch tried ({self.config.max_batch}) without running out of memory")
        return rows

    def run(self) -> dict[str, Any]:
        config, device = self.config, self.device
        date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        # The code that runs is the tree at the start: a commit made during a long run is not it.
        commit, dirty = _commit()
        if device.type == "cpu":
            self.note(
                ("no CUDA device: " if not torch.cuda.is_available() else "measuring on the CPU (--device cpu): ")
                + f"running the training benchmark at CPU sizes (batch {config.start_batch} to {config.max_batch}, "
                f"codebook {config.codebook_size}) to exercise the code path; these numbers say nothing about "
                "GPU training"
            )
        else:
            self.note(f"measuring on {torch.cuda.get_device_name(device)}; fastvae backends available: "
                      f"{', '.join(fastvae.available_backends())}")
        rows = [row for variant in config.variants for row in self._variant_rows(variant)]
        eager = {row["batch_size"]: row for row in rows if row["variant"] == "eager" and row["median_ms"]}
        for row in rows:
            if row["median_ms"] and row["batch_size"] in eager:
                baseline = eager[row["batch_size"]]
                row["speedup_vs_eager"] = baseline["median_ms"] / row["median_ms"]
                row["speedup_vs_eager_noisy"] = baseline["noisy"] or row["noisy"]
        largest = {}
        for variant in config.variants:
            fitted = [row["batch_size"] for row in rows if row["variant"] == variant and row["status"] == "ok"]
            largest[variant] = max(fitted, default=None)
        return {
            "schema": SCHEMA,
            "benchmark": "training",
            "date": date,
            "commit": commit,
            "commit_dirty": dirty,
            "device": _device_info(device),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "triton": _version("triton"),
                "fastvae": fastvae.__version__,
                "vector_quantize_pytorch": _version(PEER),
            },
            "settings": {
                "model": MODEL,
                "input_shape": list(INPUT_SHAPE),
                "latent_dim": LATENT_DIM,
                "codebook_size": config.codebook_size,
                "code_grid": self.grid,
                "hparams": self.hparams,
                "dtype": "fp32",
                "optimizer": f"Adam(lr={LEARNING_RATE})",
                "warmup": config.warmup,
                "repeats": config.repeats,
                "noisy_iqr_fraction": timing.NOISY_IQR_FRACTION,
                "start_batch": config.start_batch,
                "max_batch": config.max_batch,
                "peak_memory": "torch.cuda.max_memory_allocated over the warm-up and timed steps"
                if device.type == "cuda" else "live tensor bytes of one step above those allocated before it",
                "cpu_memory_budget_gb": round(config.cpu_memory_gb, 1) if device.type == "cpu" else None,
            },
            "notes": self.notes,
            "rows": rows,
            "largest_batch": largest,
        }


def benchmark(config: TrainingConfig, *, out: TextIO | None = None, err: TextIO | None = None) -> dict[str, Any]:
    """Run the training benchmark ``config`` selects and return the report (see ``benchmarks/README.md``).

    Args:
        config: what to run; validated here (see :func:`validate`).
        out: where notices go (default ``sys.stdout``).
        err: where progress goes (default ``sys.stderr``).

    Raises:
        ValueError: an invalid ``config``, naming the option.
    """
    return _Run(validate(config), sys.stdout if out is None else out, sys.stderr if err is None else err).run()


# --- the report ------------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: a header, the table of rows, the largest batch per variant."""
    settings = report["settings"]
    device = report["device"]
    device_line = (f"{device['name']} (driver {device['driver'] or 'unknown'}, CUDA {device['cuda']})"
                   if device["kind"] == "cuda" else f"CPU: {device['name']} ({device.get('threads', '?')} threads)")
    versions = ", ".join(f"{name} {version}" for name, version in report["versions"].items() if version)
    commit = report["commit"] + (" (with uncommitted changes)" if report.get("commit_dirty") else "")
    grid = "x".join(map(str, settings["code_grid"]))
    lines = [
        f"# fastvae training benchmark: {settings['model']}",
        "",
        f"- date: {report['date']}",
        f"- commit: {commit}",
        f"- device: {device_line}",
        f"- versions: {versions}",
        (
            f"- model: {settings['model']} on {'x'.join(map(str, settings['input_shape']))} inputs, "
            f"D = {settings['latent_dim']}, K = {settings['codebook_size']}, {grid} code grid "
            f"({settings['code_grid'][0] * settings['code_grid'][1]} code vectors per image), {settings['dtype']}, "
            f"{settings['optimizer']}"
        ),
        (
            f"- timing: median of {settings['repeats']} training steps (forward, backward, optimiser step) after "
            f"{settings['warmup']} warm-up; images/s = batch / median; a row is noisy when the interquartile "
            f"range of its steps exceeds {100 * settings['noisy_iqr_fraction']:.0f}% of the median"
        ),
        f"- peak memory: {settings['peak_memory']}",
        *(f"- note: {note}" for note in report["notes"]),
        "",
    ]
    lines += _table(
        ["variant", "quantizer", "batch", "code vectors", "median ms", "min-max ms", "IQR", "images/s", "vs eager",
         "peak MiB", "status"],
        [[row["variant"], row["quantizer"], str(row["batch_size"]), f"{row['code_vectors']:,}",
          _number(row["median_ms"]), _spread(row), _iqr(row), _number(row["images_per_s"]),
          _speedup(row["speedup_vs_eager"], row["speedup_vs_eager_noisy"]), _number(row["peak_memory_mb"]),
          row["status"]]
         for row in report["rows"]],
    )
    lines += ["", "Largest batch that trained: " + ", ".join(
        f"{variant} {'-' if batch is None else batch}" for variant, batch in report["largest_batch"].items()
    )]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """Write ``training.json`` and ``training.md`` into ``out`` (created if needed), each whole or not at
    all (written beside it, then moved onto it); returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / JSON_NAME, out / MARKDOWN_NAME]
    write_json(paths[0], report)
    atomic_write(paths[1], lambda tmp: tmp.write_text(markdown(report)))
    return paths


# --- the command line ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--training`` and its options to the ``fastvae bench`` parser (which already has ``--out``,
    ``--device``, ``--warmup``, ``--repeats``, ``--quick`` and ``--cpu-memory-gb``, which it shares)."""
    group = parser.add_argument_group("large-batch VQ-VAE training (--training)")
    group.add_argument("--training", action="store_true",
                       help="instead of the op benchmarks, time vq_vae training steps at doubling batch sizes until "
                       "out of memory, with fastvae's quantiser, eager PyTorch's and vector-quantize-pytorch's; "
                       "writes training.json and training.md")
    group.add_argument("--training-codebook-size", type=int, metavar="K",
                       help="codebook size (default 16384 on CUDA, 512 on the CPU)")
    group.add_argument("--training-start-batch", type=int, metavar="B",
                       help="first batch size (default 256 on CUDA, 4 on the CPU)")
    group.add_argument("--training-max-batch", type=int, metavar="B",
                       help="largest batch size tried (default 65536 on CUDA, 16 on the CPU)")
    group.add_argument("--training-variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, metavar="VARIANT",
                       help=f"quantisers to compare (default all: {', '.join(VARIANTS)})")


def run(args: argparse.Namespace) -> int:
    """``fastvae bench --training``: run, print the table, write the report under ``args.out``; the exit status."""
    config = TrainingConfig(
        codebook_size=args.training_codebook_size,
        start_batch=args.training_start_batch,
        max_batch=args.training_max_batch,
        variants=tuple(args.training_variants),
        device=args.device,
        warmup=args.warmup,
        repeats=args.repeats,
        quick=args.quick,
        cpu_memory_gb=args.cpu_memory_gb,
    )
    try:
        config = validate(config)
    except ValueError as error:
        print(f"fastvae bench: {error}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    report = benchmark(config)
    paths = write_report(report, Path(args.out))
    print()
    print(markdown(report), end="")
    print()
    print(f"done in {time.perf_counter() - start:.1f} s; wrote {', '.join(str(path) for path in paths)}")
    return 0
