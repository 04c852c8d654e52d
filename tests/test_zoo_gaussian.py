"""Model zoo I: the Gaussian-latent family and the optimal-transport auto-encoders.

cvae, cmma, beta_vae, disentangled_beta_vae, info_vae, dip_vae, wae, swae, bn_vae, logcosh_vae, and
the shared divergences of ``fastvae.models._divergences``. For each model: its mechanism against a
hand-computed or brute-force value (float64), training on embedded dSprites with a falling loss,
and the interface on images and flat vectors.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from tolerances import (
    BN_VAE_EPS_SHORTFALL_RTOL,
    FLOAT32,
    FLOAT32_AMPLIFIED_KL,
    FLOAT32_CANCELLING,
    FLOAT32_COVARIANCE_SQUARES,
    FLOAT32_FEW_ROUNDINGS_RELATIVE,
    FLOAT32_FLAT_LOSS,
    FLOAT32_LOG_LIKELIHOOD,
    FLOAT64_MMD,
    FLOAT64_REORDERED,
    LOG_COSH_NORMALISER_RTOL,
    LOGCOSH_RECON,
    PRIOR_SAMPLE_MEAN_SIGMAS,
    PRIOR_SAMPLE_STD,
    absolute,
)

import fastvae
import fastvae.data
from fastvae import models
from fastvae.models import GaussianVAE, ModelOutput, VAEModel
from fastvae.models._divergences import mmd, random_directions, sliced_wasserstein
from fastvae.models.logcosh_vae import log_cosh

NAMES = (
    "cvae", "cmma", "beta_vae", "disentangled_beta_vae", "info_vae", "dip_vae", "wae", "swae", "bn_vae", "logcosh_vae",
)

#: The loss terms each model (and variant) returns.
TERMS = {
    ("cvae", ()): {"loss", "recon", "kl"},
    ("cmma", ()): {"loss", "recon", "kl"},
    ("beta_vae", ()): {"loss", "recon", "kl"},
    ("disentangled_beta_vae", ()): {"loss", "recon", "kl", "capacity"},
    ("info_vae", ()): {"loss", "recon", "kl", "mmd"},
    ("dip_vae", ()): {"loss", "recon", "kl", "dip_offdiag", "dip_diag"},
    ("dip_vae", (("variant", "ii"),)): {"loss", "recon", "kl", "dip_offdiag", "dip_diag"},
    ("wae", ()): {"loss", "recon", "mmd"},
    ("wae", (("penalty", "gan"),)): {"loss", "recon", "adversarial", "disc_loss"},
    ("swae", ()): {"loss", "recon", "sliced_wasserstein"},
    ("bn_vae", ()): {"loss", "recon", "kl"},
    ("logcosh_vae", ()): {"loss", "recon", "kl"},
}
CASES = [
    pytest.param(name, dict(hparams), id="-".join([name, *(f"{k}={v}" for k, v in hparams)])) for name, hparams in TERMS
]


def _binary(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=generator) < 0.3).float()


def _labels(model: VAEModel, batch: int) -> torch.Tensor | None:
    return torch.arange(batch) % model.num_classes if model.conditional else None  # type: ignore[attr-defined]


def _bernoulli_nll(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) of a Bernoulli decoder, float64, summed over all but the batch dim."""
    p = torch.sigmoid(logits.double())
    x = x.double()
    return -(x * torch.log(p) + (1 - x) * torch.log1p(-p)).flatten(1).sum(1)


def _kl_standard(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    mu, logvar = mu.double(), logvar.double()
    return 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> None:
    torch.testing.assert_close(actual.detach().double(), expected.detach().double(), rtol=rtol, atol=atol)


# --- training on dSprites -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sprites() -> tuple[torch.Tensor, torch.Tensor]:
    """512 dSprites images ``(512, 1, 64, 64)`` and their factors ``(512, 5)``."""
    data = fastvae.data.dsprites(size=512, seed=0)
    return data.batch(torch.arange(len(data)))


@pytest.mark.parametrize(("name", "hparams"), CASES)
def test_loss_falls_on_dsprites(name: str, hparams: dict[str, object], sprites: tuple[torch.Tensor, torch.Tensor]) -> None:
    """30 Adam steps (batch 32, lr 1e-3): the mean loss of the last 10 steps is below the first 10's.
    Conditional models get the dSprites shape factor as the label; discriminators train on disc_loss."""
    images, factors = sprites
    torch.manual_seed(0)
    model = models.create(name, latent_dim=10, **hparams)
    generator_opt = torch.optim.Adam(model.generator_parameters(), lr=1e-3)
    disc_opt = torch.optim.Adam(model.discriminator_parameters(), lr=1e-3) if model.has_discriminator else None
    batches = torch.Generator().manual_seed(1)
    losses, recons = [], []
    for step in range(30):
        index = torch.randint(len(images), (32,), generator=batches)
        x = images[index]
        y = factors[index, 0] if model.conditional else None
        terms = model.loss(x, model(x, y), y, step=step)
        generator_opt.zero_grad()
        terms["loss"].backward()
        if disc_opt is not None:
            disc_opt.zero_grad()
            terms["disc_loss"].backward()
            disc_opt.step()
        generator_opt.step()
        losses.append(terms["loss"].item())
        recons.append(terms["recon"].item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) < sum(losses[:10]), f"{name}: loss did not fall: {losses}"
    assert sum(recons[-10:]) < sum(recons[:10]), f"{name}: reconstruction did not improve: {recons}"


# --- the interface --------------------------------------------------------------------------------


@pytest.mark.parametrize("input_shape", [(1, 64, 64), (12,)], ids=["image", "flat"])
@pytest.mark.parametrize(("name", "hparams"), CASES)
def test_interface_shapes_and_terms(name: str, hparams: dict[str, object], input_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = models.create(name, input_shape=input_shape, latent_dim=5, **hparams)
    x = _binary(6, *input_shape)
    y = _labels(model, 6)
    out = model(x, y)
    assert isinstance(out, ModelOutput)
    assert out.recon.shape == x.shape and out.z.shape == (6, 5)
    terms = model.loss(x, out, y, step=3)
    assert set(terms) == TERMS[(name, tuple(hparams.items()))]
    for key, value in terms.items():
        assert value.shape == () and value.dtype == torch.float32 and torch.isfinite(value), key
    model.eval()
    assert model.sample(4, None if y is None else y[:4]).shape == (4, *input_shape)
    assert model.reconstruct(x, y).shape == x.shape


# --- beta_vae ---------------------------------------------------------------------------------------


def test_beta_vae_weights_the_kl_by_beta() -> None:
    model = models.create("beta_vae", latent_dim=4)
    assert model.beta == 4.0
    x = _binary(5, 1, 64, 64)
    out = model(x)
    terms = model.loss(x, out)
    recon = _bernoulli_nll(x, out.logits).mean()
    kl = _kl_standard(out.mu, out.logvar).mean()
    _close(terms["recon"], recon, **FLOAT32_LOG_LIKELIHOOD)
    _close(terms["kl"], kl, **FLOAT32)
    _close(terms["loss"], recon + 4.0 * kl, **FLOAT32_LOG_LIKELIHOOD)


@pytest.mark.parametrize(("name", "hparam"), [("beta_vae", "beta"), ("disentangled_beta_vae", "gamma")])
def test_negative_weight_is_rejected(name: str, hparam: str) -> None:
    with pytest.raises(ValueError, match=hparam):
        models.create(name, **{hparam: -1.0})


# --- disentangled_beta_vae: the capacity schedule -------------------------------------------------------


@pytest.mark.parametrize(("step", "capacity"), [(0, 0.0), (50_000, 12.5), (100_000, 25.0), (250_000, 25.0), (None, 25.0)])
def test_capacity_schedule_at_given_steps(step: int | None, capacity: float) -> None:
    """Paper defaults: gamma 1000, C from 0 to 25 nats over 100,000 steps; loss = recon + gamma |kl - C|."""
    model = models.create("disentangled_beta_vae", latent_dim=4)
    x = _binary(5, 1, 64, 64)
    out = model(x)
    terms = model.loss(x, out, step=step)
    assert terms["capacity"].item() == capacity
    recon = _bernoulli_nll(x, out.logits).mean()
    kl = _kl_standard(out.mu, out.logvar).mean()
    _close(terms["loss"], recon + 1000.0 * (kl - capacity).abs(), **FLOAT32_AMPLIFIED_KL)


def test_capacity_counts_training_steps_only() -> None:
    """C depends on the step passed to loss, never on how often forward/loss ran before."""
    model = models.create("disentangled_beta_vae", latent_dim=4, capacity_max=5.0, capacity_steps=10)
    x = _binary(4, 1, 64, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = model.loss(x, model(x), step=7)["capacity"].item()
    for step in (0, 3, None, 100, 7, 9):
        for _ in range(3):
            model.loss(x, model(x), step=step)
    assert first == model.loss(x, model(x), step=7)["capacity"].item() == 3.5
    assert model.capacity(4) == 2.0 and model.capacity(10) == model.capacity(11) == model.capacity(None) == 5.0
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("step", [-1, 2.5, True, "3"])
def test_bad_step_is_rejected(step: object) -> None:
    model = models.create("disentangled_beta_vae", latent_dim=3)
    x = _binary(2, 1, 64, 64)
    with pytest.raises(ValueError, match="step"):
        model.loss(x, model(x), step=step)  # type: ignore[arg-type]


# --- MMD (info_vae, wae) --------------------------------------------------------------------------------


def _kernel(a: torch.Tensor, b: torch.Tensor, kernel: str, scale: float) -> float:
    squared = sum((float(u) - float(v)) ** 2 for u, v in zip(a, b))
    return math.exp(-squared / scale) if kernel == "rbf" else scale / (scale + squared)


def _mmd_double_loop(x: torch.Tensor, y: torch.Tensor, kernel: str, scale: float) -> float:
    """The unbiased U-statistic of MMD^2, term by term."""
    n, m = len(x), len(y)
    xx = sum(_kernel(x[i], x[j], kernel, scale) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(_kernel(y[i], y[j], kernel, scale) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(_kernel(x[i], y[j], kernel, scale) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
@pytest.mark.parametrize("scale", [None, 1.7])
def test_mmd_is_the_unbiased_u_statistic(kernel: str, scale: float | None) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    y = 0.5 + 2.0 * torch.randn(7, 3, generator=generator, dtype=torch.float64)
    expected = _mmd_double_loop(x, y, kernel, 2.0 * 3 if scale is None else scale)
    got = mmd(x, y, kernel=kernel, scale=scale).item()
    assert got == pytest.approx(expected, rel=FLOAT64_MMD.rtol, abs=FLOAT64_MMD.atol)


def test_mmd_rejects_bad_arguments() -> None:
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="kernel"):
        mmd(x, x, kernel="poly")
    with pytest.raises(ValueError, match="at least 2"):
        mmd(x[:1], x)
    with pytest.raises(ValueError, match="dimension"):
        mmd(x, torch.randn(4, 3))


def test_info_vae_loss_weights_kl_and_mmd() -> None:
    """loss = recon + (1 - alpha) kl + (alpha + lambda - 1) MMD(z, prior draws), MMD checked by double loop."""
    model = models.create("info_vae", input_shape=(10,), latent_dim=3, alpha=0.3, lambda_=5.0, kernel="imq")
    x = _binary(6, 10)
    out = model(x)
    torch.manual_seed(7)
    terms = model.loss(x, out)
    torch.manual_seed(7)
    prior = torch.randn(6, 3)
    expected_mmd = _mmd_double_loop(out.z.detach().double(), prior.double(), "imq", 6.0)
    assert terms["mmd"].item() == pytest.approx(expected_mmd, rel=FLOAT32_CANCELLING.rtol, abs=FLOAT32_CANCELLING.atol)
    recon = _bernoulli_nll(x, out.logits).mean()
    kl = _kl_standard(out.mu, out.logvar).mean()
    _close(terms["loss"], recon + 0.7 * kl + 4.3 * expected_mmd, **FLOAT32_FLAT_LOSS)


def test_info_vae_defaults_and_bad_hyperparameters() -> None:
    assert models.hyperparameters("info_vae")["alpha"] == 0.0
    assert models.hyperparameters("info_vae")["lambda_"] == 1000.0
    with pytest.raises(ValueError, match="alpha"):
        models.create("info_vae", alpha=1.5)
    with pytest.raises(ValueError, match="lambda_"):
        models.create("info_vae", lambda_=0.0)
    with pytest.raises(ValueError, match="lambda_"):
        models.create("info_vae", alpha=-2.0, lambda_=2.0)
    with pytest.raises(ValueError, match="kernel"):
        models.create("info_vae", kernel="poly")


def test_wae_mmd_penalty_uses_imq_with_scale_2d() -> None:
    model = models.create("wae", input_shape=(10,), latent_dim=3)
    x = _binary(6, 10)
    out = model(x)
    torch.manual_seed(3)
    terms = model.loss(x, out)
    torch.manual_seed(3)
    expected_mmd = _mmd_double_loop(out.z.detach().double(), torch.randn(6, 3).double(), "imq", 6.0)
    assert terms["mmd"].item() == pytest.approx(expected_mmd, rel=FLOAT32_CANCELLING.rtol, abs=FLOAT32_CANCELLING.atol)
    _close(terms["loss"], _bernoulli_nll(x, out.logits).mean() + 10.0 * expected_mmd, **FLOAT32_FLAT_LOSS)


def test_wae_encoder_is_deterministic() -> None:
    model = models.create("wae", input_shape=(10,), latent_dim=3)
    x = _binary(4, 10)
    first, second = model(x), model(x)
    assert torch.equal(first.z, second.z) and torch.equal(first.z, model.encoder(x))
    assert not hasattr(model, "log_likelihood")


def test_wae_gan_discriminator_is_an_instance_property() -> None:
    mmd_model = models.create("wae", latent_dim=3)
    gan_model = models.create("wae", latent_dim=3, penalty="gan")
    assert mmd_model.has_discriminator is False and gan_model.has_discriminator is True
    with pytest.raises(NotImplementedError):
        mmd_model.discriminator_parameters()
    disc = {id(p) for p in gan_model.discriminator_parameters()}
    generator = {id(p) for p in gan_model.generator_parameters()}
    assert disc and generator and not disc & generator
    assert disc | generator == {id(p) for p in gan_model.parameters()}
    with pytest.raises(ValueError, match="penalty"):
        models.create("wae", penalty="wgan")


def test_wae_gan_losses() -> None:
    """adversarial = -mean log D(z); disc_loss = lambda * mean(-log D(prior) - log(1 - D(z))), codes detached."""
    model = models.create("wae", input_shape=(10,), latent_dim=3, penalty="gan", lambda_=2.0)
    x = _binary(6, 10)
    out = model(x)
    torch.manual_seed(11)
    terms = model.loss(x, out)
    torch.manual_seed(11)
    prior = torch.randn(6, 3)
    with torch.no_grad():
        d_z = torch.sigmoid(model.discriminator(out.z).double())
        d_prior = torch.sigmoid(model.discriminator(prior).double())
    adversarial = -torch.log(d_z).mean()
    _close(terms["adversarial"], adversarial, **FLOAT32)
    _close(terms["disc_loss"], 2.0 * (-torch.log(d_prior) - torch.log1p(-d_z)).mean(), **FLOAT32)
    _close(terms["loss"], _bernoulli_nll(x, out.logits).mean() + 2.0 * adversarial, **FLOAT32_FLAT_LOSS)
    encoder = list(model.encoder.parameters())
    assert all(g is None for g in torch.autograd.grad(terms["disc_loss"], encoder, retain_graph=True, allow_unused=True))
    assert any(g is not None and g.abs().sum() > 0 for g in torch.autograd.grad(terms["loss"], encoder, allow_unused=True))


# --- swae: sliced Wasserstein ----------------------------------------------------------------------------


def _wasserstein_1d_by_permutations(a: list[float], b: list[float], p: float) -> float:
    """Exact W_p^p between two uniform empirical measures of equal size: the best of all matchings."""
    n = len(a)
    return min(sum(abs(a[i] - b[j]) ** p for i, j in enumerate(perm)) / n for perm in itertools.permutations(range(n)))


def _sliced_by_permutations(x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor, p: float) -> float:
    total = 0.0
    for theta in directions.double():
        a = [float(v) for v in x.double() @ theta]
        b = [float(v) for v in y.double() @ theta]
        total += _wasserstein_1d_by_permutations(a, b, p)
    return total / len(directions)


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_sliced_wasserstein_matches_exact_1d_transport(p: float) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    y = 1.0 + 0.5 * torch.randn(6, 3, generator=generator, dtype=torch.float64)
    torch.manual_seed(0)
    directions = random_directions(4, 3, dtype=torch.float64)
    expected = _sliced_by_permutations(x, y, directions, p)
    assert sliced_wasserstein(x, y, directions, p=p).item() == pytest.approx(expected, rel=FLOAT64_REORDERED.rtol)


def test_random_directions_are_fresh_unit_vectors() -> None:
    first, second = random_directions(50, 4), random_directions(50, 4)
    _close(first.norm(dim=1), torch.ones(50), **FLOAT32)
    assert not torch.equal(first, second)
    with pytest.raises(ValueError, match="directions"):
        sliced_wasserstein(torch.randn(3, 2), torch.randn(3, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match="same number"):
        sliced_wasserstein(torch.randn(3, 2), torch.randn(4, 2), torch.randn(4, 2))


def test_swae_loss_is_recon_plus_lambda_sliced_wasserstein() -> None:
    model = models.create("swae", input_shape=(10,), latent_dim=3, num_projections=7)
    x = _binary(5, 10)
    out = model(x)
    torch.manual_seed(5)
    terms = model.loss(x, out)
    torch.manual_seed(5)
    prior = torch.randn(5, 3)
    directions = random_directions(7, 3)
    expected = _sliced_by_permutations(out.z.detach(), prior, directions, 2.0)
    got = terms["sliced_wasserstein"].item()
    assert got == pytest.approx(expected, rel=FLOAT32_CANCELLING.rtol, abs=FLOAT32_CANCELLING.atol)
    _close(terms["loss"], _bernoulli_nll(x, out.logits).mean() + 10.0 * expected, **FLOAT32_FLAT_LOSS)


# --- dip_vae --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "lambda_d"), [("i", 20.0), ("ii", 2.0)])
def test_dip_vae_penalises_the_covariance_computed_by_brute_force(variant: str, lambda_d: float) -> None:
    """Cov_i = Cov_b[mu]; Cov_ii = Cov_b[mu] + diag(E_b[sigma^2]); default lambda_d = 10 lambda_od (i), lambda_od (ii)."""
    model = models.create("dip_vae", input_shape=(10,), latent_dim=4, variant=variant, lambda_od=2.0)
    assert model.lambda_d == lambda_d
    x = _binary(6, 10)
    out = model(x)
    terms = model.loss(x, out)
    mu, var = out.mu.double().tolist(), out.logvar.double().exp().tolist()
    batch, dim = 6, 4
    mean = [sum(mu[b][i] for b in range(batch)) / batch for i in range(dim)]
    cov = [
        [sum((mu[b][i] - mean[i]) * (mu[b][j] - mean[j]) for b in range(batch)) / batch for j in range(dim)]
        for i in range(dim)
    ]
    if variant == "ii":
        for i in range(dim):
            cov[i][i] += sum(var[b][i] for b in range(batch)) / batch
    offdiag = sum(cov[i][j] ** 2 for i in range(dim) for j in range(dim) if i != j)
    diag = sum((cov[i][i] - 1) ** 2 for i in range(dim))
    got = terms["dip_offdiag"].item()
    assert got == pytest.approx(offdiag, rel=FLOAT32_COVARIANCE_SQUARES.rtol, abs=FLOAT32_COVARIANCE_SQUARES.atol)
    assert terms["dip_diag"].item() == pytest.approx(diag, rel=FLOAT32.rtol)
    recon = _bernoulli_nll(x, out.logits).mean()
    kl = _kl_standard(out.mu, out.logvar).mean()
    _close(terms["loss"], recon + kl + 2.0 * offdiag + lambda_d * diag, **FLOAT32_FLAT_LOSS)


def test_dip_vae_bad_variant_is_rejected() -> None:
    with pytest.raises(ValueError, match="variant"):
        models.create("dip_vae", variant="iii")


# --- cvae / cmma ----------------------------------------------------------------------------------------


def _with_random_prior(name: str, input_shape: tuple[int, ...] = (10,)) -> VAEModel:
    torch.manual_seed(0)
    model = models.create(name, input_shape=input_shape, latent_dim=3, num_classes=3)
    with torch.no_grad():
        model.prior_net.weight.copy_(torch.randn_like(model.prior_net.weight))
    return model


@pytest.mark.parametrize("name", ["cvae", "cmma"])
def test_conditional_kl_is_to_the_label_prior(name: str) -> None:
    """KL(q(z|x,y) || p(z|y)) between two diagonal Gaussians, by the closed form in float64."""
    model = _with_random_prior(name)
    x, y = _binary(5, 10), torch.tensor([0, 1, 2, 1, 0])
    out = model(x, y)
    table = model.prior_net.weight.double()
    mu_p, logvar_p = table[y, :3], table[y, 3:]
    _close(out.prior_mu, mu_p, **FLOAT32)
    mu, logvar = out.mu.double(), out.logvar.double()
    kl = 0.5 * (logvar_p - logvar + (logvar.exp() + (mu - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)
    terms = model.loss(x, out, y)
    _close(terms["kl"], kl.mean(), **FLOAT32)
    _close(terms["loss"], _bernoulli_nll(x, out.logits).mean() + kl.mean(), **FLOAT32_FLAT_LOSS)


@pytest.mark.parametrize(("name", "decoder_uses_label"), [("cvae", True), ("cmma", False)])
def test_which_networks_see_the_label(name: str, decoder_uses_label: bool) -> None:
    """Both encoders see y; the CVAE decoder is p(x|z,y), the CMMA decoder p(x|z)."""
    model = _with_random_prior(name, (1, 16, 16))
    x, z = _binary(3, 1, 16, 16), torch.randn(3, 3)
    y0, y1 = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
    assert not torch.allclose(model.encode(x, y0)[0], model.encode(x, y1)[0])
    assert torch.equal(model.decode(z, y0), model.decode(z, y1)) == (not decoder_uses_label)


@pytest.mark.parametrize("name", ["cvae", "cmma"])
def test_prior_sample_follows_p_z_given_y(name: str) -> None:
    model = _with_random_prior(name)
    n = 4000
    with torch.no_grad():
        z = model.prior_sample(n, torch.full((n,), 2))
        mu_p, std_p = model.prior_net.weight[2, :3], (0.5 * model.prior_net.weight[2, 3:]).exp()
    _close(z.mean(0), mu_p, **absolute(float(PRIOR_SAMPLE_MEAN_SIGMAS * std_p.max() / math.sqrt(n))))
    _close(z.std(0), std_p, **PRIOR_SAMPLE_STD)


@pytest.mark.parametrize("name", ["cvae", "cmma"])
def test_conditional_log_likelihood_weights_with_the_label_prior(name: str) -> None:
    """With k = 1 the estimate is log p(x|z,y) + log p(z|y) - log q(z|x,y) at the drawn z."""
    model = _with_random_prior(name)
    x, y = _binary(4, 10), torch.tensor([2, 0, 1, 2])
    torch.manual_seed(9)
    estimate = model.log_likelihood(x, 1, y)
    mu, logvar = model.encode(x, y)
    torch.manual_seed(9)
    z = fastvae.reparameterize(mu.expand(1, *mu.shape), logvar.expand(1, *logvar.shape))[0].double()
    table = model.prior_net.weight.double()
    mu_p, logvar_p = table[y, :3], table[y, 3:]

    def log_normal(v: torch.Tensor, m: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:
        return (-0.5 * (math.log(2 * math.pi) + lv + (v - m) ** 2 / lv.exp())).sum(-1)

    log_px = -_bernoulli_nll(x, model.decode(z.float(), y))
    expected = log_px + log_normal(z, mu_p, logvar_p) - log_normal(z, mu.double(), logvar.double())
    _close(estimate, expected, **FLOAT32_LOG_LIKELIHOOD)


def test_conditional_models_check_labels() -> None:
    model = models.create("cvae", input_shape=(10,), latent_dim=3)
    assert model.conditional and model.num_classes == 3
    x = _binary(2, 10)
    with pytest.raises(ValueError, match="y"):
        model(x)
    with pytest.raises(ValueError, match="y"):
        model(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="y"):
        model.sample(2)
    with pytest.raises(ValueError, match="num_classes"):
        models.create("cmma", num_classes=0)


# --- bn_vae ---------------------------------------------------------------------------------------------


def test_bn_vae_fixes_the_second_moment_of_the_means() -> None:
    """E_b[mu_i^2] = gamma^2 Var/(Var + eps) + beta_i^2 ~= gamma^2 + beta_i^2 (eps = 1e-8, far below the
    ~1e-6 batch variance of freshly initialised means), so E_b[KL] >= (1/2) sum_i E_b[mu_i^2]."""
    torch.manual_seed(0)
    model = models.create("bn_vae", latent_dim=6)
    assert model.gamma == 0.5
    with torch.no_grad():
        model.mu_shift.copy_(torch.tensor([0.0, 0.3, -0.2, 1.0, 0.0, -0.5]))
    x = _binary(16, 1, 64, 64)
    out = model(x)
    raw = GaussianVAE.encode(model, x)[0].double()
    variance = raw.var(0, unbiased=False)
    beta = model.mu_shift.double()
    second_moment = out.mu.double().pow(2).mean(0)
    _close(second_moment, 0.25 * variance / (variance + 1e-8) + beta**2, **FLOAT32_CANCELLING)
    expected_mean = 0.25 + beta.pow(2).mean().item()
    assert second_moment.mean().item() == pytest.approx(expected_mean, rel=BN_VAE_EPS_SHORTFALL_RTOL)
    kl = _kl_standard(out.mu, out.logvar)
    _close(model.loss(x, out)["kl"], kl.mean(), **FLOAT32)
    assert kl.mean().item() >= 0.5 * second_moment.sum().item()


def test_bn_vae_gamma_is_fixed_and_beta_learnable() -> None:
    model = models.create("bn_vae", latent_dim=4, gamma=0.3)
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "mu_shift" in names and not any(name.startswith("mu_norm") for name in names)
    with pytest.raises(ValueError, match="gamma"):
        models.create("bn_vae", gamma=0.0)


# --- logcosh_vae ----------------------------------------------------------------------------------------


def test_log_cosh_matches_the_naive_formula_where_finite() -> None:
    t = torch.linspace(-30, 30, 601, dtype=torch.float64)
    _close(log_cosh(t), torch.log(torch.cosh(t)), **FLOAT64_REORDERED)
    t.requires_grad_(True)
    (grad,) = torch.autograd.grad(log_cosh(t).sum(), t)
    _close(grad, torch.tanh(t.detach()), **FLOAT64_REORDERED)


def test_log_cosh_is_finite_where_the_naive_formula_overflows() -> None:
    t = torch.tensor([1e4, -1e4, 3e38])
    assert torch.isinf(torch.log(torch.cosh(t))).all()
    _close(log_cosh(t), t.double().abs() - math.log(2), **FLOAT32_FEW_ROUNDINGS_RELATIVE)


def _log_cosh_normaliser(a: float) -> float:
    """log of the integral of cosh(a t)^(-1/a) over the real line, by the trapezoid rule."""
    t = torch.linspace(-80.0, 80.0, 320_001, dtype=torch.float64)
    return math.log(torch.trapezoid(torch.exp(-torch.log(torch.cosh(a * t)) / a), t).item())


@pytest.mark.parametrize("a", [10.0, 0.5])
def test_logcosh_density_is_normalised(a: float) -> None:
    model = models.create("logcosh_vae", input_shape=(3,), latent_dim=2, a=a)
    assert model.log_normalizer == pytest.approx(_log_cosh_normaliser(a), rel=LOG_COSH_NORMALISER_RTOL)


def test_logcosh_vae_loss() -> None:
    """recon = sum_pixels[(1/a) log cosh(a (x - sigmoid(logits))) + log Z_a]; loss = recon + beta kl."""
    model = models.create("logcosh_vae", latent_dim=3, beta=2.0)
    assert model.a == 10.0
    x = _binary(4, 1, 64, 64)
    out = model(x)
    terms = model.loss(x, out)
    error = x.double() - torch.sigmoid(out.logits.double())
    recon = (torch.log(torch.cosh(10.0 * error)) / 10.0 + _log_cosh_normaliser(10.0)).flatten(1).sum(1).mean()
    kl = _kl_standard(out.mu, out.logvar).mean()
    _close(terms["recon"], recon, **LOGCOSH_RECON)
    _close(terms["loss"], recon + 2.0 * kl, **LOGCOSH_RECON)
    identity = models.create("logcosh_vae", input_shape=(5,), latent_dim=2, output="identity")
    logits = torch.randn(3, 5)
    assert torch.equal(identity.mean(logits), logits)
    with pytest.raises(ValueError, match="output"):
        models.create("logcosh_vae", output="tanh")
    with pytest.raises(ValueError, match="a must"):
        models.create("logcosh_vae", a=0.0)
