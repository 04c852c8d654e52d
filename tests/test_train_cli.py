"""``fastvae train | evaluate | sample`` on the command line: hyper-parameter flags, one-line errors,
the commands on a run directory, and two-process data-parallel training under torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from fastvae import cli
from fastvae.train import checkpoint as ckpt
from fastvae.train.cli_args import HyperParameterError, convert, parse_hparams

TRAIN = ["train", "--device", "cpu", "--no-progress", "--batch-size", "8"]


# --- hyper-parameter flags ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("true", False, True), ("0", True, False), ("Yes", False, True), ("off", True, False),
        ("7", 3, 7), ("1e3", 3, 1000), ("-2", 3, -2),
        ("0.5", 1.0, 0.5), ("4", 1.0, 4.0), ("1e-4", 1.0, 1e-4),
        ("gaussian", "bernoulli", "gaussian"),
        ("64,128", (32,), (64, 128)), ("0.1, 0.2", [1.0], [0.1, 0.2]), ("a,b", ("x",), ("a", "b")),
        ("none", None, None), ("12", None, 12), ("0.3", None, 0.3), ("word", None, "word"),
    ],
)
def test_values_convert_to_the_type_of_the_default(text: str, default: object, expected: object) -> None:
    value = convert(text, default, "name")
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(("text", "default", "message"), [
    ("maybe", True, "--some-name takes true or false, got 'maybe'"),
    ("2.5", 3, "--some-name takes an int, got '2.5'"),
    ("x", 1.0, "--some-name takes a number, got 'x'"),
    ("1,x", (1,), "--some-name takes an int, got 'x'"),
])
def test_values_of_the_wrong_type_are_rejected_naming_the_flag(text: str, default: object, message: str) -> None:
    with pytest.raises(HyperParameterError, match=f"^{message}$"):
        convert(text, default, "some_name")


def test_flags_map_dashes_to_underscores_and_accept_equals() -> None:
    assert parse_hparams("vae", ["--obs-std", "0.5", "--likelihood=gaussian"]) == {
        "obs_std": 0.5, "likelihood": "gaussian"
    }
    with pytest.raises(HyperParameterError, match="--obs-std needs a value"):
        parse_hparams("vae", ["--obs-std"])
    with pytest.raises(HyperParameterError, match="given twice"):
        parse_hparams("vae", ["--obs-std", "1", "--obs-std", "2"])
    with pytest.raises(HyperParameterError, match="unexpected argument 'stray'"):
        parse_hparams("vae", ["stray"])


# --- one-line errors -------------------------------------------------------------------------------


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_unknown_model_lists_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_line_error(capsys, [*TRAIN, "--model", "nope"])
    assert line.startswith("fastvae train: unknown model 'nope'; valid models: ") and " vae" in line


def test_unknown_hyperparameter_lists_the_models(capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_line_error(capsys, [*TRAIN, "--model", "vae", "--betta", "4"])
    assert line == (
        "fastvae train: unknown flag --betta for model 'vae'; its hyper-parameters: --likelihood, --obs-std "
        "(the trainer's flags: fastvae train --help)"
    )


@pytest.mark.parametrize(("typo", "meant"), [
    ("--step", "--steps"), ("--batch_size", "--batch-size"), ("--lattent-dim", "--latent-dim"),
    ("--obs-sdt", "--obs-std"), ("--checkpoint", "--checkpoint-every"),
])
def test_a_misspelt_flag_names_the_closest_flag(capsys: pytest.CaptureFixture[str], typo: str, meant: str) -> None:
    line = _one_line_error(capsys, [*TRAIN, "--model", "vae", typo, "3"])
    assert line.startswith(f"fastvae train: unknown flag {typo} for model 'vae'; did you mean {meant}? ")


@pytest.mark.parametrize(("argv", "message"), [
    (["--batch-size", "0"], "--batch-size must be a positive int, got 0"),
    (["--num-workers", "-1"], "--num-workers must be a non-negative int, got -1"),
    (["--latent-dim", "0"], "--latent-dim must be a positive int, got 0"),
    (["--obs-std", "-1"], "--obs-std must be a positive finite number, got -1.0"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
])
def test_messages_spell_flags_as_on_the_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    line = _one_line_error(capsys, ["train", "--model", "vae", "--out", str(tmp_path / "run"), *argv])
    assert line == f"fastvae train: {message}"


def test_bad_hyperparameter_value_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = _one_line_error(capsys, [*TRAIN, "--model", "vae", "--likelihood", "poisson", "--out", str(tmp_path)])
    assert "likelihood must be one of 'bernoulli', 'gaussian'" in line


@pytest.mark.parametrize("path", ["missing_dir", "missing.npz", "missing-images-idx3-ubyte"])
def test_missing_data_path_lists_the_valid_forms(capsys: pytest.CaptureFixture[str], tmp_path: Path, path: str) -> None:
    line = _one_line_error(capsys, [*TRAIN, "--model", "vae", "--data", str(tmp_path / path), "--out", str(tmp_path)])
    assert line.startswith(f"fastvae train: --data '{tmp_path / path}': ") and "no such file" in line
    assert "valid: " in line and "dsprites" in line


def test_amp_on_the_cpu_and_bad_numbers_are_rejected(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert "amp (mixed precision) needs a CUDA device" in _one_line_error(
        capsys, [*TRAIN, "--model", "vae", "--amp", "--out", str(tmp_path)]
    )
    line = _one_line_error(capsys, [*TRAIN, "--model", "vae", "--steps", "0"])
    assert line == "fastvae train: --steps must be a positive int, got 0"


def test_other_commands_still_reject_unknown_flags() -> None:
    with pytest.raises(SystemExit):
        cli.main(["demo", "--beta", "4"])


def test_evaluate_and_sample_name_a_missing_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = _one_line_error(capsys, ["evaluate", str(tmp_path)])
    assert line == f"fastvae evaluate: RUN_DIR: {tmp_path} holds no fastvae run (no config.json); train one with fastvae train"
    assert "holds no fastvae run" in _one_line_error(capsys, ["sample", str(tmp_path)])
    (tmp_path / "file").write_text("")
    line = _one_line_error(capsys, ["evaluate", str(tmp_path / "file")])
    assert line.startswith(f"fastvae evaluate: RUN_DIR: {tmp_path / 'file'} is not a directory")


def test_sample_refuses_an_existing_out_before_it_loads_the_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # RUN_DIR holds no run: the check of --out comes first, so it is what the one line says.
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"the user's picture")
    line = _one_line_error(capsys, ["sample", str(tmp_path), "--out", str(mine)])
    assert line == (f"fastvae sample: --out: {mine} already exists; choose another --out, or pass --overwrite to "
                    "replace it")
    assert mine.read_bytes() == b"the user's picture"
    line = _one_line_error(capsys, ["sample", str(tmp_path), "--out", str(tmp_path)])
    assert line == f"fastvae sample: --out: {tmp_path} is a directory; name the PNG file to write"


def test_train_without_a_model_or_a_run_to_resume_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_line_error(capsys, ["train", "--steps", "2"])
    assert line == "fastvae train: --model NAME is required (or --resume --out DIR to continue a run)"
    line = _one_line_error(capsys, ["train", "--resume"])
    assert line == "fastvae train: --resume needs --out DIR, the run to continue (or --model NAME for runs/NAME)"


# --- run directories ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "small"
    assert cli.main([*TRAIN, "--model", "vae", "--steps", "2", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", [ckpt.CHECKPOINT_NAME, ckpt.CONFIG_NAME])
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
@pytest.mark.parametrize("command", ["resume", "evaluate", "sample"])
def test_a_damaged_run_file_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], small_run: Path, tmp_path: Path, name: str, damage: str, command: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    whole = (run / name).read_bytes()
    (run / name).write_bytes({"truncated": whole[: len(whole) // 2], "empty": b"", "garbage": b"\xff" * 64}[damage])
    argv = {
        "resume": ["train", "--resume", "--out", str(run), "--no-progress"],
        "evaluate": ["evaluate", str(run), "--device", "cpu", "--batches", "1", "--k", "0", "--disentanglement", "off"],
        "sample": ["sample", str(run), "--device", "cpu", "--n", "1"],
    }[command]
    line = _one_line_error(capsys, argv)
    assert line.startswith(f"fastvae {'train' if command == 'resume' else command}: {run / name}: ")
    assert "truncated or corrupt" in line and line.endswith("train the run again (fastvae train --overwrite)")


def test_a_config_json_that_is_not_fastvaes_is_refused(capsys: pytest.CaptureFixture[str], small_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    (run / "config.json").write_text('{"lr": 0.1}')
    line = _one_line_error(capsys, ["evaluate", str(run), "--device", "cpu"])
    assert line.startswith(f"fastvae evaluate: {run / 'config.json'}: not a fastvae run record (format None, ")


@pytest.mark.parametrize("names", [["notes.txt"], ["config.json"], ["metrics.jsonl", "samples_10.png"]])
def test_out_with_files_fastvae_did_not_write_is_refused_without_overwrite(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, names: list[str]
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    for name in names:
        (out / name).write_text("the user's")
    line = _one_line_error(capsys, [*TRAIN, "--model", "vae", "--steps", "1", "--out", str(out)])
    assert line.startswith(f"fastvae train: --out: {out} holds files that are not a fastvae run ({', '.join(sorted(names))}); ")
    assert "--overwrite" in line
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert all((out / name).read_text() == "the user's" for name in names)


def test_out_naming_a_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("mine")
    for extra in ([], ["--overwrite"]):
        line = _one_line_error(capsys, [*TRAIN, "--model", "vae", "--out", str(tmp_path / "file"), *extra])
        assert line == f"fastvae train: --out: {tmp_path / 'file'} is a file, not a directory; name a run directory"
    assert (tmp_path / "file").read_text() == "mine"


def test_a_run_that_fails_on_its_data_leaves_no_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.new("L", (8, 8), color=40 * i).save(images / f"{i}.png")
    whole = (images / "3.png").read_bytes()
    (images / "3.png").write_bytes(whole[: len(whole) // 2])  # a header that opens, pixels that do not
    out = tmp_path / "new" / "run"
    line = _one_line_error(capsys, [*TRAIN, "--model", "vae", "--batch-size", "4", "--data", str(images), "--out", str(out)])
    assert "3.png" in line and not (tmp_path / "new").exists()



# --- the commands on a run ---------------------------------------------------------------------------


def test_train_evaluate_sample_commands(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [*TRAIN, "--model", "vae", "--steps", "4", "--out", str(out), "--log-every", "2", "--latent-dim", "4",
            "--likelihood", "bernoulli", "--seed", "3"]
    assert cli.main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["latent_dim"] == 4 and config["train"]["seed"] == 3 and config["step"] == 4
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.safetensors", "config.json", "metrics.jsonl", "recon_4.png", "samples_4.png"
    ]
    assert cli.main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err

    assert cli.main(["evaluate", str(out), "--batches", "1", "--k", "4", "--device", "cpu", "--disentanglement", "off"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "eval.json").read_text())
    assert {"recon_bce", "mse", "elbo", "log_likelihood"} <= printed.keys() and printed["images"] == 8

    assert cli.main(["sample", str(out), "--n", "4", "--out", str(tmp_path / "grid.png"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as image:
        assert image.size == (2 * 66 + 2, 2 * 66 + 2)
    # A named --out that exists is replaced only when asked.
    grid = (tmp_path / "grid.png").read_bytes()
    line = _one_line_error(capsys, ["sample", str(out), "--n", "1", "--out", str(tmp_path / "grid.png"), "--device", "cpu"])
    assert line.startswith(f"fastvae sample: --out: {tmp_path / 'grid.png'} already exists") and "--overwrite" in line
    assert (tmp_path / "grid.png").read_bytes() == grid
    argv = ["sample", str(out), "--n", "1", "--out", str(tmp_path / "grid.png"), "--device", "cpu", "--overwrite"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    with Image.open(tmp_path / "grid.png") as image:
        assert image.size == (66 + 2, 66 + 2)

    (out / "notes.txt").write_text("mine")
    assert cli.main([*TRAIN, "--model", "vae", "--steps", "2", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["step"] == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.safetensors", "config.json", "metrics.jsonl", "notes.txt", "recon_2.png", "samples_2.png"
    ]


# --- torchrun -----------------------------------------------------------------------------------------


def test_torchrun_two_processes_train_in_sync(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "fastvae", *TRAIN, "--model", "vae", "--steps", "3", "--out", str(out), "--log-every", "1"]
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    run = ckpt.load_checkpoint(out / ckpt.CHECKPOINT_NAME)
    assert run.run["world_size"] == 2 and run.run["step"] == 3 and len(run.run["rng"]) == 2
    # Each rank digests its own weights at the checkpoint; all equal, and equal to what rank 0 wrote.
    assert run.run["weights_sha256"] == [ckpt.state_digest(run.model_state)] * 2
    assert run.run["rng"][0] != run.run["rng"][1]  # the ranks draw different noise
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
