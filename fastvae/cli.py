"""The ``fastvae`` command line.

``fastvae demo`` trains two models of the zoo, ``vae`` (a Gaussian VAE) and ``vq_vae`` (a small VQ-VAE
with its PixelCNN prior), on an embedded procedural data set (random horizontal and vertical bars on
an 8 x 8 grid) with the trainer of ``fastvae train``, and reports the held-out ELBO, the
importance-weighted bound and the codebook perplexity. It needs no download and runs in seconds on a
CPU. It writes the data set and one run directory per model under ``--out`` (see :func:`_demo`).

``fastvae train`` trains a model of the zoo on dSprites or user data (one process, or data-parallel under
``torchrun``); ``fastvae evaluate RUN_DIR`` scores a trained run and ``fastvae sample RUN_DIR`` draws
from it (see :mod:`fastvae.train`).

``fastvae bench`` measures the ops on this machine's GPU (or, without one, the torch paths and the
cpu kernels on the CPU) against eager PyTorch, ``torch.compile`` and the hardware ceilings, prints the tables and writes
``bench.json`` and ``bench.md`` (see :mod:`fastvae.bench` and ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import fastvae
from fastvae import bench, models
from fastvae.bench import report as bench_report
from fastvae.bench import shapes as bench_shapes
from fastvae.bench import training as bench_training
from fastvae.train import commands as train_commands
from fastvae.train.checkpoint import METRICS_NAME, RUN_FILES, atomic_write
from fastvae.train.cli_args import as_flag
from fastvae.train.metrics_log import read_metrics
from fastvae.train.trainer import (
    NonFiniteLossError,
    SettingError,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    resolve_device,
)

__all__ = ["bars", "main"]

_SIDE = 8
#: ``fastvae --help``'s description: plain text (the module docstring is reStructuredText).
_DESCRIPTION = (
    "fastvae: fused Triton/CUDA kernels for VAEs, a zoo of models and their trainer. "
    "'fastvae COMMAND --help' describes each command."
)

#: The demo's training set: images drawn once and written to ``--out``, in the MNIST IDX format
#: (uint8 0 or 255), which :func:`fastvae.data.load` reads without numpy.
_DEMO_DATA = "bars-images-idx3-ubyte.gz"
_DEMO_TRAIN_IMAGES = 8192
#: Fresh images, drawn after the training set, that the trained models are scored on.
_DEMO_HELD_OUT = 512
#: Importance samples of the IWAE bound.
_DEMO_IWAE_SAMPLES = 64
_DEMO_LATENT_DIM = 8
_DEMO_LR = 2e-3
#: The models the demo trains: zoo name, hyper-parameters, and what it prints about them.
_DEMO_MODELS: tuple[tuple[str, dict[str, Any], str], ...] = (
    ("vae", {}, f"{_DEMO_LATENT_DIM}-d Gaussian latent, Bernoulli decoder; "
     "loss = recon (BCE summed over 64 pixels) + kl (summed over latent dims)"),
    ("vq_vae", {"codebook_size": 32, "hidden": 32, "res_blocks": 1, "prior_channels": 16, "prior_layers": 2},
     f"a 2 x 2 grid of {_DEMO_LATENT_DIM}-d codes from a 32-code EMA codebook with dead-code restarts, "
     "a PixelCNN prior over the grid; loss = recon + 0.25 * commitment + prior"),
)
#: What a metrics record holds besides the loss terms.
_RECORD_EXTRAS = ("step", "images_per_s", "lr", "disc_lr", "time")


def bars(n: int, *, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """``n`` binary ``8 x 8`` images, each the union of random full rows and columns (each on with ``p``).

    Returns:
        float32 tensor of shape ``(n, 64)`` with values in {0, 1}.
    """
    rows = torch.rand(n, _SIDE, 1, generator=generator) < p
    cols = torch.rand(n, 1, _SIDE, generator=generator) < p
    return (rows | cols).float().reshape(n, _SIDE * _SIDE)


def _write_bars(path: Path, n: int, generator: torch.Generator) -> None:
    """Write ``n`` images of :func:`bars` to ``path`` as a gzip-compressed MNIST IDX images file."""
    pixels = bytes((bars(n, generator=generator) * 255).to(torch.uint8).flatten().tolist())
    header = struct.pack(">IIII", 0x00000803, n, _SIDE, _SIDE)
    atomic_write(path, lambda tmp: tmp.write_bytes(gzip.compress(header + pixels, mtime=0)))


def _demo_out_error(out: Path, overwrite: bool) -> str | None:
    """Why the demo may not write to ``out``, or None: as for ``fastvae train --out``, it must be new
    or empty unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        return f"--out: {out} is a file, not a directory; name a new or empty directory"
    found = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
    if found and not overwrite:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        runs = " and ".join(f"{name}/" for name, _, _ in _DEMO_MODELS)
        return (
            f"--out: {out} is not empty ({shown}); choose a new or empty --out, or pass --overwrite to train "
            f"there anyway (replacing {_DEMO_DATA} and fastvae's run files in {runs} there: "
            f"{', '.join(RUN_FILES)}; other files are kept)"
        )
    return None


@torch.no_grad()
def _held_out_scores(model: models.VAEModel, x: torch.Tensor) -> str:
    """The trained ``model``'s scores on the held-out images ``x (B, 1, 8, 8)``, as one line."""
    model.eval()
    scores = [f"held-out ELBO {model.elbo(x).mean().item():.3f} nats"]
    if hasattr(model, "log_likelihood"):
        bound = model.log_likelihood(x, _DEMO_IWAE_SAMPLES).mean().item()
        scores.append(f"IWAE bound (K={_DEMO_IWAE_SAMPLES}) {bound:.3f} nats")
    out = model(x)
    if "perplexity" in out:
        scores.append(f"codebook perplexity {out.perplexity.item():.2f}")
    return "; ".join(scores)


def _demo_train(
    args: argparse.Namespace, name: str, hparams: dict[str, Any], data: Path, held_out: torch.Tensor
) -> None:
    """Train zoo model ``name`` on ``data`` with the trainer, in ``<out>/<name>``; print its metrics
    records (each the mean of the loss terms over the steps since the previous one) and held-out scores."""
    config = TrainConfig(
        model=name, data=str(data), steps=args.steps, batch_size=args.batch_size, out=str(Path(args.out) / name),
        device=args.device, lr=_DEMO_LR, seed=args.seed, latent_dim=_DEMO_LATENT_DIM, log_every=args.log_every,
        checkpoint_every=args.steps, sample_every=args.steps, overwrite=args.overwrite, backend=args.backend,
        hparams=hparams,
    )
    with Trainer(config) as trainer:
        trainer.fit()
        tag = f"[{name}]"
        for record in read_metrics(trainer.out / METRICS_NAME):
            terms = "  ".join(f"{key} {value:8.3f}" for key, value in record.items() if key not in _RECORD_EXTRAS)
            print(f"{tag} step {record['step']:4d}  {terms}")
        torch.manual_seed(args.seed)
        print(f"{tag} {_held_out_scores(trainer.model, held_out.to(trainer.device))}")
        print(f"{tag} run in {trainer.out}", flush=True)


def _demo(args: argparse.Namespace) -> int:
    """``fastvae demo``: write the bars data set to ``<out>/bars-images-idx3-ubyte.gz``, train each model
    of :data:`_DEMO_MODELS` on it with :class:`~fastvae.train.trainer.Trainer` (what ``fastvae train``
    runs) in ``<out>/<model>``, and print each run's metrics records and held-out scores.

    ``--out`` must be new or empty unless ``--overwrite``, which replaces the data file and the
    trainer's own files in the run directories and keeps every other file. Returns the exit status:
    0; 2 for bad arguments; 1 for a non-finite loss; ``128 + signal`` when interrupted.
    """
    if args.steps < 1 or args.batch_size < 1 or args.log_every < 1:
        print("fastvae demo: --steps, --batch-size and --log-every must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    problem = _demo_out_error(out, args.overwrite)
    try:
        resolve_device(args.device)
    except SettingError as error:
        problem = error.spelled(as_flag)
    if problem is not None:
        print(f"fastvae demo: {problem}", file=sys.stderr)
        return 2
    with fastvae.use_backend(args.backend):
        print(
            f"fastvae {fastvae.__version__} on {args.device} (torch {torch.__version__}); backend {args.backend}, "
            f"available: {', '.join(fastvae.available_backends())}"
        )
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    out.mkdir(parents=True, exist_ok=True)
    data = out / _DEMO_DATA
    _write_bars(data, _DEMO_TRAIN_IMAGES, generator)
    held_out = bars(_DEMO_HELD_OUT, generator=generator).reshape(-1, 1, _SIDE, _SIDE)
    print(f"data: {_DEMO_TRAIN_IMAGES} random-bar images in {data}; scores on {_DEMO_HELD_OUT} fresh ones")
    for name, hparams, described in _DEMO_MODELS:
        print(f"[{name}] training the zoo's {name!r} with fastvae train's trainer: {described}", flush=True)
        try:
            _demo_train(args, name, hparams, data, held_out)
        except NonFiniteLossError as error:
            print(f"fastvae demo: {error}", file=sys.stderr)
            return 1
        except TrainingInterrupted as error:
            print(f"fastvae demo: {error}", file=sys.stderr)
            return 128 + int(error.signal_number)
        except SettingError as error:
            print(f"fastvae demo: {error.spelled(as_flag)}", file=sys.stderr)
            return 2
    print(f"done in {time.perf_counter() - start:.1f} s; fastvae evaluate RUN_DIR scores a run, fastvae sample "
          "RUN_DIR draws from it")
    return 0


def _bench_out_error(out: Path, names: Sequence[str], overwrite: bool) -> str | None:
    """Why ``fastvae bench`` may not write the files ``names`` into ``out``, or None: ``out`` is a
    directory or does not exist yet, and holds none of them unless ``overwrite`` (other files in it are
    never touched)."""
    if out.exists() and not out.is_dir():
        return f"--out: {out} is a file, not a directory; name a directory for the results"
    found = [name for name in names if (out / name).exists()]
    if found and not overwrite:
        return (
            f"--out: {out} already holds {', '.join(found)} from an earlier run; choose another --out, or pass "
            "--overwrite to replace them"
        )
    return None


def _bench(args: argparse.Namespace) -> int:
    if args.training:
        names = [bench_training.JSON_NAME, bench_training.MARKDOWN_NAME]
    else:
        names = [bench_report.JSON_NAME, bench_report.MARKDOWN_NAME, *([bench_report.PLOT_NAME] if args.plot else [])]
    problem = _bench_out_error(Path(args.out), names, args.overwrite)
    if problem is not None:
        print(f"fastvae bench: {problem}", file=sys.stderr)
        return 2
    if args.training:
        return bench_training.run(args)
    config = bench.BenchConfig(
        ops=tuple(args.ops),
        shapes=None if args.shapes is None else tuple(args.shapes),
        dtypes=None if args.dtypes is None else tuple(args.dtypes),
        backends=None if args.backends is None else tuple(args.backends),
        modes=None if args.modes is None else tuple(args.modes),
        selection="quick" if args.quick else "full" if args.full else "user" if args.user else None,
        device=args.device,
        warmup=args.warmup,
        repeats=args.repeats,
        peer=args.peer,
        memory_scaling=args.memory_scaling,
        scaling_dtype=args.scaling_dtype,
        cpu_memory_gb=args.cpu_memory_gb,
        plot=args.plot,
    )
    try:
        config = bench.validate(config)
    except ValueError as error:
        print(f"fastvae bench: {error}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    report = bench.run(config)
    paths = bench.write_report(report, Path(args.out), plot_chart=args.plot)
    print()
    print(bench.markdown(report), end="")
    print()
    print(f"done in {time.perf_counter() - start:.1f} s; wrote {', '.join(str(path) for path in paths)}")
    return 0


def _add_bench_parser(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "bench",
        help="measure the ops against eager PyTorch, torch.compile and the hardware ceilings",
        description="Time the ops per shape, dtype, mode and backend on this machine's GPU (without one, the torch "
        "paths on the CPU), with the spread of the timings; print the tables and write bench.json and bench.md. "
        "Without --quick, --user or --full: the core set on a GPU (the large shapes and the user-sized calls), "
        "the user-sized rows on the CPU.",
    )
    command.add_argument("--ops", nargs="+", default=list(bench_shapes.OPS), choices=bench_shapes.OPS,
                         metavar="OP", help=f"ops to run (default all: {', '.join(bench_shapes.OPS)})")
    command.add_argument("--shapes", nargs="+", metavar="NAME",
                         help="instead of the selection's shapes, these from the table, e.g. N65536xK1024xD64 "
                         "(fp32 and bf16, both modes, every backend)")
    command.add_argument("--dtypes", nargs="+", choices=tuple(bench_shapes.DTYPES), metavar="DTYPE",
                         help="run every selected row in these dtypes: fp32, bf16, fp16 (default: each row's)")
    command.add_argument("--backends", nargs="+", choices=bench_shapes.BACKENDS, metavar="BACKEND",
                         help="eager, compile, torch, triton, cuda (default: eager, torch, and triton and cuda where "
                         "they are available on a CUDA device; compile on the rows that compare with it)")
    command.add_argument("--modes", nargs="+", choices=bench_shapes.MODES, metavar="MODE",
                         help="run every selected row in these modes: fwd, fwd+bwd (default: each row's)")
    selection = command.add_mutually_exclusive_group()
    selection.add_argument("--quick", action="store_true", help="the quick shapes and fewer repeats (seconds; CI)")
    selection.add_argument("--user", action="store_true",
                           help="only the user-sized rows: every op at the shapes a model calls it with, fp32, "
                           "against eager PyTorch (per call, and as CUDA graph replays on a GPU)")
    selection.add_argument("--full", action="store_true",
                           help="the whole table: every shape (the CPU-sized ones without a GPU), fp32 and bf16, "
                           "both modes, torch.compile everywhere")
    command.add_argument("--out", default="fastvae-bench", help="output directory (default ./fastvae-bench)")
    command.add_argument("--overwrite", action="store_true",
                         help="replace the results of an earlier run in --out (bench.json, bench.md, bench.png; "
                         "training.json and training.md with --training); without it such files stop the run "
                         "before it measures anything")
    command.add_argument("--plot", action="store_true", help="also write bench.png (needs matplotlib)")
    command.add_argument("--peer", action="store_true",
                         help="compare with vector-quantize-pytorch's VectorQuantize (EMA) on the VQ shapes")
    command.add_argument("--memory-scaling", action="store_true",
                         help="find the largest N that fits for vector_quantize fwd+bwd at K=16384, D=64 (CUDA only)")
    command.add_argument("--scaling-dtype", default="bf16", choices=tuple(bench_shapes.DTYPES),
                         help="dtype of --memory-scaling (default bf16)")
    command.add_argument("--repeats", type=int,
                         help="timed calls per case (default 50 on CUDA, 10 on the CPU, 200 for user-sized rows, "
                         "5 with --quick)")
    command.add_argument("--warmup", type=int,
                         help="warm-up calls per case (default 10 on CUDA, 2 on the CPU, 20 for user-sized rows, "
                         "1 with --quick)")
    command.add_argument("--device", choices=("cuda", "cpu"), help="cuda or cpu (default cuda when a GPU is visible)")
    command.add_argument("--cpu-memory-gb", type=float,
                         help="on the CPU, skip cases estimated to need more memory (default half the RAM)")
    bench_training.add_arguments(command)
    command.set_defaults(run=_bench)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastvae", description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="train a small VAE and VQ autoencoder on embedded data",
        description="Train a small Gaussian VAE and a small VQ autoencoder of the zoo (vae and vq_vae) on an embedded "
        "procedural data set (random horizontal and vertical bars on an 8 x 8 grid) with the trainer of fastvae "
        "train, through the fastvae ops, and report the ELBO, the importance-weighted bound and the codebook "
        "perplexity on held-out images. Needs no download; runs in seconds on a CPU. Writes the data set and a run "
        "directory per model (metrics.jsonl, checkpoint, samples and reconstructions) to --out, a new or empty "
        "directory unless --overwrite.",
    )
    demo.add_argument("--steps", type=int, default=500, help="training steps per model (default 500)")
    demo.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    demo.add_argument("--log-every", type=int, default=100,
                      help="print every N steps the loss terms averaged over those steps (default 100)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda or cuda:N (default: cuda if present)",
    )
    demo.add_argument("--backend", default="auto", choices=fastvae.backend.BACKENDS, help="op backend (default auto)")
    demo.add_argument("--out", default="runs/demo", metavar="DIR",
                      help="where the data set and the runs go: DIR/vae, DIR/vq_vae (default runs/demo)")
    demo.add_argument("--overwrite", action="store_true",
                      help="train in an --out that is not empty: replaces the demo's data file and fastvae's run "
                      "files in its run directories, keeps every other file")
    demo.set_defaults(run=_demo)
    _add_bench_parser(commands)
    train_commands.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return args.run(args)
    except fastvae.BackendUnavailableError as error:
        print(f"fastvae: {error}", file=sys.stderr)
        return 2
