"""The ``fastvae train``, ``fastvae evaluate`` and ``fastvae sample`` subcommands (added to the parser
by :mod:`fastvae.cli`).

Exit status: 0 on success; 2 for bad arguments (an unknown model, data path or hyper-parameter gets a
one-line message listing the valid ones); 1 when training stops on a non-finite loss; 130 (SIGINT)
or 143 (SIGTERM) when interrupted, after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import fastvae
from fastvae.train.cli_args import parse_hparams
from fastvae.train.evaluate import DISENTANGLEMENT_MODES, EVAL_NAME, evaluate, sample
from fastvae.train.trainer import (
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
)

__all__ = ["add_parsers"]

_DEFAULTS = TrainConfig(model="")


def _fail(command: str, error: BaseException) -> int:
    message = " ".join(str(error).split())
    print(f"fastvae {command}: {message}", file=sys.stderr)
    return 2


def _train(args: argparse.Namespace) -> int:
    try:
        hparams = parse_hparams(args.model, args.extra)
        config = TrainConfig(
            model=args.model, data=args.data, steps=args.steps, batch_size=args.batch_size, out=args.out,
            device=args.device, lr=args.lr, seed=args.seed, latent_dim=args.latent_dim, log_every=args.log_every,
            checkpoint_every=args.checkpoint_every, sample_every=args.sample_every, resume=args.resume,
            overwrite=args.overwrite, backend=args.backend, amp=args.amp, num_workers=args.num_workers,
            progress=not args.no_progress, hparams=hparams,
        )
        trainer = Trainer(config)
    except ValueError as error:
        return _fail("train", error)
    with trainer:
        try:
            trainer.fit()
        except NonFiniteLossError as error:
            print(f"fastvae train: {error}", file=sys.stderr)
            return 1
        except TrainingInterrupted as error:
            if trainer.job.is_main:
                print(f"fastvae train: {error}", file=sys.stderr)
            return 128 + int(error.signal_number)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    try:
        report = evaluate(args.run_dir, batches=args.batches, k=args.k, batch_size=args.batch_size,
                          device=args.device, seed=args.seed, disentanglement=args.disentanglement)
    except ValueError as error:
        return _fail("evaluate", error)
    print(json.dumps(report, indent=2))
    print(f"fastvae evaluate: wrote {EVAL_NAME} in {report['run']}", file=sys.stderr)
    return 0


def _sample(args: argparse.Namespace) -> int:
    try:
        path = sample(args.run_dir, n=args.n, out=args.out, seed=args.seed, device=args.device)
    except ValueError as error:
        return _fail("sample", error)
    print(path)
    return 0


def _add_train_parser(commands: Any) -> None:
    d = _DEFAULTS
    command = commands.add_parser(
        "train",
        help="train a zoo model on dSprites or your data",
        description="Train a model of the zoo (one process, or data-parallel under torchrun). Writes "
        "metrics.jsonl, checkpoint.safetensors, config.json and samples_<step>.png / recon_<step>.png to --out.",
        epilog="Any other --name VALUE flag sets the model's hyper-parameter `name` (dashes for underscores; "
        "converted to the type of its default; lists as comma-separated values; a bare --flag sets a boolean). "
        "An unknown model or hyper-parameter is reported with the valid ones.",
        allow_abbrev=False,
    )
    command.add_argument("--model", required=True, metavar="NAME", help="the model to train (an unknown name lists the valid ones)")
    command.add_argument("--data", default=d.data, metavar="dsprites|PATH",
                         help="dsprites (default), an image folder, a .npy/.npz file or an MNIST IDX file")
    command.add_argument("--steps", type=int, default=d.steps, help=f"train to this many steps (default {d.steps})")
    command.add_argument("--batch-size", type=int, default=d.batch_size,
                         help=f"examples per step per process (default {d.batch_size})")
    command.add_argument("--out", metavar="DIR", help="run directory (default runs/<model>)")
    command.add_argument("--device", default=d.device, metavar="auto|cpu|cuda",
                         help="auto (default: cuda if available), cpu, cuda or cuda:N")
    command.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr:g})")
    command.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    command.add_argument("--latent-dim", type=int, default=d.latent_dim, help=f"latent size (default {d.latent_dim})")
    command.add_argument("--log-every", type=int, default=d.log_every,
                         help=f"steps between metrics records (default {d.log_every})")
    command.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                         help=f"steps between checkpoints (default {d.checkpoint_every}; always one at the end)")
    command.add_argument("--sample-every", type=int, default=d.sample_every,
                         help=f"steps between sample/reconstruction grids (default {d.sample_every}; also at the end)")
    command.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    command.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run")
    command.add_argument("--backend", default=d.backend, choices=fastvae.backend.BACKENDS,
                         help="fastvae op backend (default auto)")
    command.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                         help="mixed precision (default: on with CUDA, bf16 where supported, else fp16; off on the CPU)")
    command.add_argument("--num-workers", type=int, default=d.num_workers,
                         help=f"data loader worker processes (default {d.num_workers})")
    command.add_argument("--no-progress", action="store_true", help="no progress bar")
    command.set_defaults(run=_train, accepts_extra=True)


def add_parsers(commands: Any) -> None:
    """Add ``train``, ``evaluate`` and ``sample`` to the ``fastvae`` subcommand parsers ``commands``.

    ``train`` takes model hyper-parameters as extra flags: :func:`fastvae.cli.main` passes the
    arguments argparse does not know as ``args.extra``.
    """
    _add_train_parser(commands)
    command = commands.add_parser(
        "evaluate",
        help="score a trained run (writes <RUN_DIR>/eval.json)",
        description="Score a trained run on batches of its data: reconstruction error, ELBO, importance-sampled "
        "log-likelihood, codebook usage and perplexity for VQ models, disentanglement metrics on dSprites. Prints the report and writes <RUN_DIR>/eval.json.",
    )
    command.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by fastvae train")
    command.add_argument("--batches", type=int, default=10, help="batches to evaluate (default 10)")
    command.add_argument("--k", type=int, default=100,
                         help="importance samples for the log-likelihood (default 100; 0 skips it)")
    command.add_argument("--batch-size", type=int, help="examples per batch (default: the run's)")
    command.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    command.add_argument("--seed", type=int, default=0, help="seed of the posterior samples (default 0)")
    command.add_argument("--disentanglement", default="fast", choices=DISENTANGLEMENT_MODES,
                         help="disentanglement metrics on dSprites: fast (default; a minute or two on a CPU), "
                         "full (disentanglement_lib's sizes; an hour or more on a CPU) or off")
    command.set_defaults(run=_evaluate)

    command = commands.add_parser("sample", help="write a grid of samples from a trained run")
    command.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by fastvae train")
    command.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    command.add_argument("--out", metavar="FILE", help="PNG to write (default <RUN_DIR>/samples.png)")
    command.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    command.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default 0)")
    command.set_defaults(run=_sample)

