"""The ``fastvae`` command line: the demo trains, reports bounds in the right order, and rejects bad input."""

from __future__ import annotations

import re

import pytest
import torch
from tolerances import PRINTED_THREE_DECIMALS_ATOL

import fastvae.data
from fastvae import cli
from fastvae.train.checkpoint import read_config
from fastvae.train.metrics_log import read_metrics


def test_bars_are_unions_of_full_rows_and_columns():
    images = cli.bars(200, generator=torch.Generator().manual_seed(1)).reshape(200, 8, 8)
    assert set(images.unique().tolist()) <= {0.0, 1.0}
    for image in images:
        full_rows = image.all(dim=1)
        full_cols = image.all(dim=0)
        rebuilt = full_rows.unsqueeze(1) | full_cols.unsqueeze(0)
        assert torch.equal(rebuilt.float(), image)


def test_demo_trains_with_the_trainer_and_iwae_bound_is_tighter_than_elbo(capsys, tmp_path):
    out_dir = tmp_path / "demo"
    status = cli.main(
        ["demo", "--steps", "60", "--batch-size", "64", "--log-every", "30", "--device", "cpu", "--out", str(out_dir)]
    )
    out = capsys.readouterr().out
    assert status == 0
    # One line per metrics record the trainer wrote (steps 30 and 60: each the mean of its 30 steps).
    for name in ("vae", "vq_vae"):
        printed = [float(v) for v in re.findall(rf"\[{name}\] step +\d+ +loss +([-\d.]+)", out)]
        records = read_metrics(out_dir / name / "metrics.jsonl")
        assert [record["step"] for record in records] == [30, 60]
        assert printed == pytest.approx([record["loss"] for record in records], abs=PRINTED_THREE_DECIMALS_ATOL)
        assert printed[-1] < printed[0]
        for run_file in ("checkpoint.safetensors", "config.json", "samples_60.png", "recon_60.png"):
            assert (out_dir / name / run_file).is_file()
        data = read_config(out_dir / name / "config.json")["train"]["data"]
        assert data == str(out_dir / "bars-images-idx3-ubyte.gz")
    scores = re.search(r"\[vae\] held-out ELBO ([-\d.]+) nats; IWAE bound \(K=64\) ([-\d.]+) nats", out)
    elbo, bound = map(float, scores.groups())
    assert bound >= elbo
    perplexities = [float(v) for v in re.findall(r"perplexity +([\d.]+)", out)]
    assert len(perplexities) == 3 and all(1.0 <= p <= 32.0 for p in perplexities)
    # The data file holds the bars: every image a union of full rows and columns.
    images = fastvae.data.load(out_dir / "bars-images-idx3-ubyte.gz").batch(torch.arange(100))[0].reshape(100, 8, 8)
    rebuilt = images.bool().all(dim=2, keepdim=True) | images.bool().all(dim=1, keepdim=True)
    assert torch.equal(rebuilt.float(), images)


def test_demo_writes_over_files_only_when_asked(capsys, tmp_path):
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    argv = ["demo", "--steps", "2", "--batch-size", "8", "--log-every", "1", "--device", "cpu", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
    assert cli.main([*argv, "--overwrite"]) == 0
    assert mine.read_text() == "mine"
    assert (tmp_path / "vae" / "checkpoint.safetensors").is_file()
    capsys.readouterr()
    assert cli.main(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli.main(["demo", "--out", str(mine), "--device", "cpu"]) == 2
    assert "is a file" in capsys.readouterr().err


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
