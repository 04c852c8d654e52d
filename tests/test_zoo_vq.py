"""The VQ models ``vq_vae`` and ``vq_vae2``, their PixelCNN prior, and ``fastvae bench --training``.

Mechanisms are checked against hand-computed or brute-force values: the loss terms on the honest
scale, the causal masks of the prior (every code changed in turn), the prior's normalisation (summed
over every grid) and its sampler (against those exact probabilities), the gradient isolation of the
prior, EMA versus loss-trained codebooks, dead-code restarts, and the eager quantiser of the training
benchmark against fastvae's. Models are shrunk (``SMALL``) so that the file runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dsprites_training import train_steps
from tolerances import (
    FLOAT32,
    FLOAT32_LOG_LIKELIHOOD,
    FLOAT32_ORDER_ONE,
    FLOAT32_PRIOR_NLL,
    FLOAT32_SMALL_VALUES,
    FLOAT32_TINY_VALUES,
    FLOAT64_REORDERED,
    SAMPLER_FREQUENCY_ATOL,
    SAMPLER_FREQUENCY_SIGMAS,
    assert_close,
)

from fastvae import cli, models
from fastvae.bench import training
from fastvae.data import dsprites
from fastvae.models._prior import GatedPixelCNN
from fastvae.nn import VectorQuantizer

#: Hyper-parameters that keep the models small enough for CPU tests.
SMALL = {"codebook_size": 32, "hidden": 32, "res_blocks": 1, "prior_channels": 16, "prior_layers": 2}
LATENT = 8
VQ_MODELS = ("vq_vae", "vq_vae2")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run thousands of tiny convolutions, which intra-op threads do not speed up; on a
    loaded machine their spinning makes them tens of times slower. Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(name: str, input_shape: tuple[int, ...] = (1, 64, 64), **hparams: object) -> models.VAEModel:
    torch.manual_seed(0)
    return models.create(name, input_shape=input_shape, latent_dim=LATENT, **{**SMALL, **hparams})


def _binary(batch: int, shape: tuple[int, ...] = (1, 64, 64), seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, *shape, generator=generator) < 0.3).float()


def _quantizers(model: models.VAEModel) -> list[VectorQuantizer]:
    return [module for module in model.modules() if isinstance(module, VectorQuantizer)]


# --- the registry and hyper-parameters ------------------------------------------------------------------


def test_hyperparameters_and_paper_defaults() -> None:
    for name in VQ_MODELS:
        hparams = models.hyperparameters(name)
        assert {key: hparams[key] for key in ("codebook_size", "beta", "ema", "decay", "dead_code_threshold",
                                              "hidden", "res_blocks", "downsamples", "likelihood", "precision")} == {
            "codebook_size": 512, "beta": 0.25, "ema": True, "decay": 0.99, "dead_code_threshold": 1.0,
            "hidden": 128, "res_blocks": 2, "downsamples": 2, "likelihood": "bernoulli", "precision": "ieee",
        }
    # What `fastvae train --model vq_vae --codebook-size 16384` builds.
    model = models.create("vq_vae", latent_dim=64, codebook_size=16384)
    assert model.quantizer.codebook.shape == (16384, 64)
    assert model.config["hparams"]["codebook_size"] == 16384


@pytest.mark.parametrize("name, shape", [("vq_vae", (5,)), ("vq_vae", (1, 30, 30)), ("vq_vae2", (1, 36, 36))])
def test_input_shapes_the_grid_cannot_take_are_rejected(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="input_shape"):
        models.create(name, input_shape=shape, latent_dim=LATENT)


@pytest.mark.parametrize("hparam, value", [("codebook_size", 0), ("prior_layers", 0), ("prior_batch", -1),
                                           ("beta", -1.0), ("likelihood", "poisson"), ("downsamples", 1.5)])
def test_bad_hyperparameters_are_rejected_by_name(hparam: str, value: object) -> None:
    with pytest.raises((ValueError, TypeError), match=hparam):
        models.create("vq_vae", latent_dim=LATENT, **{hparam: value})


# --- shapes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, grid", [((1, 64, 64), (16, 16)), ((3, 32, 32), (8, 8))])
def test_vq_vae_shapes(shape: tuple[int, ...], grid: tuple[int, int]) -> None:
    model = _build("vq_vae", shape)
    x = _binary(3, shape)
    out = model(x)
    assert out.recon.shape == out.logits.shape == x.shape
    assert out.z.shape == out.z_e.shape == (3, LATENT, *grid)
    assert out.indices.shape == (3, *grid) and out.indices.dtype == torch.int64
    assert out.commitment_loss.dim() == out.codebook_loss.dim() == out.perplexity.dim() == 0
    assert model.reconstruct(x).shape == x.shape
    assert model.sample(2).shape == (2, *shape)


@pytest.mark.parametrize("shape, top, bottom", [((1, 64, 64), (8, 8), (16, 16)), ((3, 32, 32), (4, 4), (8, 8))])
def test_vq_vae2_shapes_and_grid_sizes(shape: tuple[int, ...], top: tuple[int, int], bottom: tuple[int, int]) -> None:
    model = _build("vq_vae2", shape)
    x = _binary(3, shape)
    out = model(x)
    assert out.recon.shape == out.logits.shape == x.shape
    assert out.z_top.shape == (3, LATENT, *top) and out.indices_top.shape == (3, *top)
    assert out.z_bottom.shape == (3, LATENT, *bottom) and out.indices_bottom.shape == (3, *bottom)
    assert out.z.shape == (3, 2 * LATENT, *bottom)
    assert model.top_grid == top and model.bottom_grid == bottom
    assert model.reconstruct(x).shape == x.shape
    assert model.sample(2).shape == (2, *shape)


# --- the loss ------------------------------------------------------------------------------------------------


def _hand_prior_nll(prior: GatedPixelCNN, codes: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
    log_p = F.log_softmax(prior(codes, condition).double(), dim=1)
    return -log_p.gather(1, codes.unsqueeze(1)).sum(dim=(1, 2, 3)).mean()


@pytest.mark.parametrize("ema", [True, False])
def test_vq_vae_loss_terms_on_the_honest_scale(ema: bool) -> None:
    model = _build("vq_vae", ema=ema).eval()
    x = _binary(4)
    out = model(x)
    terms = model.loss(x, out)
    assert set(terms) == {"loss", "recon", "commitment", "codebook", "prior", "perplexity", "usage"}

    p = torch.sigmoid(out.logits.double())
    bce = -(x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(terms["recon"].double(), bce, **FLOAT32_LOG_LIKELIHOOD)

    codes = model.quantizer.codebook[out.indices].permute(0, 3, 1, 2).double()
    squared = ((out.z_e.double() - codes) ** 2).sum(dim=(1, 2, 3)).mean()
    # The quantiser reports F.mse_loss (a mean over elements); the model's term is the per-example sum.
    mse = F.mse_loss(out.z_e.double(), codes)
    torch.testing.assert_close(out.commitment_loss.double(), mse, **FLOAT32_TINY_VALUES)
    torch.testing.assert_close(terms["commitment"].double(), squared, **FLOAT32_SMALL_VALUES)
    torch.testing.assert_close(terms["codebook"].double(), squared if not ema else squared.new_zeros(()),
                               **FLOAT32_SMALL_VALUES)
    torch.testing.assert_close(terms["prior"].double(), _hand_prior_nll(model.prior, out.indices), **FLOAT32_PRIOR_NLL)

    expected = terms["recon"] + terms["codebook"] + 0.25 * terms["commitment"] + terms["prior"]
    torch.testing.assert_close(terms["loss"], expected)
    usage = torch.unique(out.indices).numel() / SMALL["codebook_size"]
    assert terms["usage"].item() == pytest.approx(usage)
    assert not terms["perplexity"].requires_grad and terms["perplexity"] >= 1


def test_gaussian_likelihood_uses_the_gaussian_observation_model() -> None:
    model = _build("vq_vae", likelihood="gaussian", obs_std=0.5).eval()
    x = torch.rand(2, 1, 64, 64)
    out = model(x)
    expected = (0.5 * (x - out.logits) ** 2 / 0.25 + 0.5 * math.log(2 * math.pi * 0.25)).sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(model.loss(x, out)["recon"], expected, **FLOAT32_LOG_LIKELIHOOD)
    torch.testing.assert_close(out.recon, out.logits)


def test_vq_vae2_loss_sums_both_levels() -> None:
    model = _build("vq_vae2", ema=False).eval()
    x = _binary(3)
    out = model(x)
    terms = model.loss(x, out)
    for level in ("top", "bottom"):
        quantizer = getattr(model, f"quantizer_{level}")
        codes = quantizer.codebook[out[f"indices_{level}"]].permute(0, 3, 1, 2)
        torch.testing.assert_close(out[f"z_{level}"], codes, **FLOAT32_ORDER_ONE)
        assert terms[f"commitment_{level}"] > 0 and terms[f"codebook_{level}"] > 0
    top = out.indices_top
    torch.testing.assert_close(terms["prior_top"].double(), _hand_prior_nll(model.prior_top, top), **FLOAT32_PRIOR_NLL)
    torch.testing.assert_close(terms["prior_bottom"].double(),
                               _hand_prior_nll(model.prior_bottom, out.indices_bottom, top), **FLOAT32_PRIOR_NLL)
    for total in ("commitment", "codebook", "prior"):
        torch.testing.assert_close(terms[total], terms[f"{total}_top"] + terms[f"{total}_bottom"])
    expected = terms["recon"] + terms["codebook"] + 0.25 * terms["commitment"] + terms["prior"]
    torch.testing.assert_close(terms["loss"], expected)


def test_prior_trains_on_the_first_prior_batch_examples() -> None:
    model = _build("vq_vae", prior_batch=2).eval()
    x = _binary(5)
    out = model(x)
    expected = _hand_prior_nll(model.prior, out.indices[:2])
    torch.testing.assert_close(model.loss(x, out)["prior"].double(), expected, **FLOAT32_PRIOR_NLL)


@pytest.mark.parametrize("name", VQ_MODELS)
def test_elbo_is_minus_recon_and_prior_per_example(name: str) -> None:
    """In chunks of prior_batch, without touching the codebooks, even in training mode."""
    model = _build(name, prior_batch=2)
    x = _binary(5)
    before = [q.codebook.clone() for q in _quantizers(model)]
    elbo = model.elbo(x)
    assert all(torch.equal(b, q.codebook) for b, q in zip(before, _quantizers(model)))
    model.eval()
    out = model(x)
    expected = -(model.reconstruction_nll(x, out.logits) + model.prior_nll(out))
    assert elbo.shape == (5,) and (elbo < 0).all()
    torch.testing.assert_close(elbo, expected.detach(), **FLOAT32_LOG_LIKELIHOOD)


@pytest.mark.parametrize("name", VQ_MODELS)
def test_prior_loss_gradient_never_reaches_encoder_or_codebook(name: str) -> None:
    model = _build(name, ema=False)
    x = _binary(3)
    terms = model.loss(x, model(x))
    prior_names = {n for n, _ in model.named_parameters() if n.startswith("prior")}
    others = [(n, p) for n, p in model.named_parameters() if n not in prior_names]
    assert any("codebook" in n for n, _ in others)
    grads = torch.autograd.grad(terms["prior"], [p for _, p in others], allow_unused=True)
    assert all(g is None for g in grads), [n for (n, _), g in zip(others, grads) if g is not None]
    prior_params = [p for n, p in model.named_parameters() if n in prior_names]
    prior_grads = torch.autograd.grad(terms["prior"], prior_params, allow_unused=True)
    assert sum(g.abs().sum() for g in prior_grads if g is not None) > 0


@pytest.mark.parametrize("name", VQ_MODELS)
def test_quantisers_keep_float32_under_autocast(name: str) -> None:
    """As the trainer runs models on a GPU: bf16 autocast around forward and loss."""
    model = _build(name)
    x = _binary(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        terms = model.loss(x, out)
    assert out.recon.shape == x.shape and torch.isfinite(terms["loss"])
    for key in ("z_top", "z_bottom") if name == "vq_vae2" else ("z",):
        assert out[key].dtype == torch.float32
    terms["loss"].backward()


# --- codebooks -----------------------------------------------------------------------------------------------


def test_ema_codebook_is_a_buffer_and_loss_codebook_a_parameter() -> None:
    ema = _build("vq_vae", ema=True)
    assert "quantizer.codebook" in dict(ema.named_buffers())
    assert "quantizer.codebook" not in dict(ema.named_parameters())
    trained = _build("vq_vae", ema=False)
    assert "quantizer.codebook" in dict(trained.named_parameters())
    x = _binary(2)
    terms = trained.loss(x, trained(x))
    (grad,) = torch.autograd.grad(terms["loss"], [trained.quantizer.codebook])
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", VQ_MODELS)
def test_ema_updates_codebooks_in_training_mode_only(name: str) -> None:
    model = _build(name, dead_code_threshold=0.0)
    x = _binary(4)
    before = [q.codebook.clone() for q in _quantizers(model)]
    first = model.reconstruct(x)
    assert torch.equal(first, model.reconstruct(x))
    model.eval()
    model(x)
    assert all(torch.equal(b, q.codebook) for b, q in zip(before, _quantizers(model)))
    model.train()
    model.reconstruct(x)
    assert all(torch.equal(b, q.codebook) for b, q in zip(before, _quantizers(model)))
    assert all(q.training for q in _quantizers(model))
    model(x)
    assert all(not torch.equal(b, q.codebook) for b, q in zip(before, _quantizers(model)))


@pytest.mark.parametrize("ema", [True, False])
def test_dead_codes_restart_at_encoder_outputs(ema: bool) -> None:
    model = _build("vq_vae", ema=ema)
    x = _binary(2)
    torch.manual_seed(1)
    out = model(x)
    used = torch.zeros(SMALL["codebook_size"], dtype=torch.bool)
    used[out.indices.flatten()] = True
    assert (~used).any()
    rows = out.z_e.detach().permute(0, 2, 3, 1).reshape(-1, LATENT)
    restarted = model.quantizer.codebook[~used]
    # Each unused code (EMA count 0.99 < 1.0 after the update) is now one of the batch's encoder outputs.
    matches = (restarted[:, None, :] == rows[None, :, :]).all(-1).any(-1)
    assert matches.all()
    assert torch.equal(model.quantizer.ema_count[~used], torch.ones(int((~used).sum())))


# --- the prior -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conditional", [False, True])
def test_prior_masks_are_causal_in_raster_order(conditional: bool) -> None:
    torch.manual_seed(0)
    height, width, codes_k = 3, 4, 5
    prior = GatedPixelCNN(codes_k, channels=8, layers=3, condition_codes=3 if conditional else 0).double()
    condition = torch.randint(3, (1, 2, 2)) if conditional else None
    codes = torch.randint(codes_k, (1, height, width))
    base = prior(codes, condition)
    for p in range(height * width):
        i, j = divmod(p, width)
        changed = codes.clone()
        changed[0, i, j] = (codes[0, i, j] + 1) % codes_k
        delta = (prior(changed, condition) - base).abs().amax(dim=1)[0].flatten()
        assert delta[: p + 1].max() < FLOAT64_REORDERED.atol, f"position {p} leaks into positions <= {p}"
        if j + 1 < width:
            assert delta[p + 1] > 1e-6, f"position {p} does not reach the next one"
        if i + 1 < height:
            assert delta[p + width] > 1e-6, f"position {p} does not reach the one below (blind spot)"


def test_prior_condition_changes_the_logits() -> None:
    torch.manual_seed(0)
    prior = GatedPixelCNN(4, channels=8, layers=2, condition_codes=3)
    codes = torch.randint(4, (1, 4, 4))
    assert not torch.allclose(prior(codes, torch.zeros(1, 2, 2, dtype=torch.long)),
                              prior(codes, torch.ones(1, 2, 2, dtype=torch.long)))
    with pytest.raises(ValueError, match="conditional"):
        prior(codes)


def test_prior_is_normalised_and_its_sampler_draws_from_it() -> None:
    """Trained to make all four codes of a 2 x 2 grid equal, the prior's probabilities summed over
    all 3^4 grids are 1, and 3000 samples match them (each grid within 5 binomial sigmas)."""
    torch.manual_seed(0)
    prior = GatedPixelCNN(3, channels=8, layers=2)
    data = torch.tensor([0, 1, 2, 2]).view(4, 1, 1).expand(4, 2, 2)
    optimizer = torch.optim.Adam(prior.parameters(), lr=2e-2)
    for _ in range(60):
        optimizer.zero_grad()
        prior.nll(data).mean().backward()
        optimizer.step()
    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 2, 2)
    with torch.no_grad():
        probs = torch.exp(-prior.nll(grids).double())
    assert probs.sum().item() == pytest.approx(1.0, abs=FLOAT32.atol)
    assert probs[[0, 40, 80]].sum() > 0.5  # the constant grids, which the sampler must reproduce together
    n = 3000
    samples = prior.sample(n, (2, 2))
    index = (samples.view(n, 4) * torch.tensor([27, 9, 3, 1])).sum(1)
    freq = torch.bincount(index, minlength=81).double() / n
    sigma = (probs * (1 - probs) / n).sqrt()
    assert ((freq - probs).abs() <= SAMPLER_FREQUENCY_SIGMAS * sigma + SAMPLER_FREQUENCY_ATOL).all()


# --- sampling ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VQ_MODELS)
def test_untrained_model_samples_in_the_unit_interval_repeatably(name: str) -> None:
    model = _build(name)
    torch.manual_seed(3)
    first = model.sample(3)
    torch.manual_seed(3)
    second = model.sample(3)
    assert first.shape == (3, 1, 64, 64)
    assert torch.isfinite(first).all() and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, second)
    with pytest.raises(ValueError, match="n must be"):
        model.sample(0)


# --- the shared base: what the models computed before it -----------------------------------------------------

#: The loss terms, in order, of ``_build(name, (1, 32, 32), ema=ema, prior_batch=2)`` in eval mode on
#: ``_binary(3, (1, 32, 32))``, computed by the models of commit ff472d7, before what ``vq_vae`` and
#: ``vq_vae2`` repeated moved to ``fastvae/models/_vq.py`` (issue 14, point 4). Equal terms mean the same
#: weights drawn from the same seed in the same order, and the same loss formula.
TERMS_BEFORE_SHARED_BASE = {
    ("vq_vae", True): {
        "loss": 942.87744140625, "recon": 729.76806640625, "commitment": 4.160562992095947, "codebook": 0.0,
        "prior": 212.06918334960938, "perplexity": 1.0, "usage": 0.03125,
    },
    ("vq_vae", False): {
        "loss": 947.0379638671875, "recon": 729.76806640625, "commitment": 4.160562992095947,
        "codebook": 4.160562992095947, "prior": 212.06918334960938, "perplexity": 1.0, "usage": 0.03125,
    },
    ("vq_vae2", True): {
        "loss": 1047.10205078125, "recon": 749.1875610351562, "commitment": 6.115993022918701, "codebook": 0.0,
        "prior": 296.38543701171875, "commitment_top": 1.445970058441162, "commitment_bottom": 4.670022964477539,
        "codebook_top": 0.0, "codebook_bottom": 0.0, "prior_top": 56.55430603027344,
        "prior_bottom": 239.83114624023438, "perplexity_top": 1.0, "perplexity_bottom": 1.0, "usage_top": 0.03125,
        "usage_bottom": 0.03125,
    },
    ("vq_vae2", False): {
        "loss": 1053.218017578125, "recon": 749.1875610351562, "commitment": 6.115993022918701,
        "codebook": 6.115993022918701, "prior": 296.38543701171875, "commitment_top": 1.445970058441162,
        "commitment_bottom": 4.670022964477539, "codebook_top": 1.445970058441162,
        "codebook_bottom": 4.670022964477539, "prior_top": 56.55430603027344, "prior_bottom": 239.83114624023438,
        "perplexity_top": 1.0, "perplexity_bottom": 1.0, "usage_top": 0.03125, "usage_bottom": 0.03125,
    },
}
#: The same models' checkpoint layout then: the top-level modules in ``state_dict`` order and the
#: number of entries with ``ema=True`` and ``ema=False`` (the EMA statistics are buffers).
STATE_BEFORE_SHARED_BASE = {
    "vq_vae": (["encoder", "quantizer", "decoder", "prior"], {True: 47, False: 46}),
    "vq_vae2": (
        ["encoder_bottom", "encoder_top", "quantizer_top", "decoder_top", "pre_quantize_bottom", "quantizer_bottom",
         "upsample_top", "decoder", "prior_top", "prior_bottom"],
        {True: 101, False: 99},
    ),
}


@pytest.mark.parametrize("name, ema", list(TERMS_BEFORE_SHARED_BASE))
def test_loss_weights_and_checkpoint_layout_are_those_before_the_shared_base(name: str, ema: bool) -> None:
    model = _build(name, (1, 32, 32), ema=ema, prior_batch=2).eval()
    x = _binary(3, (1, 32, 32))
    terms = model.loss(x, model(x))
    expected = TERMS_BEFORE_SHARED_BASE[name, ema]
    assert list(terms) == list(expected)
    for key, value in expected.items():
        assert_close(terms[key], torch.tensor(value, dtype=torch.float64), torch.float32)
    modules, entries = STATE_BEFORE_SHARED_BASE[name]
    state = model.state_dict()
    assert list(dict.fromkeys(key.split(".")[0] for key in state)) == modules
    assert len(state) == entries[ema]


# --- vq_vae2 -------------------------------------------------------------------------------------------------


def test_vq_vae2_uses_both_codebooks_and_trains_both_encoders() -> None:
    model = _build("vq_vae2")
    x = _binary(4)
    model(x)  # the first step restarts the unused codes at encoder outputs
    out = model(x)
    terms = model.loss(x, out)
    assert terms["perplexity_top"] > 1 and terms["perplexity_bottom"] > 1
    assert terms["usage_top"] > 1 / SMALL["codebook_size"] and terms["usage_bottom"] > 1 / SMALL["codebook_size"]
    for encoder in (model.encoder_top, model.encoder_bottom):
        grads = torch.autograd.grad(terms["loss"], list(encoder.parameters()), retain_graph=True)
        assert sum(g.abs().sum() for g in grads) > 0


# --- training on dSprites ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VQ_MODELS)
def test_training_on_dsprites_lowers_the_loss(name: str) -> None:
    data = dsprites(1024, seed=0)
    model = _build(name)
    losses, recons = train_steps(model, data, steps=40, lr=2e-3)
    assert all(math.isfinite(value) for value in losses)
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5])
    assert sum(recons[-5:]) < 0.3 * sum(recons[:5])


# --- the training benchmark ----------------------------------------------------------------------------------

TINY = training.TrainingConfig(
    codebook_size=64, start_batch=4, max_batch=8, device="cpu", warmup=1, repeats=1,
    hparams={"hidden": 32, "res_blocks": 1, "prior_channels": 8, "prior_layers": 1},
)


@pytest.fixture(scope="module")
def tiny_report() -> dict:
    return training.benchmark(TINY)


def test_training_benchmark_rows_for_every_variant(tiny_report: dict, tmp_path: Path) -> None:
    rows = tiny_report["rows"]
    assert {row["variant"] for row in rows} == set(training.VARIANTS)
    measured = training.VARIANTS
    if importlib.util.find_spec("vector_quantize_pytorch") is None:
        # The peer comparison is optional (fastvae[peer]): its variant is one row saying it was skipped.
        (peer,) = [row for row in rows if row["variant"] == training.PEER]
        assert peer["status"].startswith("skipped") and training.PEER in peer["status"]
        measured = tuple(v for v in training.VARIANTS if v != training.PEER)
    for variant in measured:
        mine = [row for row in rows if row["variant"] == variant]
        assert [row["batch_size"] for row in mine] == [4, 8]
        for row in mine:
            assert row["status"] == "ok"
            assert row["images_per_s"] > 0 and row["median_ms"] > 0 and row["peak_memory_mb"] > 0
            assert row["code_vectors"] == row["batch_size"] * 256
            assert row["images_per_s"] == pytest.approx(row["batch_size"] / row["median_ms"] * 1e3)
    assert {v: b for v, b in tiny_report["largest_batch"].items() if v in measured} == {v: 8 for v in measured}
    assert tiny_report["settings"]["codebook_size"] == 64 and tiny_report["device"]["kind"] == "cpu"
    paths = training.write_report(tiny_report, tmp_path)
    assert json.loads(paths[0].read_text()) == json.loads(json.dumps(tiny_report))
    table = paths[1].read_text()
    assert "| variant | quantizer | batch |" in table and table.count("| ok |") == 2 * len(measured)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the notice is for machines without a GPU")
def test_training_benchmark_says_there_is_no_gpu(tiny_report: dict) -> None:
    assert tiny_report["notes"][0].startswith("no CUDA device: running the training benchmark at CPU sizes")


def test_training_benchmark_records_oom_and_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    step_init = training._TrainingStep.__init__

    def failing(self, model, batch, device):
        if isinstance(model.quantizer, training.EagerVectorQuantizer) and batch >= 8:
            raise torch.OutOfMemoryError("simulated")
        step_init(self, model, batch, device)

    monkeypatch.setattr(training._TrainingStep, "__init__", failing)
    config = training.TrainingConfig(**{**vars(TINY), "max_batch": 16, "variants": ("eager", "fastvae")})
    report = training.benchmark(config)
    eager = [(row["batch_size"], row["status"]) for row in report["rows"] if row["variant"] == "eager"]
    assert eager == [(4, "ok"), (8, "OOM")]
    assert [row["batch_size"] for row in report["rows"] if row["variant"] == "fastvae"] == [4, 8, 16]
    assert report["largest_batch"] == {"eager": 4, "fastvae": 16}


def test_eager_quantizer_computes_what_fastvae_computes() -> None:
    torch.manual_seed(0)
    fused = VectorQuantizer(16, 4, ema=True, decay=0.9, channel_dim=1)
    eager = training.EagerVectorQuantizer.like(fused)
    z = torch.randn(2, 4, 3, 5) * 0.05
    a, b = fused(z), eager(z)
    assert torch.equal(a.indices, b.indices)
    for field in ("quantized", "loss", "commitment_loss", "codebook_loss", "perplexity"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), **FLOAT32_SMALL_VALUES)
    torch.testing.assert_close(fused.codebook, eager.codebook, **FLOAT32_TINY_VALUES)
    torch.testing.assert_close(fused.ema_count, eager.ema_count)


def test_training_flag_parses_and_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    training.add_arguments(parser)
    args = parser.parse_args(["--training", "--training-codebook-size", "32", "--training-start-batch", "2",
                              "--training-max-batch", "2", "--training-variants", "fastvae"])
    # The options `fastvae bench` already has and shares.
    vars(args).update(out=str(tmp_path), device="cpu", warmup=1, repeats=1, quick=False, cpu_memory_gb=None)
    assert args.training
    assert training.run(args) == 0
    report = json.loads((tmp_path / "training.json").read_text())
    assert [(row["variant"], row["batch_size"], row["status"]) for row in report["rows"]] == [("fastvae", 2, "ok")]
    assert "wrote" in capsys.readouterr().out
    vars(args).update(training_start_batch=8)
    assert training.run(args) == 2
    assert "--training-max-batch" in capsys.readouterr().err


def test_fastvae_bench_training_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same through ``fastvae bench --training`` (fastvae/cli.py wires the flag to training.run)."""
    argv = ["bench", "--training", "--training-codebook-size", "32", "--training-start-batch", "2",
            "--training-max-batch", "4", "--training-variants", "fastvae", "eager", "--quick", "--out", str(tmp_path)]
    try:
        status = cli.main(argv)
    except SystemExit as exit_:
        if "--training" in capsys.readouterr().err:
            pytest.skip("fastvae/cli.py does not pass --training to fastvae.bench.training yet")
        raise AssertionError(f"fastvae bench --training exited with {exit_.code}") from exit_
    assert status == 0
    assert not (tmp_path / "bench.json").exists()
    report = json.loads((tmp_path / "training.json").read_text())
    assert [(row["variant"], row["batch_size"]) for row in report["rows"]] == [
        ("fastvae", 2), ("fastvae", 4), ("eager", 2), ("eager", 4)
    ]
    assert all(row["images_per_s"] > 0 for row in report["rows"])
