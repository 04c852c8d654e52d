"""Tests of fastvae.rvq_nearest: residual vector quantisation, every stage's search in one call.

The ground truth is Q sequential float64 brute-force searches written here: the full ``(N, K)``
matrix of squared distances from the stage's residual to every code, its argmin, and the residual
minus the chosen code. Inputs are drawn in float64 and rounded to the dtype under test. The op
carries its residual in float32 for float32 and below, so on a near-tie at a later stage it may
legitimately choose the other code; the tests replay the op's own choices in float64 and assert that
each is a minimiser within the dtype's tolerance, and that it equals the brute-force argmin wherever
the two best codes are further apart than that tolerance.
"""

from __future__ import annotations

import backends
import pytest
import torch
import torch.nn.functional as F
from tolerances import FLOAT_DTYPES, TOLERANCES, assert_close

import fastvae
from fastvae.ops.rvq import OP_NAMES


@pytest.fixture(params=backends.PARAMS)
def device(request: pytest.FixtureRequest):
    """The device to build inputs on, with the parametrised backend forced for the whole test."""
    with backends.forced(request.param, OP_NAMES):
        yield backends.DEVICE


def _draw(*shape: int, seed: int, dtype: torch.dtype, device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)


def _check_against_sequential_search(x, codebooks, indices, quantized, dtype) -> None:
    """Replay the op's choices in float64: each must be a stage minimiser within the dtype's tolerance
    (and the argmin itself where the two best codes are further apart), and the quantized output the
    sum of the chosen codes."""
    rtol, atol = TOLERANCES[dtype]
    residual = x.to(torch.float64).reshape(-1, x.shape[-1])
    codes = codebooks.to(torch.float64)
    chosen_all = indices.reshape(-1, codes.shape[0]).cpu()
    total = torch.zeros_like(residual)
    for stage in range(codes.shape[0]):
        distances = ((residual[:, None, :] - codes[stage][None]) ** 2).sum(-1).cpu()
        chosen = chosen_all[:, stage]
        best, order = distances.sort(dim=1)
        slack = 4 * (rtol * best[:, 0] + atol) * max(1, x.shape[-1])  # a sum over D rounded terms
        picked = distances.gather(1, chosen[:, None])[:, 0]
        assert torch.all(picked <= best[:, 0] + slack), f"stage {stage}: a chosen code is not a nearest one"
        if codes.shape[1] > 1:
            clear = best[:, 1] - best[:, 0] > 2 * slack
            assert torch.equal(chosen[clear], order[clear, 0]), f"stage {stage}: indices differ from the argmin"
        step = codes[stage][chosen.to(codes.device)]
        residual = residual - step
        total = total + step
    assert_close(quantized.reshape(total.shape), total, dtype, scale=max(1, codes.shape[0]))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=backends.dtype_id)
@pytest.mark.parametrize(
    ("rows", "stages", "codes", "dim"),
    [(1, 1, 1, 1), (37, 3, 11, 7), (64, 4, 33, 16), (5, 8, 2, 3), (19, 2, 70, 20), (7, 2, 9, 257)],
    ids=["one", "primes", "past-a-block", "many-stages", "long-row", "past-the-fused-row"],
)
def test_matches_q_sequential_brute_force_searches(device, dtype, rows, stages, codes, dim):
    x = _draw(rows, dim, seed=1, dtype=dtype, device=device)
    codebooks = _draw(stages, codes, dim, seed=2, dtype=dtype, device=device) * 0.7
    kept = x.clone()
    indices, quantized = fastvae.rvq_nearest(x, codebooks)
    assert torch.equal(x, kept)  # the residual is the op's own, never the caller's x
    assert indices.shape == (rows, stages) and indices.dtype == torch.int64
    assert quantized.shape == x.shape and quantized.dtype == dtype
    assert int(indices.min()) >= 0 and int(indices.max()) < codes
    _check_against_sequential_search(x, codebooks, indices, quantized, dtype)


def test_leading_dims_and_empty_inputs(device):
    x = _draw(2, 3, 5, seed=3, dtype=torch.float32, device=device)
    codebooks = _draw(4, 6, 5, seed=4, dtype=torch.float32, device=device)
    indices, quantized = fastvae.rvq_nearest(x, codebooks)
    flat_indices, flat_quantized = fastvae.rvq_nearest(x.reshape(6, 5), codebooks)
    assert indices.shape == (2, 3, 4) and torch.equal(indices.reshape(6, 4), flat_indices)
    assert torch.equal(quantized.reshape(6, 5), flat_quantized)
    empty_indices, empty_quantized = fastvae.rvq_nearest(x[:0], codebooks)
    assert empty_indices.shape == (0, 3, 4) and empty_quantized.shape == (0, 3, 5)
    # D = 0: every code is at distance 0, so the lowest index wins at every stage.
    zero_d, _ = fastvae.rvq_nearest(x[..., :0], codebooks[..., :0])
    assert zero_d.shape == (2, 3, 4) and not zero_d.any()


def test_ties_go_to_the_lowest_index_at_every_stage(device):
    # Every code appears twice in a row (codes 2j and 2j + 1 are equal): the even one must win at
    # every stage, whichever tile or backend scores it.
    base = _draw(3, 20, 6, seed=5, dtype=torch.float32, device=device)
    codebooks = base.repeat_interleave(2, dim=1)
    x = _draw(50, 6, seed=6, dtype=torch.float32, device=device)
    indices, _ = fastvae.rvq_nearest(x, codebooks)
    assert torch.all(indices % 2 == 0)


def test_cosine_picks_the_most_similar_unit_code_of_each_residual(device):
    x = _draw(40, 8, seed=7, dtype=torch.float64, device=device)
    codebooks = _draw(3, 9, 8, seed=8, dtype=torch.float64, device=device) * 3.0
    indices, quantized = fastvae.rvq_nearest(x, codebooks, metric="cosine")
    unit = F.normalize(codebooks, dim=-1)
    residual, total = x.clone(), torch.zeros_like(x)
    for stage in range(3):
        expected = (F.normalize(residual, dim=-1) @ unit[stage].T).argmax(1)
        assert torch.equal(indices[:, stage], expected)
        residual = residual - unit[stage][expected]
        total = total + unit[stage][expected]
    assert_close(quantized, total, torch.float64)


def test_gradient_reaches_the_chosen_codes_only(device):
    x = _draw(30, 4, seed=9, dtype=torch.float64, device=device)
    codebooks = _draw(3, 7, 4, seed=10, dtype=torch.float64, device=device).requires_grad_()
    upstream = _draw(30, 4, seed=11, dtype=torch.float64, device=device)
    indices, quantized = fastvae.rvq_nearest(x.requires_grad_(), codebooks)
    (quantized * upstream).sum().backward()
    expected = torch.zeros_like(codebooks)
    for stage in range(3):
        expected[stage].index_add_(0, indices[:, stage], upstream)
    assert_close(codebooks.grad, expected, torch.float64)
    assert x.grad is None


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: ([[1.0, 2.0]], torch.zeros(1, 2, 2)), TypeError, "^x must be a torch.Tensor"),
        (lambda: (torch.zeros(3, 2), torch.zeros(2, 2)), ValueError, r"^codebooks must be \(Q, K, D\)"),
        (lambda: (torch.zeros(3, 2), torch.zeros(0, 2, 2)), ValueError, r"^codebooks must be \(Q, K, D\)"),
        (lambda: (torch.zeros(3, 2), torch.zeros(2, 0, 2)), ValueError, r"^codebooks must be \(Q, K, D\)"),
        (lambda: (torch.zeros(3, 2), torch.zeros(2, 4, 3)), ValueError, "^codebooks must have D"),
        (lambda: (torch.zeros(3, 2), torch.zeros(2, 4, 2, dtype=torch.float64)), TypeError, "^codebooks must have the dtype"),
        (lambda: (torch.zeros(3, 2, dtype=torch.int64), torch.zeros(2, 4, 2)), TypeError, "^x must have a floating dtype"),
    ],
)
def test_bad_input_is_rejected_with_the_argument_named(make, error, match):
    x, codebooks = make()
    with pytest.raises(error, match=match):
        fastvae.rvq_nearest(x, codebooks)
    with pytest.raises(ValueError, match="^metric must be one of"):
        fastvae.rvq_nearest(torch.zeros(3, 2), torch.zeros(2, 4, 2), metric="dot")


def test_custom_op_passes_opcheck_and_compiles_without_a_graph_break():
    x = _draw(9, 5, seed=12, dtype=torch.float32, device="cpu")
    codebooks = _draw(3, 4, 5, seed=13, dtype=torch.float32, device="cpu").requires_grad_()
    torch.library.opcheck(torch.ops.fastvae.rvq_nearest.default, (x, codebooks))

    def step(x, codebooks):
        indices, quantized = fastvae.rvq_nearest(x, codebooks)
        return quantized.square().sum(), indices

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    loss, indices = compiled(x, codebooks)
    expected_loss, expected_indices = step(x, codebooks)
    assert torch.equal(indices, expected_indices)
    assert_close(loss, expected_loss, torch.float32)
