"""Tests of finite scalar quantisation: fastvae.fsq, its backends, and fastvae.nn.FSQ.

Expected values come from the paper's formula written here in float64 (Mentzer et al. 2023,
appendix A.1), applied to the same, already rounded, inputs. The formula's per-level constants
``half_l = (L - 1)(1 + 1e-3) / 2`` and ``shift = atanh(offset / half_l)`` are float32 numbers by
definition (the reference code computes them so, and fastvae documents it), so they are computed
here in float32 too, then widened. Quantized codes are compared at the dtype's tolerance
(tests/tolerances.py) and indices exactly; the gradient is the closed form of the straight-through
estimator, ``half_l (1 - tanh^2(x + shift)) / (L // 2)`` times the incoming gradient.

The peer cross-check runs vector-quantize-pytorch's ``FSQ`` (skipped with the reason when it is not
installed) on the same inputs, with the same projection weights.
"""

from __future__ import annotations

import importlib
import math

import backends
import pytest
import torch
from backends import DEVICE, dtype_id, randn
from kernel_edges import poison_allocations
from tolerances import FLOAT64, FLOAT_DTYPES, assert_close

import fastvae
from fastvae.ops.fsq import OP_NAMES, fsq_indices_to_codes

LEVELS = [[3], [8, 5, 5, 5], [7, 5, 5, 5, 5], [8, 6, 5], [4] * 16, [5] * 17]
LEADING = [(1,), (7,), (3, 5), (2, 1, 13)]


@pytest.fixture(params=backends.PARAMS)
def backend(request):
    """Runs the test under each backend available here."""
    with backends.forced(request.param, OP_NAMES) as name:
        yield name


def levels_id(levels: list[int]) -> str:
    return "x".join(map(str, levels)) if len(set(levels)) > 1 else f"{levels[0]}^{len(levels)}"


# --- the independent float64 formula ------------------------------------------------------------------


def level_constants(levels: list[int]) -> tuple[torch.Tensor, ...]:
    """``(L, half_l, offset, shift, half_width, basis)`` per dim, as float64 (basis int64).

    ``half_l`` and ``shift`` are rounded to float32 as the definition says; the rest are exact.
    """
    level = torch.tensor(levels, dtype=torch.float64)
    half_l = ((level - 1).float() * torch.tensor(1.001, dtype=torch.float32) / 2).double()
    offset = (1 - level.remainder(2)) * 0.5
    shift = torch.atanh((offset / half_l).float()).double()
    basis = torch.tensor([math.prod(levels[:i]) for i in range(len(levels))], dtype=torch.int64)
    return level, half_l, offset, shift, torch.floor(level / 2), basis


def fsq_f64(x: torch.Tensor, levels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(quantized, indices)`` of the paper's formula in float64."""
    _, half_l, offset, shift, half_width, basis = level_constants(levels)
    bounded = torch.tanh(x.detach().to("cpu", torch.float64) + shift) * half_l - offset
    rounded = torch.round(bounded)
    indices = ((rounded + half_width).to(torch.int64) * basis).sum(-1)
    return rounded / half_width, indices


def fsq_grad_f64(x: torch.Tensor, grad: torch.Tensor, levels: list[int]) -> torch.Tensor:
    """The straight-through gradient ``grad * half_l (1 - tanh^2(x + shift)) / half_width`` in float64."""
    _, half_l, _, shift, half_width, _ = level_constants(levels)
    tanh = torch.tanh(x.detach().to("cpu", torch.float64) + shift)
    return grad.detach().to("cpu", torch.float64) * half_l * (1 - tanh * tanh) / half_width


def check_fsq(x: torch.Tensor, levels: list[int], grad: torch.Tensor) -> None:
    """``fastvae.fsq`` on ``x`` (values, indices, gradient for ``grad``) against the float64 formula."""
    leaf = x.detach().requires_grad_()
    quantized, indices = fastvae.fsq(leaf, levels)
    expected, expected_indices = fsq_f64(x, levels)
    assert quantized.dtype == x.dtype and quantized.shape == x.shape
    assert indices.dtype == torch.int64 and indices.shape == x.shape[:-1]
    assert_close(quantized.cpu(), expected, x.dtype)
    assert torch.equal(indices.cpu(), expected_indices)
    (grad_x,) = torch.autograd.grad(quantized, leaf, grad)
    assert grad_x.dtype == x.dtype and grad_x.shape == x.shape
    assert_close(grad_x.cpu(), fsq_grad_f64(x, grad, levels), x.dtype)


# --- values, indices and gradients ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("levels", LEVELS, ids=levels_id)
@pytest.mark.parametrize("leading", LEADING, ids=str)
def test_matches_formula(backend, dtype, levels, leading):
    # Scale 2: the bound's tanh is exercised from its linear part to saturation.
    x = randn(*leading, len(levels), dtype=dtype, seed=1, scale=2.0)
    check_fsq(x, levels, randn(*leading, len(levels), dtype=dtype, seed=2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("levels", [[3], [8, 5, 5, 5], [5] * 17, [2] * 63], ids=levels_id)
@pytest.mark.parametrize("rows", [1, 2, 31, 255, 256, 257, 1031])
def test_every_output_is_written(backend, dtype, levels, rows, monkeypatch):
    # Row counts 1, primes, a block of rows (1024 elements / the row padded to a power of two), one
    # past it, several blocks; outputs allocated NaN-filled, so an element a kernel skips fails.
    x = randn(rows, len(levels), dtype=dtype, seed=3, scale=2.0)
    grad = randn(rows, len(levels), dtype=dtype, seed=4)
    poison_allocations(monkeypatch)
    check_fsq(x, levels, grad)


def test_largest_codebook_has_int64_indices(backend):
    # 63 levels of 2: prod = 2**63, the largest allowed; the all-ones code has index 2**63 - 1.
    levels = [2] * 63
    x = torch.full((2, 63), 10.0, device=DEVICE)
    x[1] = -10.0
    quantized, indices = fastvae.fsq(x, levels)
    assert indices.tolist() == [2**63 - 1, 0]
    assert quantized[0].eq(0).all() and quantized[1].eq(-1).all()


@pytest.mark.parametrize("shape", [(0, 4), (2, 0, 4), (0, 3, 4)], ids=str)
def test_empty_inputs(backend, shape):
    x = torch.zeros(shape, device=DEVICE, requires_grad=True)
    quantized, indices = fastvae.fsq(x, [8, 5, 5, 5])
    assert quantized.shape == shape and indices.shape == shape[:-1] and indices.dtype == torch.int64
    quantized.sum().backward()
    assert x.grad.shape == shape


def test_codes_are_the_papers_grid(backend):
    # Odd L: L values symmetric in [-1, 1]; even L: -1 to 1 - 2/L, spaced 1 / (L // 2). Inputs from
    # -8 to 8 reach every level.
    levels = [5, 4, 7, 8]
    x = torch.linspace(-8, 8, 4001, device=DEVICE).unsqueeze(1).expand(-1, 4)
    quantized, indices = fastvae.fsq(x, levels)
    for i, level in enumerate(levels):
        half = level // 2
        grid = torch.arange(-half, level - half, device=DEVICE) / half
        assert torch.equal(quantized[:, i].unique(), grid.float())
    assert indices.min() == 0 and indices.max() == math.prod(levels) - 1


def test_two_levels_give_minus_one_and_zero(backend):
    # L = 2 follows the same formula: shift = atanh(0.5 / 0.5005), codes {-1, 0}, -1 only below -shift.
    shift = float(level_constants([2])[3])
    assert 3.7 < shift < 3.9
    x = torch.tensor([[-shift - 0.01], [-shift + 0.01], [0.0], [5.0], [-8.0]], device=DEVICE)
    quantized, indices = fastvae.fsq(x, [2])
    assert quantized.flatten().tolist() == [-1.0, 0.0, 0.0, 0.0, -1.0]
    assert indices.tolist() == [0, 1, 1, 1, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
def test_rounding_is_half_to_even_as_torch_round(backend, dtype):
    # At x = -shift the bound of an even L is exactly tanh(0) * half_l - 0.5 = -0.5, which torch.round
    # takes to -0.0 (half to even), neither -1 (half away from zero) nor +0.0 (half up); for an odd L
    # (shift 0) x = 0 gives +0.0.
    levels = [4, 8, 3]
    shifts = level_constants(levels)[3]
    x = (-shifts).to(dtype).unsqueeze(0).to(DEVICE)
    quantized, indices = fastvae.fsq(x, levels)
    assert quantized.tolist() == [[0.0, 0.0, 0.0]]
    assert torch.signbit(quantized).tolist() == [[True, True, False]]
    assert indices.tolist() == [2 + 4 * 4 + 1 * 32]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_bounds_saturate_and_nan_propagates(backend, dtype):
    x = torch.tensor([[math.inf, -math.inf, 3e4], [math.nan, 0.0, 0.0]], dtype=dtype, device=DEVICE)
    quantized, indices = fastvae.fsq(x, [8, 5, 5])
    assert quantized[0].tolist() == [0.75, -1.0, 1.0]
    assert indices[0].item() == 7 + 0 * 8 + 4 * 40
    assert quantized[1, 0].isnan() and not quantized[1, 1:].isnan().any()
    (grad_x,) = torch.autograd.grad(fastvae.fsq(x.requires_grad_(), [8, 5, 5]).quantized.sum(), x)
    assert grad_x[0].tolist() == [0.0, 0.0, 0.0] and grad_x[1, 0].isnan() and not grad_x[1, 1:].isnan().any()


@pytest.mark.parametrize("layout", ["transposed", "every_other", "expanded"])
def test_strided_inputs_and_incoming_gradients(backend, layout):
    levels = [8, 5, 5, 5]
    base = randn(37, 8, seed=5, scale=2.0)
    x = {"transposed": base.t()[:4].t(), "every_other": base[:, ::2], "expanded": base[:1, :4].expand(37, 4)}[layout]
    assert not x.is_contiguous()
    grad = {"transposed": randn(4, 37, seed=6).t(), "every_other": randn(37, 8, seed=6)[:, ::2],
            "expanded": randn(1, 1, seed=6).expand(37, 4)}[layout]  # fmt: skip
    check_fsq(x, levels, grad)


def test_backends_agree_exactly(backend):
    # Every backend uses the same float32 constants and torch.round's rounding: the codes and indices
    # are the reference's bit for bit (the sign of zero included) on these inputs.
    levels = [8, 5, 5, 5]
    x = randn(4, 300, 4, seed=7, scale=2.0)
    quantized, indices = fastvae.fsq(x, levels)
    with fastvae.use_backend("torch"):
        expected, expected_indices = fastvae.fsq(x, levels)
    assert torch.equal(quantized, expected) and torch.equal(torch.signbit(quantized), torch.signbit(expected))
    assert torch.equal(indices, expected_indices)


# --- indices and codes ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [7, 5, 5, 5, 5], [2, 3, 4]], ids=levels_id)
def test_indices_round_trip(backend, dtype, levels):
    x = randn(6, 50, len(levels), dtype=dtype, seed=8, scale=2.0)
    quantized, indices = fastvae.fsq(x, levels)
    assert torch.equal(fsq_indices_to_codes(indices, levels, dtype=dtype), quantized)
    # Every index of the implicit codebook maps to a code whose digits give the index back.
    every = torch.arange(math.prod(levels), device=DEVICE)
    codes = fsq_indices_to_codes(every, levels, dtype=torch.float64)
    _, _, _, _, half_width, basis = level_constants(levels)
    assert torch.equal(((codes.cpu() * half_width + half_width).round().to(torch.int64) * basis).sum(-1), every.cpu())
    # Out of range: modulo prod(levels).
    assert torch.equal(fsq_indices_to_codes(every - math.prod(levels), levels), fsq_indices_to_codes(every, levels))


# --- the module -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [None, 4, 16], ids=lambda d: f"dim={d}")
@pytest.mark.parametrize("channel_dim", [-1, 1])
def test_module_indices_to_codes_gives_the_outputs(backend, dim, channel_dim):
    torch.manual_seed(0)
    layer = fastvae.nn.FSQ([8, 5, 5, 5], dim=dim, channel_dim=channel_dim).to(DEVICE)
    channels = dim or 4
    shape = (2, 9, 3, channels) if channel_dim == -1 else (2, channels, 9, 3)
    x = randn(*shape, seed=9, scale=2.0)
    quantized, indices = layer(x)
    assert quantized.shape == x.shape and indices.shape == (2, 9, 3) and indices.dtype == torch.int64
    assert layer.codebook_size == 1000 and 0 <= indices.min() and indices.max() < 1000
    assert torch.equal(layer.indices_to_codes(indices), quantized)
    assert isinstance(layer(x), fastvae.nn.FSQOutput)


def test_module_projections_and_gradient():
    torch.manual_seed(0)
    layer = fastvae.nn.FSQ([7, 5, 5, 5, 5], dim=12)
    assert isinstance(layer.project_in, torch.nn.Linear) and layer.project_in.bias is not None
    assert (layer.project_in.in_features, layer.project_in.out_features) == (12, 5)
    assert (layer.project_out.in_features, layer.project_out.out_features) == (5, 12)
    assert isinstance(fastvae.nn.FSQ([7, 5, 5, 5, 5], dim=5).project_in, torch.nn.Identity)
    x = torch.randn(10, 12, dtype=torch.float64, requires_grad=True)
    layer = layer.double()
    quantized, _ = layer(x)
    quantized.sum().backward()
    z = layer.project_in(x.detach())
    grad_z = fsq_grad_f64(z, layer.project_out.weight.sum(0).expand_as(z), list(layer.levels))
    torch.testing.assert_close(x.grad, grad_z @ layer.project_in.weight.detach(), **FLOAT64)


# --- the peer -----------------------------------------------------------------------------------------


@pytest.fixture
def peer_fsq():
    peer = pytest.importorskip("vector_quantize_pytorch", reason="vector-quantize-pytorch is not installed")
    return peer.FSQ


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [7, 5, 5, 5, 5], [8, 6, 5], [3, 3, 3, 3, 3, 3]], ids=levels_id)
@pytest.mark.parametrize("dim", [None, 32], ids=lambda d: f"dim={d}")
@pytest.mark.parametrize("image", [False, True], ids=["sequence", "image"])
def test_equals_vector_quantize_pytorch(backend, peer_fsq, levels, dim, image):
    torch.manual_seed(0)
    peer = peer_fsq(levels, dim=dim).to(DEVICE)
    ours = fastvae.nn.FSQ(levels, dim=dim, channel_dim=1 if image else -1).to(DEVICE)
    if dim is not None:
        ours.load_state_dict(peer.state_dict())  # the projections: project_in / project_out, with bias
    channels = dim or len(levels)
    # Sequences (b, n, d), or images (b, d, h, w), which the peer moves channel-last itself.
    shape = (4, channels, 16, 16) if image else (8, 256, channels)
    x = randn(*shape, seed=10, scale=2.0)
    x_peer = x.clone().requires_grad_()
    x_ours = x.clone().requires_grad_()
    expected, expected_indices = peer(x_peer)
    quantized, indices = ours(x_ours)
    assert torch.equal(quantized, expected)
    assert torch.equal(indices, expected_indices.long())
    weights = randn(*shape, seed=11)
    (expected * weights).sum().backward()
    (quantized * weights).sum().backward()
    assert_close(x_ours.grad.cpu(), x_peer.grad.double().cpu(), torch.float32)
    assert torch.equal(ours.indices_to_codes(indices), peer.indices_to_codes(expected_indices))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=dtype_id)
def test_equals_vector_quantize_pytorch_in_other_dtypes(backend, peer_fsq, dtype):
    # The peer computes float16 and bfloat16 in float32 and float64 in float64 with float32 constants,
    # as fastvae does.
    levels = [8, 5, 5, 5]
    peer = peer_fsq(levels).to(DEVICE)
    x = randn(8, 256, 4, dtype=dtype, seed=12, scale=2.0)
    expected, expected_indices = peer(x)
    quantized, indices = fastvae.nn.FSQ(levels)(x)
    assert quantized.dtype == expected.dtype == dtype
    assert torch.equal(quantized, expected) and torch.equal(indices, expected_indices.long())


# --- torch.compile ------------------------------------------------------------------------------------


def test_compile_fullgraph_step_with_the_module_matches_eager():
    torch.manual_seed(0)
    encoder = torch.nn.Conv2d(3, 16, 1)
    layer = fastvae.nn.FSQ([8, 5, 5, 5], dim=16, channel_dim=1)
    decoder = torch.nn.Conv2d(16, 3, 1)
    parameters = [*encoder.parameters(), *layer.parameters(), *decoder.parameters()]

    def step(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quantized, indices = layer(encoder(x))
        return ((decoder(quantized) - x) ** 2).mean(), indices

    x = torch.randn(2, 3, 8, 8)
    loss, indices = step(x)
    eager_grads = torch.autograd.grad(loss, parameters)
    torch._dynamo.reset()
    compiled_loss, compiled_indices = torch.compile(step, fullgraph=True)(x)
    compiled_grads = torch.autograd.grad(compiled_loss, parameters)
    torch.testing.assert_close(compiled_loss, loss)
    assert torch.equal(compiled_indices, indices)
    for got, expected in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, expected)


# --- bad input ----------------------------------------------------------------------------------------


@pytest.fixture
def no_kernel(monkeypatch):
    """Fail the test if the op runs: bad input must be refused before any kernel."""

    def refuse(*args):
        raise AssertionError("the op ran on bad input")

    # The module, not the function fastvae.ops.fsq that shadows its name in the package.
    monkeypatch.setattr(importlib.import_module("fastvae.ops.fsq"), "_fsq", refuse)


@pytest.mark.parametrize(
    "x,levels,error,message",
    [
        ([[0.0, 0.0]], [3, 3], TypeError, "x must be a torch.Tensor"),
        (torch.zeros(2, 2, dtype=torch.int64), [3, 3], TypeError, "x must have a floating dtype"),
        (torch.zeros(()), [3], ValueError, "x must have at least 1"),
        (torch.zeros(2, 3), [3, 3], ValueError, "x must have len(levels) = 2"),
        (torch.zeros(2, 2), 3, TypeError, "levels must be a list or tuple of ints"),
        (torch.zeros(2, 2), torch.tensor([3, 3]), TypeError, "levels must be a list or tuple of ints"),
        (torch.zeros(2, 2), [3.0, 3], TypeError, "levels must be a list or tuple of ints"),
        (torch.zeros(2, 2), [True, 3], TypeError, "levels must be a list or tuple of ints"),
        (torch.zeros(2, 0), [], ValueError, "levels must hold at least one level"),
        (torch.zeros(2, 2), [3, 1], ValueError, "levels must all be >= 2"),
        (torch.zeros(2, 64), [2] * 64, ValueError, "levels must have a product of at most 2**63"),
    ],
    ids=["list", "int-dtype", "0-dim", "wrong-d", "int-levels", "tensor-levels", "float-level", "bool-level",
         "no-levels", "level-1", "too-many-codes"],
)
def test_bad_input_raises_before_any_kernel(no_kernel, x, levels, error, message):
    with pytest.raises(error, match=f"^{message}".replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        fastvae.fsq(x, levels)


def test_module_bad_arguments_name_them(no_kernel):
    with pytest.raises(ValueError, match="^levels must all be >= 2"):
        fastvae.nn.FSQ([8, 1])
    with pytest.raises(ValueError, match="^dim must be None or an int >= 1, got 0"):
        fastvae.nn.FSQ([8, 5], dim=0)
    with pytest.raises(TypeError, match="^channel_dim must be an int"):
        fastvae.nn.FSQ([8, 5], channel_dim=1.0)
    layer = fastvae.nn.FSQ([8, 5, 5], dim=6, channel_dim=1)
    with pytest.raises(ValueError, match=r"^x must have dim=6 channels along channel_dim=1, got shape \(2, 5, 6\)"):
        layer(torch.zeros(2, 5, 6))
    with pytest.raises(ValueError, match=r"^channel_dim must be in \[-1, 1\)"):
        layer(torch.zeros(6))
    with pytest.raises(TypeError, match="^x must have the projections' dtype torch.float32, got torch.float64"):
        layer(torch.zeros(2, 6, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="^indices must be an integer tensor, got torch.float32"):
        layer.indices_to_codes(torch.zeros(3))
    with pytest.raises(TypeError, match="^dtype must be None or the projections' dtype torch.float32"):
        layer.indices_to_codes(torch.zeros(3, dtype=torch.int64), dtype=torch.float64)
    with pytest.raises(TypeError, match="^dtype must be float16, bfloat16, float32 or float64, got torch.int32"):
        fsq_indices_to_codes(torch.zeros(3, dtype=torch.int64), [3], dtype=torch.int32)
