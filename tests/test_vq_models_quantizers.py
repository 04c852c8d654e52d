"""``vq_vae`` and ``vq_vae2`` with every quantiser: ``quantizer="vq" | "rvq" | "fsq" | "lfq"``.

For each quantiser and both models: the options and their refusals, shapes, the loss terms on the
honest scale against hand computations in float64 (the LFQ entropy by brute force over all ``2^D``
codes, the residual stages one by one), decoding from indices against the forward's decoding, the
ELBO and the sampler, mixed precision, the config round trip, the prior over residual stages (causal
masks, normalisation, its sampler, skipped stages), the command line end to end, and training on
dSprites until the model decodes its own codes far better than any code-blind decoder could. The
models are small (``SMALL``) so that the file runs in about a minute and a half on two CPU cores.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dsprites_training import train_steps
from PIL import Image
from tolerances import (
    EXACT,
    FLOAT32,
    FLOAT64_REORDERED,
    SAMPLER_FREQUENCY_ATOL,
    SAMPLER_FREQUENCY_SIGMAS,
    assert_close,
)

from fastvae import cli, models
from fastvae.data import dsprites
from fastvae.models._prior import GatedPixelCNN
from fastvae.models._vq import QUANTIZER_OPTIONS, QUANTIZERS
from fastvae.train.cli_args import parse_hparams, restore_types

#: Small networks, 32 x 32 inputs: code grids of 8 x 8 (vq_vae, vq_vae2's bottom) and 4 x 4 (its top).
SMALL = {"hidden": 16, "res_blocks": 1, "prior_channels": 8, "prior_layers": 2}
SHAPE = (1, 32, 32)
LATENT = 6
#: Each quantiser's small settings, and the number of codes ``K`` they give.
SETTINGS = {
    "vq": ({"codebook_size": 16}, 16),
    "rvq": ({"codebook_size": 16, "num_quantizers": 3}, 16),
    "fsq": ({"fsq_levels": (4, 3, 2)}, 24),  # projected from D = 6 to 3 channels
    "lfq": ({}, 2**LATENT),
}
VQ_MODELS = ("vq_vae", "vq_vae2")
#: Each model's levels: ``(suffix, code grid of a 32 x 32 input)``.
LEVELS = {"vq_vae": (("", (8, 8)),), "vq_vae2": (("_top", (4, 4)), ("_bottom", (8, 8)))}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Thousands of tiny convolutions, which intra-op threads only slow down on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(name: str, quantizer: str, shape: tuple[int, ...] = SHAPE, **hparams: object) -> models.VAEModel:
    torch.manual_seed(0)
    options, _ = SETTINGS[quantizer]
    return models.create(name, input_shape=shape, latent_dim=LATENT, quantizer=quantizer,
                         **{**SMALL, **options, **hparams})


def _binary(batch: int, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, *shape, generator=generator) < 0.3).float()


def _decode(model: models.VAEModel, out: models.ModelOutput) -> torch.Tensor:
    if model.name == "vq_vae":
        return model.decode_codes(out.indices)
    return model.decode_codes(out.indices_top, out.indices_bottom)


def _hand_perplexity(indices: torch.Tensor) -> float:
    """``exp`` of the entropy of the codes' usage, in float64."""
    counts = torch.unique(indices.flatten(), return_counts=True)[1].double()
    p = counts / counts.sum()
    return math.exp(-(p * p.log()).sum().item())


# --- options ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VQ_MODELS)
def test_the_quantizer_options_and_their_defaults(name: str) -> None:
    hparams = models.hyperparameters(name)
    assert set(QUANTIZER_OPTIONS) <= set(hparams) and QUANTIZERS == ("vq", "rvq", "fsq", "lfq")
    assert {key: hparams[key] for key in (
        "quantizer", "num_quantizers", "shared_codebook", "quantize_dropout", "kmeans_init", "kmeans_iters",
        "codebook_dim", "gradient", "fsq_levels", "lfq_commitment_weight", "lfq_entropy_weight",
        "lfq_diversity_gamma", "lfq_inv_temperature",
    )} == {
        "quantizer": "vq", "num_quantizers": 4, "shared_codebook": False, "quantize_dropout": False,
        "kmeans_init": False, "kmeans_iters": 10, "codebook_dim": None, "gradient": "ste",
        "fsq_levels": (8, 5, 5, 5), "lfq_commitment_weight": 0.05, "lfq_entropy_weight": 0.1,
        "lfq_diversity_gamma": 1.0, "lfq_inv_temperature": 100.0,
    }
    # The defaults' codebook sizes: K = 512, 512 per stage, 8 * 5 * 5 * 5 and 2^latent_dim.
    sizes = {quantizer: models.create(name, latent_dim=10, quantizer=quantizer, **SMALL).codebook_size
             for quantizer in QUANTIZERS}
    assert sizes == {"vq": 512, "rvq": 512, "fsq": 1000, "lfq": 1024}


def test_a_quantizer_that_does_not_exist_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="^quantizer must be one of 'vq', 'rvq', 'fsq', 'lfq', got 'pq'$"):
        models.create("vq_vae", latent_dim=LATENT, quantizer="pq")


@pytest.mark.parametrize("quantizer, option, value", [
    ("vq", "num_quantizers", 2), ("vq", "fsq_levels", (4, 4)), ("vq", "lfq_entropy_weight", 0.2),
    ("rvq", "codebook_dim", 4), ("rvq", "gradient", "rotation"), ("rvq", "precision", "tf32"),
    ("rvq", "kmeans_iters", 3), ("fsq", "codebook_size", 64), ("fsq", "beta", 0.5), ("fsq", "kmeans_init", True),
    ("lfq", "ema", False), ("lfq", "beta", 0.5), ("lfq", "shared_codebook", True), ("lfq", "fsq_levels", [8, 8]),
])
@pytest.mark.parametrize("name", VQ_MODELS)
def test_an_option_the_quantizer_does_not_take_is_refused_by_name(
    name: str, quantizer: str, option: str, value: object
) -> None:
    with pytest.raises(ValueError, match=f"^{option} applies to quantizer=.* only, got {option}=.* with "
                                         f"quantizer='{quantizer}'; leave it at its default"):
        models.create(name, latent_dim=LATENT, quantizer=quantizer, **{option: value})


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_every_option_at_its_default_is_accepted_by_every_quantizer(quantizer: str) -> None:
    """As a run directory's config passes them all back (``fsq_levels`` as the list JSON makes of it)."""
    hparams = {**models.hyperparameters("vq_vae"), **SMALL, "quantizer": quantizer, "fsq_levels": [8, 5, 5, 5]}
    model = models.create("vq_vae", latent_dim=LATENT, **hparams)
    assert model.quantizer_kind == quantizer


@pytest.mark.parametrize("quantizer, hparams, latent_dim, name", [
    ("fsq", {"fsq_levels": (1, 4)}, LATENT, "fsq_levels"),
    ("fsq", {"fsq_levels": "8,5"}, LATENT, "fsq_levels"),
    ("lfq", {}, 21, "latent_dim"),
    ("lfq", {"lfq_inv_temperature": 0.0}, LATENT, "lfq_inv_temperature"),
    ("lfq", {"lfq_entropy_weight": -1.0}, LATENT, "lfq_entropy_weight"),
    ("lfq", {"lfq_commitment_weight": float("nan")}, LATENT, "lfq_commitment_weight"),
    ("rvq", {"num_quantizers": 0}, LATENT, "num_quantizers"),
    ("rvq", {"quantize_dropout": "yes"}, LATENT, "quantize_dropout"),
    ("vq", {"gradient": "sign"}, LATENT, "gradient"),
    ("vq", {"codebook_dim": 0}, LATENT, "codebook_dim"),
])
def test_bad_option_values_are_refused_by_name(quantizer: str, hparams: dict, latent_dim: int, name: str) -> None:
    with pytest.raises((ValueError, TypeError), match=name):
        models.create("vq_vae", latent_dim=latent_dim, quantizer=quantizer, **hparams)


# --- forward, loss, backward -----------------------------------------------------------------------------


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("name", VQ_MODELS)
def test_forward_loss_and_backward_of_every_quantizer(name: str, quantizer: str) -> None:
    model = _build(name, quantizer)
    _, codes = SETTINGS[quantizer]
    assert model.codebook_size == codes
    x = _binary(3)
    out = model(x)
    assert out.recon.shape == out.logits.shape == x.shape
    stages = (SETTINGS["rvq"][0]["num_quantizers"],) if quantizer == "rvq" else ()
    for suffix, grid in LEVELS[name]:
        assert out[f"z{suffix}"].shape == (3, LATENT, *grid) and out[f"z{suffix}"].dtype == torch.float32
        indices = out[f"indices{suffix}"]
        assert indices.shape == (3, *grid, *stages) and indices.dtype == torch.int64
        assert indices.min() >= 0 and indices.max() < codes

    terms = model.loss(x, out)
    suffixes = [suffix for suffix, _ in LEVELS[name]]
    names = ["commitment", "codebook", "prior", *(["entropy"] if quantizer == "lfq" else [])]
    per_level = [f"{term}{suffix}" for term in names for suffix in suffixes if suffix]
    reported = [f"{term}{suffix}" for term in ("perplexity", "usage") for suffix in suffixes]
    assert list(terms) == ["loss", "recon", *names, *per_level, *reported]
    for key, value in terms.items():
        assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value), key
    terms["loss"].backward()
    encoders = [model.encoder] if name == "vq_vae" else [model.encoder_top, model.encoder_bottom]
    for encoder in encoders:
        assert sum(p.grad.abs().sum() for p in encoder.parameters()) > 0


def _hand_rvq_terms(model: models.VAEModel, out: models.ModelOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual VQ's commitment and codebook terms, stage by stage in float64: ``(B,)``-means of sums."""
    residual = out.z_e.double().permute(0, 2, 3, 1)
    codebooks = model.quantizer.codebooks.double()
    total = torch.zeros((), dtype=torch.float64)
    for stage in range(codebooks.shape[0]):
        code = codebooks[stage][out.indices[..., stage]]
        total = total + (residual - code).square().sum(dim=(1, 2, 3)).mean()
        residual = residual - code
    return total, total


def _hand_lfq_entropy(z_e: torch.Tensor, inv_temperature: float, gamma: float) -> torch.Tensor:
    """``h w (mean_n H(p(. | z_n)) - gamma H(mean_n p(. | z_n)))`` by brute force over all ``2^D`` codes."""
    batch, dim, height, width = z_e.shape
    rows = z_e.double().permute(0, 2, 3, 1).reshape(-1, dim)
    bits = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=dim)), dtype=torch.float64)  # first bit first
    log_p = F.log_softmax(2 * inv_temperature * rows @ bits.T, dim=1)
    per_sample = -(log_p.exp() * log_p).sum(1).mean()
    mean = log_p.exp().mean(0)
    return height * width * (per_sample - gamma * -torch.special.xlogy(mean, mean).sum())


@pytest.mark.parametrize("quantizer, hparams", [
    ("rvq", {"ema": False}),
    ("fsq", {}),
    ("lfq", {"lfq_inv_temperature": 0.5, "lfq_diversity_gamma": 0.7, "lfq_entropy_weight": 0.3,
             "lfq_commitment_weight": 0.2}),
    ("vq", {"codebook_dim": 3, "ema": False}),
])
def test_loss_terms_of_each_quantizer_on_the_honest_scale(quantizer: str, hparams: dict) -> None:
    model = _build("vq_vae", quantizer, **hparams).eval()
    x = _binary(4)
    out = model(x)
    terms = model.loss(x, out)
    log_p = F.log_softmax(model.prior(out.indices).double(), dim=1)
    prior = -log_p.gather(1, out.indices.unsqueeze(1)).flatten(1).sum(1).mean()
    assert_close(terms["prior"], prior, torch.float32, scale=10)  # a sum of 64 to 192 rounded log-probabilities
    if quantizer == "rvq":
        commitment, codebook = _hand_rvq_terms(model, out)
        assert_close(terms["commitment"], commitment, torch.float32)
        assert_close(terms["codebook"], codebook, torch.float32)
        stages = out.indices.flatten(0, 2).T
        assert terms["perplexity"].item() == pytest.approx(sum(map(_hand_perplexity, stages)) / 3, rel=FLOAT32.rtol)
        usage = sum(torch.unique(stage).numel() for stage in stages) / (3 * 16)
        assert terms["usage"].item() == pytest.approx(usage)
    elif quantizer == "vq":  # factorised: the squared distances summed over codebook_dim = 3 channels
        projected = model.quantizer.project_in(out.z_e.permute(0, 2, 3, 1)).double()
        squared = (projected - model.quantizer.codebook.double()[out.indices]).square().sum(dim=(1, 2, 3)).mean()
        assert_close(terms["commitment"], squared, torch.float32)
        assert_close(terms["codebook"], squared, torch.float32)
    else:
        assert terms["codebook"].item() == 0.0
        assert terms["perplexity"].item() == pytest.approx(_hand_perplexity(out.indices), rel=FLOAT32.rtol)
        assert terms["usage"].item() == pytest.approx(torch.unique(out.indices).numel() / model.codebook_size)
    if quantizer == "fsq":
        assert terms["commitment"].item() == 0.0
        torch.testing.assert_close(terms["loss"], terms["recon"] + terms["prior"], **EXACT)
    elif quantizer == "lfq":
        signs = torch.where(out.z_e > 0, 1.0, -1.0).double()
        commitment = (out.z_e.double() - signs).square().sum(dim=(1, 2, 3)).mean()
        assert_close(terms["commitment"], commitment, torch.float32)
        entropy = _hand_lfq_entropy(out.z_e, 0.5, 0.7)
        assert abs(entropy) > 1  # the temperature leaves the code probabilities far from one-hot
        assert_close(terms["entropy"], entropy, torch.float32, scale=10)  # sums over 64 positions' entropies
        expected = terms["recon"] + 0.2 * terms["commitment"] + 0.3 * terms["entropy"] + terms["prior"]
        torch.testing.assert_close(terms["loss"], expected)
    else:
        expected = terms["recon"] + terms["codebook"] + 0.25 * terms["commitment"] + terms["prior"]
        torch.testing.assert_close(terms["loss"], expected)


# --- decoding, the ELBO, sampling ------------------------------------------------------------------------


@pytest.mark.parametrize("quantizer, hparams", [
    *((quantizer, {}) for quantizer in QUANTIZERS),
    ("vq", {"codebook_dim": 3, "gradient": "rotation"}),
    ("rvq", {"shared_codebook": True}),
    ("fsq", {"fsq_levels": (4, 3, 2, 2, 2, 2)}),  # len(levels) = D: no projections
])
@pytest.mark.parametrize("name", VQ_MODELS)
def test_decoding_the_indices_gives_the_forward_decoding(name: str, quantizer: str, hparams: dict) -> None:
    """Every quantiser's input gets unit noise, so that the codes differ (an untrained encoder's outputs
    are nearly alike); decoding the indices must then give the forward's logits."""
    model = _build(name, quantizer, **hparams).eval()
    for module in model.quantizers():
        module.register_forward_pre_hook(lambda module, args: (args[0] + torch.randn_like(args[0]),))
    torch.manual_seed(1)
    out = model(_binary(3))
    for suffix, _ in LEVELS[name]:
        assert torch.unique(out[f"indices{suffix}"]).numel() >= 4
    assert_close(_decode(model, out), out.logits, torch.float32)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("name", VQ_MODELS)
def test_elbo_and_samples_of_every_quantizer(name: str, quantizer: str) -> None:
    model = _build(name, quantizer, prior_batch=2)
    x = _binary(3)
    elbo = model.elbo(x)  # in training mode: the quantisers run frozen, every stage of rvq
    model.eval()
    out = model(x)
    expected = -(model.reconstruction_nll(x, out.logits) + model.prior_nll(out))
    assert elbo.shape == (3,) and (elbo < 0).all()
    assert_close(elbo, expected, torch.float32, scale=10)  # a sum of 4,096 pixel and 64 to 960 code terms
    torch.manual_seed(3)
    first = model.sample(2)
    torch.manual_seed(3)
    assert torch.equal(first, model.sample(2))
    assert first.shape == (2, *SHAPE) and torch.isfinite(first).all() and first.min() >= 0 and first.max() <= 1
    prior = model.prior if name == "vq_vae" else model.prior_top
    grid = LEVELS[name][0][1]
    codes = prior.sample(4, grid)
    assert codes.shape == (4, *grid, *((3,) if quantizer == "rvq" else ()))
    assert codes.min() >= 0 and codes.max() < model.codebook_size


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("name", VQ_MODELS)
def test_quantizers_keep_float32_under_autocast(name: str, quantizer: str) -> None:
    model = _build(name, quantizer)
    x = _binary(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        terms = model.loss(x, out)
    for suffix, _ in LEVELS[name]:
        assert out[f"z{suffix}"].dtype == torch.float32
    assert all(torch.isfinite(value) for value in terms.values())
    terms["loss"].backward()


# --- residual VQ: quantizer dropout, and the prior over stages -------------------------------------------


def test_quantize_dropout_skips_the_dropped_stages_everywhere() -> None:
    model = _build("vq_vae", "rvq", quantize_dropout=True, prior_batch=2, ema=False)
    x = _binary(3)
    for seed in range(20):
        torch.manual_seed(seed)
        out = model(x)
        if (out.indices < 0).any():
            break
    kept = out.indices >= 0
    ran = kept.flatten(0, 2).all(0)  # stages dropped for the whole batch, the first stage never
    assert ran[0] and not ran.all() and torch.equal(kept, ran.expand_as(kept))
    terms = model.loss(x, out)
    assert all(torch.isfinite(value) for value in terms.values())
    log_p = F.log_softmax(model.prior(out.indices[:2]).double(), dim=1)
    picked = log_p.gather(1, out.indices[:2].clamp(min=0).unsqueeze(1)).squeeze(1)
    prior = -(picked * kept[:2]).flatten(1).sum(1).mean()
    assert_close(terms["prior"], prior, torch.float32, scale=10)
    used = [torch.unique(out.indices[..., stage]).numel() / 16 for stage in range(3) if ran[stage]]
    assert terms["usage"].item() == pytest.approx(sum(used) / len(used))
    model.eval()
    assert (model(x).indices >= 0).all()


@pytest.mark.parametrize("conditional", [False, True])
def test_the_prior_over_stages_is_causal_in_position_then_stage_order(conditional: bool) -> None:
    torch.manual_seed(0)
    height, width, stages, codes_k = 2, 3, 2, 3
    prior = GatedPixelCNN(codes_k, channels=8, layers=3, condition_codes=4 if conditional else 0, stages=stages).double()
    condition = torch.randint(4, (1, 1, 2, stages)) if conditional else None
    codes = torch.randint(codes_k, (1, height, width, stages))
    base = prior(codes, condition)
    assert base.shape == (1, codes_k, height, width, stages)
    raster = width * stages
    for p in range(height * raster):
        i, j, q = p // raster, p % raster // stages, p % stages
        changed = codes.clone()
        changed[0, i, j, q] = (codes[0, i, j, q] + 1) % codes_k
        delta = (prior(changed, condition) - base).abs().amax(dim=1)[0].flatten()  # raster order (i, j, q)
        assert delta[: p + 1].max() < FLOAT64_REORDERED.atol, f"code {(i, j, q)} leaks into itself or an earlier one"
        if p + 1 < height * raster and (p + 1) // raster == i:
            assert delta[p + 1] > 1e-6, f"code {(i, j, q)} does not reach the next one"
        if i + 1 < height:
            assert delta[p + raster] > 1e-6, f"code {(i, j, q)} does not reach the one below (blind spot)"


def test_the_prior_over_stages_is_normalised_and_its_sampler_draws_from_it() -> None:
    """A 1 x 2 grid of 2 stages of 3 codes: 81 grids, whose probabilities sum to 1 and which 3000
    samples match (each grid within 5 binomial sigmas), after training on a few grids."""
    torch.manual_seed(0)
    prior = GatedPixelCNN(3, channels=8, layers=2, stages=2)
    data = torch.tensor([[[0, 1], [2, 2]], [[1, 1], [0, 2]], [[2, 0], [2, 1]]]).unsqueeze(1)  # (3, 1, 2, 2)
    optimizer = torch.optim.Adam(prior.parameters(), lr=2e-2)
    for _ in range(60):
        optimizer.zero_grad()
        prior.nll(data).mean().backward()
        optimizer.step()
    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 1, 2, 2)
    with torch.no_grad():
        probs = torch.exp(-prior.nll(grids).double())
    assert probs.sum().item() == pytest.approx(1.0, abs=FLOAT32.atol)
    assert probs[[0 * 27 + 1 * 9 + 2 * 3 + 2, 27 + 9 + 2, 2 * 27 + 2 * 3 + 1]].sum() > 0.5  # the trained grids
    n = 3000
    samples = prior.sample(n, (1, 2))
    assert samples.shape == (n, 1, 2, 2)
    index = (samples.view(n, 4) * torch.tensor([27, 9, 3, 1])).sum(1)
    freq = torch.bincount(index, minlength=81).double() / n
    sigma = (probs * (1 - probs) / n).sqrt()
    assert ((freq - probs).abs() <= SAMPLER_FREQUENCY_SIGMAS * sigma + SAMPLER_FREQUENCY_ATOL).all()


def test_the_prior_over_stages_checks_its_grids_and_skips_dropped_codes() -> None:
    torch.manual_seed(0)
    prior = GatedPixelCNN(4, channels=8, layers=2, stages=3)
    with pytest.raises(ValueError, match=r"codes must be an int64 tensor \(B, h, w, 3\)"):
        prior(torch.zeros(1, 2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"codes must be an int64 tensor \(B, h, w, 3\)"):
        prior(torch.zeros(1, 2, 2, 2, dtype=torch.int64))
    codes = torch.randint(4, (2, 2, 2, 3))
    codes[..., 2] = -1  # stage 2 dropped: not scored, and seen by later codes as nothing
    log_p = F.log_softmax(prior(codes), dim=1)
    kept = log_p.gather(1, codes.clamp(min=0).unsqueeze(1)).squeeze(1)[..., :2]
    torch.testing.assert_close(prior.nll(codes), -kept.flatten(1).sum(1))
    embedded = prior.embedding.rows(torch.tensor([-1, 3]), torch.tensor([2, 2]))
    assert torch.equal(embedded[0], torch.zeros(8)) and torch.equal(embedded[1], prior.embedding.weight[2 * 4 + 3])
    # Every layer is told each column's stage: column c of the h x (w Q) raster holds stage c % Q.
    stage_map = prior.condition_map(None, (2, 5))
    assert stage_map.shape == (1, 8, 2, 15)
    expected = prior.stage_embedding.weight[torch.arange(15) % 3].T
    assert torch.equal(stage_map[0, :, 0], expected) and torch.equal(stage_map[0, :, 1], expected)


# --- checkpoints and the command line --------------------------------------------------------------------


@pytest.mark.parametrize("name, quantizer, hparams", [
    ("vq_vae", "vq", {"kmeans_init": True, "kmeans_iters": 2, "codebook_dim": 3, "gradient": "rotation"}),
    ("vq_vae2", "rvq", {"shared_codebook": True, "kmeans_init": True, "quantize_dropout": True}),
    ("vq_vae", "rvq", {"num_quantizers": 2}),
    ("vq_vae2", "fsq", {"fsq_levels": (5, 3)}),
    ("vq_vae", "lfq", {"lfq_inv_temperature": 10.0}),
])
def test_the_config_rebuilds_the_model_through_json(name: str, quantizer: str, hparams: dict) -> None:
    """As a run directory does: ``model.config`` to JSON and back, ``restore_types``, a new model, the
    trained state dict; both compute the same."""
    model = _build(name, quantizer, **hparams)
    x = _binary(4)
    model.loss(x, model(x))["loss"].backward()  # k-means, EMA and restarts change the state
    config = json.loads(json.dumps(model.config))
    again = models.create(name, input_shape=tuple(config["input_shape"]), latent_dim=config["latent_dim"],
                          **restore_types(name, config["hparams"]))
    again.load_state_dict(model.state_dict())
    model.eval()
    again.eval()
    first, second = model(x), again(x)
    for suffix, _ in LEVELS[name]:
        assert torch.equal(first[f"indices{suffix}"], second[f"indices{suffix}"])
    torch.testing.assert_close(first.logits, second.logits, **EXACT)


def test_the_quantizer_flags_parse_to_their_types() -> None:
    parsed = parse_hparams("vq_vae2", [
        "--quantizer", "rvq", "--num-quantizers", "3", "--quantize-dropout", "--shared-codebook=false",
        "--fsq-levels", "8,5,5", "--codebook-dim", "16", "--gradient", "rotation", "--kmeans-iters", "1e1",
        "--lfq-entropy-weight=0.2", "--lfq-inv-temperature", "50",
    ])
    assert parsed == {
        "quantizer": "rvq", "num_quantizers": 3, "quantize_dropout": True, "shared_codebook": False,
        "fsq_levels": (8, 5, 5), "codebook_dim": 16, "gradient": "rotation", "kmeans_iters": 10,
        "lfq_entropy_weight": 0.2, "lfq_inv_temperature": 50.0,
    }
    assert all(type(parsed[key]) is type(value) for key, value in {"num_quantizers": 1, "codebook_dim": 1,
                                                                   "lfq_inv_temperature": 1.0}.items())


TRAIN = ["train", "--device", "cpu", "--no-progress", "--batch-size", "4", "--steps", "2", "--hidden", "8",
         "--res-blocks", "1", "--prior-channels", "8", "--prior-layers", "1", "--downsamples", "3"]


@pytest.mark.parametrize("name, flags, codes", [
    ("vq_vae", ["--quantizer", "rvq", "--num-quantizers", "2", "--codebook-size", "8", "--quantize-dropout"], 8),
    ("vq_vae", ["--quantizer", "fsq", "--fsq-levels", "3,3,2"], 18),
    ("vq_vae2", ["--quantizer", "lfq", "--lfq-entropy-weight", "0.2"], 2**4),
])
def test_train_evaluate_and_sample_with_a_quantizer_on_the_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, flags: list[str], codes: int
) -> None:
    out = tmp_path / "run"
    assert cli.main([*TRAIN, "--model", name, "--latent-dim", "4", "--out", str(out), *flags]) == 0
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    hparams = config["model"]["hparams"]
    assert hparams["quantizer"] == flags[1] and config["step"] == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(value) for value in records[-1].values() if isinstance(value, float))

    argv = ["evaluate", str(out), "--batches", "1", "--k", "0", "--device", "cpu", "--disentanglement", "off"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 4 and report["elbo"] < 0 and report["elbo"] < -report["recon_bce"] + 1e-3

    assert cli.main(["sample", str(out), "--n", "4", "--out", str(tmp_path / "grid.png"), "--device", "cpu"]) == 0
    with Image.open(tmp_path / "grid.png") as image:
        assert image.size == (2 * 66 + 2, 2 * 66 + 2)
    model = models.create(name, latent_dim=4, **restore_types(name, hparams))
    assert model.codebook_size == codes


def test_a_misplaced_quantizer_flag_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = [*TRAIN, "--model", "vq_vae", "--quantizer", "fsq", "--codebook-size", "64", "--out", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--codebook-size applies to quantizer='vq' or 'rvq' only" in lines[0]
    assert "quantizer='fsq'" in lines[0]


# --- training on dSprites --------------------------------------------------------------------------------

#: Each quantiser's options and latent_dim in training: 32 codes (2 stages of them for rvq), fsq's
#: default levels (1,000 codes from 8 channels) and 5 LFQ bits (32 codes).
TRAINING = {"vq": ({"codebook_size": 32}, 8), "rvq": ({"codebook_size": 32, "num_quantizers": 2}, 8),
            "fsq": ({}, 8), "lfq": ({}, 5)}


@pytest.fixture(scope="module")
def dsprites_data() -> tuple[object, float]:
    """1,024 dSprites images, and the Bernoulli NLL (nats per image) of the best decoder that ignores its
    codes: every image predicted as the per-pixel mean of the set."""
    data = dsprites(1024, seed=0)
    images, _ = data.batch(torch.arange(len(data)))
    mean = images.mean(0, keepdim=True).clamp(1e-6, 1 - 1e-6).expand_as(images)
    blind = F.binary_cross_entropy(mean, images, reduction="none").flatten(1).sum(1).mean().item()
    return data, blind


#: Pairs whose short training can collapse to constant codes at both levels: over seeds 0-3 of this
#: test (tried on one CPU), vq_vae2 with fsq and with lfq each collapsed at seed 1 (the decoder then
#: predicts the mean image whatever the codes; the loss still falls). Another CPU's rounding is as
#: good as another seed here, so for these two only the falling loss is asserted. The other six
#: pairs used their codes at every seed (reconstruction at most 0.39 of the blind decoder's, own
#: codes at most 0.097 of another image's NLL).
MAY_COLLAPSE = {("vq_vae2", "fsq"), ("vq_vae2", "lfq")}


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("name", VQ_MODELS)
def test_training_on_dsprites_lowers_the_loss_and_uses_the_codes(
    name: str, quantizer: str, dsprites_data: tuple[object, float]
) -> None:
    """80 Adam steps of 16 images (64 x 64, code grids of 16 x 16 and 8 x 8). The loss falls by half;
    the reconstruction ends well below what a decoder blind to its codes can reach (the per-pixel
    mean image); and on held-out images the model decodes its own codes far better than another
    image's codes (these two not for the pairs of :data:`MAY_COLLAPSE`)."""
    data, blind = dsprites_data
    options, latent_dim = TRAINING[quantizer]
    torch.manual_seed(0)
    model = models.create(name, input_shape=(1, 64, 64), latent_dim=latent_dim, quantizer=quantizer,
                          **{**SMALL, "prior_channels": 16, "prior_batch": 4, **options})
    losses, recons = train_steps(model, data, steps=80, lr=3e-3)
    assert all(math.isfinite(value) for value in losses)
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    if (name, quantizer) in MAY_COLLAPSE:
        return
    assert sum(recons[-5:]) / 5 < 0.75 * blind, (sum(recons[-5:]) / 5, blind)
    model.eval()
    with torch.no_grad():
        x, _ = data.batch(torch.arange(8, 1024, 16))  # not the training draws' order; 64 images
        out = model(x)
        own = model.reconstruction_nll(x, out.logits).mean()
        shifted = models.ModelOutput(recon=out.recon, z=out.z, **{
            key: value.roll(1, 0) for key, value in out.items() if key.startswith("indices")
        })
        other = model.reconstruction_nll(x, _decode(model, shifted)).mean()
    assert own < 0.5 * other, (own.item(), other.item())
