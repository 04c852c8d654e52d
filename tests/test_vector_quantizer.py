"""Tests of fastvae.nn.VectorQuantizer: construction, layouts, the EMA update, dead-code restart, DDP.

The EMA update is checked against hand-computed numbers written as arithmetic from the rule in the
class docstring (the VQ-VAE paper's appendix A.1): per code ``k`` with ``n_k`` batch vectors summing
to ``s_k``, ``N_k <- decay N_k + (1 - decay) n_k``, ``m_k <- decay m_k + (1 - decay) s_k``,
``n = sum_k N_k``, ``N'_k = (N_k + eps) / (n + K eps) n`` and ``e_k = m_k / N'_k``. Nearest codes
and losses are checked against float64 brute force written here.
"""

from __future__ import annotations


import backends
import gloo_ranks
import pytest
import torch
import torch.nn.functional as F
from tolerances import FLOAT64_REORDERED, assert_close
from torch import nn

from fastvae.nn import VectorQuantizer, vector_quantizer
from fastvae.ops.vq import OP_NAMES, vector_quantize_rows, vq_code_stats

F64 = torch.float64


# --- backends ---------------------------------------------------------------------------------------




@pytest.fixture(params=backends.PARAMS)
def device(request: pytest.FixtureRequest):
    """The device to build inputs on, with the parametrised backend forced for the whole test."""
    with backends.forced(request.param, OP_NAMES):
        yield backends.DEVICE


# --- helpers ------------------------------------------------------------------------------------------


def _rand(*shape: int, seed: int, scale: float = 1.0, dtype: torch.dtype = F64, device="cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator, dtype=F64)).to(device=device, dtype=dtype)


def _tensor(values, device) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, device=device)


def _module(num_codes: int, dim: int, device, **kwargs) -> VectorQuantizer:
    """A float64 module on ``device`` (float64 so that hand-computed numbers compare to 1e-10)."""
    return VectorQuantizer(num_codes, dim, **kwargs).to(device=device, dtype=F64)


def _set_state(vq: VectorQuantizer, codebook, count=None) -> None:
    """Overwrite the codebook and EMA buffers in place; count defaults to 1 and ema_sum to count * codebook."""
    with torch.no_grad():
        codebook = torch.as_tensor(codebook, dtype=F64, device=vq.codebook.device)
        vq.codebook.copy_(codebook)
        count = torch.ones(vq.num_codes, dtype=F64) if count is None else torch.as_tensor(count, dtype=F64)
        vq.ema_count.copy_(count)
        if vq.ema:
            vq.ema_sum.copy_(codebook * vq.ema_count[:, None])


def _snapshot(vq: VectorQuantizer) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in vq.state_dict().items()}


def _nearest_l2(rows: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """float64 brute-force argmin of squared distances (first minimum on ties)."""
    x64, e64 = rows.detach().cpu().double(), codebook.detach().cpu().double()
    return ((x64[:, None, :] - e64[None]) ** 2).sum(-1).argmin(dim=1)


def _smoothed(count: torch.Tensor, eps: float) -> torch.Tensor:
    """N'_k = (N_k + eps) / (n + K eps) * n with n = sum_k N_k."""
    n = count.sum()
    return (count + eps) / (n + count.numel() * eps) * n


# --- construction -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        pytest.param({"num_codes": 0}, ValueError, "num_codes", id="num_codes-0"),
        pytest.param({"num_codes": -3}, ValueError, "num_codes", id="num_codes-negative"),
        pytest.param({"num_codes": 4.0}, TypeError, "num_codes", id="num_codes-float"),
        pytest.param({"num_codes": True}, TypeError, "num_codes", id="num_codes-bool"),
        pytest.param({"dim": 0}, ValueError, "dim", id="dim-0"),
        pytest.param({"dim": "3"}, TypeError, "dim", id="dim-str"),
        pytest.param({"dim": 2.5}, TypeError, "dim", id="dim-float"),
        pytest.param({"beta": -0.5}, ValueError, "beta", id="beta-negative"),
        pytest.param({"beta": "0.25"}, TypeError, "beta", id="beta-str"),
        pytest.param({"ema": 1}, TypeError, "ema", id="ema-int"),
        pytest.param({"decay": 1.0}, ValueError, "decay", id="decay-1"),
        pytest.param({"decay": 1.5}, ValueError, "decay", id="decay-above-1"),
        pytest.param({"decay": -0.1}, ValueError, "decay", id="decay-negative"),
        pytest.param({"decay": float("nan")}, ValueError, "decay", id="decay-nan"),
        pytest.param({"decay": None}, TypeError, "decay", id="decay-none"),
        pytest.param({"eps": 0.0}, ValueError, "eps", id="eps-0"),
        pytest.param({"eps": -1e-5}, ValueError, "eps", id="eps-negative"),
        pytest.param({"eps": "1e-5"}, TypeError, "eps", id="eps-str"),
        pytest.param({"dead_code_threshold": -1.0}, ValueError, "dead_code_threshold", id="threshold-negative"),
        pytest.param({"dead_code_threshold": "1"}, TypeError, "dead_code_threshold", id="threshold-str"),
        pytest.param({"metric": "dot"}, ValueError, "metric", id="metric-unknown"),
        pytest.param({"metric": "Cosine"}, ValueError, "metric", id="metric-case"),
        pytest.param({"channel_dim": 1.0}, TypeError, "channel_dim", id="channel_dim-float"),
        pytest.param({"channel_dim": None}, TypeError, "channel_dim", id="channel_dim-none"),
        pytest.param({"precision": "fp32"}, ValueError, "precision", id="precision-unknown"),
        pytest.param({"precision": "TF32"}, ValueError, "precision", id="precision-case"),
        pytest.param({"precision": None}, ValueError, "precision", id="precision-none"),
    ],
)
def test_construction_rejects_bad_arguments(kwargs, error, name) -> None:
    arguments = {"num_codes": 4, "dim": 3, **kwargs}
    num_codes, dim = arguments.pop("num_codes"), arguments.pop("dim")
    with pytest.raises(error, match=rf"^{name}\b"):
        VectorQuantizer(num_codes, dim, **arguments)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"decay": 0.0},
        {"beta": 0.0},
        {"dead_code_threshold": 0.0},
        {"eps": 1e-12},
        {"metric": "cosine"},
        {"precision": "tf32"},
    ],
    ids=["defaults", "decay-0", "beta-0", "threshold-0", "tiny-eps", "cosine", "tf32"],
)
@pytest.mark.parametrize("ema", (False, True))
def test_construction_accepts_boundary_values(ema, kwargs) -> None:
    vq = VectorQuantizer(5, 3, ema=ema, **kwargs)
    for key, value in kwargs.items():
        assert getattr(vq, key) == value


@pytest.mark.parametrize(("num_codes", "dim"), [(1, 1), (7, 3), (257, 65)])
def test_codebook_is_a_parameter_without_ema(num_codes, dim) -> None:
    vq = VectorQuantizer(num_codes, dim)
    assert vq.codebook.shape == (num_codes, dim)
    assert isinstance(vq.codebook, nn.Parameter) and vq.codebook.requires_grad
    assert [name for name, _ in vq.named_parameters()] == ["codebook"]
    assert [name for name, _ in vq.named_buffers()] == ["ema_count", "skipped_updates"]
    assert torch.equal(vq.ema_count, torch.ones(num_codes))
    assert torch.equal(vq.skipped_updates, torch.zeros(num_codes, dtype=torch.int64))


@pytest.mark.parametrize(("num_codes", "dim"), [(1, 1), (7, 3), (257, 65)])
def test_codebook_is_a_buffer_with_ema(num_codes, dim) -> None:
    vq = VectorQuantizer(num_codes, dim, ema=True)
    assert vq.codebook.shape == (num_codes, dim)
    assert not isinstance(vq.codebook, nn.Parameter) and not vq.codebook.requires_grad
    assert list(vq.parameters()) == []
    assert sorted(name for name, _ in vq.named_buffers()) == ["codebook", "ema_count", "ema_sum", "skipped_updates"]
    assert sorted(vq.state_dict()) == ["codebook", "ema_count", "ema_sum", "skipped_updates"]
    # Initial state: N_k = 1 and m_k = e_k, so that e_k = m_k / N_k holds from the start.
    assert torch.equal(vq.ema_count, torch.ones(num_codes))
    assert torch.equal(vq.ema_sum, vq.codebook)
    assert vq.ema_sum.data_ptr() != vq.codebook.data_ptr()


# --- forward: layouts and values -------------------------------------------------------------------------


@pytest.mark.parametrize("channel_dim", (1, -3))
@pytest.mark.parametrize("ema", (False, True))
def test_channel_first_input(device, ema, channel_dim) -> None:
    vq = _module(11, 3, device, ema=ema, channel_dim=channel_dim).eval()
    with torch.no_grad():
        vq.codebook.copy_(_rand(11, 3, seed=1))
    x = _rand(2, 3, 5, 7, seed=2, device=device)  # (B, C, H, W)
    out = vq(x)
    assert out.quantized.shape == (2, 3, 5, 7) and out.indices.shape == (2, 5, 7)
    rows = x.movedim(1, -1).reshape(-1, 3)
    expected = _nearest_l2(rows, vq.codebook).reshape(2, 5, 7)
    assert torch.equal(out.indices.cpu(), expected)
    # quantized[b, :, h, w] is the code of position (b, h, w).
    assert torch.equal(out.quantized, vq.codebook.detach()[out.indices].movedim(-1, 1))
    assert_close(out.commitment_loss, F.mse_loss(rows.cpu(), vq.codebook.detach().cpu()[expected.reshape(-1)]), F64)


@pytest.mark.parametrize("precision", (None, "ieee", "tf32", "3xtf32"))
def test_precision_is_stored_shown_and_passed_to_the_op(device, monkeypatch, precision) -> None:
    kwargs = {} if precision is None else {"precision": precision}
    expected = "ieee" if precision is None else precision  # documented default: exact float32 products
    vq = _module(5, 4, device, **kwargs).eval()
    assert vq.precision == expected and f"precision={expected!r}" in repr(vq)
    seen: list[str] = []

    def spy(*args, **kwargs):
        seen.append(kwargs["precision"])
        return vector_quantize_rows(*args, **kwargs)

    monkeypatch.setattr(vector_quantizer, "vector_quantize_rows", spy)
    x = _rand(3, 4, seed=4, device=device)
    out = vq(x)
    assert seen == [expected]
    assert torch.equal(out.indices.cpu(), _nearest_l2(x, vq.codebook))


def test_channel_last_default_with_leading_dims(device) -> None:
    vq = _module(5, 4, device).eval()
    x = _rand(3, 2, 6, 4, seed=3, device=device)
    out = vq(x)
    assert out.quantized.shape == x.shape and out.indices.shape == (3, 2, 6)
    expected = _nearest_l2(x.reshape(-1, 4), vq.codebook).reshape(3, 2, 6)
    assert torch.equal(out.indices.cpu(), expected)
    assert torch.equal(out.quantized, vq.codebook.detach()[out.indices])


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        pytest.param(lambda: torch.zeros(2, 4, 5, 7, dtype=F64), ValueError, r"^x\b", id="wrong-channel-count"),
        pytest.param(lambda: torch.zeros(2, 5, 7, 3, dtype=F64), ValueError, r"^x\b", id="channels-last-given"),
        pytest.param(lambda: torch.zeros(2, 3, 5, 7, dtype=torch.int64), TypeError, r"^x\b", id="integer-x"),
        pytest.param(
            lambda: torch.zeros(2, 3, 5, 7, dtype=torch.float32), TypeError, r"^codebook\b", id="mixed-dtype"
        ),
        pytest.param(
            lambda: torch.zeros(2, 3, 5, 7, dtype=F64, device="meta"), ValueError, r"^codebook\b", id="meta-x"
        ),
        pytest.param(lambda: [[0.0, 0.0, 0.0]], TypeError, r"^x\b", id="list-x"),
        pytest.param(lambda: torch.zeros(3, dtype=F64), ValueError, r"^channel_dim\b", id="channel_dim-out-of-range"),
    ],
)
def test_forward_rejects_bad_input(make, error, match) -> None:
    vq = _module(4, 3, "cpu", channel_dim=1)
    before = _snapshot(vq)
    with pytest.raises(error, match=match):
        vq(make())
    after = _snapshot(vq)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_cosine_metric_module(device) -> None:
    vq = _module(9, 6, device, metric="cosine", channel_dim=1).eval()
    with torch.no_grad():
        vq.codebook.copy_(_rand(9, 6, seed=5, scale=0.1))
    x = _rand(4, 6, 5, seed=6, scale=3.0, device=device)  # (B, C, L)
    out = vq(x)
    assert out.quantized.shape == (4, 6, 5) and out.indices.shape == (4, 5)
    rows = x.movedim(1, -1).reshape(-1, 6).cpu()
    codes = vq.codebook.detach().cpu()
    cos = (rows @ codes.T) / (rows.norm(dim=-1)[:, None] * codes.norm(dim=-1)[None])
    expected = cos.argmax(dim=1)
    assert torch.equal(out.indices.reshape(-1).cpu(), expected)
    unit_codes = codes / codes.norm(dim=-1, keepdim=True)
    assert_close(out.quantized.movedim(1, -1).reshape(-1, 6).cpu(), unit_codes[expected], F64)
    chosen = 2.0 - 2.0 * cos.gather(1, expected[:, None]).squeeze(1)
    assert_close(out.commitment_loss, chosen.mean() / 6, F64)  # |x^ - e^|^2 = 2 - 2 cos, over D = 6


# --- the EMA update --------------------------------------------------------------------------------------


def test_ema_update_hand_computed_two_steps(device) -> None:
    eps = 1e-3
    vq = _module(2, 2, device, ema=True, decay=0.5, eps=eps, beta=0.25).train()
    _set_state(vq, [[0.0, 0.0], [10.0, 10.0]])  # ema_count = 1, ema_sum = codebook

    # Step 1: rows 0, 1 go to code 0 (n_0 = 2, s_0 = (1, 1)), row 2 to code 1 (n_1 = 1, s_1 = (9, 9)).
    out = vq(_tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]], device))
    assert out.indices.cpu().tolist() == [0, 0, 1]
    # The op quantised with the codes before this update.
    assert out.quantized.cpu().tolist() == [[0.0, 0.0], [0.0, 0.0], [10.0, 10.0]]
    count_0, count_1 = 0.5 * 1 + 0.5 * 2, 0.5 * 1 + 0.5 * 1  # 1.5, 1.0
    sum_0, sum_1 = 0.5 * 0.0 + 0.5 * 1.0, 0.5 * 10.0 + 0.5 * 9.0  # both coordinates: 0.5, 9.5
    n = count_0 + count_1  # 2.5
    smoothed_0 = (count_0 + eps) / (n + 2 * eps) * n
    smoothed_1 = (count_1 + eps) / (n + 2 * eps) * n
    code_0, code_1 = sum_0 / smoothed_0, sum_1 / smoothed_1
    assert_close(vq.ema_count.cpu(), _tensor([count_0, count_1], "cpu"), F64)
    assert_close(vq.ema_sum.cpu(), _tensor([[sum_0, sum_0], [sum_1, sum_1]], "cpu"), F64)
    assert_close(vq.codebook.cpu(), _tensor([[code_0, code_0], [code_1, code_1]], "cpu"), F64)

    # Step 2: every row goes to code 1 (n_1 = 4, s_1 = (37, 37)); code 0 only decays.
    out = vq(_tensor([[8.0, 8.0], [8.0, 9.0], [9.0, 8.0], [12.0, 12.0]], device))
    assert out.indices.cpu().tolist() == [1, 1, 1, 1]
    assert_close(out.quantized.cpu(), _tensor([[code_1, code_1]] * 4, "cpu"), F64)
    count_0, count_1 = 0.5 * count_0 + 0.5 * 0, 0.5 * count_1 + 0.5 * 4  # 0.75, 2.5
    sum_0x, sum_0y = 0.5 * sum_0 + 0.5 * 0.0, 0.5 * sum_0 + 0.5 * 0.0
    sum_1x, sum_1y = 0.5 * sum_1 + 0.5 * (8 + 8 + 9 + 12), 0.5 * sum_1 + 0.5 * (8 + 9 + 8 + 12)
    n = count_0 + count_1  # 3.25
    smoothed_0 = (count_0 + eps) / (n + 2 * eps) * n
    smoothed_1 = (count_1 + eps) / (n + 2 * eps) * n
    expected = [[sum_0x / smoothed_0, sum_0y / smoothed_0], [sum_1x / smoothed_1, sum_1y / smoothed_1]]
    assert_close(vq.ema_count.cpu(), _tensor([count_0, count_1], "cpu"), F64)
    assert_close(vq.ema_sum.cpu(), _tensor([[sum_0x, sum_0y], [sum_1x, sum_1y]], "cpu"), F64)
    assert_close(vq.codebook.cpu(), _tensor(expected, "cpu"), F64)


@pytest.mark.parametrize("decay", (0.0, 0.9))
def test_ema_update_random_batch_matches_formula(device, decay) -> None:
    # K = 33 codes, 129 vectors of D = 7 with leading dims: counts and sums from a one-hot computation.
    eps = 1e-5
    vq = _module(33, 7, device, ema=True, decay=decay, eps=eps).train()
    codebook = _rand(33, 7, seed=11)
    count = torch.rand(33, generator=torch.Generator().manual_seed(12), dtype=F64) + 0.5
    _set_state(vq, codebook, count)
    x = _rand(3, 43, 7, seed=13, device=device)
    out = vq(x)
    rows = x.reshape(-1, 7).cpu()
    indices = _nearest_l2(rows, codebook)
    assert torch.equal(out.indices.reshape(-1).cpu(), indices)
    one_hot = F.one_hot(indices, 33).double()
    new_count = decay * count + (1 - decay) * one_hot.sum(0)
    new_sum = decay * codebook * count[:, None] + (1 - decay) * one_hot.T @ rows
    assert_close(vq.ema_count.cpu(), new_count, F64)
    assert_close(vq.ema_sum.cpu(), new_sum, F64)
    assert_close(vq.codebook.cpu(), new_sum / _smoothed(new_count, eps)[:, None], F64)


def test_ema_cosine_statistics_use_normalised_inputs(device) -> None:
    # decay = 0: the EMA state is exactly this batch's counts and sums of the unit vectors.
    vq = _module(5, 4, device, ema=True, decay=0.0, eps=1e-5, metric="cosine").train()
    codebook = _rand(5, 4, seed=21)
    _set_state(vq, codebook)
    x = _rand(17, 4, seed=22, scale=7.0, device=device)
    out = vq(x)
    units = x.cpu() / x.cpu().norm(dim=-1, keepdim=True)
    unit_codes = codebook / codebook.norm(dim=-1, keepdim=True)
    indices = (units @ unit_codes.T).argmax(dim=1)
    assert torch.equal(out.indices.cpu(), indices)
    one_hot = F.one_hot(indices, 5).double()
    assert_close(vq.ema_count.cpu(), one_hot.sum(0), F64)
    assert_close(vq.ema_sum.cpu(), one_hot.T @ units, F64)


@pytest.mark.parametrize(("ema", "threshold"), [(False, 0.0), (False, 0.5), (True, 0.0), (True, 0.5)])
def test_eval_mode_never_updates(device, ema, threshold) -> None:
    vq = _module(3, 2, device, ema=ema, decay=0.5, dead_code_threshold=threshold).eval()
    # Code 2 is dead by the threshold and unused by the batch: training mode would restart it.
    _set_state(vq, [[0.0, 0.0], [10.0, 10.0], [-50.0, 50.0]], count=[1.0, 1.0, 0.01])
    before = _snapshot(vq)
    out = vq(_tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]], device))
    assert out.indices.cpu().tolist() == [0, 0, 1]
    after = _snapshot(vq)
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_training_without_ema_leaves_the_codebook_to_the_optimiser(device) -> None:
    beta = 0.25
    vq = _module(4, 3, device, beta=beta, decay=0.9).train()
    codebook = _rand(4, 3, seed=31)
    _set_state(vq, codebook)
    x = _rand(2, 3, 5, seed=32, device=device).movedim(1, -1).requires_grad_()  # (2, 5, 3) strided
    out = vq(x)
    assert torch.equal(vq.codebook.detach().cpu(), codebook)
    out.loss.backward()
    rows = x.detach().reshape(-1, 3).cpu()
    indices = _nearest_l2(rows, codebook)
    one_hot = F.one_hot(indices, 4).double()
    diff = rows - codebook[indices]
    # loss = codebook_loss + beta * commitment_loss, each the mean over the N D = 30 elements of
    # (x - e)^2 with one side detached.
    assert_close(out.loss, (1 + beta) * (diff**2).mean(), F64)
    assert_close(vq.codebook.grad.cpu(), -2.0 / 30 * one_hot.T @ diff, F64)
    assert_close(x.grad.reshape(-1, 3).cpu(), beta * 2.0 / 30 * diff, F64)


def test_training_without_ema_tracks_code_usage(device) -> None:
    # Class docstring: "Both modes track the EMA count N_k of code usage in training mode".
    vq = _module(4, 3, device, decay=0.9).train()
    codebook = _rand(4, 3, seed=33)
    _set_state(vq, codebook)
    x = _rand(10, 3, seed=34, device=device)
    vq(x)
    counts = F.one_hot(_nearest_l2(x, codebook), 4).double().sum(0)
    assert_close(vq.ema_count.cpu(), 0.9 * torch.ones(4, dtype=F64) + 0.1 * counts, F64)


def test_ema_loss_is_beta_commitment_and_codebook_gets_no_gradient(device) -> None:
    beta = 0.6
    vq = _module(4, 3, device, ema=True, beta=beta).eval()
    codebook = _rand(4, 3, seed=41)
    _set_state(vq, codebook)
    x = _rand(10, 3, seed=42, device=device).requires_grad_()
    out = vq(x)
    assert torch.equal(out.loss, beta * out.commitment_loss)
    out.loss.backward()
    assert vq.codebook.grad is None and not vq.codebook.requires_grad
    diff = x.detach().cpu() - codebook[_nearest_l2(x, codebook)]
    assert_close(x.grad.cpu(), beta * 2.0 / 30 * diff, F64)  # N D = 30 elements


def test_ema_update_keeps_backward_working(device) -> None:
    # The update replaces the codebook after the op saved it: backward must still run and use the
    # codes the forward quantised with.
    beta = 0.25
    vq = _module(4, 3, device, ema=True, beta=beta, decay=0.5).train()
    codebook = _rand(4, 3, seed=51)
    _set_state(vq, codebook)
    x = _rand(9, 3, seed=52, device=device).requires_grad_()
    out = vq(x)
    assert not torch.equal(vq.codebook.cpu(), codebook)  # the update did happen
    upstream = _rand(9, 3, seed=53, device=device)
    ((out.quantized * upstream).sum() + out.loss).backward()
    diff = x.detach().cpu() - codebook[_nearest_l2(x, codebook)]
    assert_close(x.grad.cpu(), upstream.cpu() + beta * 2.0 / 27 * diff, F64)  # N D = 27 elements


@pytest.mark.parametrize("metric", ("l2", "cosine"))
def test_ema_step_copies_neither_the_codebook_nor_the_rows(device, monkeypatch, metric) -> None:
    # The op quantises with the codebook buffer itself (no clone), the update then replaces the
    # buffer (the saved codes stay as they were), and the code statistics read the very rows the
    # search used (already contiguous and, for cosine, normalised) instead of preparing x again.
    vq = _module(4, 3, device, ema=True, metric=metric, dead_code_threshold=0.5).train()
    before = vq.codebook
    kept = before.clone()
    searched, counted = [], []

    def search_spy(x, codebook, **kwargs):
        out, rows = vector_quantize_rows(x, codebook, **kwargs)
        searched.append((codebook, rows))
        return out, rows

    def stats_spy(rows, indices, num_codes):
        counted.append(rows)
        return vq_code_stats(rows, indices, num_codes)

    monkeypatch.setattr(vector_quantizer, "vector_quantize_rows", search_spy)
    monkeypatch.setattr(vector_quantizer, "vq_code_stats", stats_spy)
    vq(_rand(2, 3, 5, seed=61, device=device).transpose(1, 2))  # non-contiguous (2, 5, 3)
    (codebook, rows), = searched
    assert codebook is before
    assert counted[0].data_ptr() == rows.data_ptr() and counted[0].shape == (10, 3)
    assert vq.codebook is not before and torch.equal(before, kept)


# --- dead-code restart --------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", (0.5, 2.0))
def test_dead_code_restarts_from_a_batch_vector_with_ema(device, threshold) -> None:
    decay, eps = 0.99, 1e-5
    vq = _module(3, 2, device, ema=True, decay=decay, eps=eps, dead_code_threshold=threshold).train()
    codebook = _tensor([[0.0, 0.0], [10.0, 10.0], [-50.0, 50.0]], "cpu")
    count = _tensor([10.0, 10.0, 0.1], "cpu")  # code 2 decays to 0.099 < threshold; 0 and 1 stay alive
    _set_state(vq, codebook, count)
    x = _tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0], [11.0, 10.0]], device)
    out = vq(x)
    assert out.indices.cpu().tolist() == [0, 0, 1, 1]

    # Live codes: the plain EMA update, with n summing every N_k before the restart.
    new_count = _tensor([decay * 10.0 + (1 - decay) * 2, decay * 10.0 + (1 - decay) * 2, decay * 0.1], "cpu")
    new_sum_0 = decay * 10.0 * codebook[0] + (1 - decay) * _tensor([1.0, 1.0], "cpu")
    new_sum_1 = decay * 10.0 * codebook[1] + (1 - decay) * _tensor([20.0, 19.0], "cpu")
    smoothed = _smoothed(new_count, eps)
    assert_close(vq.ema_count[:2].cpu(), new_count[:2], F64)
    assert_close(vq.ema_sum[:2].cpu(), torch.stack([new_sum_0, new_sum_1]), F64)
    assert_close(vq.codebook[:2].cpu(), torch.stack([new_sum_0 / smoothed[0], new_sum_1 / smoothed[1]]), F64)

    # The dead code: one of the batch vectors, count max(1, threshold), and m = N e.
    restarted = vq.codebook[2].cpu()
    assert any(torch.equal(restarted, row) for row in x.cpu()), restarted
    reset = max(1.0, threshold)
    assert vq.ema_count[2].item() == reset
    assert torch.equal(vq.ema_sum[2].cpu(), reset * restarted)


def test_dead_code_restart_without_ema_keeps_backward_working(device) -> None:
    beta = 0.25
    vq = _module(3, 2, device, beta=beta, decay=0.99, dead_code_threshold=0.5).train()
    codebook = _tensor([[0.0, 0.0], [10.0, 10.0], [-50.0, 50.0]], "cpu")
    _set_state(vq, codebook, [10.0, 10.0, 0.1])
    x = _tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0], [11.0, 10.0]], device).requires_grad_()
    out = vq(x)
    assert isinstance(vq.codebook, nn.Parameter) and list(vq.parameters())[0] is vq.codebook
    assert torch.equal(vq.codebook[:2].detach().cpu(), codebook[:2])  # live codes untouched
    assert any(torch.equal(vq.codebook[2].detach().cpu(), row) for row in x.detach().cpu())
    expected_counts = [0.99 * 10 + 0.01 * 2, 0.99 * 10 + 0.01 * 2, 1.0]
    assert vq.ema_count.cpu().tolist() == pytest.approx(expected_counts, rel=FLOAT64_REORDERED.rtol)
    out.loss.backward()
    # Gradients are those of the codes the forward used (code 2 had no rows: zero gradient).
    indices = torch.tensor([0, 0, 1, 1])
    diff = x.detach().cpu() - codebook[indices]
    one_hot = F.one_hot(indices, 3).double()
    assert_close(vq.codebook.grad.cpu(), -2.0 / 8 * one_hot.T @ diff, F64)  # N D = 8 elements
    assert_close(x.grad.cpu(), beta * 2.0 / 8 * diff, F64)


def test_no_restart_when_every_count_is_above_threshold(device) -> None:
    vq = _module(3, 2, device, decay=0.5, dead_code_threshold=0.5).train()
    codebook = _tensor([[0.0, 0.0], [10.0, 10.0], [-50.0, 50.0]], "cpu")
    _set_state(vq, codebook)  # code 2 unused: N_2 = 0.5 * 1 = 0.5, at the threshold, not under it
    vq(_tensor([[1.0, 0.0], [9.0, 9.0]], device))
    assert torch.equal(vq.codebook.detach().cpu(), codebook)
    assert vq.ema_count.cpu().tolist() == [1.0, 1.0, 0.5]


def test_empty_batch_in_training_changes_nothing(device) -> None:
    vq = _module(3, 2, device, ema=True, decay=0.5, dead_code_threshold=0.5).train()
    _set_state(vq, [[0.0, 0.0], [10.0, 10.0], [-50.0, 50.0]], count=[1.0, 1.0, 0.01])
    before = _snapshot(vq)
    out = vq(torch.zeros(0, 2, dtype=F64, device=device))
    assert out.quantized.shape == (0, 2) and out.indices.shape == (0,)
    after = _snapshot(vq)
    assert all(torch.equal(before[name], after[name]) for name in before)


# --- non-finite batches, restarts without replacement, old checkpoints -----------------------------------


@pytest.mark.parametrize("bad", (float("nan"), float("inf"), -float("inf")), ids=("nan", "inf", "-inf"))
def test_non_finite_batch_skips_only_the_affected_codes(device, bad) -> None:
    decay, eps = 0.9, 1e-5
    vq = _module(3, 2, device, ema=True, decay=decay, eps=eps).train()
    _set_state(vq, [[0.0, 0.0], [10.0, 10.0], [-50.0, 50.0]], count=[2.0, 3.0, 4.0])
    before = _snapshot(vq)
    x = _tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0], [11.0, 10.0], [bad, 10.0]], device)
    out = vq(x)
    bad_code = out.indices[4].item()  # whichever code the bad row went to, its update is skipped
    assert 0 <= bad_code < 3
    for name, value in vq.state_dict().items():
        assert bool(value.isfinite().all()), name
    assert torch.equal(vq.ema_count[bad_code], before["ema_count"][bad_code])
    assert torch.equal(vq.ema_sum[bad_code], before["ema_sum"][bad_code])
    assert torch.equal(vq.codebook[bad_code], before["codebook"][bad_code])
    assert vq.skipped_updates.cpu().tolist() == [int(k == bad_code) for k in range(3)]

    # Every other code takes the EMA update of its finite rows, by the class docstring's rule.
    counts = torch.zeros(3, dtype=F64)
    sums = torch.zeros(3, 2, dtype=F64)
    for row, code in zip(x[:4].cpu(), out.indices[:4].cpu().tolist()):
        counts[code] += 1
        sums[code] += row
    live = torch.tensor([k != bad_code for k in range(3)])
    count = torch.where(live, decay * before["ema_count"].cpu() + (1 - decay) * counts, before["ema_count"].cpu())
    ema_sum = decay * before["ema_sum"].cpu() + (1 - decay) * sums
    expected = ema_sum / _smoothed(count, eps)[:, None]
    assert_close(vq.ema_count.cpu(), count, F64)
    assert_close(vq.ema_sum[live].cpu(), ema_sum[live], F64)
    assert_close(vq.codebook[live].cpu(), expected[live], F64)

    # A clean batch afterwards updates every code again and skips nothing.
    vq(_tensor([[1.0, 1.0], [10.0, 9.0], [-49.0, 50.0]], device))
    assert vq.skipped_updates.cpu().tolist() == [int(k == bad_code) for k in range(3)]
    assert not torch.equal(vq.ema_count[bad_code], before["ema_count"][bad_code])
    assert bool(vq.codebook.isfinite().all())


@pytest.mark.parametrize("ema", (False, True))
def test_restarts_draw_distinct_finite_rows(device, ema) -> None:
    # 12 dead codes, 20 distinct batch rows of which 3 are NaN: every step, the restarted codes are
    # 12 different finite rows of the batch (with replacement, 12 draws among 17 rows collide with
    # probability above 99%).
    vq = _module(12, 3, device, ema=ema, decay=0.99, dead_code_threshold=1.0).train()  # all stay dead
    x = _rand(20, 3, seed=71, device=device)
    x[[2, 7, 19], 1] = float("nan")
    finite = [row for row in x.cpu() if bool(row.isfinite().all())]
    for step in range(20):
        torch.manual_seed(step)
        _set_state(vq, _rand(12, 3, seed=72, scale=100.0), count=[0.01] * 12)
        vq(x)
        codes = vq.codebook.detach().cpu()
        assert all(any(torch.equal(code, row) for row in finite) for code in codes), step
        assert torch.unique(codes, dim=0).shape[0] == 12, step
        assert vq.ema_count.cpu().tolist() == [1.0] * 12


def test_more_dead_codes_than_finite_rows_restart_the_lowest_indices(device) -> None:
    # 6 dead codes, 4 finite rows (and one NaN row): codes 0-3 take the 4 rows, 4 and 5 stay as they were.
    vq = _module(6, 2, device, decay=0.99, dead_code_threshold=1.0).train()  # no code reaches N_k = 1
    codebook = _rand(6, 2, seed=81, scale=100.0)
    _set_state(vq, codebook, count=[0.01] * 6)
    x = _tensor([[1.0, 2.0], [3.0, 4.0], [float("nan"), 0.0], [5.0, 6.0], [7.0, 8.0]], device)
    vq(x)
    restarted = vq.codebook.detach().cpu()[:4]
    assert sorted(restarted.tolist()) == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]
    assert torch.equal(vq.codebook.detach().cpu()[4:], codebook[4:])
    assert vq.ema_count.cpu().tolist()[:4] == [1.0] * 4
    assert bool((vq.ema_count[4:] < 1.0).all())


@pytest.mark.parametrize("ema", (False, True))
def test_state_dict_without_skipped_updates_loads(ema) -> None:
    # Checkpoints written before the buffer existed load strictly, with a zero count.
    saved = VectorQuantizer(5, 3, ema=ema)
    saved.skipped_updates.fill_(7)
    state = {name: value for name, value in saved.state_dict().items() if name != "skipped_updates"}
    loaded = VectorQuantizer(5, 3, ema=ema)
    loaded.skipped_updates.fill_(3)
    loaded.load_state_dict(state)
    assert torch.equal(loaded.codebook, saved.codebook)
    assert torch.equal(loaded.skipped_updates, torch.zeros(5, dtype=torch.int64))
    loaded.load_state_dict(saved.state_dict())
    assert loaded.skipped_updates.tolist() == [7] * 5


# --- torch.distributed ------------------------------------------------------------------------------------

DDP_WORLD_SIZE = 2
DDP_NUM_CODES, DDP_DIM, DDP_ROWS_PER_RANK = 8, 4, 6
DDP_DEAD = [5, 6, 7]  # codes whose count is set to 0.1: with decay 0.99 they fall under 0.5
DDP_VARIANTS = {"ema": 0.0, "restart": 0.5}


def _ddp_batch() -> torch.Tensor:
    """(world_size, rows per rank, D): rank r is fed batch[r]; a single process is fed all of it."""
    generator = torch.Generator().manual_seed(1234)
    return torch.randn(DDP_WORLD_SIZE, DDP_ROWS_PER_RANK, DDP_DIM, generator=generator, dtype=F64)


def _ddp_module(threshold: float) -> VectorQuantizer:
    torch.manual_seed(0)
    vq = VectorQuantizer(DDP_NUM_CODES, DDP_DIM, ema=True, decay=0.99, dead_code_threshold=threshold).double()
    if threshold > 0:
        with torch.no_grad():
            vq.ema_count[DDP_DEAD] = 0.1
            vq.ema_sum[DDP_DEAD] = 0.1 * vq.codebook[DDP_DEAD]
    return vq.train()


def _ddp_work(rank: int) -> dict:
    """One rank: the same module on every rank, fed this rank's half; its state per variant."""
    results = {}
    for variant, threshold in DDP_VARIANTS.items():
        vq = _ddp_module(threshold)
        torch.manual_seed(100 + rank)  # different restart picks per rank: only the broadcast agrees
        vq(_ddp_batch()[rank])
        results[variant] = {name: value.clone() for name, value in vq.state_dict().items()}
    return results


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Run the two-rank gloo job once; return each rank's saved state per variant."""
    return gloo_ranks.run(_ddp_work, tmp_path_factory.mktemp("ddp"), world_size=DDP_WORLD_SIZE)


@pytest.mark.parametrize("variant", DDP_VARIANTS)
def test_ddp_ranks_keep_identical_codebooks(ddp_results, variant) -> None:
    rank0, rank1 = ddp_results[0][variant], ddp_results[1][variant]
    assert sorted(rank0) == ["codebook", "ema_count", "ema_sum", "skipped_updates"]
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    # The ranks saw different halves: the statistics really moved.
    assert not torch.equal(rank0["codebook"], _ddp_module(DDP_VARIANTS[variant]).codebook)


def test_ddp_update_equals_single_process_on_the_whole_batch(ddp_results) -> None:
    single = _ddp_module(0.0)
    single(_ddp_batch().reshape(-1, DDP_DIM))
    expected = single.state_dict()
    for name, value in ddp_results[0]["ema"].items():
        assert_close(value, expected[name], F64)


def test_ddp_restarts_use_rank_zero_picks(ddp_results) -> None:
    state = ddp_results[0]["restart"]
    single = _ddp_module(DDP_VARIANTS["restart"])
    single(_ddp_batch().reshape(-1, DDP_DIM))
    live = [k for k in range(DDP_NUM_CODES) if k not in DDP_DEAD]
    # Live codes: the all-reduced EMA update, as one process fed the whole batch.
    assert_close(state["codebook"][live], single.codebook[live], F64)
    assert_close(state["ema_count"][live], single.ema_count[live], F64)
    # Dead codes: vectors of rank 0's half, with count max(1, threshold) = 1.
    rank0_rows = _ddp_batch()[0]
    for k in DDP_DEAD:
        assert any(torch.equal(state["codebook"][k], row) for row in rank0_rows), k
        assert state["ema_count"][k].item() == 1.0
