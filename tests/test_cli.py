"""The ``fastvae`` command line: the demo trains, reports bounds in the right order, and rejects bad input."""

from __future__ import annotations

import re

import pytest
import torch

from fastvae import cli


def test_bars_are_unions_of_full_rows_and_columns():
    images = cli.bars(200, generator=torch.Generator().manual_seed(1)).reshape(200, 8, 8)
    assert set(images.unique().tolist()) <= {0.0, 1.0}
    for image in images:
        full_rows = image.all(dim=1)
        full_cols = image.all(dim=0)
        rebuilt = full_rows.unsqueeze(1) | full_cols.unsqueeze(0)
        assert torch.equal(rebuilt.float(), image)


def test_demo_trains_and_iwae_bound_is_tighter_than_elbo(capsys):
    status = cli.main(["demo", "--steps", "60", "--batch-size", "64", "--log-every", "30", "--device", "cpu"])
    out = capsys.readouterr().out
    assert status == 0
    vae_losses = [float(v) for v in re.findall(r"\[vae\] step +\d+ +loss +([-\d.]+)", out)]
    assert len(vae_losses) == 3 and vae_losses[-1] < vae_losses[0]
    elbo, bound = map(float, re.search(r"ELBO ([-\d.]+) nats; IWAE bound \(K=64\) ([-\d.]+) nats", out).groups())
    assert bound >= elbo
    perplexities = [float(v) for v in re.findall(r"perplexity +([\d.]+)", out)]
    assert len(perplexities) == 3 and all(1.0 <= p <= 32.0 for p in perplexities)


def test_demo_rejects_non_positive_steps(capsys):
    assert cli.main(["demo", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_unknown_backend_is_rejected_by_the_parser():
    with pytest.raises(SystemExit):
        cli.main(["demo", "--backend", "tpu"])


def test_help_is_plain_text_and_every_command_describes_itself(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    top = capsys.readouterr().out
    assert "``" not in top and ":mod:" not in top and "fastvae COMMAND --help" in top
    for command, words in (("demo", "embedded procedural data set"), ("sample", "Draw samples from the prior")):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert words in " ".join(capsys.readouterr().out.split())
