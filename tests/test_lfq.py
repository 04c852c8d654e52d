"""Tests of fastvae.nn.LFQ: quantisation, the entropy loss against brute force, the peer, compile, DDP.

The brute force builds what the issue defines and nothing of LFQ's factorisation: every code
``c in {-1, +1}^D`` as a row, the ``N x 2^D`` probabilities ``softmax_c(2 tau <x, c>)`` in float64,
``per_sample_entropy = mean_n H(p_n)``, ``codebook_entropy = H(mean_n p_n)``.
"""

from __future__ import annotations

import itertools
import math

import gloo_ranks
import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_close

from fastvae.bench import timing
from fastvae.nn import LFQ, LFQOutput, lfq

F64 = torch.float64


def _rand(*shape: int, seed: int, scale: float = 1.0, dtype: torch.dtype = F64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator, dtype=F64)).to(dtype)


def _all_codes(dim: int) -> torch.Tensor:
    """``(2^D, D)`` float64: row ``c`` is code ``c`` (channel 0 the most significant bit, ``1 -> +1``)."""
    return torch.tensor(list(itertools.product([-1.0, 1.0], repeat=dim)), dtype=F64)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """``-sum p log p`` over the last dim, ``0 log 0 = 0``."""
    return -torch.special.xlogy(p, p).sum(-1)


def _brute_force(rows: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(per_sample_entropy, codebook_entropy)`` of ``rows (N, D)`` from the N x 2^D softmax, float64."""
    probabilities = (2.0 * tau * rows.to(F64) @ _all_codes(rows.shape[1]).T).softmax(-1)
    return _entropy(probabilities).mean(), _entropy(probabilities.mean(0))


def _expected_loss(rows: torch.Tensor, module: LFQ) -> dict[str, torch.Tensor]:
    """Every loss of ``module`` on ``rows (N, D)``, by brute force, as the class docstring states them."""
    per_sample, codebook = _brute_force(rows, module.inv_temperature)
    signs = torch.where(rows > 0, 1.0, -1.0).to(F64)
    commitment = ((rows.to(F64) - signs) ** 2).mean()
    entropy_loss = per_sample - module.diversity_gamma * codebook
    return {
        "per_sample_entropy": per_sample,
        "codebook_entropy": codebook,
        "entropy_loss": entropy_loss,
        "commitment_loss": commitment,
        "loss": module.entropy_weight * entropy_loss + module.commitment_weight * commitment,
    }


# --- construction -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"dim": 0}, ValueError, "dim"),
        ({"dim": 21}, ValueError, "dim"),
        ({"dim": 4.0}, TypeError, "dim"),
        ({"dim": True}, TypeError, "dim"),
        ({"dim": 4, "entropy_weight": -0.1}, ValueError, "entropy_weight"),
        ({"dim": 4, "commitment_weight": float("nan")}, ValueError, "commitment_weight"),
        ({"dim": 4, "diversity_gamma": float("inf")}, ValueError, "diversity_gamma"),
        ({"dim": 4, "inv_temperature": 0.0}, ValueError, "inv_temperature"),
        ({"dim": 4, "inv_temperature": "100"}, TypeError, "inv_temperature"),
        ({"dim": 4, "channel_dim": 1.0}, TypeError, "channel_dim"),
    ],
)
def test_construction_rejects_bad_arguments(kwargs, error, name) -> None:
    with pytest.raises(error, match=name):
        LFQ(**kwargs)


def test_dim_past_the_limit_says_why() -> None:
    with pytest.raises(ValueError, match=r"dim must be in \[1, 20\].*2\*\*dim codes\), got 21"):
        LFQ(lfq.MAX_DIM + 1)
    assert LFQ(lfq.MAX_DIM).codebook_size == 2**20


def test_forward_rejects_bad_input() -> None:
    module = LFQ(4, channel_dim=1)
    with pytest.raises(ValueError, match="dim=4 channels along channel_dim=1"):
        module(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        module(torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="channel_dim must be in"):
        module(torch.zeros(4))


# --- quantisation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 5, 8, 20])
def test_quantized_and_indices_match_the_bitwise_formula(dim) -> None:
    x = _rand(13, dim, seed=dim, dtype=torch.float32)
    x[0] = 0.0
    x[1, 0] = -0.0
    out = LFQ(dim)(x)
    assert isinstance(out, LFQOutput)
    assert out.quantized.dtype == torch.float32 and out.indices.dtype == torch.int64
    for row, quantized, index in zip(x.tolist(), out.quantized.tolist(), out.indices.tolist(), strict=True):
        assert quantized == [1.0 if value > 0 else -1.0 for value in row]
        assert index == int("".join("1" if value > 0 else "0" for value in row), 2)


def test_straight_through_gradient_is_the_identity() -> None:
    x = _rand(6, 5, seed=1).requires_grad_()
    upstream = _rand(6, 5, seed=2)
    LFQ(5)(x).quantized.backward(upstream)
    assert torch.equal(x.grad, upstream)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_dtypes(dtype) -> None:
    out = LFQ(3)(_rand(4, 3, seed=0, dtype=dtype))
    assert out.quantized.dtype == dtype
    accumulation = F64 if dtype == F64 else torch.float32
    for name in ("loss", "entropy_loss", "commitment_loss", "per_sample_entropy", "codebook_entropy"):
        value = getattr(out, name)
        assert value.dtype == accumulation and value.shape == (), name


def test_channel_first_layout_matches_channel_last() -> None:
    x = _rand(2, 6, 3, 5, seed=3)  # (B, D, H, W)
    first = LFQ(6, channel_dim=1, inv_temperature=0.5)(x)
    last = LFQ(6, inv_temperature=0.5)(x.movedim(1, -1))
    assert torch.equal(first.quantized, last.quantized.movedim(-1, 1))
    assert torch.equal(first.indices, last.indices) and first.indices.shape == (2, 3, 5)
    for name in ("loss", "per_sample_entropy", "codebook_entropy", "commitment_loss"):
        assert_close(getattr(first, name), getattr(last, name), F64)


@pytest.mark.parametrize("channel_dim", [-1, 1])
def test_indices_to_codes_inverts_the_indices(channel_dim) -> None:
    module = LFQ(7, channel_dim=channel_dim)
    x = _rand(3, 7, 4, seed=4) if channel_dim == 1 else _rand(3, 4, 7, seed=4)
    out = module(x)
    codes = module.indices_to_codes(out.indices, dtype=F64)
    assert codes.dtype == F64
    assert torch.equal(codes, out.quantized.detach())
    every = module.indices_to_codes(torch.arange(2**7, dtype=torch.int32))
    if channel_dim == -1:
        assert torch.equal(every, _all_codes(7).float())


def test_indices_to_codes_rejects_bad_arguments() -> None:
    module = LFQ(3)
    with pytest.raises(TypeError, match="indices must be an integer tensor"):
        module.indices_to_codes(torch.zeros(2))
    with pytest.raises(TypeError, match="dtype must be"):
        module.indices_to_codes(torch.zeros(2, dtype=torch.int64), dtype=torch.int32)
    with pytest.raises(ValueError, match="channel_dim"):
        LFQ(3, channel_dim=2).indices_to_codes(torch.zeros(2, dtype=torch.int64))


# --- the entropy loss against brute force ----------------------------------------------------------------


@pytest.mark.parametrize("chunk_elements", [lfq._CHUNK_ELEMENTS, 40], ids=["one-chunk", "chunked"])
@pytest.mark.parametrize("tau", [0.3, 100.0])
@pytest.mark.parametrize("dim", [1, 2, 5, 8])
def test_losses_and_gradients_match_brute_force(monkeypatch, dim, tau, chunk_elements) -> None:
    # chunk_elements 40: D = 8 gives 40 // (16 + 16) = 1 row per chunk, D = 5 gives 40 // 12 = 3 (N = 23
    # is no multiple), D = 1 gives 20.
    monkeypatch.setattr(lfq, "_CHUNK_ELEMENTS", chunk_elements)
    module = LFQ(dim, entropy_weight=0.3, commitment_weight=0.7, diversity_gamma=1.3, inv_temperature=tau)
    x = _rand(23, dim, seed=10 + dim, scale=0.5 if tau < 1 else 0.02).requires_grad_()
    out = module(x)
    rows = x.detach().clone().requires_grad_()
    expected = _expected_loss(rows, module)
    for name, value in expected.items():
        assert_close(getattr(out, name), value, F64)
        (got,) = torch.autograd.grad(getattr(out, name), x, retain_graph=True)
        (want,) = torch.autograd.grad(value, rows, retain_graph=True)
        assert_close(got, want, F64)


def test_brute_force_entropies_are_not_trivial() -> None:
    """The brute-force cases above test something: neither entropy sits at 0 or at D log 2."""
    for tau, scale in ((0.3, 0.5), (100.0, 0.02)):
        per_sample, codebook = _brute_force(_rand(23, 8, seed=18, scale=scale), tau)
        assert 0.1 < per_sample < 8 * math.log(2) - 0.1
        assert per_sample + 0.1 < codebook < 8 * math.log(2) - 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_compute_in_float32(dtype) -> None:
    module = LFQ(8, inv_temperature=2.0)
    x = _rand(64, 8, seed=5, scale=0.3, dtype=dtype).requires_grad_()
    out = module(x)
    rows = x.detach().to(F64).requires_grad_()  # the rounded input, exactly
    expected = _expected_loss(rows, module)
    for name in ("per_sample_entropy", "codebook_entropy", "commitment_loss", "loss"):
        assert_close(getattr(out, name), expected[name], torch.float32)
    (got,) = torch.autograd.grad(out.codebook_entropy, x)
    (want,) = torch.autograd.grad(expected["codebook_entropy"], rows)
    assert_close(got, want.to(dtype), dtype)


@pytest.mark.parametrize("dim, rows, chunk_rows", [(1, 5, 2), (4, 7, 3), (5, 7, 3), (6, 9, 4)])
def test_chunked_entropy_function_gradcheck(dim, rows, chunk_rows) -> None:
    x = _rand(rows, dim, seed=dim, scale=0.4).requires_grad_()
    assert torch.autograd.gradcheck(lambda r: lfq._CodebookEntropy.apply(r, 1.5, chunk_rows, False), (x,))


def test_dim_20_matches_brute_force() -> None:
    module = LFQ(20, inv_temperature=0.2)
    x = _rand(3, 20, seed=20, scale=0.3).requires_grad_()
    out = module(x)
    rows = x.detach().clone().requires_grad_()
    # <x, c> for all 2^20 codes, 2^16 codes at a time (the code matrix in one piece is 168 MB).
    dots = torch.cat([rows @ _code_rows(20, start, 2**16).T for start in range(0, 2**20, 2**16)], dim=1)
    probabilities = (2.0 * module.inv_temperature * dots).softmax(-1)
    per_sample, codebook = _entropy(probabilities).mean(), _entropy(probabilities.mean(0))
    assert_close(out.per_sample_entropy, per_sample, F64)
    assert_close(out.codebook_entropy, codebook, F64)
    (got,) = torch.autograd.grad(out.codebook_entropy, x)
    (want,) = torch.autograd.grad(codebook, rows)
    assert_close(got, want, F64)


def _code_rows(dim: int, start: int, count: int) -> torch.Tensor:
    """Codes ``start .. start + count - 1`` of ``dim`` bits as ``(count, dim)`` float64 rows of +-1."""
    shifts = torch.arange(dim - 1, -1, -1)
    return (((torch.arange(start, start + count)[:, None] >> shifts) & 1) * 2 - 1).to(F64)


def test_codebook_entropy_of_disjoint_uniform_rows() -> None:
    """Rows that each spread evenly over their own 2^10 codes (first 10 channels 0, the others +-1 far
    from 0): H(q) = log N + 10 log 2, and each row's entropy is 10 log 2."""
    rows = torch.zeros(4, 20, dtype=F64)
    rows[:, 10:] = torch.where(_rand(4, 10, seed=6) > 0, 1.0, -1.0)
    rows[:, 10:12] = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # distinct rows
    out = LFQ(20)(rows)
    assert_close(out.codebook_entropy, torch.tensor(math.log(4) + 10 * math.log(2), dtype=F64), F64)
    assert_close(out.per_sample_entropy, torch.tensor(10 * math.log(2), dtype=F64), F64)


def test_eval_mode_computes_the_training_outputs() -> None:
    module = LFQ(6, inv_temperature=0.5)
    x = _rand(9, 6, seed=7)
    train = module.train()(x)
    evaluated = module.eval()(x)
    for name, value in train._asdict().items():
        assert torch.equal(getattr(evaluated, name), value), name


def test_empty_input_gives_nan_losses() -> None:
    out = LFQ(4)(torch.zeros(0, 4))
    assert out.quantized.shape == (0, 4) and out.indices.shape == (0,)
    for name in ("loss", "per_sample_entropy", "codebook_entropy", "commitment_loss"):
        assert getattr(out, name).isnan(), name


def test_forward_backward_memory_stays_below_n_times_codebook_size() -> None:
    """D = 12, N = 4096: the N x 2^D float32 probability matrix alone is 64 MiB; fastvae's whole
    forward and backward must stay under an eighth of that (its chunks are N x 2^6)."""
    module = LFQ(12)
    x = _rand(4096, 12, seed=8, dtype=torch.float32).requires_grad_()

    def step() -> None:
        out = module(x)
        (out.quantized.sum() + out.loss).backward()

    peak = timing.peak_memory_bytes(step, torch.device("cpu"))
    assert 0 < peak < 4096 * 2**12 * 4 // 8


# --- vector-quantize-pytorch ------------------------------------------------------------------------------


def _peer(dim: int):
    peer = pytest.importorskip("vector_quantize_pytorch", reason="vector-quantize-pytorch is not installed")
    # dim = log2(codebook_size), one codebook: no projections; codebook_scale 1: codes are +-1.
    return peer.LFQ(dim=dim, entropy_loss_weight=0.1, commitment_loss_weight=0.25, diversity_gamma=1.0,
                    num_codebooks=1, codebook_scale=1.0)


@pytest.mark.parametrize("shape, channel_dim", [((4, 33, 9), -1), ((2, 9, 5, 3), 1)], ids=["sequence", "image"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_quantized_and_indices_equal_the_peer(shape, channel_dim, training) -> None:
    peer = _peer(9).train(training)
    x = _rand(*shape, seed=9, dtype=torch.float32)
    x[0, 0] = 0.0
    quantized, indices, _ = peer(x)
    out = LFQ(9, channel_dim=channel_dim).train(training)(x)
    assert torch.equal(out.indices, indices)
    assert torch.equal(out.quantized, quantized)


def test_losses_equal_the_peer_where_its_log_clamp_is_inactive() -> None:
    """At tau = 0.05 every code probability is far above the peer's 1e-5 clamp, so its entropies are exact."""
    peer = _peer(6).train()
    x = _rand(4, 50, 6, seed=11, dtype=torch.float32)
    assert (2.0 * 0.05 * x.to(F64) @ _all_codes(6).T).softmax(-1).min() > 1e-3
    (_, _, loss), breakdown = peer(x, inv_temperature=0.05, return_loss_breakdown=True)
    out = LFQ(6, inv_temperature=0.05)(x)
    assert_close(out.per_sample_entropy, breakdown.per_sample_entropy, torch.float32)
    assert_close(out.codebook_entropy, breakdown.batch_entropy, torch.float32)
    assert_close(out.commitment_loss, breakdown.commitment, torch.float32)
    assert_close(out.loss, loss, torch.float32)


# --- torch.compile ------------------------------------------------------------------------------------------


def test_compile_fullgraph_step_matches_eager(monkeypatch) -> None:
    monkeypatch.setattr(lfq, "_CHUNK_ELEMENTS", 64)  # D = 6: 4 rows per chunk, 5 chunks for N = 18
    module = LFQ(6, inv_temperature=0.5)

    def step(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = module(x)
        return out.quantized, out.loss

    x = _rand(2, 9, 6, seed=12, dtype=torch.float32).requires_grad_()
    quantized, loss = step(x)
    (quantized.sum() * 0.1 + loss).backward()
    eager_grad, x.grad = x.grad, None

    torch._dynamo.reset()
    compiled_quantized, compiled_loss = torch.compile(step, fullgraph=True)(x)
    (compiled_quantized.sum() * 0.1 + compiled_loss).backward()
    assert torch.equal(compiled_quantized, quantized)
    assert_close(compiled_loss, loss, torch.float32)
    assert_close(x.grad, eager_grad, torch.float32)


# --- torch.distributed ----------------------------------------------------------------------------------------

DDP_WORLD_SIZE = 2
DDP_DIM, DDP_ROWS_PER_RANK = 5, 7


def _ddp_batch() -> torch.Tensor:
    """(world_size, rows per rank, D): rank r is fed batch[r]; a single process is fed all of it."""
    return _rand(DDP_WORLD_SIZE, DDP_ROWS_PER_RANK, DDP_DIM, seed=1234, scale=0.4)


def _ddp_module() -> LFQ:
    return LFQ(DDP_DIM, entropy_weight=0.3, commitment_weight=0.7, inv_temperature=1.5)


def _ddp_work(rank: int) -> dict:
    """One rank: a training step on this rank's rows, and an eval forward."""
    module = _ddp_module()
    x = _ddp_batch()[rank].requires_grad_()
    out = module(x)
    out.loss.backward()
    evaluated = module.eval()(x.detach())
    return {"out": {name: value.detach() for name, value in out._asdict().items()}, "grad": x.grad,
            "eval_codebook_entropy": evaluated.codebook_entropy}


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Run the two-rank gloo job once; return each rank's saved results."""
    return gloo_ranks.run(_ddp_work, tmp_path_factory.mktemp("lfq_ddp"), world_size=DDP_WORLD_SIZE)


def test_ddp_codebook_entropy_is_over_every_ranks_rows(ddp_results) -> None:
    single = _ddp_module()(_ddp_batch().reshape(-1, DDP_DIM))
    first, second = (result["out"]["codebook_entropy"] for result in ddp_results)
    assert torch.equal(first, second)
    assert_close(first, single.codebook_entropy, F64)
    # The per-sample terms are the rank's own: their mean over ranks is the whole batch's.
    for name in ("per_sample_entropy", "commitment_loss", "loss"):
        mean = sum(result["out"][name] for result in ddp_results) / DDP_WORLD_SIZE
        assert_close(mean, getattr(single, name), F64)


def test_ddp_averaged_gradient_equals_a_single_process(ddp_results) -> None:
    """What DDP's gradient averaging computes from the ranks' gradients (the mean over ranks of each
    rank's contribution) is the gradient of one process fed every rank's rows."""
    x = _ddp_batch().reshape(-1, DDP_DIM).requires_grad_()
    _ddp_module()(x).loss.backward()
    for rank, result in enumerate(ddp_results):
        rows = slice(rank * DDP_ROWS_PER_RANK, (rank + 1) * DDP_ROWS_PER_RANK)
        assert_close(result["grad"] / DDP_WORLD_SIZE, x.grad[rows], F64)


def test_ddp_eval_mode_uses_the_ranks_own_rows(ddp_results) -> None:
    for rank, result in enumerate(ddp_results):
        local = _ddp_module()(_ddp_batch()[rank])
        assert_close(result["eval_codebook_entropy"], local.codebook_entropy, F64)
    assert not torch.equal(ddp_results[0]["eval_codebook_entropy"], ddp_results[1]["eval_codebook_entropy"])
