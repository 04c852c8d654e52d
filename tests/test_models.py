"""The model interface and registry, checked for every registered model.

Each model's own mechanism and its training on dSprites are tested in tests/test_zoo_*.py; here every
name in ``fastvae.models.available()`` is built, run forward, scored, sampled, reconstructed and
rebuilt from its config, so a model that breaks the shared contract fails here whatever its family.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tolerances import FLOAT32, FLOAT32_LOG_LIKELIHOOD

from fastvae import models
from fastvae.models import ModelOutput, VAEModel

#: Hyper-parameters some models need beyond their defaults to be built in a test: dfc_vae ships no
#: pretrained feature network (none can be downloaded here), so the test uses its explicit fallback.
EXTRA_HPARAMS: dict[str, dict[str, object]] = {"dfc_vae": {"feature_net": "random-conv"}}

BATCH = 4


def _build(name: str, input_shape: tuple[int, ...] = (1, 64, 64), latent_dim: int = 6) -> VAEModel:
    torch.manual_seed(0)
    return models.create(name, input_shape=input_shape, latent_dim=latent_dim, **EXTRA_HPARAMS.get(name, {}))


def _labels(model: VAEModel, batch: int) -> torch.Tensor | None:
    if not model.conditional:
        return None
    return torch.arange(batch) % model.config["hparams"]["num_classes"]


#: Every model of the seed's table and the models named in its text, by registry name.
ZOO: frozenset[str] = frozenset({
    "vae", "vq_vae", "vq_vae2",
    "cvae", "cmma", "beta_vae", "disentangled_beta_vae", "info_vae", "dip_vae", "factor_vae", "beta_tc_vae",
    "hfvae", "el_vae", "dfc_vae", "logcosh_vae", "iwae", "miwae", "wae", "swae", "bn_vae", "aae", "vae_gan",
    "categorical_vae", "joint_vae", "hyperspherical_vae", "td_vae", "f_vae", "nvae",
})


def test_available_is_sorted_and_holds_the_whole_zoo() -> None:
    names = models.available()
    assert names == sorted(names)
    assert len(names) == 28  # the 28 models of the seed's table, each registered once
    assert set(names) == ZOO


def test_unknown_model_error_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'no_such_model'") as info:
        models.create("no_such_model")
    for name in models.available():
        assert name in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_hyperparameter_error_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="no hyper-parameter 'bogus'") as info:
        models.create("vae", bogus=1)
    for hparam in models.hyperparameters("vae"):
        assert hparam in str(info.value)


@pytest.mark.parametrize("input_shape", [(), (1, 64), (0, 64, 64), (1.0, 64, 64), "1x64x64"])
def test_bad_input_shape_is_rejected(input_shape: object) -> None:
    with pytest.raises(ValueError, match="input_shape"):
        models.create("vae", input_shape=input_shape)  # type: ignore[arg-type]


@pytest.mark.parametrize("latent_dim", [0, -3, 2.5, True])
def test_bad_latent_dim_is_rejected(latent_dim: object) -> None:
    with pytest.raises(ValueError, match="latent_dim"):
        models.create("vae", latent_dim=latent_dim)  # type: ignore[arg-type]


def test_vae_loss_is_the_negative_elbo_on_the_honest_scale() -> None:
    """recon = BCE summed over pixels, kl = closed-form KL summed over dims, both batch means."""
    model = _build("vae")
    x = (torch.rand(BATCH, 1, 64, 64) < 0.3).float()
    out = model(x)
    terms = model.loss(x, out)
    logits = out.logits.double()
    p = torch.sigmoid(logits)
    bce = -(x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum(dim=(1, 2, 3)).mean()
    mu, logvar = out.mu.double(), out.logvar.double()
    kl = (0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)).mean()
    torch.testing.assert_close(terms["recon"].double(), bce, **FLOAT32_LOG_LIKELIHOOD)
    torch.testing.assert_close(terms["kl"].double(), kl, **FLOAT32)
    torch.testing.assert_close(terms["loss"], terms["recon"] + terms["kl"])


def test_gaussian_observation_model_includes_its_normalising_constant() -> None:
    model = models.create("vae", input_shape=(5,), latent_dim=2, likelihood="gaussian", obs_std=0.5)
    x = torch.randn(3, 5)
    out = model(x)
    nll = model.reconstruction_nll(x, out.logits)
    var = 0.25
    expected = (0.5 * (x - out.logits) ** 2 / var + 0.5 * math.log(2 * math.pi * var)).sum(-1)
    torch.testing.assert_close(nll, expected.detach(), **FLOAT32)


@pytest.mark.parametrize("shape", [(1, 64, 64), (1, 28, 28), (3, 29, 31), (1, 5, 5)])
def test_shared_conv_networks_round_trip_any_image_size(shape: tuple[int, int, int]) -> None:
    model = models.create("vae", input_shape=shape, latent_dim=3)
    assert model.reconstruct(torch.rand(2, *shape)).shape == (2, *shape)


@pytest.mark.parametrize("name", models.available())
def test_model_follows_the_interface(name: str) -> None:
    model = _build(name)
    x = (torch.rand(BATCH, 1, 64, 64) < 0.3).float()
    y = _labels(model, BATCH)
    out = model(x, y)
    assert isinstance(out, ModelOutput)
    assert out.recon.shape == x.shape
    assert isinstance(out.z, torch.Tensor) and out.z.shape[0] == BATCH

    terms = model.loss(x, out, y, step=0)
    assert "loss" in terms
    for key, value in terms.items():
        assert value.dim() == 0, f"{name}: loss term {key!r} is not a scalar"
        assert torch.isfinite(value), f"{name}: loss term {key!r} is not finite"
    if model.has_discriminator:
        assert "disc_loss" in terms
        disc = {id(p) for p in model.discriminator_parameters()}
        assert disc and not disc & {id(p) for p in model.generator_parameters()}

    generator = [p for p in model.generator_parameters() if p.requires_grad]
    grads = torch.autograd.grad(terms["loss"], generator, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{name}: loss trains nothing"

    model.eval()
    samples = model.sample(3, None if y is None else y[:3])
    assert samples.shape == (3, 1, 64, 64) and torch.isfinite(samples).all()
    recon = model.reconstruct(x, y)
    assert recon.shape == x.shape and torch.isfinite(recon).all()
    if hasattr(model, "log_likelihood"):
        ll = model.log_likelihood(x, 4, y) if model.conditional else model.log_likelihood(x, 4)
        assert ll.shape == (BATCH,) and torch.isfinite(ll).all()


@pytest.mark.parametrize("name", models.available())
def test_config_rebuilds_the_same_model(name: str) -> None:
    model = _build(name)
    config = model.config
    assert config["name"] == name and config["input_shape"] == [1, 64, 64] and config["latent_dim"] == 6
    assert set(config["hparams"]) == set(models.hyperparameters(name))
    again = models.create(
        config["name"], input_shape=tuple(config["input_shape"]), latent_dim=config["latent_dim"], **config["hparams"]
    )
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    again.load_state_dict(model.state_dict())


def test_models_import_the_ops_not_the_package_root() -> None:
    # The dependency direction (DESIGN.md): models -> ops, never back up to fastvae/__init__.py, which
    # imports the models (an import cycle that only works while nothing runs at import time).
    import ast
    import pkgutil

    import fastvae as package

    root = Path(package.__file__).parent
    submodules = {info.name for info in pkgutil.iter_modules([str(root)])}
    offenders = []
    for path in sorted((root / "models").glob("*.py")) + sorted((root / "nn").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(alias.name == "fastvae" for alias in node.names):
                offenders.append(f"{path.name}: import fastvae")
            if isinstance(node, ast.ImportFrom) and node.module == "fastvae":
                offenders += [f"{path.name}: from fastvae import {a.name}" for a in node.names if a.name not in submodules]
    assert offenders == []
