"""Tests of fastvae.nn.ResidualVQ and of the k-means initialisation of fastvae.nn.VectorQuantizer.

Expected values are independent float64 formulas written here: Q sequential brute-force searches,
the per-stage losses through float64 autograd with explicit ``.detach()`` stop-gradients, Lloyd's
algorithm on the full distance matrix, and the EMA recurrences of the VectorQuantizer docstring.
vector-quantize-pytorch, where installed, is the peer the indices are cross-checked against.
"""

from __future__ import annotations


import backends
import gloo_ranks
import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_close

from fastvae.nn.residual_vq import ResidualVQ
from fastvae.nn.vector_quantizer import VectorQuantizer, kmeans
from fastvae.ops.rvq import OP_NAMES as RVQ_OPS
from fastvae.ops.vq import OP_NAMES as VQ_OPS

F64 = torch.float64


@pytest.fixture(params=backends.PARAMS)
def device(request: pytest.FixtureRequest):
    """The device to build inputs on, with the parametrised backend forced for the whole test."""
    with backends.forced(request.param, RVQ_OPS + VQ_OPS):
        yield backends.DEVICE


def _draw(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=generator, dtype=F64)


def _module(device, *args, **kwargs) -> ResidualVQ:
    """A float64 ResidualVQ on ``device`` (float64 so that hand-computed numbers compare tightly)."""
    return ResidualVQ(*args, **kwargs).to(device=device, dtype=F64)


def _set_codebooks(module: ResidualVQ, codebooks: torch.Tensor) -> None:
    with torch.no_grad():
        for layer, codebook in zip(module.layers, codebooks):
            layer.codebook.copy_(codebook)
            if layer.ema:
                layer.ema_sum.copy_(codebook)


def _sequential_search(x: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """``(N, Q)``: Q brute-force float64 searches, each on the residual the earlier ones left."""
    residual, chosen = x.clone(), []
    for codebook in codebooks:
        index = ((residual[:, None] - codebook[None]) ** 2).sum(-1).argmin(1)
        chosen.append(index)
        residual = residual - codebook[index]
    return torch.stack(chosen, 1)


# --- forward, losses, gradients ---------------------------------------------------------------------


@pytest.mark.parametrize("ema", [False, True], ids=["trained", "ema"])
def test_indices_losses_and_gradients_match_the_formulas(device, ema):
    beta = 0.4
    module = _module(device, 3, 7, 5, beta=beta, ema=ema).eval()
    codebooks = _draw(3, 7, 5, seed=1)
    _set_codebooks(module, codebooks)
    x = _draw(4, 6, 5, seed=2).to(device).requires_grad_()
    out = module(x)
    assert torch.equal(out.indices.cpu().reshape(24, 3), _sequential_search(x.detach().cpu().reshape(24, 5), codebooks))
    # The same losses by float64 autograd, stop-gradients written out.
    leaf_x = x.detach().cpu().clone().requires_grad_()
    leaf_codes = codebooks.clone().requires_grad_()
    rows, chosen = leaf_x.reshape(24, 5), out.indices.cpu().reshape(24, 3)
    residual, total, commitment, codebook_loss = rows, 0.0, 0.0, 0.0
    for stage in range(3):
        code = leaf_codes[stage][chosen[:, stage]]
        commitment = commitment + F.mse_loss(residual, code.detach())
        codebook_loss = codebook_loss + F.mse_loss(code, residual.detach())
        residual = residual - code.detach()
        total = total + code
    quantized = rows + (total - rows).detach()
    loss = beta * commitment if ema else codebook_loss + beta * commitment
    assert_close(out.quantized.cpu().reshape(24, 5), quantized, F64)
    assert_close(out.commitment_loss.cpu(), commitment, F64)
    assert_close(out.codebook_loss.cpu(), codebook_loss, F64)
    assert_close(out.loss.cpu(), loss, F64)
    upstream = _draw(4, 6, 5, seed=3)
    ((out.quantized * upstream.to(device)).sum() + out.loss).backward()
    ((quantized.reshape(4, 6, 5) * upstream).sum() + loss).backward()
    assert_close(x.grad.cpu(), leaf_x.grad, F64)
    if ema:
        assert all(layer.codebook.grad is None for layer in module.layers)
    else:
        assert_close(torch.stack([layer.codebook.grad for layer in module.layers]).cpu(), leaf_codes.grad, F64)


def test_channel_dim_shapes_perplexity_and_codes_from_indices(device):
    module = _module(device, 4, 9, 3, channel_dim=1).eval()
    x = _draw(2, 3, 5, 6, seed=4).to(device)
    out = module(x)
    assert out.quantized.shape == x.shape and out.indices.shape == (2, 5, 6, 4)
    assert out.perplexity.shape == (4,)
    for stage in range(4):
        counts = torch.bincount(out.indices[..., stage].reshape(-1).cpu(), minlength=9).to(F64) / 60
        assert_close(out.perplexity[stage].cpu(), torch.exp(-torch.special.xlogy(counts, counts).sum()), F64)
    codes = module.get_codes_from_indices(out.indices)
    assert codes.shape == (2, 5, 6, 4, 3)
    assert_close(codes.sum(-2).movedim(-1, 1).cpu(), out.quantized.cpu(), F64)
    assert module.codebooks.shape == (4, 9, 3)
    with pytest.raises(ValueError, match="^indices must have a last dim of num_quantizers=4"):
        module.get_codes_from_indices(out.indices[..., :2])
    with pytest.raises(ValueError, match=r"^x must have dim=3 channels along channel_dim=1"):
        module(x.movedim(1, -1))


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="^num_quantizers must be >= 1"):
        ResidualVQ(0, 4, 2)
    with pytest.raises(TypeError, match="^shared_codebook must be a bool"):
        ResidualVQ(2, 4, 2, shared_codebook=1)
    with pytest.raises(TypeError, match="^quantize_dropout must be a bool"):
        ResidualVQ(2, 4, 2, quantize_dropout="yes")
    with pytest.raises(ValueError, match="^decay must be in"):
        ResidualVQ(2, 4, 2, decay=1.0)


# --- training: EMA per stage, shared codebook, quantizer dropout ------------------------------------


def test_each_stage_updates_its_ema_statistics_from_its_own_residuals(device):
    decay = 0.8
    module = _module(device, 2, 5, 3, ema=True, decay=decay).train()
    codebooks = _draw(2, 5, 3, seed=5)
    _set_codebooks(module, codebooks)
    x = _draw(40, 3, seed=6)
    module(x.to(device))
    chosen = _sequential_search(x, codebooks)
    residual = x
    for stage, layer in enumerate(module.layers):
        counts = torch.bincount(chosen[:, stage], minlength=5).to(F64)
        sums = torch.zeros(5, 3, dtype=F64).index_add_(0, chosen[:, stage], residual)
        assert_close(layer.ema_count.cpu(), decay + (1 - decay) * counts, F64)
        assert_close(layer.ema_sum.cpu(), decay * codebooks[stage] + (1 - decay) * sums, F64)
        residual = residual - codebooks[stage][chosen[:, stage]]


def test_a_shared_codebook_adds_up_every_stage_and_is_searched_by_each(device):
    decay = 0.5
    module = _module(device, 3, 6, 2, ema=True, decay=decay, shared_codebook=True).train()
    assert len(module.layers) == 1
    codebook = _draw(6, 2, seed=7)
    _set_codebooks(module, codebook[None])
    x = _draw(30, 2, seed=8)
    out = module(x.to(device))
    chosen = _sequential_search(x, codebook.expand(3, 6, 2))
    assert torch.equal(out.indices.cpu(), chosen)
    counts = sum(torch.bincount(chosen[:, stage], minlength=6) for stage in range(3)).to(F64)
    assert_close(module.layers[0].ema_count.cpu(), decay + (1 - decay) * counts, F64)
    assert torch.equal(module.codebooks[0], module.codebooks[2])


def test_quantizer_dropout_keeps_a_drawn_prefix_of_stages_and_updates_only_those(device):
    module = _module(device, 4, 5, 3, ema=True, decay=0.5, quantize_dropout=True).train()
    codebooks = _draw(4, 5, 3, seed=9)
    _set_codebooks(module, codebooks)
    x = _draw(25, 3, seed=10)
    torch.manual_seed(11)
    kept = int(torch.randint(1, 5, (), device=device))  # the draw the module makes first
    torch.manual_seed(11)
    out = module(x.to(device))
    chosen = _sequential_search(x, codebooks)
    assert torch.equal(out.indices[:, :kept].cpu(), chosen[:, :kept])
    assert torch.all(out.indices[:, kept:] == -1)
    assert torch.isnan(out.perplexity[kept:]).all() and torch.isfinite(out.perplexity[:kept]).all()
    assert_close(out.quantized.cpu(), sum(codebooks[s][chosen[:, s]] for s in range(kept)), F64)
    for stage, layer in enumerate(module.layers):
        untouched = torch.equal(layer.ema_count.cpu(), torch.ones(5, dtype=F64))
        assert untouched == (stage >= kept), stage  # a kept stage's counts moved (25 rows over 5 codes)
        if stage >= kept:
            assert torch.equal(layer.codebook.cpu(), codebooks[stage])
    module.eval()
    assert (module(x.to(device)).indices >= 0).all()  # eval runs every stage


def test_a_training_step_compiles_without_a_graph_break():
    module = ResidualVQ(3, 8, 4, ema=True, quantize_dropout=True, dead_code_threshold=0.5).train()
    step = torch.compile(module, fullgraph=True, backend="eager")
    x = torch.randn(32, 4, requires_grad=True)
    out = step(x)
    out.loss.backward()
    assert x.grad is not None and out.indices.shape == (32, 3)


# --- k-means initialisation ---------------------------------------------------------------------------


def _lloyd(rows: torch.Tensor, centroids: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm in float64 on the full distance matrix; empty clusters keep their centroid.
    Returns the centroids and the counts of their final assignment."""

    def assign(centroids):
        nearest = ((rows[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        return nearest, torch.bincount(nearest, minlength=centroids.shape[0]).to(F64)

    for _ in range(iters):
        nearest, counts = assign(centroids)
        sums = torch.zeros_like(centroids).index_add_(0, nearest, rows)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
    return centroids, assign(centroids)[1]


@pytest.mark.parametrize("iters", [0, 1, 6])
def test_kmeans_is_lloyds_algorithm(device, iters):
    rows = torch.cat([_draw(20, 3, seed=12) + 4.0, _draw(20, 3, seed=13) - 4.0, _draw(9, 3, seed=14)])
    start = rows[[0, 1, 25, 45, 46]]
    centroids, counts = kmeans(rows.to(device), start.to(device), iters)
    expected, expected_counts = _lloyd(rows, start, iters)
    assert_close(centroids.cpu(), expected, F64)
    assert torch.equal(counts.cpu(), expected_counts)


def test_vector_quantizer_kmeans_init_runs_once_on_the_first_training_batch(device):
    vq = VectorQuantizer(5, 3, kmeans_init=True, kmeans_iters=4).to(device=device, dtype=F64).train()
    assert vq.initialised.item() is False
    rows = _draw(40, 3, seed=15)
    torch.manual_seed(16)
    picks = torch.randperm(40)[:5]  # the module's first draw
    torch.manual_seed(16)
    vq(rows.to(device))
    expected, counts = _lloyd(rows, rows[picks], 4)
    assert_close(vq.codebook.detach().cpu(), expected, F64)
    assert_close(vq.ema_count.cpu(), counts.clamp(min=1), F64)
    assert vq.initialised.item() is True
    before = vq.codebook.detach().clone()
    vq(_draw(40, 3, seed=17).to(device))
    assert torch.equal(vq.codebook.detach(), before)  # no second initialisation (no EMA, no restarts)
    fresh = VectorQuantizer(5, 3, kmeans_init=True).to(device=device, dtype=F64).train()
    fresh.load_state_dict(vq.state_dict())
    fresh(_draw(40, 3, seed=18).to(device))
    assert torch.equal(fresh.codebook.detach(), before)  # loaded as initialised


def test_kmeans_init_with_fewer_rows_than_codes_and_in_eval_mode(device):
    vq = VectorQuantizer(6, 2, kmeans_init=True).to(device=device, dtype=F64)
    vq.eval()(_draw(3, 2, seed=19).to(device))
    assert vq.initialised.item() is False  # eval mode never initialises
    vq.train()(_draw(3, 2, seed=20).to(device))
    assert vq.initialised.item() is True
    assert all(any(torch.equal(code, row) for row in _draw(3, 2, seed=20).to(device)) for code in vq.codebook)


def test_residual_vq_kmeans_init_goes_stage_by_stage(device):
    module = _module(device, 2, 4, 2, kmeans_init=True).train()
    x = _draw(30, 2, seed=21)
    torch.manual_seed(22)
    first = torch.randperm(30)[:4]
    torch.manual_seed(22)
    module(x.to(device))
    stage0, _ = _lloyd(x, x[first], 10)
    assert_close(module.layers[0].codebook.detach().cpu(), stage0, F64)
    assert all(layer.initialised.item() for layer in module.layers)


# --- the peer ---------------------------------------------------------------------------------------


def test_indices_equal_vector_quantize_pytorch_residual_vq_in_eval_mode():
    peer = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(23)
    theirs = peer.ResidualVQ(dim=8, num_quantizers=4, codebook_size=32).eval()
    ours = ResidualVQ(4, 32, 8).eval()
    codebooks = torch.randn(4, 32, 8)
    with torch.no_grad():
        for stage in range(4):
            theirs.layers[stage]._codebook.embed.copy_(codebooks[stage][None])
    _set_codebooks(ours, codebooks)
    x = torch.randn(3, 50, 8)
    _, their_indices, _ = theirs(x)
    out = ours(x)
    assert torch.equal(out.indices, their_indices.to(torch.int64))


# --- DDP ----------------------------------------------------------------------------------------------

def _ddp_work(rank: int) -> dict:
    """One rank: three training steps on this rank's rows; the module's state."""
    torch.manual_seed(100 + rank)  # the ranks' own draws differ: rank 0's must win
    module = ResidualVQ(3, 6, 2, ema=True, kmeans_init=True, quantize_dropout=True, dead_code_threshold=0.5)
    module.train()
    for step in range(3):
        module(_draw(20, 2, seed=200 + 10 * rank + step).float())
    return dict(module.state_dict())


def test_ddp_ranks_keep_identical_codebooks(tmp_path):
    rank0, rank1 = gloo_ranks.run(_ddp_work, tmp_path)
    assert sorted(rank0) == sorted(rank1)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    # The ranks saw different rows and k-means-initialised from rank 0's draw: the state moved.
    assert not torch.equal(rank0["layers.0.codebook"], ResidualVQ(3, 6, 2, ema=True).layers[0].codebook)


def test_the_quantiser_family_is_public_under_the_issue_names():
    # Users write fastvae.nn.ResidualVQ, fastvae.rvq_nearest and fastvae.fsq, not the module paths.
    import fastvae

    assert fastvae.nn.ResidualVQ is ResidualVQ
    assert "ResidualVQ" in fastvae.nn.__all__
    assert {"FSQ", "LFQ", "VectorQuantizer"} <= set(fastvae.nn.__all__)
    assert callable(fastvae.rvq_nearest) and callable(fastvae.fsq)
