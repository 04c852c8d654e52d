"""The ``fastvae`` command line.

``fastvae demo`` trains a small Gaussian VAE and a small VQ autoencoder on an embedded procedural
data set (random horizontal and vertical bars on an 8 x 8 grid) through the fastvae ops, and reports
the ELBO, the importance-weighted bound and the codebook perplexity. It needs no download and runs in
seconds on a CPU.

``fastvae train`` trains a model of the zoo on dSprites or user data (one process, or data-parallel under
``torchrun``); ``fastvae evaluate RUN_DIR`` scores a trained run and ``fastvae sample RUN_DIR`` draws
from it (see :mod:`fastvae.train`).

``fastvae bench`` measures the ops on this machine's GPU (or, without one, the torch paths on the
CPU) against eager PyTorch, ``torch.compile`` and the hardware ceilings, prints the tables and writes
``bench.json`` and ``bench.md`` (see :mod:`fastvae.bench` and ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import fastvae
from fastvae import bench
from fastvae.bench import shapes as bench_shapes
from fastvae.bench import training as bench_training
from fastvae.train import commands as train_commands

__all__ = ["bars", "main"]

_SIDE = 8
#: ``fastvae --help``'s description: plain text (the module docstring is reStructuredText).
_DESCRIPTION = (
    "fastvae: fused Triton/CUDA kernels for VAEs, a zoo of models and their trainer. "
    "'fastvae COMMAND --help' describes each command."
)


def bars(n: int, *, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """``n`` binary ``8 x 8`` images, each the union of random full rows and columns (each on with ``p``).

    Returns:
        float32 tensor of shape ``(n, 64)`` with values in {0, 1}.
    """
    rows = torch.rand(n, _SIDE, 1, generator=generator) < p
    cols = torch.rand(n, 1, _SIDE, generator=generator) < p
    return (rows | cols).float().reshape(n, _SIDE * _SIDE)


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, outputs))


def _bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | logits) summed over pixels: (..., 64) -> (...)."""
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)


def _train_vae(args: argparse.Namespace, device: torch.device, data: torch.Generator) -> None:
    latent = 8
    encoder = _mlp(64, 128, 2 * latent).to(device)
    decoder = _mlp(latent, 128, 64).to(device)
    optimiser = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=2e-3)
    print(f"[vae] {latent}-d Gaussian latent, loss = BCE summed over 64 pixels + KL summed over latents")
    for step in range(1, args.steps + 1):
        x = bars(args.batch_size, generator=data).to(device)
        mu, logvar = encoder(x).chunk(2, dim=-1)
        z, kl = fastvae.reparameterize_kl(mu, logvar, reduction="mean")
        recon = -_bernoulli_log_prob(decoder(z), x).mean()
        loss = recon + kl
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step == 1 or step % args.log_every == 0 or step == args.steps:
            print(f"[vae] step {step:4d}  loss {loss.item():8.3f}  recon {recon.item():8.3f}  kl {kl.item():6.3f}")

    samples = 64
    with torch.no_grad():
        x = bars(512, generator=data).to(device)
        mu, logvar = encoder(x).chunk(2, dim=-1)
        z = fastvae.reparameterize(mu.expand(samples, *mu.shape), logvar.expand(samples, *logvar.shape))
        log_w = fastvae.iwae_log_weights(_bernoulli_log_prob(decoder(z), x), z, mu, logvar)
        elbo = log_w.mean()
        bound = fastvae.iwae_bound(log_w, dim=0).mean()
    print(f"[vae] held-out ELBO {elbo.item():.3f} nats; IWAE bound (K={samples}) {bound.item():.3f} nats")


def _train_vq(args: argparse.Namespace, device: torch.device, data: torch.Generator) -> None:
    codes, groups, dim = 32, 4, 8
    encoder = _mlp(64, 128, groups * dim).to(device)
    decoder = _mlp(groups * dim, 128, 64).to(device)
    quantizer = fastvae.nn.VectorQuantizer(codes, dim, ema=True, dead_code_threshold=0.05).to(device)
    optimiser = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=2e-3)
    print(f"[vq]  {groups} x {codes}-code EMA codebook, dead-code restart under an EMA count of 0.05")
    for step in range(1, args.steps + 1):
        x = bars(args.batch_size, generator=data).to(device)
        out = quantizer(encoder(x).reshape(-1, groups, dim))
        recon = -_bernoulli_log_prob(decoder(out.quantized.reshape(-1, groups * dim)), x).mean()
        loss = recon + out.loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step == 1 or step % args.log_every == 0 or step == args.steps:
            print(
                f"[vq]  step {step:4d}  loss {loss.item():8.3f}  recon {recon.item():8.3f}  "
                f"commitment {out.commitment_loss.item():7.4f}  perplexity {out.perplexity.item():6.2f}"
            )


def _demo(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.batch_size < 1 or args.log_every < 1:
        print("fastvae demo: --steps, --batch-size and --log-every must be >= 1", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    data = torch.Generator().manual_seed(args.seed)
    with fastvae.use_backend(args.backend):
        print(
            f"fastvae {fastvae.__version__} on {device} (torch {torch.__version__}); backend {args.backend}, "
            f"available: {', '.join(fastvae.available_backends())}"
        )
        start = time.perf_counter()
        _train_vae(args, device, data)
        _train_vq(args, device, data)
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _bench(args: argparse.Namespace) -> int:
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
        description="Train a small Gaussian VAE and a small VQ autoencoder on an embedded procedural data set "
        "(random horizontal and vertical bars on an 8 x 8 grid) through the fastvae ops, and report the ELBO, the "
        "importance-weighted bound and the codebook perplexity. Needs no download; runs in seconds on a CPU.",
    )
    demo.add_argument("--steps", type=int, default=500, help="training steps per model (default 500)")
    demo.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    demo.add_argument("--log-every", type=int, default=100, help="print every N steps (default 100)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: cuda if present)"
    )
    demo.add_argument("--backend", default="auto", choices=fastvae.backend.BACKENDS, help="op backend (default auto)")
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
