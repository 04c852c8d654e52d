"""Tests of VectorQuantizer's factorised codes (``codebook_dim``) and rotation-trick gradient, and of its
nearest codes against vector-quantize-pytorch's VectorQuantize.

Expected values are independent float64 formulas written here: the nearest code by the full distance
matrix, the projections applied by hand, and the rotation trick's gradient in closed form,
``(|e| / |x|) (g - 2 w (w.g) + 2 u (q.g))`` with ``u = x / |x|``, ``q = e / |e|``, ``w`` the unit
bisector of ``u`` and ``q`` (Fifty et al. 2024, section 4.2).
"""

from __future__ import annotations

import backends
import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_close

from fastvae.nn.vector_quantizer import VectorQuantizer, rotation_trick
from fastvae.ops.vq import OP_NAMES

F64 = torch.float64


@pytest.fixture(params=backends.PARAMS)
def device(request: pytest.FixtureRequest):
    """The device to build inputs on, with the parametrised backend forced for the whole test."""
    with backends.forced(request.param, OP_NAMES):
        yield backends.DEVICE


def _draw(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=generator, dtype=F64)


def _nearest(rows: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return ((rows[:, None] - codebook[None]) ** 2).sum(-1).argmin(1)


def _rotated_gradient(x: torch.Tensor, e: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The closed form of the rotation trick's gradient, row by row."""
    u = x / x.norm(dim=-1, keepdim=True)
    q = e / e.norm(dim=-1, keepdim=True)
    w = F.normalize(u + q, dim=-1)
    rotated = g - 2 * w * (w * g).sum(-1, keepdim=True) + 2 * u * (q * g).sum(-1, keepdim=True)
    return rotated * (e.norm(dim=-1, keepdim=True) / x.norm(dim=-1, keepdim=True))


def test_rotation_trick_gives_the_codes_and_the_closed_form_gradient():
    x = _draw(50, 6, seed=1).requires_grad_()
    e = _draw(50, 6, seed=2, scale=2.0)
    g = _draw(50, 6, seed=3)
    out = rotation_trick(x, e)
    assert_close(out, e, F64)
    (out * g).sum().backward()
    assert_close(x.grad, _rotated_gradient(x.detach(), e, g), F64)


def test_rotation_trick_edge_rows():
    # x = 0: the code, and no gradient; x already along e: the rotation is the identity.
    x = torch.stack([torch.zeros(3, dtype=F64), torch.tensor([1.0, 2.0, 2.0], dtype=F64)]).requires_grad_()
    e = torch.tensor([[1.0, 0.0, 0.0], [2.0, 4.0, 4.0]], dtype=F64)
    out = rotation_trick(x, e)
    assert_close(out, e, F64)
    out.sum().backward()
    assert_close(x.grad[0], torch.zeros(3, dtype=F64), F64)
    assert_close(x.grad[1], torch.full((3,), 2.0, dtype=F64), F64)  # |e| / |x| = 2 times g


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_rotation_gradient_in_the_module(device, metric):
    beta = 0.3
    rotated = VectorQuantizer(7, 4, beta=beta, metric=metric, gradient="rotation").to(device=device, dtype=F64).eval()
    straight = VectorQuantizer(7, 4, beta=beta, metric=metric).to(device=device, dtype=F64).eval()
    codebook = _draw(7, 4, seed=4)
    with torch.no_grad():
        rotated.codebook.copy_(codebook)
        straight.codebook.copy_(codebook)
    x = _draw(30, 4, seed=5)
    g = _draw(30, 4, seed=6)
    leaves = [x.clone().to(device).requires_grad_() for _ in range(2)]
    outs = [module(leaf) for module, leaf in zip((rotated, straight), leaves)]
    assert torch.equal(outs[0].indices, outs[1].indices)
    assert_close(outs[0].quantized, outs[1].quantized, F64)
    assert_close(outs[0].loss, outs[1].loss, F64)
    for out in outs:
        ((out.quantized * g.to(device)).sum() + out.loss).backward()
    # The losses' gradients agree; the quantized output's differs by the rotation (on the rows the
    # search used: x, or x / |x| for the cosine metric).
    rows = x if metric == "l2" else F.normalize(x, dim=-1)
    codes = (codebook if metric == "l2" else F.normalize(codebook, dim=-1))[outs[1].indices.cpu()]
    loss_grad = leaves[1].grad.cpu() - (g if metric == "l2" else _through_normalize(x, g))
    expected = _rotated_gradient(rows, codes, g)
    if metric == "cosine":
        expected = _through_normalize(x, expected)
    assert_close(leaves[0].grad.cpu(), loss_grad + expected, F64)
    assert_close(rotated.codebook.grad, straight.codebook.grad, F64)


def _through_normalize(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The gradient of ``x / |x|`` applied to ``g``: ``(g - u (u.g)) / |x|``."""
    norm = x.norm(dim=-1, keepdim=True)
    u = x / norm
    return (g - u * (u * g).sum(-1, keepdim=True)) / norm


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_factorised_codes_search_in_the_projected_space(device, metric):
    vq = VectorQuantizer(9, 6, codebook_dim=3, metric=metric, channel_dim=1).to(device=device, dtype=F64).eval()
    assert vq.codebook.shape == (9, 3)
    x = _draw(2, 6, 5, seed=7).to(device)
    out = vq(x)
    projected = vq.project_in(x.movedim(1, -1)).reshape(-1, 3).detach().cpu()
    codebook = vq.codebook.detach().cpu()
    if metric == "cosine":
        projected, codebook = F.normalize(projected, dim=-1), F.normalize(codebook, dim=-1)
    indices = _nearest(projected, codebook)
    assert torch.equal(out.indices.reshape(-1).cpu(), indices)
    expected = vq.project_out(codebook[indices].to(device)).reshape(2, 5, 6).movedim(-1, 1)
    assert_close(out.quantized, expected, F64)
    assert_close(out.commitment_loss.cpu(), F.mse_loss(projected, codebook[indices]), F64)
    assert out.quantized.shape == x.shape and out.indices.shape == (2, 5)


def test_factorised_ema_statistics_and_kmeans_live_in_the_code_space(device):
    vq = VectorQuantizer(4, 8, codebook_dim=2, ema=True, kmeans_init=True, kmeans_iters=2)
    vq = vq.to(device=device, dtype=F64).train()
    out = vq(_draw(40, 8, seed=8).to(device))
    assert vq.codebook.shape == (4, 2) and vq.ema_sum.shape == (4, 2)
    assert torch.isfinite(out.loss) and vq.initialised.item()
    without = VectorQuantizer(4, 8, codebook_dim=8)
    assert not hasattr(without, "project_in")  # codebook_dim = dim: no projections


def test_bad_options_name_themselves():
    with pytest.raises(ValueError, match="^gradient must be one of"):
        VectorQuantizer(4, 3, gradient="identity")
    with pytest.raises(ValueError, match="^codebook_dim must be >= 1"):
        VectorQuantizer(4, 3, codebook_dim=0)
    with pytest.raises(TypeError, match="^codebook_dim must be an int"):
        VectorQuantizer(4, 3, codebook_dim=2.0)


def test_nearest_codes_equal_vector_quantize_pytorch():
    peer = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(9)
    theirs = peer.VectorQuantize(dim=8, codebook_size=64).eval()
    ours = VectorQuantizer(64, 8).eval()
    codebook = torch.randn(64, 8)
    with torch.no_grad():
        theirs._codebook.embed.copy_(codebook[None])
        ours.codebook.copy_(codebook)
    x = torch.randn(4, 100, 8)
    quantized, their_indices, _ = theirs(x)
    out = ours(x)
    assert torch.equal(out.indices, their_indices.to(torch.int64))
    assert_close(out.quantized, quantized, torch.float32)
