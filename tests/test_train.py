"""The trainer (fastvae.train): training on dSprites, exact resume, interrupts, non-finite losses,
checkpoints, discriminator and conditional models, evaluation and sampling of a run directory."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from tolerances import ADAM_FIRST_STEP, FLOAT32
from torch import nn

import fastvae.train as ft
from fastvae import models
from fastvae.data import DSprites, dsprites
from fastvae.models import ModelOutput, VAEModel, registry
from fastvae.models.base import GaussianVAE
from fastvae.models.vae import VAE
from fastvae.nn import VectorQuantizer
from fastvae.train import checkpoint as ckpt
from fastvae.train.images import make_grid, reconstruction_grid, save_png
from fastvae.train.metrics_log import read_metrics
from fastvae.train.sampling import StepSampler, derive_seed

#: Small, fast runs: every option that does not matter for the test at its cheapest.
FAST = {"device": "cpu", "batch_size": 8, "log_every": 2, "checkpoint_every": 100, "sample_every": 100, "progress": False}


def _train(out: Path, steps: int, **kwargs: object) -> Path:
    return ft.train("vae", steps=steps, out=out, **{**FAST, **kwargs})


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / ckpt.CHECKPOINT_NAME))


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), f"{key} differs"


def _register(monkeypatch: pytest.MonkeyPatch, name: str, cls: type[VAEModel]) -> None:
    """Register a test model for the duration of one test (the registry is restored afterwards)."""
    registry.available()
    monkeypatch.setattr(cls, "name", name)
    monkeypatch.setitem(registry._MODELS, name, cls)


def _patch_vae_loss(monkeypatch: pytest.MonkeyPatch, at_step: int, action) -> None:
    """Make ``vae``'s loss call ``action(terms)`` at training step ``at_step`` (once)."""
    done = []

    def loss(self, x, out, y=None, step=None):
        terms = GaussianVAE.loss(self, x, out, y, step)
        if step == at_step and not done:
            done.append(step)
            terms = action(terms)
        return terms

    monkeypatch.setattr(VAE, "loss", loss)


# --- a trained run, shared by the tests that read one ----------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "vae"
    return ft.train(
        "vae", steps=40, batch_size=16, out=out, device="cpu", log_every=5, checkpoint_every=20, sample_every=20,
        progress=False,
    )


def test_training_vae_on_dsprites_lowers_the_loss_and_writes_the_run(trained: Path) -> None:
    records = read_metrics(trained / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(5, 41, 5))
    for record in records:
        assert {"loss", "recon", "kl", "images_per_s", "lr", "time"} <= record.keys()
        assert record["loss"] == pytest.approx(record["recon"] + record["kl"], rel=FLOAT32.rtol)
        assert record["images_per_s"] > 0 and record["lr"] == 1e-3
    first = sum(r["loss"] for r in records[:2]) / 2
    last = sum(r["loss"] for r in records[-2:]) / 2
    assert last < 0.6 * first, (first, last)
    assert [r["time"] for r in records] == sorted(r["time"] for r in records)

    config = json.loads((trained / "config.json").read_text())
    assert config["step"] == 40 and config["model"]["name"] == "vae" and config["train"]["batch_size"] == 16
    assert config["model"]["input_shape"] == [1, 64, 64] and config["world_size"] == 1
    assert config == ckpt.read_run_record(trained / "checkpoint.safetensors")
    for step in (20, 40):
        for kind in ("samples", "recon"):
            with Image.open(trained / f"{kind}_{step}.png") as image:
                assert image.mode == "L" and image.size == (8 * 66 + 2, 8 * 66 + 2)


def test_checkpoint_holds_weights_buffers_and_optimiser_state(trained: Path) -> None:
    tensors = _tensors(trained)
    model = ft.load_run(trained, device="cpu").model
    for key, value in model.state_dict().items():
        assert torch.equal(tensors[f"model.{key}"], value)
    loaded = ckpt.load_checkpoint(trained / ckpt.CHECKPOINT_NAME)
    adam = loaded.optimizers["generator"]
    assert len(adam["state"]) == len(list(model.parameters()))
    assert all(float(state["step"]) == 40 for state in adam["state"].values())
    assert adam["param_groups"][0]["lr"] == 1e-3
    assert loaded.run["weights_sha256"] == [ckpt.state_digest(model.state_dict())]


# --- exact resume, interrupts, non-finite losses ---------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six steps in one go: what every interrupted-and-resumed run must reproduce exactly."""
    return _train(tmp_path_factory.mktemp("runs") / "whole", 6)


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first three of those six steps, stopping there."""
    return _train(tmp_path_factory.mktemp("runs") / "three", 3)


def test_resume_reproduces_the_uninterrupted_run_exactly(uninterrupted: Path, three_steps: Path, tmp_path: Path) -> None:
    out = tmp_path / "split"
    _train(out, 3, sample_every=1)  # images at every step must not disturb the generators
    _assert_same_tensors(_tensors(out), _tensors(three_steps))
    _train(out, 6, resume=True)
    _assert_same_tensors(_tensors(out), _tensors(uninterrupted))
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [2, 3, 4, 6]


def test_data_loader_workers_read_the_same_batches(three_steps: Path, tmp_path: Path) -> None:
    _assert_same_tensors(_tensors(_train(tmp_path / "workers", 3, num_workers=1)), _tensors(three_steps))


def test_keyboard_interrupt_mid_step_saves_the_state_before_it(
    uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(terms):
        raise KeyboardInterrupt

    _patch_vae_loss(monkeypatch, 4, interrupt)
    out = tmp_path / "interrupted"
    with pytest.raises(ft.TrainingInterrupted) as caught:
        _train(out, 6)
    assert caught.value.step == 4 and caught.value.checkpoint == out / ckpt.CHECKPOINT_NAME
    assert ckpt.read_run_record(out / ckpt.CHECKPOINT_NAME)["step"] == 4
    monkeypatch.undo()
    _train(out, 6, resume=True)
    _assert_same_tensors(_tensors(out), _tensors(uninterrupted))


def test_sigterm_finishes_the_step_saves_and_exits_143(
    uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastvae import cli

    def terminate(terms):
        os.kill(os.getpid(), signal.SIGTERM)
        return terms

    _patch_vae_loss(monkeypatch, 2, terminate)
    handler = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "terminated"
    argv = ["train", "--model", "vae", "--steps", "6", "--out", str(out), "--device", "cpu", "--batch-size", "8",
            "--log-every", "2", "--checkpoint-every", "100", "--sample-every", "100", "--no-progress"]
    assert cli.main(argv) == 128 + signal.SIGTERM
    assert ckpt.read_run_record(out / ckpt.CHECKPOINT_NAME)["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is handler
    monkeypatch.undo()
    assert cli.main([*argv, "--resume"]) == 0
    _assert_same_tensors(_tensors(out), _tensors(uninterrupted))


def test_non_finite_loss_stops_before_the_update_and_names_step_and_term(
    three_steps: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fastvae import cli

    reference = three_steps
    _patch_vae_loss(monkeypatch, 3, lambda terms: {**terms, "kl": terms["kl"] * math.nan})
    out = tmp_path / "nan"
    argv = ["train", "--model", "vae", "--steps", "6", "--out", str(out), "--device", "cpu", "--batch-size", "8",
            "--checkpoint-every", "100", "--sample-every", "100", "--no-progress"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    # The loss of the 4th step (0-based step 3) is NaN: three steps are done, as metrics.jsonl counts.
    assert err.startswith("fastvae train: non-finite loss in step 4: 'kl' is nan; saved the last good state (3 steps done)")
    assert "'recon'" not in err
    # The checkpoint is the state before step 3: weights, optimiser and generators of a 3-step run.
    _assert_same_tensors(_tensors(out), _tensors(reference))
    assert ckpt.read_run_record(out / ckpt.CHECKPOINT_NAME)["rng"] == ckpt.read_run_record(
        reference / ckpt.CHECKPOINT_NAME
    )["rng"]


def test_a_run_directory_is_not_overwritten_or_resumed_with_other_settings(uninterrupted: Path) -> None:
    with pytest.raises(ValueError, match="already holds a run"):
        _train(uninterrupted, 6)
    with pytest.raises(ValueError, match=r"resume: .*lr 0\.001 \(now 0\.002\)"):
        _train(uninterrupted, 8, resume=True, lr=2e-3)
    with pytest.raises(ValueError, match="no checkpoint to resume"):
        _train(uninterrupted / "missing", 8, resume=True)


def test_resume_with_only_out_continues_the_run_from_its_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fastvae import cli

    settings = ["--model", "vae", "--steps", "5", "--batch-size", "6", "--lr", "0.002", "--seed", "4",
                "--latent-dim", "3", "--log-every", "1", "--checkpoint-every", "100", "--sample-every", "100",
                "--likelihood", "gaussian", "--device", "cpu", "--no-progress"]
    whole = tmp_path / "whole"
    assert cli.main(["train", *settings, "--out", str(whole)]) == 0

    def interrupt(terms):
        raise KeyboardInterrupt

    _patch_vae_loss(monkeypatch, 2, interrupt)
    out = tmp_path / "split"
    assert cli.main(["train", *settings, "--out", str(out)]) == 128 + signal.SIGINT
    monkeypatch.undo()
    assert ckpt.read_run_record(out / ckpt.CHECKPOINT_NAME)["step"] == 2
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    assert "vae step 5/5" in capsys.readouterr().err
    _assert_same_tensors(_tensors(out), _tensors(whole))
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    # Flags that contradict the run are refused; one that extends it is taken.
    assert cli.main(["train", "--resume", "--out", str(out), "--steps", "7", "--lr", "0.1", "--seed", "4"]) == 2
    assert capsys.readouterr().err == (
        f"fastvae train: --resume: the run in {out} was trained with --lr 0.002 (now 0.1); resume with the same settings\n"
    )
    assert cli.main(["train", "--resume", "--out", str(out), "--likelihood", "bernoulli"]) == 2
    assert "--likelihood 'gaussian' (now 'bernoulli')" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--out", str(out), "--steps", "6", "--no-progress"]) == 0
    assert ckpt.read_run_record(out / ckpt.CHECKPOINT_NAME)["step"] == 6


def test_a_new_run_that_fails_in_its_first_step_removes_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fastvae import cli

    def unreadable(terms):
        raise ValueError("batch 0 is unreadable")

    _patch_vae_loss(monkeypatch, 0, unreadable)
    out = tmp_path / "new"
    argv = ["train", "--model", "vae", "--steps", "2", "--out", str(out), "--device", "cpu", "--batch-size", "4",
            "--no-progress"]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == "fastvae train: batch 0 is unreadable\n"
    assert not out.exists()
    monkeypatch.undo()
    _patch_vae_loss(monkeypatch, 0, unreadable)  # the patch fails one step only
    out.mkdir()  # a directory the run did not create is left as it was
    assert cli.main(argv) == 2 and out.is_dir()


def test_progress_bar_shows_the_writing_after_the_last_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _train(tmp_path / "run", 2, progress=True)
    err = capsys.readouterr().err
    assert "vae (saving checkpoint.safetensors): 100%" in err
    assert "vae (drawing samples_2.png and recon_2.png): 100%" in err


def test_every_run_file_gets_the_mode_of_a_new_file(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        ckpt.save_checkpoint(tmp_path / ckpt.CHECKPOINT_NAME, model_state={"w": torch.zeros(2)}, optimizers={}, run={})
        ckpt.write_json(tmp_path / ckpt.CONFIG_NAME, {})
        save_png(torch.zeros(1, 2, 2), tmp_path / "grid.png")
    finally:
        os.umask(previous)
    assert {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()} == {
        ckpt.CHECKPOINT_NAME: 0o644, ckpt.CONFIG_NAME: 0o644, "grid.png": 0o644
    }


def test_checkpoint_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / ckpt.CHECKPOINT_NAME
    weights = {"w": torch.arange(4.0)}
    ckpt.save_checkpoint(path, model_state=weights, optimizers={}, run={"step": 1})

    def torn(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", torn)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, model_state={"w": torch.zeros(4)}, optimizers={}, run={"step": 2})
    loaded = ckpt.load_checkpoint(path)
    assert torch.equal(loaded.model_state["w"], weights["w"]) and loaded.run == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == [ckpt.CHECKPOINT_NAME]


def test_optimiser_state_round_trips_through_the_checkpoint(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    adam = torch.optim.Adam(model.parameters(), lr=0.1, betas=(0.8, 0.9))
    model(torch.randn(5, 3)).sum().backward()
    adam.step()
    path = tmp_path / ckpt.CHECKPOINT_NAME
    ckpt.save_checkpoint(path, model_state=model.state_dict(), optimizers={"generator": adam.state_dict()}, run={})
    restored = torch.optim.Adam(nn.Linear(3, 2).parameters(), lr=0.5)
    restored.load_state_dict(ckpt.load_checkpoint(path).optimizers["generator"])
    original, again = adam.state_dict(), restored.state_dict()
    assert again["param_groups"][0]["lr"] == 0.1 and list(again["param_groups"][0]["betas"]) == [0.8, 0.9]
    for index, state in original["state"].items():
        for key, value in state.items():
            assert torch.equal(again["state"][index][key], value)


# --- data order -----------------------------------------------------------------------------------


def test_data_order_is_a_function_of_seed_step_and_rank() -> None:
    length, batch = 50, 8
    ranks = [StepSampler(length, batch, seed=3, rank=r, world_size=2, stop=10) for r in range(2)]
    seen = torch.cat([torch.cat([ranks[r].positions(s) for r in range(2)]) for s in range(4)])
    assert sorted(seen[:length].tolist()) == list(range(length))  # the first epoch is a permutation
    assert not set(ranks[0].positions(1).tolist()) & set(ranks[1].positions(1).tolist())
    fresh = StepSampler(length, batch, seed=3, rank=1, world_size=2, start=2, stop=10)
    assert torch.equal(next(iter(fresh)), ranks[1].positions(2))
    other_seed = StepSampler(length, batch, seed=4, rank=1, world_size=2, stop=10)
    assert not torch.equal(other_seed.positions(2), ranks[1].positions(2))
    assert derive_seed(1, 2) != derive_seed(2, 1) and derive_seed(1, 2) == derive_seed(1, 2)


# --- image grids ----------------------------------------------------------------------------------


def test_make_grid_tiles_row_major_with_padding(tmp_path: Path) -> None:
    images = torch.arange(5.0).reshape(5, 1, 1, 1).expand(5, 1, 2, 3) / 4
    grid = make_grid(images, nrow=2, padding=1, pad_value=0.5)
    assert grid.shape == (1, 3 * 3 + 1, 2 * 4 + 1)
    assert grid[0, 1:3, 1:4].eq(0.0).all() and grid[0, 1:3, 5:8].eq(0.25).all()
    assert grid[0, 7:9, 1:4].eq(1.0).all() and grid[0, 7:9, 5:8].eq(0.5).all()  # the empty 6th tile
    assert grid[0, 0].eq(0.5).all() and grid[0, :, 0].eq(0.5).all()
    pixels = Image.open(save_png(grid, tmp_path / "grid.png"))
    assert pixels.size == (9, 10) and pixels.getpixel((1, 7)) == 255 and pixels.getpixel((5, 1)) == 64


def test_reconstruction_grid_interleaves_rows_of_inputs_and_outputs() -> None:
    x, recon = torch.zeros(16, 1, 2, 2), torch.ones(16, 1, 2, 2)
    pairs, nrow = reconstruction_grid(x, recon, nrow=8)
    assert nrow == 8 and pairs.shape == (32, 1, 2, 2)
    assert pairs[:8].eq(0).all() and pairs[8:16].eq(1).all() and pairs[16:24].eq(0).all()


# --- discriminators, conditional models, VQ models --------------------------------------------------


class _Adversarial(VAEModel):
    """A deterministic autoencoder with a latent discriminator: ``loss`` reaches the discriminator's
    parameters too (the trainer must not apply that gradient), ``disc_loss`` the encoder's."""

    has_discriminator = True

    def __init__(self, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__(input_shape, latent_dim)
        size = math.prod(input_shape)
        self.encoder = nn.Linear(size, latent_dim)
        self.decoder = nn.Linear(latent_dim, size)
        self.critic = nn.Linear(latent_dim, 1)
        self.steps: list[int | None] = []

    def discriminator_parameters(self):
        return self.critic.parameters()

    def forward(self, x, y=None):
        z = self.encoder(x.flatten(1))
        return ModelOutput(recon=torch.sigmoid(self.decoder(z)).reshape(x.shape), z=z)

    def loss(self, x, out, y=None, step=None):
        self.steps.append(step)
        recon = F.mse_loss(out.recon, x, reduction="sum") / x.shape[0]
        fool = -self.critic(out.z).mean()
        disc = self.critic(out.z).square().mean() + (1 - self.critic(torch.ones_like(out.z))).square().mean()
        return {"loss": recon + fool, "disc_loss": disc, "recon": recon}

    def sample(self, n, y=None):
        return torch.sigmoid(self.decoder(torch.ones(n, self.latent_dim))).reshape(n, *self.input_shape)

    def reconstruct(self, x, y=None):
        return self.forward(x).recon


def test_discriminator_models_train_each_loss_into_its_own_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _register(monkeypatch, "test_adversarial", _Adversarial)
    config = ft.TrainConfig(model="test_adversarial", steps=1, out=str(tmp_path / "adv"), lr=0.01, **FAST)
    with ft.Trainer(config) as trainer:
        model = trainer.model
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        positions = StepSampler(len(trainer.dataset), 8, seed=0, stop=1).positions(0)
        x, _ = trainer.dataset.batch(positions)
        terms = model.loss(x, model(x))
        generator, critic = list(model.generator_parameters()), list(model.discriminator_parameters())
        grads = dict(zip(generator, torch.autograd.grad(terms["loss"], generator, retain_graph=True)))
        grads.update(zip(critic, torch.autograd.grad(terms["disc_loss"], critic)))
        model.steps.clear()
        trainer.fit()
    assert model.steps == [0]
    assert set(trainer.optimizers) == {"generator", "discriminator"}
    for name, p in model.named_parameters():
        # One Adam step from zero moments moves each weight by lr * sign(grad) (up to eps).
        expected = before[name] - 0.01 * grads[p] / (grads[p].abs() + 1e-8)
        torch.testing.assert_close(p.detach(), expected, **ADAM_FIRST_STEP, msg=name)
    record = read_metrics(tmp_path / "adv" / "metrics.jsonl")[0]
    assert {"loss", "disc_loss", "recon", "lr", "disc_lr"} <= record.keys()


class _Conditional(VAEModel):
    """Records the labels the trainer passes."""

    conditional = True

    def __init__(self, input_shape: tuple[int, ...], latent_dim: int, *, num_classes: int | None = None) -> None:
        super().__init__(input_shape, latent_dim)
        self.num_classes = num_classes
        self.decoder = nn.Linear(latent_dim + 1, math.prod(input_shape))
        self.seen: list[torch.Tensor] = []

    def forward(self, x, y=None):
        y = self.check_labels(y, x.shape[0], self.num_classes)
        self.seen.append(y.clone())
        z = torch.zeros(x.shape[0], self.latent_dim)
        recon = torch.sigmoid(self.decoder(torch.cat([z, y[:, None].float()], 1))).reshape(x.shape)
        return ModelOutput(recon=recon, z=z)

    def loss(self, x, out, y=None, step=None):
        recon = F.binary_cross_entropy(out.recon, x, reduction="sum") / x.shape[0]
        return {"loss": recon}

    def sample(self, n, y=None):
        return self.forward(torch.zeros(n, *self.input_shape), y).recon

    def reconstruct(self, x, y=None):
        return self.forward(x, y).recon


def test_conditional_models_get_the_dsprites_shape_as_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, "test_conditional", _Conditional)
    config = ft.TrainConfig(model="test_conditional", steps=2, out=str(tmp_path / "cond"), **FAST)
    with ft.Trainer(config) as trainer:
        assert trainer.model.config["hparams"]["num_classes"] == 3
        trainer.model.seen.clear()
        trainer.fit()
        seen = trainer.model.seen[:2]
    sampler = StepSampler(len(trainer.dataset), 8, seed=0, stop=2)
    for step, labels in enumerate(seen):
        factors = DSprites.factors(trainer.dataset.indices[sampler.positions(step)])
        assert torch.equal(labels, factors[:, 0])


def test_conditional_models_get_the_labels_of_labelled_user_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    numpy = pytest.importorskip("numpy")
    _register(monkeypatch, "test_conditional", _Conditional)
    labels = numpy.arange(20) % 5
    path = tmp_path / "digits.npz"
    numpy.savez(path, x=numpy.random.default_rng(0).random((20, 8, 8), dtype=numpy.float32), y=labels)
    config = ft.TrainConfig(model="test_conditional", data=str(path), steps=3, out=str(tmp_path / "cond"), **FAST)
    with ft.Trainer(config) as trainer:
        assert trainer.model.input_shape == (1, 8, 8) and trainer.model.config["hparams"]["num_classes"] == 5
        trainer.model.seen.clear()
        trainer.fit()
        seen = trainer.model.seen[:3]
    sampler = StepSampler(20, 8, seed=0, stop=3)
    for step, given in enumerate(seen):  # step 2 straddles the first and second epoch
        assert given.tolist() == labels[sampler.positions(step).numpy()].tolist()


class _ToyVQ(VAEModel):
    """A VQ autoencoder with two quantizers on 4 x 4 feature maps of 64 x 64 images."""

    def __init__(self, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__(input_shape, latent_dim)
        self.encoder = nn.Conv2d(input_shape[0], latent_dim, 16, stride=16)
        self.top = VectorQuantizer(8, latent_dim, channel_dim=1)
        self.bottom = VectorQuantizer(5, latent_dim, channel_dim=1, ema=True)
        self.decoder = nn.ConvTranspose2d(latent_dim, input_shape[0], 16, stride=16)

    def forward(self, x, y=None):
        h = self.encoder(x)
        top, bottom = self.top(h), self.bottom(h)
        logits = self.decoder(top.quantized + bottom.quantized)
        return ModelOutput(recon=torch.sigmoid(logits), z=top.quantized, logits=logits,
                           indices=top.indices, vq_loss=top.loss + bottom.loss)

    def loss(self, x, out, y=None, step=None):
        recon = F.binary_cross_entropy_with_logits(out.logits, x, reduction="sum") / x.shape[0]
        return {"loss": recon + out.vq_loss, "recon": recon}

    def sample(self, n, y=None):
        return torch.full((n, *self.input_shape), 0.5)

    def reconstruct(self, x, y=None):
        return self.forward(x).recon


def test_evaluate_reports_codebook_usage_and_perplexity_of_vq_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _register(monkeypatch, "test_vq", _ToyVQ)
    run = ft.train("test_vq", steps=2, out=tmp_path / "vq", latent_dim=3, **FAST)
    report = ft.evaluate(run, batches=3, batch_size=16, device="cpu", disentanglement="off")
    assert report["images"] == 48 and "elbo" not in report and "log_likelihood" not in report
    model = ft.load_run(run, device="cpu").model
    eval_sampler = StepSampler(len(dsprites()), 16, seed=derive_seed(0xE7A1), stop=3)
    counts = {"top": torch.zeros(8), "bottom": torch.zeros(5)}
    with torch.no_grad():
        for positions in eval_sampler:
            h = model.encoder(dsprites().batch(positions)[0])
            for name, count in counts.items():
                count += torch.bincount(getattr(model, name)(h).indices.flatten(), minlength=count.numel())
    for name, count in counts.items():
        p = count[count > 0].double() / count.sum()
        expected = {"num_codes": count.numel(), "codes_used": int((count > 0).sum()),
                    "usage": int((count > 0).sum()) / count.numel(), "perplexity": math.exp(-(p * p.log()).sum().item())}
        assert report["codebooks"][name] == pytest.approx(expected)
        assert 1.0 <= report["codebooks"][name]["perplexity"] <= count.numel()
    assert json.loads((run / "eval.json").read_text()) == report


def test_evaluate_reports_the_codebook_of_vq_vae(tmp_path: Path) -> None:
    config = ft.TrainConfig(model="vq_vae", steps=1, out=str(tmp_path / "vq_vae"), **FAST)
    with ft.Trainer(config) as trainer:
        trainer.save()
        num_codes = next(m for m in trainer.model.modules() if isinstance(m, VectorQuantizer)).num_codes
    report = ft.evaluate(tmp_path / "vq_vae", batches=1, k=0, batch_size=4, device="cpu", disentanglement="off")
    (codebook,) = report["codebooks"].values()
    assert codebook["num_codes"] == num_codes and 1 <= codebook["codes_used"] <= num_codes
    assert 1.0 <= codebook["perplexity"] <= codebook["codes_used"] + 1e-9


def test_evaluate_and_sample_a_trained_vae(trained: Path, tmp_path: Path) -> None:
    report = ft.evaluate(trained, batches=2, k=8, batch_size=16, device="cpu", disentanglement="off")
    assert report["step"] == 40 and report["images"] == 32 and report["k"] == 8
    assert report["recon_bce"] > 0 and 0 < report["mse"] < 1
    # The importance-sampled bound is a (stochastically) tighter bound than the ELBO.
    assert report["log_likelihood"] > report["elbo"] and report["elbo"] < 0
    again = ft.evaluate(trained, batches=2, k=8, batch_size=16, device="cpu", disentanglement="off", write=False)
    assert again == report
    path = ft.sample(trained, n=10, out=tmp_path / "s.png", device="cpu")
    with Image.open(path) as image:
        assert image.size == (4 * 66 + 2, 3 * 66 + 2)


def test_evaluate_adds_disentanglement_metrics_on_dsprites(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fastvae.metrics

    calls = []

    def disentanglement(model, dataset, *, seed, fast):
        calls.append((type(dataset).__name__, seed, fast))
        return {"mig": 0.25}

    monkeypatch.setattr(fastvae.metrics, "disentanglement", disentanglement)
    report = ft.evaluate(trained, batches=1, k=0, batch_size=4, device="cpu", seed=2, write=False)
    assert report["disentanglement"] == {"mig": 0.25} and calls == [("DSprites", 2, True)]
    ft.evaluate(trained, batches=1, k=0, batch_size=4, device="cpu", disentanglement="full", write=False)
    assert calls[-1] == ("DSprites", 0, False)
    with pytest.raises(ValueError, match="disentanglement must be one of fast, full, off"):
        ft.evaluate(trained, disentanglement="yes")


def test_evaluate_shows_progress_of_the_batches_and_the_rendered_images(
    trained: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import fastvae.metrics
    from fastvae.metrics.suite import FAST

    def disentanglement(model, dataset, *, seed, fast):
        dataset.render_factors(dataset.sample_factors(100, torch.Generator().manual_seed(0)))
        return {"mig": 0.5}

    monkeypatch.setattr(fastvae.metrics, "disentanglement", disentanglement)
    report = ft.evaluate(trained, batches=3, k=0, batch_size=4, device="cpu", write=False, progress=True)
    assert report["disentanglement"] == {"mig": 0.5}
    err = capsys.readouterr().err
    assert "evaluate: 100%" in err and "3/3" in err
    assert "disentanglement (fast)" in err and f"100/{FAST.observations / 1000:g}k" in err
    ft.evaluate(trained, batches=1, k=0, batch_size=4, device="cpu", write=False)
    assert capsys.readouterr().err == ""


def test_disentanglement_hook_is_empty_without_fastvae_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastvae.train.evaluate import _disentanglement

    monkeypatch.setitem(sys.modules, "fastvae.metrics", None)
    assert _disentanglement(models.create("vae"), dsprites(16)) == {}
