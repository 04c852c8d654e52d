"""The ``fastvae train``, ``fastvae evaluate`` and ``fastvae sample`` subcommands (added to the parser
by :mod:`fastvae.cli`).

``fastvae train --resume --out DIR`` continues the run in ``DIR`` with the settings in its
``config.json``: every flag left out takes the run's value. Flags given may extend the run (``--steps``)
or change how it runs (``--device``, ``--log-every``...); one that would change its trajectory
(``--model``, ``--data``, ``--batch-size``, ``--lr``, ``--seed``, ``--latent-dim``, hyper-parameters)
is refused.

Exit status: 0 on success; 2 for bad arguments and unreadable run files (a one-line message that
spells flags as on the command line; an unknown model, data path or flag gets the valid or the
closest ones); 1 when training stops on a non-finite loss; 130 (SIGINT) or 143 (SIGTERM) when
interrupted, after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import fastvae
from fastvae import models
from fastvae.train.checkpoint import CHECKPOINT_NAME, CONFIG_NAME, RUN_FILES, read_config, read_run_record
from fastvae.train.cli_args import as_flag, parse_hparams, restore_types
from fastvae.train.evaluate import DISENTANGLEMENT_MODES, EVAL_NAME, evaluate, sample
from fastvae.train.trainer import (
    NonFiniteLossError,
    SettingError,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
)

__all__ = ["add_parsers"]

_DEFAULTS = TrainConfig(model="")
#: The ``TrainConfig`` fields set by a flag of the same name, which a resumed run takes from its record.
_RUN_FLAGS = (
    "data", "steps", "batch_size", "device", "lr", "seed", "latent_dim", "log_every", "checkpoint_every",
    "sample_every", "backend", "amp", "num_workers",
)
#: The TrainConfig fields: names a message may lead with (see :func:`_fail`).
_ARGUMENTS = frozenset(field.name for field in dataclasses.fields(TrainConfig))


def _spell(name: str) -> str:
    """An argument's name as the command line spells it: ``--batch-size``, and ``RUN_DIR``."""
    return "RUN_DIR" if name == "run_dir" else as_flag(name)


def _fail(command: str, error: BaseException, names: frozenset[str] = _ARGUMENTS) -> int:
    """Print ``error`` as one line naming flags as on the command line; returns the exit status 2.

    A :class:`SettingError` spells its own names; another message that starts with one of ``names``
    (a model's own check of a hyper-parameter: ``obs_std must be ...``) gets that name spelled."""
    if isinstance(error, SettingError):
        message = error.spelled(_spell)
    else:
        message = str(error)
        first, space, rest = message.partition(" ")
        if first in names:
            message = _spell(first) + space + rest
    print(f"fastvae {command}: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _saved_settings(out: Path) -> dict[str, Any] | None:
    """The ``train`` settings of the run in ``out``: from its ``config.json``, else from its
    checkpoint's copy of the record; None where there is neither (the trainer then reports it)."""
    if (out / CONFIG_NAME).is_file():
        return read_config(out / CONFIG_NAME)["train"]
    if (out / CHECKPOINT_NAME).is_file():
        return read_run_record(out / CHECKPOINT_NAME)["train"]
    return None


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's configuration: the flags given, and for the rest the run's settings with
    ``--resume`` (see the module docstring) or the defaults."""
    given = {name: getattr(args, name) for name in _RUN_FLAGS if getattr(args, name) is not None}
    model, out, base, saved_hparams = args.model, args.out, {}, {}
    if args.resume and not args.overwrite:
        if out is None and model is None:
            raise SettingError(
                lambda s: f"{s('resume')} needs {s('out')} DIR, the run to continue (or {s('model')} NAME for runs/NAME)"
            )
        saved = _saved_settings(Path(out) if out is not None else Path("runs") / model)
        if saved is not None:
            base = {name: saved[name] for name in _RUN_FLAGS if name in saved}
            model = model or saved["model"]
            saved_hparams = saved.get("hparams", {})
    if model is None:
        raise SettingError(lambda s: f"{s('model')} NAME is required (or {s('resume')} {s('out')} DIR to continue a run)")
    hparams = {
        **restore_types(model, saved_hparams),
        **parse_hparams(model, args.extra, command_flags=args.command_flags),
    }
    return TrainConfig(
        model=model, out=out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
        hparams=hparams, **{**base, **given},
    )


def _model_names(model: str | None) -> frozenset[str]:
    """The argument names a train message may lead with: TrainConfig's fields and ``model``'s hyper-parameters."""
    try:
        return _ARGUMENTS | frozenset(models.hyperparameters(model or ""))
    except ValueError:
        return _ARGUMENTS


def _train(args: argparse.Namespace) -> int:
    try:
        config = _train_config(args)
        trainer = Trainer(config)
    except ValueError as error:
        return _fail("train", error, _model_names(args.model))
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
        except ValueError as error:
            return _fail("train", error, _model_names(config.model))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    try:
        report = evaluate(args.run_dir, batches=args.batches, k=args.k, batch_size=args.batch_size,
                          device=args.device, seed=args.seed, disentanglement=args.disentanglement,
                          progress=not args.no_progress)
    except ValueError as error:
        return _fail("evaluate", error)
    print(json.dumps(report, indent=2))
    print(f"fastvae evaluate: wrote {EVAL_NAME} in {report['run']}", file=sys.stderr)
    return 0


def _sample(args: argparse.Namespace) -> int:
    try:
        path = sample(args.run_dir, n=args.n, out=args.out, seed=args.seed, device=args.device,
                      overwrite=args.overwrite)
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
        "metrics.jsonl, checkpoint.safetensors, config.json and samples_<step>.png / recon_<step>.png to --out, "
        "a new or empty directory. 'fastvae train --resume --out DIR' continues the run in DIR with its settings.",
        epilog="Any other --name VALUE flag sets the model's hyper-parameter 'name' (dashes for underscores; "
        "converted to the type of its default; lists as comma-separated values; a bare --flag sets a boolean). "
        "An unknown model is reported with the valid ones, an unknown flag with the closest ones.",
        allow_abbrev=False,
    )
    add = command.add_argument
    actions = [
        add("--model", metavar="NAME",
            help="the model to train (an unknown name lists the valid ones; with --resume: the run's)"),
        add("--data", metavar="dsprites|PATH",
            help="dsprites (default), an image folder, a .npy/.npz file or an MNIST IDX file"),
        add("--steps", type=int, help=f"train to this many steps (default {d.steps}; with --resume: the run's)"),
        add("--batch-size", type=int, help=f"examples per step per process (default {d.batch_size})"),
        add("--out", metavar="DIR", help="run directory, new or empty unless --resume or --overwrite "
            "(default runs/<model>)"),
        add("--device", metavar="auto|cpu|cuda", help="auto (default: cuda if available), cpu, cuda or cuda:N"),
        add("--lr", type=float, help=f"Adam learning rate (default {d.lr:g})"),
        add("--seed", type=int, help=f"random seed (default {d.seed})"),
        add("--latent-dim", type=int, help=f"latent size (default {d.latent_dim})"),
        add("--log-every", type=int, help=f"steps between metrics records (default {d.log_every})"),
        add("--checkpoint-every", type=int,
            help=f"steps between checkpoints (default {d.checkpoint_every}; always one at the end)"),
        add("--sample-every", type=int,
            help=f"steps between sample/reconstruction grids (default {d.sample_every}; also at the end)"),
        add("--resume", action="store_true",
            help="continue the run in --out from its checkpoint, with its settings for the flags left out"),
        add("--overwrite", action="store_true",
            help=f"start afresh in an --out that holds a run or other files: deletes fastvae's files there "
            f"({', '.join(RUN_FILES)}) and keeps the others"),
        add("--backend", choices=fastvae.backend.BACKENDS, help="fastvae op backend (default auto)"),
        add("--amp", action=argparse.BooleanOptionalAction,
            help="mixed precision (default: on with CUDA, bf16 where supported, else fp16; off on the CPU)"),
        add("--num-workers", type=int, help=f"data loader worker processes (default {d.num_workers})"),
        add("--no-progress", action="store_true", help="no progress bar"),
    ]
    flags = tuple(option for action in actions for option in action.option_strings if option.startswith("--"))
    command.set_defaults(run=_train, accepts_extra=True, command_flags=flags)


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
        "log-likelihood, codebook usage and perplexity for VQ models, disentanglement metrics on dSprites. "
        "Prints the report and writes <RUN_DIR>/eval.json; progress bars go to stderr.",
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
    command.add_argument("--no-progress", action="store_true", help="no progress bars")
    command.set_defaults(run=_evaluate)

    command = commands.add_parser(
        "sample",
        help="write a grid of samples from a trained run",
        description="Draw samples from the prior of a trained run (conditional models cycle through the "
        "classes), decode them and write them as one PNG grid; prints the PNG's path.",
    )
    command.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by fastvae train")
    command.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    command.add_argument("--out", metavar="FILE",
                         help="PNG to write (default <RUN_DIR>/samples.png); an existing FILE needs --overwrite")
    command.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    command.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    command.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default 0)")
    command.set_defaults(run=_sample)
