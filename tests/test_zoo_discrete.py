"""Model zoo II: categorical_vae, joint_vae, hyperspherical_vae, and their distributions.

For each model: its mechanism against a hand-computed, closed-form, brute-force or high-precision
value (Gumbel-softmax temperature schedule and the KL to a uniform categorical; the two capacity
schedules; the von Mises–Fisher sampler, density, KL and Bessel functions), training on embedded
dSprites with a falling loss, and the interface on images and flat vectors.

High-precision references are computed here by other methods than the code under test: Python
``decimal`` arithmetic (100+ digits) on closed forms of the half-integer Bessel functions and on the
power series of the integer ones, SciPy-free quadrature in float64, and ``torch.special.i0e/i1e``.
"""

from __future__ import annotations

import decimal
import itertools
import math
from decimal import Decimal

import pytest
import torch
from tolerances import (
    BESSEL_RATIO,
    FLOAT32,
    FLOAT32_AMPLIFIED_KL,
    FLOAT32_CANCELLING,
    FLOAT32_FEW_ROUNDINGS,
    FLOAT32_FEW_ROUNDINGS_NATS,
    FLOAT32_FEW_ROUNDINGS_RELATIVE,
    FLOAT32_FEW_ROUNDINGS_SMALL,
    FLOAT32_ORDER_ONE,
    FLOAT32_SMALL_VALUES,
    FLOAT32_TINY_VALUES,
    FLOAT64_FEW_ROUNDINGS,
    FLOAT64_ONE_ROUNDING_RTOL,
    FLOAT64_REORDERED,
    FLOAT64_REORDERED_ABS,
    FLOAT64_SCHEDULE_RTOL,
    IS_LOG_LIKELIHOOD_ENUMERATED,
    IS_LOG_LIKELIHOOD_QUADRATURE,
    LOG_BESSEL_GRADIENT,
    LOG_BESSEL_IV,
    LOG_BESSEL_IVE,
    LOG_BESSEL_TORCH_SPECIAL,
    MONTE_CARLO_SIGMAS,
    SIMPSON_DENSITY_RTOL,
    VMF_CONCENTRATED_SAMPLE_ATOL,
    VMF_KL_GRADIENT_LARGE_KAPPA,
    VMF_KL_LARGE_KAPPA,
    VMF_KL_QUADRATURE,
    WOOD_DENSITY_RTOL,
)

import fastvae.data
import fastvae.models.categorical_vae as categorical_module
from fastvae import models
from fastvae.models import ModelOutput
from fastvae.models._gumbel import categorical_kl_uniform, gumbel_softmax, sample_gumbel
from fastvae.models._vmf import (
    bessel_ratio,
    log_bessel_iv,
    log_bessel_ive,
    log_sphere_area,
    sample_vmf,
    vmf_kl_uniform,
    vmf_log_prob,
    vmf_mean_resultant,
    wood_log_density,
)

#: The loss terms each model (and variant) returns.
TERMS = {
    ("categorical_vae", ()): {"loss", "recon", "kl", "temperature"},
    ("categorical_vae", (("hard", True),)): {"loss", "recon", "kl", "temperature"},
    ("joint_vae", ()): {"loss", "recon", "kl_z", "kl_c", "capacity_z", "capacity_c"},
    ("joint_vae", (("categories", (3, 4)),)): {"loss", "recon", "kl_z", "kl_c", "capacity_z", "capacity_c"},
    ("hyperspherical_vae", ()): {"loss", "recon", "kl", "kappa"},
    ("hyperspherical_vae", (("fixed_kappa", 5.0),)): {"loss", "recon", "kl", "kappa"},
}
CASES = [
    pytest.param(name, dict(hparams), id="-".join([name, *(f"{k}={v}" for k, v in hparams)])) for name, hparams in TERMS
]


def _binary(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=generator) < 0.3).float()


def _bernoulli_nll(x: torch.Tensor, logits: torch.Tensor, event_dims: int | None = None) -> torch.Tensor:
    """-log p(x|z) of a Bernoulli decoder, float64, summed over the last ``event_dims`` dims (default:
    all but the first of ``x``); ``x`` and ``logits`` broadcast."""
    event_dims = x.dim() - 1 if event_dims is None else event_dims
    p = torch.sigmoid(logits.double())
    x = x.double()
    return -(x * torch.log(p) + (1 - x) * torch.log1p(-p)).flatten(-event_dims).sum(-1)


def _close(actual: torch.Tensor | float, expected: torch.Tensor | float, rtol: float, atol: float) -> None:
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64).detach() if not isinstance(actual, torch.Tensor) else actual.detach().double(),
        torch.as_tensor(expected, dtype=torch.float64) if not isinstance(expected, torch.Tensor) else expected.detach().double(),
        rtol=rtol, atol=atol,
    )


def _within_standard_errors(samples: torch.Tensor, expected: float, errors: float = MONTE_CARLO_SIGMAS) -> None:
    """The sample mean is within ``errors`` standard errors of ``expected``."""
    samples = samples.double()
    standard_error = samples.std().item() / math.sqrt(samples.numel())
    deviation = samples.mean().item() - expected
    assert abs(deviation) < errors * standard_error, f"mean {samples.mean().item()} vs {expected}: {deviation / standard_error:.1f} SE"


# --- training on dSprites -------------------------------------------------------------------------

#: What the falling-loss test trains: the categorical VAE anneals fully within the 40 steps, so the
#: loss must fall while the temperature moves and then sits at its minimum.
TRAINED = [
    pytest.param("categorical_vae", {"anneal_steps": 20, "anneal_every": 1}, id="categorical_vae"),
    pytest.param("joint_vae", {}, id="joint_vae"),
    pytest.param("hyperspherical_vae", {}, id="hyperspherical_vae"),
]


@pytest.fixture(scope="module")
def sprites() -> torch.Tensor:
    """512 dSprites images ``(512, 1, 64, 64)``."""
    data = fastvae.data.dsprites(size=512, seed=0)
    return data.batch(torch.arange(len(data)))[0]


@pytest.mark.parametrize(("name", "hparams"), TRAINED)
def test_loss_falls_on_dsprites(name: str, hparams: dict[str, object], sprites: torch.Tensor) -> None:
    """40 Adam steps (batch 32, lr 1e-3): the mean loss and reconstruction of the last 10 steps are
    below the first 10's (joint_vae's capacities grow meanwhile, to 40 * 40 / 300,000 nats)."""
    torch.manual_seed(0)
    model = models.create(name, latent_dim=10, **hparams)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = torch.Generator().manual_seed(1)
    losses, recons = [], []
    for step in range(40):
        x = sprites[torch.randint(len(sprites), (32,), generator=batches)]
        terms = model.loss(x, model(x), step=step)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
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
    out = model(x)
    assert isinstance(out, ModelOutput)
    assert out.recon.shape == x.shape and out.z.shape[0] == 6
    terms = model.loss(x, out, step=3)
    assert set(terms) == TERMS[(name, tuple(hparams.items()))]
    for key, value in terms.items():
        assert value.shape == () and value.dtype == torch.float32 and torch.isfinite(value), key
    terms["loss"].backward()
    model.eval()
    assert model.sample(4).shape == (4, *input_shape)
    assert model.reconstruct(x).shape == x.shape
    assert model.elbo(x).shape == (6,) and torch.isfinite(model.elbo(x)).all()
    log_px = model.log_likelihood(x, 7, chunk=3)
    assert log_px.shape == (6,) and torch.isfinite(log_px).all()


@pytest.mark.parametrize(
    ("name", "hparams", "argument"),
    [
        ("categorical_vae", {"categories": 1}, "categories"),
        ("categorical_vae", {"min_temperature": 2.0}, "min_temperature"),
        ("categorical_vae", {"initial_temperature": 0.0}, "initial_temperature"),
        ("categorical_vae", {"anneal_steps": 0}, "anneal_steps"),
        ("categorical_vae", {"anneal_every": 2.5}, "anneal_every"),
        ("joint_vae", {"categories": (3, 1)}, "categories"),
        ("joint_vae", {"categories": ()}, "categories"),
        ("joint_vae", {"gamma_c": -1.0}, "gamma_c"),
        ("joint_vae", {"capacity_z_steps": 0}, "capacity_z_steps"),
        ("joint_vae", {"temperature": -0.5}, "temperature"),
        ("hyperspherical_vae", {"fixed_kappa": 0.0}, "fixed_kappa"),
        ("hyperspherical_vae", {"kappa_offset": -1.0}, "kappa_offset"),
    ],
)
def test_bad_hyperparameters_are_rejected(name: str, hparams: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        models.create(name, latent_dim=3, **hparams)


def test_hyperspherical_vae_needs_a_sphere_of_dimension_at_least_one() -> None:
    with pytest.raises(ValueError, match="latent_dim"):
        models.create("hyperspherical_vae", latent_dim=1)


# --- Gumbel-softmax -------------------------------------------------------------------------------------


def test_gumbel_max_is_distributed_as_softmax() -> None:
    """argmax(log pi + g), g ~ Gumbel(0, 1), has P(k) = softmax(log pi)_k: 40,000 draws, every frequency
    within 4 standard errors; the straight-through sample is that one-hot, at any temperature."""
    torch.manual_seed(0)
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])
    n = 40_000
    gumbel = sample_gumbel((n, 5))
    draws = (logits + gumbel).argmax(-1)
    frequencies = torch.bincount(draws, minlength=5).double() / n
    probabilities = torch.softmax(logits.double(), -1)
    standard_errors = (probabilities * (1 - probabilities) / n).sqrt()
    within = (frequencies - probabilities).abs() < MONTE_CARLO_SIGMAS * standard_errors
    assert within.all(), (frequencies, probabilities)
    for temperature in (0.1, 1.0, 5.0):
        hard = gumbel_softmax(logits.expand(n, 5), gumbel, temperature, hard=True)
        assert torch.equal(hard, torch.nn.functional.one_hot(draws, 5).float())


def test_gumbel_softmax_is_the_tempered_softmax_and_straight_through_has_its_gradient() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 6, requires_grad=True)
    gumbel = sample_gumbel((4, 3, 6))
    weights = torch.randn(4, 3, 6)
    soft = gumbel_softmax(logits, gumbel, 0.7)
    expected = [[[math.exp((logits[b, n, k].item() + gumbel[b, n, k].item()) / 0.7) for k in range(6)] for n in range(3)] for b in range(4)]
    expected_t = torch.tensor(expected, dtype=torch.float64)
    _close(soft, expected_t / expected_t.sum(-1, keepdim=True), **FLOAT32_SMALL_VALUES)
    (soft_grad,) = torch.autograd.grad((soft * weights).sum(), logits)
    hard = gumbel_softmax(logits, gumbel, 0.7, hard=True)
    assert torch.equal(hard.detach().sum(-1), torch.ones(4, 3)) and set(hard.detach().unique().tolist()) == {0.0, 1.0}
    (hard_grad,) = torch.autograd.grad((hard * weights).sum(), logits)
    _close(hard_grad, soft_grad, **FLOAT32_FEW_ROUNDINGS_SMALL)


def test_categorical_kl_to_uniform_by_hand() -> None:
    """KL(q || U(K)) = sum_k q_k log q_k + log K: a hand example, the extremes, and random rows by loops."""
    q = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    hand = 0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25) + math.log(3)
    assert categorical_kl_uniform(q.log()).item() == pytest.approx(hand, rel=FLOAT64_FEW_ROUNDINGS)
    uniform = torch.zeros(7, dtype=torch.float64).log_softmax(-1)
    assert categorical_kl_uniform(uniform).item() == pytest.approx(0.0, abs=FLOAT64_FEW_ROUNDINGS)
    near_one_hot = torch.tensor([0.0, -200.0, -200.0, -200.0], dtype=torch.float64).log_softmax(-1)
    assert categorical_kl_uniform(near_one_hot).item() == pytest.approx(math.log(4), rel=FLOAT64_REORDERED.rtol)
    logits = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = categorical_kl_uniform(logits.log_softmax(-1))
    for b in range(3):
        for n in range(4):
            z = sum(math.exp(v) for v in logits[b, n].tolist())
            p = [math.exp(v) / z for v in logits[b, n].tolist()]
            by_loops = sum(pk * math.log(pk) for pk in p) + math.log(5)
            assert got[b, n].item() == pytest.approx(by_loops, rel=FLOAT64_REORDERED.rtol)


# --- categorical_vae: the annealed temperature ------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "temperature"),
    [
        (0, 1.0),
        (999, 1.0),
        (35_500, 2 ** (-35 / 70)),
        (69_999, 2 ** (-69 / 70)),
        (70_000, 0.5),
        (250_000, 0.5),
        (10**12, 0.5),
        (None, 0.5),
    ],
)
def test_temperature_schedule_at_given_steps(step: int | None, temperature: float) -> None:
    """Defaults: tau = max(0.5, exp(-r * 1000 floor(step / 1000))) with r = ln 2 / 70,000, so
    tau = 2^(-t / 70,000) at the update t; exactly 0.5 from step 70,000 on and at step=None."""
    model = models.create("categorical_vae", input_shape=(6,), latent_dim=2)
    assert model.temperature(step) == pytest.approx(temperature, rel=FLOAT64_SCHEDULE_RTOL)
    if temperature == 0.5:
        assert model.temperature(step) == 0.5


def test_temperature_reaches_its_minimum_exactly() -> None:
    model = models.create(
        "categorical_vae", input_shape=(6,), latent_dim=2, initial_temperature=2.0, min_temperature=0.1,
        anneal_steps=1000, anneal_every=1,
    )
    assert model.temperature(500) == pytest.approx(2.0 * 0.05**0.5, rel=FLOAT64_SCHEDULE_RTOL)
    assert model.temperature(999) > 0.1
    assert model.temperature(1000) == model.temperature(1001) == model.temperature(None) == 0.1
    previous = [model.temperature(s) for s in range(0, 1100, 7)]
    assert all(a >= b for a, b in itertools.pairwise(previous))
    with pytest.raises(ValueError, match="step"):
        model.temperature(-1)


@pytest.mark.parametrize("hard", [False, True])
def test_loss_uses_the_annealed_temperature(hard: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """STYLE trap "the Gumbel-softmax temperature actually anneals to its minimum": the relaxed sample
    behind the loss's reconstruction uses tau(step), recomputed here by hand from the posterior and
    noise forward returned, and from anneal_steps on it is exactly min_temperature."""
    used: list[float] = []
    real = categorical_module.gumbel_softmax

    def spy(log_probs: torch.Tensor, gumbel: torch.Tensor, temperature: float, *, hard: bool = False) -> torch.Tensor:
        used.append(temperature)
        return real(log_probs, gumbel, temperature, hard=hard)

    monkeypatch.setattr(categorical_module, "gumbel_softmax", spy)
    torch.manual_seed(0)
    model = models.create(
        "categorical_vae", input_shape=(12,), latent_dim=3, categories=4, initial_temperature=3.0, min_temperature=0.25,
        anneal_steps=100, anneal_every=10, hard=hard,
    )
    x = _binary(5, 12)
    out = model(x)
    assert used == [0.25]
    rate = math.log(3.0 / 0.25) / 100
    recons = {}
    for step, tau in [(0, 3.0), (55, 3.0 * math.exp(-rate * 50)), (99, 3.0 * math.exp(-rate * 90)), (100, 0.25), (5000, 0.25), (None, 0.25)]:
        used.clear()
        terms = model.loss(x, out, step=step)
        assert terms["temperature"].item() == pytest.approx(tau, rel=FLOAT32_FEW_ROUNDINGS.rtol)
        if tau == 0.25:
            recon = _bernoulli_nll(x, out.logits).mean().item()
            assert used == [] and terms["recon"].item() == pytest.approx(recon, rel=FLOAT32_FEW_ROUNDINGS.rtol)
        else:
            assert used == [pytest.approx(tau, rel=FLOAT64_SCHEDULE_RTOL)]
        y = torch.softmax((out.log_probs.double() + out.gumbel.double()) / tau, dim=-1)
        if hard:
            y = torch.nn.functional.one_hot(y.argmax(-1), 4).double()
        expected = _bernoulli_nll(x, model.decoder(y.flatten(1).float())).mean()
        assert terms["recon"].item() == pytest.approx(expected.item(), rel=FLOAT32.rtol)
        recons[step] = terms["recon"].item()
    if not hard:  # the relaxed sample differs between temperatures, so the check above can tell them apart
        assert recons[0] != pytest.approx(recons[100], rel=FLOAT32.rtol)


def test_categorical_kl_term_and_loss() -> None:
    """loss = recon + kl with kl = mean_b sum_n (sum_k q log q + log K), both by hand in float64."""
    torch.manual_seed(1)
    model = models.create("categorical_vae", input_shape=(10,), latent_dim=3, categories=4)
    x = _binary(6, 10)
    out = model(x)
    probabilities = out.log_probs.double().exp().tolist()
    kl = sum(
        sum(sum(p * math.log(p) for p in row) + math.log(4) for row in example) for example in probabilities
    ) / 6
    terms = model.loss(x, out)
    assert terms["kl"].item() == pytest.approx(kl, rel=FLOAT32_SMALL_VALUES.rtol, abs=FLOAT32_SMALL_VALUES.atol)
    recon = _bernoulli_nll(x, out.logits).mean().item()
    assert terms["loss"].item() == pytest.approx(recon + kl, rel=FLOAT32.rtol)


def test_categorical_log_likelihood_and_elbo_match_enumeration() -> None:
    """Over all K^N = 9 codes: log p(x) = log sum_c p(x|c) p(c), and the ELBO
    sum_c q(c|x) log p(x|c) - KL(q(c|x) || p(c)). The importance-sampled estimate with 4,000 codes from
    q(c|x) agrees with the first within 0.02 nats; 400 one-code ELBOs average to the second within 4
    standard errors."""
    torch.manual_seed(0)
    model = models.create("categorical_vae", input_shape=(8,), latent_dim=2, categories=3)
    x = _binary(4, 8)
    index = torch.cartesian_prod(torch.arange(3), torch.arange(3))
    with torch.no_grad():
        logits = model.decode(torch.nn.functional.one_hot(index, 3).float())
        log_probs = model.encode(x).double()
    log_px_c = -_bernoulli_nll(x.unsqueeze(1), logits.unsqueeze(0), event_dims=1)
    exact = torch.logsumexp(log_px_c, dim=1) - 2 * math.log(3)
    _close(model.log_likelihood(x, 4000, chunk=1000), exact, **IS_LOG_LIKELIHOOD_ENUMERATED)
    log_q = log_probs[:, 0, index[:, 0]] + log_probs[:, 1, index[:, 1]]
    kl = (log_q.exp() * (log_q + 2 * math.log(3))).sum(1)
    exact_elbo = (log_q.exp() * log_px_c).sum(1) - kl
    assert (exact_elbo < exact).all()
    draws = model.elbo(x.repeat(400, 1)).double().reshape(400, 4)
    for b in range(4):
        _within_standard_errors(draws[:, b], exact_elbo[b].item())


@pytest.mark.parametrize(
    ("name", "hparams", "schedule"),
    [
        ("categorical_vae", {"anneal_steps": 10, "anneal_every": 1}, "temperature"),
        ("joint_vae", {"capacity_z_steps": 10, "capacity_c_steps": 10}, "capacity_z"),
        ("joint_vae", {"capacity_z_steps": 10, "capacity_c_steps": 10}, "capacity_c"),
    ],
)
def test_schedules_count_training_steps_only(name: str, hparams: dict[str, object], schedule: str) -> None:
    """STYLE trap "capacity schedules count training steps only": the value at a step depends only on
    the step passed to loss, never on how often forward/loss ran before (no counter, no state change)."""
    model = models.create(name, input_shape=(6,), latent_dim=2, **hparams)
    x = _binary(3, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = model.loss(x, model(x), step=4)[schedule].item()
    for step in (0, 9, None, 100, 4, 2):
        for _ in range(3):
            model.loss(x, model(x), step=step)
    assert model.loss(x, model(x), step=4)[schedule].item() == first
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    for step in (-1, 2.5, True):
        with pytest.raises(ValueError, match="step"):
            model.loss(x, model(x), step=step)  # type: ignore[arg-type]


# --- joint_vae: two capacities --------------------------------------------------------------------------


def _kl_standard(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    mu, logvar = mu.double(), logvar.double()
    return 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)


@pytest.mark.parametrize(
    ("step", "capacity_z", "capacity_c"),
    [
        (0, 0.0, 0.0),
        (75_000, 10.0, 0.275),
        (150_000, 20.0, 0.55),
        (299_000, 40.0 * 299 / 300, 1.1 * 299 / 300),
        (299_700, 40.0 * 299.7 / 300, math.log(3)),
        (300_000, 40.0, math.log(3)),
        (900_000, 40.0, math.log(3)),
        (None, 40.0, math.log(3)),
    ],
)
def test_joint_capacities_at_given_steps(step: int | None, capacity_z: float, capacity_c: float) -> None:
    """Paper's dSprites defaults: C_z 0 -> 40 and C_c 0 -> 1.1 nats over 300,000 steps, gamma 150 each;
    C_c is capped at log 3 = 1.0986 (one 3-way variable), which binds from step 299,622 on.
    loss = recon + 150 |kl_z - C_z| + 150 |kl_c - C_c| by hand."""
    torch.manual_seed(0)
    model = models.create("joint_vae", latent_dim=6)
    x = _binary(5, 1, 64, 64)
    out = model(x)
    terms = model.loss(x, out, step=step)
    assert terms["capacity_z"].item() == pytest.approx(capacity_z, rel=FLOAT32_FEW_ROUNDINGS.rtol)
    assert terms["capacity_c"].item() == pytest.approx(capacity_c, rel=FLOAT32_FEW_ROUNDINGS.rtol)
    recon = _bernoulli_nll(x, out.logits).mean()
    kl_z = _kl_standard(out.mu, out.logvar).mean()
    probabilities = out.log_probs.double().exp()
    kl_c = ((probabilities * probabilities.log()).sum(-1) + math.log(3)).mean()
    expected = recon + 150.0 * (kl_z - capacity_z).abs() + 150.0 * (kl_c - capacity_c).abs()
    _close(terms["loss"], expected, **FLOAT32_AMPLIFIED_KL)


def test_discrete_capacity_never_exceeds_sum_of_log_categories() -> None:
    """A configured C_c max (10 nats) above log 2 + log 5 is clamped there at every step; below, linear."""
    model = models.create("joint_vae", input_shape=(6,), latent_dim=2, categories=(2, 5), capacity_c_max=10.0, capacity_c_steps=1000)
    cap = math.log(2) + math.log(5)
    for step in [*range(0, 3000, 37), 10**9, None]:
        value = model.capacity_c(step)
        assert value <= cap
        expected = cap if step is None else min(10.0 * min(step / 1000, 1.0), cap)
        assert value == pytest.approx(expected, rel=FLOAT64_REORDERED.rtol)
    assert model.capacity_c(None) == model.capacity_c(1000) == pytest.approx(cap, rel=FLOAT64_ONE_ROUNDING_RTOL)
    assert model.capacity_c(50) == pytest.approx(0.5, rel=FLOAT64_REORDERED.rtol)


def test_joint_kl_terms_by_hand() -> None:
    """kl_c sums over the discrete variables (here 3- and 4-way) of sum_k q log q + log K_i; kl_z is the
    Gaussian KL summed over dims: both per example by loops, then batch-averaged in the loss."""
    torch.manual_seed(2)
    model = models.create("joint_vae", input_shape=(10,), latent_dim=2, categories=(3, 4))
    x = _binary(5, 10)
    out = model(x)
    rows = out.log_probs.double().exp().tolist()
    for b, row in enumerate(rows):
        first, second = row[:3], row[3:]
        hand = sum(p * math.log(p) for p in first) + math.log(3) + sum(p * math.log(p) for p in second) + math.log(4)
        assert out.kl_c[b].item() == pytest.approx(hand, rel=FLOAT32_TINY_VALUES.rtol, abs=FLOAT32_TINY_VALUES.atol)
        assert sum(first) == pytest.approx(1.0, abs=FLOAT32_ORDER_ONE.atol)
        assert sum(second) == pytest.approx(1.0, abs=FLOAT32_ORDER_ONE.atol)
    _close(out.kl_z, _kl_standard(out.mu, out.logvar), **FLOAT32_SMALL_VALUES)
    terms = model.loss(x, out, step=0)
    assert terms["kl_c"].item() == pytest.approx(sum(out.kl_c.tolist()) / 5, rel=FLOAT32_FEW_ROUNDINGS.rtol)
    assert out.z.shape == (5, 2 + 7) and torch.allclose(out.z[:, 2:5].sum(-1), torch.ones(5))


def test_joint_log_likelihood_matches_quadrature() -> None:
    """log p(x) = log sum_c p(c) int p(x|z,c) N(z; 0, 1) dz, by enumeration of c and the trapezoid rule
    on a fine z grid (1-d continuous latent); the importance-sampled estimate agrees within 0.03 nats."""
    torch.manual_seed(0)
    model = models.create("joint_vae", input_shape=(8,), latent_dim=1, categories=(2,))
    x = _binary(3, 8)
    grid = torch.linspace(-9.0, 9.0, 6001, dtype=torch.float64)
    per_class = []
    for c in range(2):
        code = torch.cat([grid.float().unsqueeze(-1), torch.nn.functional.one_hot(torch.full((6001,), c), 2).float()], -1)
        with torch.no_grad():
            log_px_z = -_bernoulli_nll(x.unsqueeze(1), model.decode(code).unsqueeze(0), event_dims=1)
        log_integrand = log_px_z - 0.5 * grid**2 - 0.5 * math.log(2 * math.pi)
        peak = log_integrand.max(dim=1, keepdim=True).values
        integral = torch.trapezoid((log_integrand - peak).exp(), grid, dim=1)
        per_class.append(peak.squeeze(1) + integral.log() - math.log(2))
    exact = torch.logsumexp(torch.stack(per_class), dim=0)
    _close(model.log_likelihood(x, 4000, chunk=1000), exact, **IS_LOG_LIKELIHOOD_QUADRATURE)


# --- Bessel functions: references by other methods ---------------------------------------------------------

_PI = Decimal(
    "3.14159265358979323846264338327950288419716939937510582097494459230781640628620899862803482534211706798214808651"
)


def _ive_half_integer(v: float, x: float) -> Decimal:
    """``I_v(x) e^{-x}`` for half-integer ``v``: the closed forms ``I_{1/2} = sqrt(2/(pi x)) sinh x`` and
    ``I_{3/2} = sqrt(2/(pi x)) (cosh x - sinh x / x)``, then ``I_{v+1} = I_{v-1} - (2v/x) I_v``, all in
    150-digit decimal arithmetic (which absorbs the recurrence's cancellation)."""
    with decimal.localcontext() as context:
        context.prec = 150
        big_x = Decimal(x)
        factor = (2 / (_PI * big_x)).sqrt()
        decay = (-2 * big_x).exp()
        sinh_scaled, cosh_scaled = (1 - decay) / 2, (1 + decay) / 2
        previous, current = factor * sinh_scaled, factor * (cosh_scaled - sinh_scaled / big_x)
        if v == 0.5:
            return +previous
        order = Decimal("1.5")
        while order < Decimal(repr(v)):
            previous, current = current, previous - (2 * order / big_x) * current
            order += 1
        return +current


def _ive_integer_series(n: int, x: float) -> Decimal:
    """``I_n(x) e^{-x}`` by its power series ``sum_k (x/2)^{2k+n} / (k! (k+n)!)`` in 60-digit decimals."""
    with decimal.localcontext() as context:
        context.prec = 60
        half = Decimal(x) / 2
        term = half**n / math.factorial(n)
        total, k = term, 0
        while k <= x or term > total * Decimal(10) ** -70:
            k += 1
            term = term * half * half / (k * (k + n))
            total += term
        return total * (-Decimal(x)).exp()


def _ln(value: Decimal) -> float:
    return float(value.ln())


HALF_INTEGER_POINTS = [0.01, 0.5, 3.0, 9.0, 13.0, 19.9, 20.1, 47.0, 75.0, 181.0, 190.5, 1e3, 1e4, 1e5]


@pytest.mark.parametrize("v", [0.5, 1.5, 4.5, 9.5, 19.5])
def test_log_bessel_matches_half_integer_closed_forms(v: float) -> None:
    """log(I_v(x) e^{-x}) for v = m/2 - 1 with m = 3, 5, 11, 21, 41, from 0.01 to 1e5 (both sides of the
    series/asymptotic switch at max(20, v^2/2)): absolute error below 1e-12 (relative, for I_v)."""
    x = torch.tensor(HALF_INTEGER_POINTS, dtype=torch.float64)
    expected = torch.tensor([_ln(_ive_half_integer(v, p)) for p in HALF_INTEGER_POINTS], dtype=torch.float64)
    _close(log_bessel_ive(v, x), expected, **LOG_BESSEL_IVE)
    _close(log_bessel_iv(v, x), expected + x, **LOG_BESSEL_IV)


@pytest.mark.parametrize("v", [0, 1])
def test_log_bessel_matches_torch_special_for_orders_zero_and_one(v: int) -> None:
    x = torch.tensor([1e-3, 0.2, 5.0, 9.0, 13.0, 19.99, 20.01, 300.0, 1e3, 3e4, 1e5], dtype=torch.float64)
    reference = torch.special.i0e(x) if v == 0 else torch.special.i1e(x)
    _close(log_bessel_ive(v, x), reference.log(), **LOG_BESSEL_TORCH_SPECIAL)


@pytest.mark.parametrize("v", [2, 4, 10])
def test_log_bessel_matches_exact_power_series(v: int) -> None:
    points = [0.05, 2.0, 9.0, 13.0, 19.9, 20.1, 49.9, 50.1, 120.0, 300.0]
    x = torch.tensor(points, dtype=torch.float64)
    expected = torch.tensor([_ln(_ive_integer_series(v, p)) for p in points], dtype=torch.float64)
    _close(log_bessel_ive(v, x), expected, **LOG_BESSEL_IVE)


@pytest.mark.parametrize("v", [0.5, 4.5, 9.5])
def test_log_bessel_gradient_is_the_ratio_plus_v_over_x(v: float) -> None:
    """d/dx log I_v(x) = I_{v+1}(x)/I_v(x) + v/x, with the ratio from the closed forms; and
    :func:`bessel_ratio` is that ratio."""
    points = [0.01, 1.0, 19.9, 20.1, 60.0, 200.0, 1e4, 1e5]
    x = torch.tensor(points, dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(log_bessel_iv(v, x).sum(), x)
    ratio = torch.tensor(
        [float(_ive_half_integer(v + 1, p) / _ive_half_integer(v, p)) for p in points], dtype=torch.float64
    )
    _close(bessel_ratio(v, x.detach()), ratio, **BESSEL_RATIO)
    _close(gradient, ratio + v / x.detach(), **LOG_BESSEL_GRADIENT)


def test_bessel_rejects_bad_orders_and_dimensions() -> None:
    with pytest.raises(ValueError, match="v"):
        log_bessel_ive(-0.5, torch.ones(2))
    with pytest.raises(ValueError, match="m"):
        vmf_kl_uniform(torch.ones(2), 1)


# --- von Mises-Fisher: density, KL, sampler -----------------------------------------------------------------


def _simpson(values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Composite Simpson's rule along the last dim (odd number of equally spaced points)."""
    h = (grid[1] - grid[0]).item()
    weights = torch.ones(grid.numel(), dtype=torch.float64)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return (values * weights).sum(-1) * h / 3


def _vmf_kl_by_quadrature(kappa: float, m: int) -> float:
    """KL(vMF || uniform) = E_q[log q - log p] with q(z) = e^{kappa cos t} / Z on the sphere and the area
    element |S^{m-2}| sin^{m-2} t dt, t in [0, pi]: Z and the expectation both by Simpson's rule."""
    t = torch.linspace(0.0, math.pi, 400_001, dtype=torch.float64)
    weight = t.sin() ** (m - 2) * math.exp(log_sphere_area(m - 1))
    shifted = torch.exp(kappa * (t.cos() - 1.0)) * weight  # e^{kappa (cos t - 1)}: no overflow
    z_scaled = _simpson(shifted, t)
    mean_shift = (_simpson((t.cos() - 1.0) * shifted, t) / z_scaled).item()
    log_z = kappa + math.log(z_scaled.item())
    return kappa * (1.0 + mean_shift) - log_z + log_sphere_area(m)


@pytest.mark.parametrize("m", [2, 3, 5, 10])
@pytest.mark.parametrize("kappa", [0.3, 4.0, 60.0, 800.0])
def test_vmf_kl_matches_numerical_integration(kappa: float, m: int) -> None:
    expected = _vmf_kl_by_quadrature(kappa, m)
    got = vmf_kl_uniform(torch.tensor([kappa], dtype=torch.float64), m).item()
    assert got == pytest.approx(expected, rel=VMF_KL_QUADRATURE.rtol, abs=VMF_KL_QUADRATURE.atol)


@pytest.mark.parametrize("kappa", [0.5, 7.0, 150.0])
def test_vmf_kl_m3_by_quadrature_in_w(kappa: float) -> None:
    """m = 3, the form of the issue: w = mu^T z has density kappa e^{kappa w} / (2 sinh kappa) on [-1, 1]
    (the sphere's area measure is uniform in w for m = 3); KL = E_w[log q(w) - log p] with
    q(z) = e^{kappa w} / Z, Z = 2 pi int e^{kappa w} dw, p = 1 / (4 pi), both integrals on a grid in w."""
    w = torch.linspace(-1.0, 1.0, 200_001, dtype=torch.float64)
    shifted = torch.exp(kappa * (w - 1.0))
    z_scaled = _simpson(2 * math.pi * shifted, w).item()
    log_q = kappa * (w - 1.0) - math.log(z_scaled)
    density = 2 * math.pi * shifted / z_scaled
    expected = _simpson(density * (log_q + math.log(4 * math.pi)), w).item()
    got = vmf_kl_uniform(torch.tensor(kappa, dtype=torch.float64), 3).item()
    assert got == pytest.approx(expected, rel=VMF_KL_QUADRATURE.rtol)


@pytest.mark.parametrize("m", [3, 11, 41])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vmf_kl_and_gradient_are_stable_for_large_kappa(m: int, dtype: torch.dtype) -> None:
    """At kappa = 1e3, 1e4, 1e5: KL and dKL/dkappa = kappa (1 - A^2) - (m-1) A are finite and match the
    high-precision values (A and log I from the closed forms in 150-digit decimals)."""
    points = [1e3, 1e4, 1e5]
    kappa = torch.tensor(points, dtype=dtype, requires_grad=True)
    kl = vmf_kl_uniform(kappa, m)
    (gradient,) = torch.autograd.grad(kl.sum(), kappa)
    assert kl.dtype == dtype and torch.isfinite(kl).all() and torch.isfinite(gradient).all()
    v = m / 2 - 1
    expected_kl, expected_gradient = [], []
    with decimal.localcontext() as context:
        context.prec = 100
        for p in points:
            k = Decimal(p)
            lower, upper = _ive_half_integer(v, p), _ive_half_integer(v + 1, p)
            a = upper / lower
            log_area = Decimal(log_sphere_area(m))
            value = k * (a - 1) + Decimal(v) * k.ln() - Decimal(m) / 2 * (2 * _PI).ln() - lower.ln() + log_area
            expected_kl.append(float(value))
            expected_gradient.append(float(k * (1 - a * a) - (m - 1) * a))
    _close(kl, expected_kl, **VMF_KL_LARGE_KAPPA[dtype])
    _close(gradient, expected_gradient, **VMF_KL_GRADIENT_LARGE_KAPPA[dtype])


@pytest.mark.parametrize("m", [2, 5, 10])
@pytest.mark.parametrize("kappa", [0.7, 25.0, 3000.0])
def test_vmf_log_prob_integrates_to_one(m: int, kappa: float) -> None:
    t = torch.linspace(0.0, math.pi, 200_001, dtype=torch.float64)
    z = torch.zeros(t.numel(), m, dtype=torch.float64)
    z[:, 0], z[:, 1] = t.cos(), t.sin()
    mu = torch.zeros(m, dtype=torch.float64)
    mu[0] = 1.0
    density = vmf_log_prob(z, mu, torch.tensor(kappa, dtype=torch.float64)).exp()
    area_element = t.sin() ** (m - 2) * math.exp(log_sphere_area(m - 1))
    assert _simpson(density * area_element, t).item() == pytest.approx(1.0, rel=SIMPSON_DENSITY_RTOL)


def _mean_resultant_reference(kappa: float, m: int) -> float:
    """A_m(kappa) = I_{m/2}/I_{m/2-1}: coth k - 1/k for m = 3, i1e/i0e for m = 2, closed forms for odd m."""
    if m == 3:
        return 1.0 / math.tanh(kappa) - 1.0 / kappa
    if m == 2:
        k = torch.tensor(kappa, dtype=torch.float64)
        return (torch.special.i1e(k) / torch.special.i0e(k)).item()
    return float(_ive_half_integer(m / 2, kappa) / _ive_half_integer(m / 2 - 1, kappa))


@pytest.mark.parametrize(("m", "kappa"), [(2, 0.5), (3, 2.0), (5, 30.0), (9, 1e4), (21, 4.0)])
def test_vmf_sampler_matches_the_theoretical_moments(m: int, kappa: float) -> None:
    """20,000 draws (fixed seed) around a random mu: |z| = 1; E[mu^T z] = A_m(kappa),
    E[(mu^T z)^2] = 1 - (m-1) A_m / kappa, and the component orthogonal to mu has mean 0, each within 4
    standard errors."""
    torch.manual_seed(0)
    n = 20_000
    mu = torch.randn(m, dtype=torch.float64)
    mu = mu / mu.norm()
    z, eps = sample_vmf(mu.expand(n, m), torch.full((n,), kappa, dtype=torch.float64))
    assert z.shape == (n, m) and eps.shape == (n,)
    _close(z.norm(dim=-1), torch.ones(n), **FLOAT64_REORDERED_ABS)
    w = z @ mu
    a = _mean_resultant_reference(kappa, m)
    _close(vmf_mean_resultant(torch.tensor(kappa, dtype=torch.float64), m), a, **BESSEL_RATIO)
    _within_standard_errors(w, a)
    _within_standard_errors(w * w, 1.0 - (m - 1) * a / kappa)
    orthogonal = z - w.unsqueeze(-1) * mu
    helper = torch.randn(m, dtype=torch.float64)
    direction = helper - (helper @ mu) * mu
    _within_standard_errors(orthogonal @ (direction / direction.norm()), 0.0)


def test_vmf_sampler_reflects_e1_to_mu_at_the_extremes() -> None:
    """mu = e1, mu = -e1 and mu next to e1: samples at huge kappa sit at mu (|z - mu| ~ sqrt((m-1)/kappa))."""
    torch.manual_seed(0)
    m = 6
    e1 = torch.zeros(m, dtype=torch.float64)
    e1[0] = 1.0
    near = e1.clone()
    near[3] = 1e-9
    for mu in (e1, -e1, near / near.norm()):
        z, _ = sample_vmf(mu.expand(200, m).clone(), torch.full((200,), 1e6, dtype=torch.float64))
        assert ((z - mu).norm(dim=-1) < VMF_CONCENTRATED_SAMPLE_ATOL).all()
        _close(z.norm(dim=-1), torch.ones(200), **FLOAT64_REORDERED_ABS)


def test_wood_log_density_is_the_density_of_the_accepted_eps() -> None:
    """pi(eps | kappa) integrates to 1 over (0, 1), and its mean matches the accepted draws' mean."""
    torch.manual_seed(0)
    for m, kappa in [(3, 2.0), (10, 40.0)]:
        grid = torch.linspace(1e-9, 1 - 1e-9, 200_001, dtype=torch.float64)
        density = wood_log_density(grid, torch.full_like(grid, kappa), m).exp()
        assert _simpson(density, grid).item() == pytest.approx(1.0, rel=WOOD_DENSITY_RTOL)
        mean = _simpson(grid * density, grid).item()
        _, eps = sample_vmf(torch.eye(m, dtype=torch.float64)[:1].expand(20_000, m), torch.full((20_000,), kappa, dtype=torch.float64))
        _within_standard_errors(eps, mean)


@pytest.mark.parametrize(("m", "kappa"), [(3, 2.0), (5, 0.7)])
def test_reparameterised_kappa_gradient_is_unbiased_with_the_correction(m: int, kappa: float) -> None:
    """For f(z) = mu^T z, dE[f]/dkappa = dA/dkappa = 1 - A^2 - (m-1) A / kappa. The per-sample estimate
    g_rep + g_cor = dw/dkappa (eps fixed) + w d/dkappa log pi(eps | kappa) averages to it within 4
    standard errors; g_rep alone (the authors' code) is biased by many standard errors."""
    torch.manual_seed(0)
    n = 20_000
    kappas = torch.full((n,), kappa, dtype=torch.float64, requires_grad=True)
    mu = torch.eye(m, dtype=torch.float64)[:1].expand(n, m)
    z, eps = sample_vmf(mu, kappas)
    w = z[:, 0]
    (g_rep,) = torch.autograd.grad(w.sum(), kappas, retain_graph=True)
    (g_cor,) = torch.autograd.grad((w.detach() * wood_log_density(eps, kappas, m)).sum(), kappas)
    a = _mean_resultant_reference(kappa, m)
    derivative = 1 - a * a - (m - 1) * a / kappa
    _within_standard_errors(g_rep + g_cor, derivative)
    standard_error = g_rep.std().item() / math.sqrt(n)
    assert abs(g_rep.mean().item() - derivative) > 8 * standard_error


def test_reparameterised_mu_gradient_is_unbiased() -> None:
    """E[a^T z] = A a^T mu with mu = r / |r|: the mean of the per-sample gradients w.r.t. r is
    A (I - mu mu^T) a / |r|, each component within 4 standard errors."""
    torch.manual_seed(0)
    m, n, kappa = 5, 20_000, 10.0
    r = torch.tensor([0.3, -1.2, 0.5, 0.8, -0.1], dtype=torch.float64)
    a = torch.tensor([1.0, 0.5, -2.0, 0.3, 0.7], dtype=torch.float64)
    raw = r.expand(n, m).clone().requires_grad_(True)
    mu = raw / raw.norm(dim=-1, keepdim=True)
    z, _ = sample_vmf(mu, torch.full((n,), kappa, dtype=torch.float64))
    (gradient,) = torch.autograd.grad((z @ a).sum(), raw)
    unit = r / r.norm()
    expected = _mean_resultant_reference(kappa, m) * (a - (a @ unit) * unit) / r.norm()
    for j in range(m):
        _within_standard_errors(gradient[:, j], expected[j].item())


def test_sampler_gradients_are_finite_at_large_kappa() -> None:
    torch.manual_seed(0)
    kappa = torch.tensor([1e4, 1e5, 3.0], requires_grad=True)
    raw = torch.randn(3, 8, requires_grad=True)
    z, _ = sample_vmf(raw / raw.norm(dim=-1, keepdim=True), kappa)
    loss = (z * torch.randn(3, 8)).sum() + vmf_kl_uniform(kappa, 8).sum()
    grads = torch.autograd.grad(loss, [kappa, raw])
    assert all(torch.isfinite(g).all() for g in grads)


# --- hyperspherical_vae --------------------------------------------------------------------------------------


@pytest.mark.parametrize("gradient_correction", [True, False])
def test_hyperspherical_loss_and_its_kappa_gradient(gradient_correction: bool) -> None:
    """loss = recon + kl (value); its gradient w.r.t. kappa adds, with the correction, that of
    mean_b[(f_b - mean_{b' != b} f_b') log pi(eps_b | kappa_b)], f = the per-example reconstruction."""
    torch.manual_seed(0)
    model = models.create("hyperspherical_vae", input_shape=(12,), latent_dim=4, gradient_correction=gradient_correction)
    x = _binary(6, 12)
    out = model(x)
    terms = model.loss(x, out)
    f = _bernoulli_nll(x, out.logits)
    kl = vmf_kl_uniform(out.kappa.double(), 4)
    _close(terms["recon"], f.mean(), **FLOAT32_FEW_ROUNDINGS_NATS)
    _close(terms["kl"], kl.mean(), **FLOAT32_FEW_ROUNDINGS)
    _close(terms["loss"], f.mean() + kl.mean(), **FLOAT32_FEW_ROUNDINGS_NATS)
    _close(terms["kappa"], out.kappa.mean(), **FLOAT32_FEW_ROUNDINGS_RELATIVE)
    (got,) = torch.autograd.grad(terms["loss"], out.kappa, retain_graph=True)
    hand = f.mean() + kl.mean()
    if gradient_correction:
        f_fixed = f.detach()
        baseline = (f_fixed.sum() - f_fixed) / 5
        hand = hand + ((f_fixed - baseline) * wood_log_density(out.eps, out.kappa, 4)).mean()
    (expected,) = torch.autograd.grad(hand, out.kappa)
    _close(got, expected, **FLOAT32_CANCELLING)


def test_hyperspherical_kl_is_the_closed_form_of_the_encoded_kappa() -> None:
    torch.manual_seed(0)
    model = models.create("hyperspherical_vae", input_shape=(12,), latent_dim=3)
    x = _binary(4, 12)
    out = model(x)
    kappa = out.kappa.double()
    assert (kappa > 1.0).all()
    closed_form = kappa / kappa.tanh() - 1 + kappa.log() - kappa.sinh().log()  # m = 3
    _close(out.kl, closed_form, **FLOAT32_FEW_ROUNDINGS_SMALL)
    _close(out.mu.norm(dim=-1), torch.ones(4), **FLOAT32_ORDER_ONE)


def test_hyperspherical_fixed_kappa_has_a_constant_kl() -> None:
    model = models.create("hyperspherical_vae", input_shape=(12,), latent_dim=3, fixed_kappa=5.0)
    x = _binary(4, 12)
    out = model(x)
    assert torch.equal(out.kappa, torch.full((4,), 5.0))
    expected = 5.0 / math.tanh(5.0) - 1 + math.log(5.0) - math.log(math.sinh(5.0))
    assert model.loss(x, out)["kl"].item() == pytest.approx(expected, rel=FLOAT32_FEW_ROUNDINGS.rtol)
    assert not out.kl.requires_grad


def test_hyperspherical_log_likelihood_matches_quadrature_on_the_circle() -> None:
    """m = 2: log p(x) = log (1/2pi) int_0^{2pi} p(x | (cos t, sin t)) dt by the trapezoid rule; the
    importance-sampled estimate with 4,000 vMF draws agrees within 0.03 nats."""
    torch.manual_seed(0)
    model = models.create("hyperspherical_vae", input_shape=(8,), latent_dim=2)
    x = _binary(3, 8)
    t = torch.linspace(0.0, 2 * math.pi, 8001, dtype=torch.float64)
    with torch.no_grad():
        logits = model.decode(torch.stack([t.cos(), t.sin()], -1).float())
    log_px_z = -_bernoulli_nll(x.unsqueeze(1), logits.unsqueeze(0), event_dims=1)
    peak = log_px_z.max(dim=1, keepdim=True).values
    exact = peak.squeeze(1) + torch.trapezoid((log_px_z - peak).exp(), t, dim=1).log() - math.log(2 * math.pi)
    _close(model.log_likelihood(x, 4000, chunk=1000), exact, **IS_LOG_LIKELIHOOD_QUADRATURE)
