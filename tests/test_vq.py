"""Tests of fastvae.vq_nearest, fastvae.vector_quantize and fastvae.vq_code_stats.

Every expected value is an independent float64 brute force written here: the full ``(N, K)`` matrix
of squared distances ``((x[:, None] - E[None]) ** 2).sum(-1)`` (or cosine similarities), its argmin,
one-hot sums, and float64 autograd with explicit ``.detach()`` stop-gradients. Nothing is computed
with :mod:`fastvae.reference`. Inputs are drawn in float64 and rounded to the dtype under test; the
ground truth uses those rounded values, so the only error measured is the op's own.

Near-ties: in float32 and below two codes whose float64 distances differ by less than the rounding of
the search may legitimately swap. For those dtypes the tests assert that the chosen code's float64
distance equals the brute-force minimum within the dtype's tolerance, and that the indices equal the
brute-force argmin wherever the best and second-best distances are further apart than that tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import backends
import pytest
import torch
import torch.nn.functional as F
from tolerances import (
    DISTANCE_GRADCHECK,
    DISTANCE_GRADCHECK_EPS,
    FLOAT64_REORDERED,
    FLOAT_DTYPES,
    TF32_PRODUCT_RTOL,
    TOLERANCES,
    assert_close,
    three_tf32_score_error,
)
from torch.profiler import ProfilerActivity, profile

import fastvae
import fastvae.reference.vq as reference_vq
from fastvae import backend as backend_module
from fastvae.ops.vq import OP_NAMES
from fastvae.plan import vq as plan

# --- backends ---------------------------------------------------------------------------------------




@pytest.fixture(params=backends.PARAMS)
def device(request: pytest.FixtureRequest):
    """The device to build inputs on, with the parametrised backend forced for the whole test."""
    with backends.forced(request.param, OP_NAMES):
        yield backends.DEVICE


# --- independent float64 brute force ---------------------------------------------------------------


def _rand(*shape: int, dtype: torch.dtype, device: torch.device, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Standard normals drawn in float64 (reproducibly) and rounded to ``dtype``."""
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator, dtype=torch.float64)).to(device=device, dtype=dtype)


def _l2_matrix(rows: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(N, K) float64 squared Euclidean distances of the stored values."""
    x64, e64 = rows.detach().cpu().double(), codebook.detach().cpu().double()
    return ((x64[:, None, :] - e64[None, :, :]) ** 2).sum(-1)


def _cosine_matrix(rows: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(N, K) float64 ``2 - 2 cos(x, e)`` of the stored values."""
    x64, e64 = rows.detach().cpu().double(), codebook.detach().cpu().double()
    cos = (x64 @ e64.T) / (x64.norm(dim=-1)[:, None] * e64.norm(dim=-1)[None, :])
    return 2.0 - 2.0 * cos


def _mse(rows: torch.Tensor, codebook: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """float64 ``F.mse_loss`` of the stored rows ``(N, D)`` and their codes: the mean over ``N D`` elements."""
    return F.mse_loss(rows.detach().cpu().double(), codebook.detach().cpu().double()[indices.cpu()])


def _assert_nearest(indices: torch.Tensor, matrix: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Assert ``indices`` (N,) pick a minimum of ``matrix`` (N, K) up to ``dtype``'s rounding.

    Returns the float64 distance of each chosen code.
    """
    indices = indices.cpu()
    assert indices.dtype == torch.int64
    assert bool(((indices >= 0) & (indices < matrix.shape[1])).all()), indices
    rtol, atol = TOLERANCES[dtype]
    best, argbest = matrix.min(dim=1)
    chosen = matrix.gather(1, indices[:, None]).squeeze(1)
    tol = atol + rtol * best.abs()
    excess = chosen - best
    assert bool((excess <= tol).all()), f"chosen codes exceed the minimum distance by up to {excess.max().item()}"
    if matrix.shape[1] > 1:
        two = matrix.topk(2, dim=1, largest=False).values
        clear = (two[:, 1] - two[:, 0]) > tol
        assert torch.equal(indices[clear], argbest[clear])
    else:
        assert bool((indices == 0).all())
    return chosen


# --- vq_nearest: indices and distances ---------------------------------------------------------------

SIZES_N = (1, 7, 129)
SIZES_K = (1, 2, 33, 257)
SIZES_D = (1, 3, 64, 65)


@pytest.mark.parametrize("dim", SIZES_D)
@pytest.mark.parametrize("num_codes", SIZES_K)
@pytest.mark.parametrize("rows", SIZES_N)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_vq_nearest_matches_brute_force(device, dtype, rows, num_codes, dim) -> None:
    x = _rand(rows, dim, dtype=dtype, device=device, seed=rows * 1000 + dim)
    codebook = _rand(num_codes, dim, dtype=dtype, device=device, seed=num_codes * 1000 + dim + 1)
    indices, distances = fastvae.vq_nearest(x, codebook)
    assert indices.shape == (rows,) and distances.shape == (rows,)
    assert indices.device == x.device and distances.dtype == dtype
    chosen = _assert_nearest(indices, _l2_matrix(x, codebook), dtype)
    assert_close(distances, chosen, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_vq_nearest_leading_dims_and_non_contiguous_x(device, dtype) -> None:
    channel_first = _rand(2, 5, 3, 7, dtype=dtype, device=device, seed=11)  # (B, D, H, W)
    x = channel_first.movedim(1, -1)  # (B, H, W, D), not contiguous
    assert not x.is_contiguous()
    codebook = _rand(13, 5, dtype=dtype, device=device, seed=12)
    indices, distances = fastvae.vq_nearest(x, codebook)
    assert indices.shape == (2, 3, 7) and distances.shape == (2, 3, 7)
    rows = x.reshape(-1, 5)
    chosen = _assert_nearest(indices.reshape(-1), _l2_matrix(rows, codebook), dtype)
    assert_close(distances.reshape(-1), chosen, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_vq_nearest_exact_duplicate_codes_go_to_lowest_index(device, dtype) -> None:
    # Codes 0, 16 and 32 are the same vector, as are 5 and 31; every x sits next to one of them.
    base = _rand(33, 64, dtype=dtype, device=device, seed=21, scale=3.0)
    codebook = base.clone()
    codebook[16] = codebook[0]
    codebook[32] = codebook[0]
    codebook[31] = codebook[5]
    pick = torch.tensor([0, 16, 32, 5, 31, 0, 31] * 3, device=device)
    x = (codebook[pick].double() + 0.01 * _rand(pick.numel(), 64, dtype=torch.float64, device=device, seed=22)).to(
        dtype
    )
    indices, _ = fastvae.vq_nearest(x, codebook)
    lowest = torch.tensor([0, 0, 0, 5, 5, 0, 5] * 3)
    assert torch.equal(indices.cpu(), lowest)


@pytest.fixture(params=(1, 2), ids=lambda threads: f"{threads}-threads")
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test with torch on this many CPU threads (BLAS kernels and their blocking differ)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        torch.set_num_threads(before)


#: Groups of copies of one vector among 83 codes: the copies sit at columns of every remainder mod 8
#: and 16 (the BLAS microkernels' widths, whose edge columns round differently), both sides of the
#: 16-, 32- and 64-code tile edges and in the last, partial, columns.
DUPLICATE_GROUPS = [
    [2, 9, 12, 19, 28, 37, 46, 55, 64, 81],
    [4, 5, 15, 16, 31, 32, 63, 82],
    [10, 11, 17, 26, 35, 44, 53, 62, 71, 80],
    [0, 1, 3, 6, 7, 8, 13, 14, 79],
]


@pytest.mark.parametrize("chunk_rows", ("one-chunk", "few-rows-per-chunk"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
def test_duplicate_codes_tie_to_the_lowest_index_on_every_blas_path(
    device, threads, monkeypatch, dtype, chunk_rows
) -> None:
    # Each copy is hit by an exact copy of itself (distance 0) and by a near copy (every copy of the
    # group at the same distance): the lowest index must win, whatever column the BLAS put it in.
    if chunk_rows == "few-rows-per-chunk":
        monkeypatch.setattr(reference_vq, "CHUNK_BYTES", 7 * 83 * 8)  # a few rows per torch chunk
    dim = 40
    codebook = _rand(83, dim, dtype=dtype, device=device, seed=361, scale=3.0)
    for group in DUPLICATE_GROUPS:
        codebook[group] = codebook[group[0]].clone()
    pick = torch.tensor([k for group in DUPLICATE_GROUPS for k in group] * 2)
    noise = torch.zeros(pick.numel(), dim, dtype=torch.float64)
    noise[pick.numel() // 2 :] = 0.01 * _rand(pick.numel() // 2, dim, dtype=torch.float64, device="cpu", seed=362)
    x = (codebook.cpu()[pick].double() + noise).to(device=device, dtype=dtype)
    lowest = torch.tensor([group[0] for group in DUPLICATE_GROUPS for _ in group] * 2)
    indices, distances = fastvae.vq_nearest(x, codebook)
    assert torch.equal(indices.cpu(), lowest)
    assert_close(distances, _l2_matrix(x, codebook).gather(1, lowest[:, None]).squeeze(1), dtype)
    out = fastvae.vector_quantize(x, codebook)
    assert torch.equal(out.indices.cpu(), lowest)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(
    ("point", "codes", "expected"),
    [
        ([1.0, 0.0], [[0.0, 0.0], [2.0, 0.0]], 0),
        ([1.0, 0.0], [[2.0, 0.0], [0.0, 0.0]], 0),
        ([0.0, 0.0], [[3.0, 4.0], [-3.0, -4.0], [4.0, 3.0]], 0),
        ([1.0, 0.0], [[5.0, 5.0], [0.0, 0.0], [2.0, 0.0]], 1),
        ([1.0, 1.0], [[9.0, 9.0], [2.0, 1.0], [1.0, 2.0], [0.0, 1.0], [1.0, 0.0]], 1),
    ],
    ids=["first-of-two", "second-order", "origin-three", "tie-at-1-and-2", "four-way"],
)
def test_vq_nearest_equidistant_distinct_codes_go_to_lowest_index(device, dtype, point, codes, expected) -> None:
    # Small integers: every distance is exact in every dtype, so these are true ties.
    x = torch.tensor([point] * 3, dtype=dtype, device=device)
    codebook = torch.tensor(codes, dtype=dtype, device=device)
    indices, distances = fastvae.vq_nearest(x, codebook)
    assert indices.cpu().tolist() == [expected] * 3
    exact = _l2_matrix(x, codebook)[0, expected].item()
    assert distances.cpu().double().tolist() == [exact] * 3


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_vq_nearest_cosine_is_highest_cosine_similarity(device, dtype) -> None:
    x = _rand(129, 64, dtype=dtype, device=device, seed=31, scale=5.0)
    codebook = _rand(33, 64, dtype=dtype, device=device, seed=32, scale=0.1)
    indices, distances = fastvae.vq_nearest(x, codebook, metric="cosine")
    matrix = _cosine_matrix(x, codebook)
    # argmin of 2 - 2cos is argmax of cos; check that reading directly too in float64.
    if dtype == torch.float64:
        x64, e64 = x.cpu(), codebook.cpu()
        cos = (x64 @ e64.T) / (x64.norm(dim=-1)[:, None] * e64.norm(dim=-1)[None, :])
        assert torch.equal(indices.cpu(), cos.argmax(dim=1))
    chosen = _assert_nearest(indices, matrix, dtype)
    assert_close(distances, chosen, dtype)


def test_vq_nearest_cosine_ignores_scale_of_codes(device) -> None:
    # Under l2 the short code 1 is nearest; under cosine the long code 0 (same direction as x) wins.
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64, device=device)
    codebook = torch.tensor([[100.0, 0.0], [0.6, 0.8]], dtype=torch.float64, device=device)
    assert fastvae.vq_nearest(x, codebook)[0].item() == 1
    index, distance = fastvae.vq_nearest(x, codebook, metric="cosine")
    assert index.item() == 0 and distance.item() == pytest.approx(0.0, abs=FLOAT64_REORDERED.atol)


# --- the memory budget: the search works in chunks ----------------------------------------------------


@pytest.mark.parametrize("dim", (3, 65))
@pytest.mark.parametrize("num_codes", (2, 33, 257))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
@pytest.mark.parametrize("metric", ("l2", "cosine"))
def test_chunked_search_matches_brute_force(device, monkeypatch, metric, dtype, num_codes, dim) -> None:
    # 64 bytes of scores: one row per chunk for K >= 16, eight rows (129 = 16 * 8 + 1) for K = 2.
    monkeypatch.setattr(reference_vq, "CHUNK_BYTES", 64)
    x = _rand(129, dim, dtype=dtype, device=device, seed=41 + dim)
    codebook = _rand(num_codes, dim, dtype=dtype, device=device, seed=42 + num_codes)
    matrix = (_l2_matrix if metric == "l2" else _cosine_matrix)(x, codebook)
    indices, distances = fastvae.vq_nearest(x, codebook, metric=metric)
    chosen = _assert_nearest(indices, matrix, dtype)
    assert_close(distances, chosen, dtype)
    out = fastvae.vector_quantize(x, codebook, metric=metric)
    assert torch.equal(out.indices, indices)


def _largest_operand(fn: Callable[[], object]) -> int:
    """The most elements of any tensor operand of any op the profiler records while ``fn`` runs."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    largest = 0
    for event in prof.events():
        for shape in event.input_shapes:
            if isinstance(shape, list) and shape and all(isinstance(size, int) for size in shape):
                largest = max(largest, math.prod(shape))
    return largest


@pytest.mark.parametrize("op", ("vq_nearest", "vector_quantize"))
def test_search_never_holds_the_n_by_k_matrix(device, monkeypatch, op) -> None:
    # 4096 bytes of float32 scores is 3 rows of K = 257 at a time; the full matrix is 129 x 257.
    monkeypatch.setattr(reference_vq, "CHUNK_BYTES", 4096)
    rows, num_codes = 129, 257
    x = _rand(rows, 3, dtype=torch.float32, device=device, seed=51)
    codebook = _rand(num_codes, 3, dtype=torch.float32, device=device, seed=52)
    fn = getattr(fastvae, op)
    largest = _largest_operand(lambda: fn(x, codebook))
    assert largest < rows * num_codes // 10, f"an op saw a tensor of {largest} elements"


# --- the search: small tiles, codebook splits, ties across them, every output written -----------------

#: How the small-tiles fixture splits the codebook's tiles across programs: never (one program walks
#: every tile, so a tie crosses tiles inside the running arg-min), one split per tile (ties meet in
#: the epilogue's combine), three tiles per split (both).
SPLIT_RULES: dict[str, Callable[[int, int], tuple[int, int]]] = {
    "one-split": lambda row_blocks, k_tiles: (1, k_tiles),
    "split-per-tile": lambda row_blocks, k_tiles: (k_tiles, 1),
    "three-tiles-per-split": lambda row_blocks, k_tiles: (math.ceil(k_tiles / 3), 3),
}
SMALL_TILE = 16


class ForcedTiles:
    """The split rule forced on the searches, and the ``(splits, tiles per split)`` of each launch."""

    def __init__(self, rule: str) -> None:
        self.rule = rule
        self.launched: list[tuple[int, int]] = []

    def splits(self, row_blocks: int, k_tiles: int, target: int) -> tuple[int, int]:
        """Stands in for :func:`fastvae.plan.vq.codebook_splits`; the rule ignores the target."""
        self.launched.append(SPLIT_RULES[self.rule](row_blocks, k_tiles))
        return self.launched[-1]

    def assert_used(self, num_codes: int, searches: int) -> None:
        """On the triton backend, each of ``searches`` searches ran with the small tiles and the rule."""
        if backend_module.get_backend() == "triton":
            k_tiles = math.ceil(num_codes / SMALL_TILE)
            assert self.launched == [SPLIT_RULES[self.rule](0, k_tiles)] * searches


@pytest.fixture(params=list(SPLIT_RULES))
def small_tiles(request: pytest.FixtureRequest, monkeypatch) -> ForcedTiles:
    """Split the codebook as the parameter says on the triton and cuda backends (the split is their shared
    plan), and on the triton backend search in 16 x 16 x 16 tiles (rows x codes x D), so that small
    inputs cross row, code and D tiles and split boundaries."""
    forced = ForcedTiles(request.param)
    monkeypatch.setattr(plan, "codebook_splits", forced.splits)
    try:
        import fastvae.kernels.vq as kernels
    except ImportError:  # no triton here: the triton backend does not run either
        return forced
    config = kernels.SearchConfig(SMALL_TILE, SMALL_TILE, SMALL_TILE, num_warps=4, num_stages=2)
    monkeypatch.setattr(kernels, "search_config", lambda dim, dtype, precision: config)
    return forced


@pytest.mark.parametrize(
    ("rows", "num_codes", "dim"),
    [(1, 1, 1), (9, 40, 1), (37, 100, 40), (5, 250, 3), (33, 17, 16), (20, 70, 32)],
    ids=["K1", "D1", "no-multiples", "small-N-large-K", "one-D-tile", "two-full-D-tiles"],
)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_small_tiles_and_codebook_splits_match_brute_force(device, small_tiles, dtype, rows, num_codes, dim) -> None:
    x = _rand(rows, dim, dtype=dtype, device=device, seed=161 + rows)
    codebook = _rand(num_codes, dim, dtype=dtype, device=device, seed=162 + num_codes)
    indices, distances = fastvae.vq_nearest(x, codebook)
    chosen = _assert_nearest(indices, _l2_matrix(x, codebook), dtype)
    assert_close(distances, chosen, dtype)
    out = fastvae.vector_quantize(x, codebook)
    assert torch.equal(out.indices, indices)
    assert torch.equal(out.quantized, codebook[indices])
    assert_close(out.commitment_loss, _mse(x, codebook, indices), dtype)
    assert_close(out.codebook_loss, _mse(x, codebook, indices), dtype)
    expected = torch.tensor(_entropy_perplexity(indices, num_codes), dtype=torch.float64)
    assert_close(out.perplexity, expected, dtype)
    small_tiles.assert_used(num_codes, searches=2)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_ties_across_tiles_and_splits_go_to_lowest_index(device, small_tiles, dtype) -> None:
    # With 16-code tiles: 3, 19, 50 and 97 lie in tiles 0, 1, 3 and 6; 15 | 16, 31 | 32 and 63 | 64
    # straddle tile edges; 40 and 41 share a tile. Each group holds copies of one vector.
    groups = [[3, 19, 50, 97], [15, 16, 31, 32, 64], [40, 41, 63]]
    codebook = _rand(100, 24, dtype=dtype, device=device, seed=171, scale=3.0)
    for group in groups:
        codebook[group] = codebook[group[0]].clone()
    pick = torch.tensor([k for group in groups for k in reversed(group)] * 2)
    noise = torch.zeros(pick.numel(), 24, dtype=torch.float64)
    noise[: pick.numel() // 2] = 0.01 * _rand(pick.numel() // 2, 24, dtype=torch.float64, device="cpu", seed=172)
    x = (codebook.cpu()[pick].double() + noise).to(device=device, dtype=dtype)  # half exact copies: distance 0
    lowest = torch.tensor([group[0] for group in groups for _ in group] * 2)
    indices, distances = fastvae.vq_nearest(x, codebook)
    assert torch.equal(indices.cpu(), lowest)
    assert_close(distances, _l2_matrix(x, codebook).gather(1, lowest[:, None]).squeeze(1), dtype)
    assert torch.equal(fastvae.vector_quantize(x, codebook).indices.cpu(), lowest)
    small_tiles.assert_used(100, searches=2)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_strided_inputs_with_small_tiles(device, small_tiles, dtype) -> None:
    x = _rand(2 * 37, 40, dtype=dtype, device=device, seed=181)[::2]  # every other row
    codebook = _rand(100, 2 * 40, dtype=dtype, device=device, seed=182)[:, 1::2]  # every other column
    assert not x.is_contiguous() and not codebook.is_contiguous()
    indices, distances = fastvae.vq_nearest(x, codebook)
    chosen = _assert_nearest(indices, _l2_matrix(x, codebook), dtype)
    assert_close(distances, chosen, dtype)
    small_tiles.assert_used(100, searches=1)


@pytest.fixture
def poisoned_allocations(monkeypatch) -> None:
    """``torch.empty`` and ``torch.empty_like`` return NaN (floating) or -1 (integer) filled tensors while
    the test runs, so an output element that no kernel writes shows up."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dtype.is_floating_point:
            return tensor.fill_(float("nan"))
        return tensor.fill_(-1) if tensor.dtype != torch.bool else tensor

    monkeypatch.setattr(torch, "empty", lambda *args, **kwargs: poison(empty(*args, **kwargs)))
    monkeypatch.setattr(torch, "empty_like", lambda *args, **kwargs: poison(empty_like(*args, **kwargs)))


@pytest.mark.parametrize(("rows", "num_codes", "dim"), [(37, 100, 40), (5, 250, 3)], ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_every_output_element_is_written(
    device, small_tiles, poisoned_allocations, dtype, rows, num_codes, dim
) -> None:
    x = _rand(rows, dim, dtype=dtype, device=device, seed=191).requires_grad_()
    codebook = _rand(num_codes, dim, dtype=dtype, device=device, seed=192).requires_grad_()
    indices, distances = fastvae.vq_nearest(x, codebook)
    assert bool((indices >= 0).all()) and not distances.isnan().any()
    _assert_nearest(indices, _l2_matrix(x, codebook), dtype)
    out = fastvae.vector_quantize(x, codebook)
    assert torch.equal(out.indices, indices) and not out.quantized.isnan().any()
    for value in (out.loss, out.commitment_loss, out.codebook_loss, out.perplexity):
        assert not value.isnan()
    upstream = _rand(rows, dim, dtype=dtype, device=device, seed=193)
    ((out.quantized * upstream).sum() + out.loss).backward()
    assert not x.grad.isnan().any() and not codebook.grad.isnan().any()
    counts, sums = fastvae.vq_code_stats(x, indices, num_codes)
    assert counts.sum().item() == rows and not sums.isnan().any()
    small_tiles.assert_used(num_codes, searches=2)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_vq_nearest_vectors_wider_than_one_d_tile(device, dtype) -> None:
    # D = 130 is past every single-tile width of the triton search (128 for fp16/bf16), so it loops over D.
    x = _rand(33, 130, dtype=dtype, device=device, seed=201)
    codebook = _rand(70, 130, dtype=dtype, device=device, seed=202)
    indices, distances = fastvae.vq_nearest(x, codebook)
    chosen = _assert_nearest(indices, _l2_matrix(x, codebook), dtype)
    assert_close(distances, chosen, dtype)
    assert torch.equal(fastvae.vector_quantize(x, codebook).indices, indices)


#: Programs that fill an H100 or H200: 2 on each of 132 SMs.
H100_PROGRAMS = 264


def test_the_split_targets_two_programs_per_sm() -> None:
    # CPU tensors (the Triton interpreter) are split as on an H100.
    assert plan.target_programs(torch.device("cpu")) == H100_PROGRAMS
    if torch.cuda.is_available():
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        assert plan.target_programs(torch.device("cuda", 0)) == 2 * sms


@pytest.mark.parametrize(
    ("row_blocks", "k_tiles"), [(1, 1), (1, 128), (3, 5), (100, 7), (200, 128), (263, 2), (264, 128), (8192, 128)]
)
def test_codebook_split_heuristic(row_blocks, k_tiles) -> None:
    splits, per_split = plan.codebook_splits(row_blocks, k_tiles, H100_PROGRAMS)
    assert (splits - 1) * per_split < k_tiles <= splits * per_split  # every tile covered, no split empty
    if row_blocks >= H100_PROGRAMS:
        assert splits == 1
    else:
        wanted = min(k_tiles, math.ceil(H100_PROGRAMS / row_blocks))
        assert wanted / 2 < splits <= wanted


def test_search_splits_only_batches_too_small_to_fill_the_gpu() -> None:
    kernels = pytest.importorskip("fastvae.kernels.vq")
    config = kernels.search_config(64, torch.bfloat16, "ieee")
    k_tiles = math.ceil(16384 / config.block_k)
    # The VQ-VAE benchmark shape, N = 2^20 rows: one split; 64 rows: the codebook spread over programs.
    assert plan.codebook_splits(math.ceil(2**20 / config.block_n), k_tiles, H100_PROGRAMS) == (1, k_tiles)
    assert plan.codebook_splits(1, k_tiles, H100_PROGRAMS)[0] == min(k_tiles, H100_PROGRAMS)


# --- the edges of the compiled kernels: odd sizes, unaligned pointers, ties, codebook splits --------------
#
# The compiled searches tile rows and codes by 64, 128 or 256, stage D in chunks of 8 to 64 elements,
# copy 16 bytes at a time where pointers and rows allow, and split the codebook across programs when
# there are few rows (csrc/vq.cu, fastvae/kernels/vq.py). These inputs sit on and just past those edges;
# the expected values are the float64 brute force, so every backend must pass them.

#: (rows, codes, D). Rows and codes: ones, small primes, and one past 64-, 128- and 256-wide tiles;
#: D: one, primes around the staging chunks, one short of and one past 64, and past 256. Every size
#: of each kind appears at least once (the full product is too slow for the Triton interpreter).
EDGE_SHAPES = [
    (1, 1, 1),
    (2, 3, 3),
    (13, 131, 17),
    (257, 65, 63),
    (129, 3, 65),
    (1, 129, 257),
    (257, 1, 3),
    (13, 65, 1),
]


@pytest.mark.parametrize(("rows", "num_codes", "dim"), EDGE_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_odd_dims_and_tile_edges_match_brute_force(device, dtype, rows, num_codes, dim) -> None:
    x = _rand(rows, dim, dtype=dtype, device=device, seed=301 + dim)
    codebook = _rand(num_codes, dim, dtype=dtype, device=device, seed=302 + num_codes)
    indices, distances = fastvae.vq_nearest(x, codebook)
    chosen = _assert_nearest(indices, _l2_matrix(x, codebook), dtype)
    assert_close(distances, chosen, dtype)
    out = fastvae.vector_quantize(x, codebook)
    assert torch.equal(out.indices, indices)
    assert torch.equal(out.quantized, codebook[indices])
    assert_close(out.commitment_loss, _mse(x, codebook, indices), dtype)
    expected = torch.tensor(_entropy_perplexity(indices, num_codes), dtype=torch.float64)
    assert_close(out.perplexity, expected, dtype)


@pytest.mark.parametrize("dim", (3, 8, 64))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_unaligned_base_pointers(device, dtype, dim) -> None:
    # Contiguous views that start one element into their buffers: their data pointers are 2, 4 or 8
    # bytes past an aligned address, so a kernel that takes 16-byte alignment for granted fails here
    # (D = 8 and 64 have rows of whole 16-byte vectors, D = 3 does not).
    rows, num_codes, beta = 37, 70, 0.5
    x = _rand(rows * dim + 1, dtype=dtype, device=device, seed=311)[1:].view(rows, dim)
    codebook = _rand(num_codes * dim + 1, dtype=dtype, device=device, seed=312)[1:].view(num_codes, dim)
    assert x.is_contiguous() and codebook.is_contiguous()
    assert x.data_ptr() % 16 != 0 and codebook.data_ptr() % 16 != 0
    indices, distances = fastvae.vq_nearest(x, codebook)
    chosen = _assert_nearest(indices, _l2_matrix(x, codebook), dtype)
    assert_close(distances, chosen, dtype)

    x.requires_grad_()
    codebook.requires_grad_()
    out = fastvae.vector_quantize(x, codebook, beta=beta)
    assert torch.equal(out.indices, indices)
    assert torch.equal(out.quantized, codebook[indices])
    assert_close(out.commitment_loss, _mse(x, codebook, indices), dtype)
    out.loss.backward()
    expected_x, expected_codebook = _float64_vq_grads(x, codebook, indices, "loss", beta)
    assert_close(x.grad.cpu(), expected_x, dtype)
    assert_close(codebook.grad.cpu(), expected_codebook, dtype)

    counts, sums = fastvae.vq_code_stats(x, indices, num_codes)
    one_hot = F.one_hot(indices.cpu(), num_codes).double()
    assert torch.equal(counts.cpu().double(), one_hot.sum(0))
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    # As in test_vq_code_stats_match_one_hot: each sum adds up to N rounded terms, hence sqrt(N).
    assert_close(sums.cpu(), one_hot.T @ x.detach().cpu().double(), compute, scale=math.sqrt(rows))


@pytest.mark.parametrize("rows_per_copy", (1, 20), ids=["few-rows", "many-rows"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_duplicate_codes_at_tile_and_split_edges_go_to_lowest_index(device, dtype, rows_per_copy) -> None:
    # Each group holds copies of one vector, on both sides of the 64-, 128- and 256-code tile edges and
    # far apart. With few rows the compiled backends split the codebook across programs, so the copies
    # also meet in the merge of the splits; with 260 rows there are several row blocks.
    groups = [[63, 64, 127, 128, 255, 256], [1, 65, 200, 299], [100, 101, 129]]
    codebook = _rand(300, 20, dtype=dtype, device=device, seed=321, scale=3.0)
    for group in groups:
        codebook[group] = codebook[group[0]].clone()
    pick = torch.tensor([k for group in groups for k in reversed(group)] * rows_per_copy)
    noise = torch.zeros(pick.numel(), 20, dtype=torch.float64)
    noise[::2] = 0.01 * _rand((pick.numel() + 1) // 2, 20, dtype=torch.float64, device="cpu", seed=322)
    x = (codebook.cpu()[pick].double() + noise).to(device=device, dtype=dtype)  # every other row an exact copy
    lowest = torch.tensor([group[0] for group in groups for _ in group] * rows_per_copy)
    indices, distances = fastvae.vq_nearest(x, codebook)
    assert torch.equal(indices.cpu(), lowest)
    assert_close(distances, _l2_matrix(x, codebook).gather(1, lowest[:, None]).squeeze(1), dtype)
    out = fastvae.vector_quantize(x, codebook)
    assert torch.equal(out.indices.cpu(), lowest)
    assert torch.equal(out.quantized, codebook[lowest.to(device)])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_few_rows_against_many_codes(device, dtype) -> None:
    # 3 rows and 1031 codes (a prime): the compiled searches spread the codebook over many programs,
    # whose per-split minima the epilogue merges.
    x = _rand(3, 16, dtype=dtype, device=device, seed=331)
    codebook = _rand(1031, 16, dtype=dtype, device=device, seed=332)
    indices, distances = fastvae.vq_nearest(x, codebook)
    chosen = _assert_nearest(indices, _l2_matrix(x, codebook), dtype)
    assert_close(distances, chosen, dtype)
    out = fastvae.vector_quantize(x, codebook)
    assert torch.equal(out.indices, indices)
    assert_close(out.commitment_loss, _mse(x, codebook, indices), dtype)
    expected = torch.tensor(_entropy_perplexity(indices, 1031), dtype=torch.float64)
    assert_close(out.perplexity, expected, dtype)


@pytest.mark.parametrize(("rows", "num_codes", "dim"), [(257, 5, 17), (64, 129, 3)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_gradients_match_one_hot_formula_with_strided_upstream(device, dtype, rows, num_codes, dim) -> None:
    # The codebook gradient is a segment sum over the rows on each code; here it is checked against the
    # one-hot matrix product it replaces, in float64, with a transposed (non-contiguous) gradient of
    # the quantized rows flowing in.
    beta = 0.3
    x = _rand(rows, dim, dtype=dtype, device=device, seed=341 + dim).requires_grad_()
    codebook = _rand(num_codes, dim, dtype=dtype, device=device, seed=342 + num_codes).requires_grad_()
    out = fastvae.vector_quantize(x, codebook, beta=beta)
    upstream = _rand(dim, rows, dtype=dtype, device=device, seed=343).T
    assert not upstream.is_contiguous()
    torch.autograd.backward([out.quantized, out.loss], [upstream, torch.ones_like(out.loss)])

    one_hot = F.one_hot(out.indices.cpu(), num_codes).double()  # (N, K)
    x64, codebook64 = x.detach().cpu().double(), codebook.detach().cpu().double()
    diff = x64 - one_hot @ codebook64  # x_n - e_{k(n)}
    expected_x = upstream.cpu().double() + beta * 2.0 * diff / (rows * dim)
    expected_codebook = -2.0 / (rows * dim) * (one_hot.T @ diff)
    assert x.grad.dtype == dtype and codebook.grad.dtype == dtype
    assert_close(x.grad.cpu(), expected_x, dtype)
    assert_close(codebook.grad.cpu(), expected_codebook, dtype)
    unused = one_hot.sum(0) == 0
    assert not codebook.grad.cpu()[unused].any()


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_vq_vae_scale_batch_matches_a_float64_search(device, dtype) -> None:
    # The VQ-VAE benchmark shape: N = 2^20 rows, K = 16384 codes, D = 64. The N x K scores are never
    # held at once here either: the float64 search below goes chunk by chunk. It is written here, not
    # taken from fastvae.reference, so that the torch backend is checked against something else too.
    if device.type != "cuda":
        pytest.skip("the large batch runs on CUDA tensors")
    rows, num_codes, dim, chunk = 2**20, 16384, 64, 8192
    generator = torch.Generator(device=device).manual_seed(351)
    x = torch.randn(rows, dim, generator=generator, device=device).to(dtype)
    codebook = torch.randn(num_codes, dim, generator=generator, device=device).to(dtype)
    indices, distances = fastvae.vq_nearest(x, codebook)
    assert indices.shape == (rows,) and indices.dtype == torch.int64
    assert distances.shape == (rows,) and distances.dtype == dtype

    rtol, atol = TOLERANCES[dtype]
    codes64 = codebook.double()
    code_sq = (codes64 * codes64).sum(-1)
    clear_rows = 0
    for start in range(0, rows, chunk):
        rows64 = x[start : start + chunk].double()
        chosen = indices[start : start + chunk]
        # |x - e|^2 for every code, exactly enough in float64 (|x|^2 added back after the top-2).
        scores = torch.addmm(code_sq, rows64, codes64.T, alpha=-2.0)
        two = scores.topk(2, dim=1, largest=False)
        row_sq = (rows64 * rows64).sum(-1)
        best_sq = two.values[:, 0] + row_sq
        chosen_sq = ((rows64 - codes64[chosen]) ** 2).sum(-1)
        tol = atol + rtol * best_sq
        # As _assert_nearest: a code within the dtype's rounding of the nearest, and the nearest itself
        # wherever the two best codes are further apart than that.
        assert bool((chosen_sq - best_sq <= tol).all())
        clear = (two.values[:, 1] - two.values[:, 0]) > tol
        assert torch.equal(chosen[clear], two.indices[clear, 0])
        assert_close(distances[start : start + chunk], chosen_sq, dtype)
        clear_rows += int(clear.sum())
    assert clear_rows > rows // 2


# --- precision --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ("vq_nearest", "vector_quantize"))
def test_tf32_search_picks_a_code_within_tf32_rounding_of_the_nearest(device, op) -> None:
    x = _rand(129, 65, dtype=torch.float32, device=device, seed=211)
    codebook = _rand(257, 65, dtype=torch.float32, device=device, seed=212)
    result = getattr(fastvae, op)(x, codebook, precision="tf32")
    indices = result[0] if op == "vq_nearest" else result.indices
    matrix = _l2_matrix(x, codebook)
    best, argbest = matrix.min(dim=1)
    chosen = matrix.gather(1, indices.cpu()[:, None]).squeeze(1)
    # TF32 keeps 10 of float32's 23 mantissa bits: each operand is off by less than 2^-10 (truncated),
    # each product x_i e_i by less than 2^-9 |x_i e_i|, a score |e|^2/2 - x.e by u_k < 2^-9 sum_i |x_i e_ki|.
    # The chosen code c beats the nearest b on rounded scores, so |x - e_c|^2 - |x - e_b|^2 <= 2 (u_c + u_b).
    u = TF32_PRODUCT_RTOL * (x.cpu().double().abs() @ codebook.cpu().double().abs().T)
    tol = 4.0 * u.max(dim=1).values
    rtol, atol = TOLERANCES[torch.float32]
    assert bool((chosen - best <= tol + atol + rtol * best).all())
    two = matrix.topk(2, dim=1, largest=False).values
    clear = (two[:, 1] - two[:, 0]) > tol
    assert clear.any() and torch.equal(indices.cpu()[clear], argbest[clear])
    # Whatever code wins, its distance and losses are the exact |x - e|^2.
    if op == "vq_nearest":
        assert_close(result[1], chosen, torch.float32)
    else:
        assert_close(result.commitment_loss, chosen.mean() / x.shape[-1], torch.float32)


@pytest.mark.parametrize("op", ("vq_nearest", "vector_quantize"))
def test_3xtf32_search_picks_a_code_within_its_error_bound(device, op) -> None:
    x = _rand(129, 65, dtype=torch.float32, device=device, seed=213)
    codebook = _rand(257, 65, dtype=torch.float32, device=device, seed=214)
    result = getattr(fastvae, op)(x, codebook, precision="3xtf32")
    indices = (result[0] if op == "vq_nearest" else result.indices).cpu()
    matrix = _l2_matrix(x, codebook)
    best, argbest = matrix.min(dim=1)
    chosen = matrix.gather(1, indices[:, None]).squeeze(1)
    # tolerances.three_tf32_score_error: the chosen code c and the nearest b differ by at most
    # 2 (error_c + error_b) in squared distance, exactly (no dtype tolerance on top).
    error = three_tf32_score_error(x, codebook)
    rows = torch.arange(x.shape[0])
    assert bool((chosen - best <= 2.0 * (error[rows, indices] + error[rows, argbest])).all())
    two = matrix.topk(2, dim=1, largest=False).values
    clear = (two[:, 1] - two[:, 0]) > 4.0 * error.max(dim=1).values
    assert clear.any() and torch.equal(indices[clear], argbest[clear])
    if op == "vq_nearest":
        assert_close(result[1], chosen, torch.float32)
    else:
        assert_close(result.commitment_loss, chosen.mean() / x.shape[-1], torch.float32)


def _tf32(values: torch.Tensor) -> torch.Tensor:
    """float32 ``values`` rounded to TF32 (11 significant bits), to nearest, ties away from zero."""
    bits = values.float().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def _rounding_against(values: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """float64 ``values`` moved (by at most half a TF32 ulp) to float32 numbers just past the midpoint
    between two TF32 numbers, so that rounding them to TF32 moves them by almost half a TF32 ulp in
    the sign of ``direction``."""
    magnitude = values.abs()
    ulp = torch.exp2(torch.floor(torch.log2(magnitude)) - 10)
    midpoint = torch.floor(magnitude / ulp) * ulp + ulp / 2
    outward = torch.sign(values) * torch.sign(direction)  # round the magnitude up where positive
    return (torch.sign(values) * (midpoint + outward * ulp * 2.0**-12)).float()


def _near_ties(rows: int, dim: int, radius: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 rows, each with two codes about ``radius`` away whose squared distances differ by a few
    times the 3xTF32 bound on their scores' errors, and whose entries (and the row's) sit where
    rounding them to TF32 moves them most, towards the wrong code: the far code's towards the row's
    signs (a larger ``x . e``), the near code's away, the row's along ``far - near``.

    Kept are the rows where the exact gap exceeds what 3xTF32 can bridge
    (:func:`tolerances.three_tf32_score_error`) and a search with one TF32 product of the rounded
    operands (emulated in float64) picks the far code. Returns ``(x (R, D), codebook (2R, D),
    nearest (R,))`` for the ``R`` kept rows, the nearer code of each pair alternately first and second.
    """
    generator = torch.Generator().manual_seed(seed)
    directions = F.normalize(torch.randn(rows, 2, dim, generator=generator, dtype=torch.float64), dim=-1)
    toward_near, toward_far = directions.unbind(1)
    x = _rounding_against(torch.randn(rows, dim, generator=generator, dtype=torch.float64), toward_far - toward_near)
    x = x.double()
    near = _rounding_against(x + radius * toward_near, -x).double()
    index = torch.arange(rows)
    bound = three_tf32_score_error(x, torch.cat([near, x + radius * toward_far]))
    gap = 3.0 * (bound[index, index] + bound[index, rows + index])
    reach = torch.sqrt(((x - near) ** 2).sum(-1) + gap)
    far = _rounding_against(x + reach[:, None] * toward_far, x).double()

    exact_gap = ((x - far) ** 2).sum(-1) - ((x - near) ** 2).sum(-1)
    error = three_tf32_score_error(x, torch.cat([near, far]))
    resolvable = exact_gap > 2.0 * (error[index, index] + error[index, rows + index])
    x_tf32 = _tf32(x).double()
    one_tf32 = [0.5 * (code * code).sum(-1) - (x_tf32 * _tf32(code).double()).sum(-1) for code in (near, far)]
    beyond_tf32 = one_tf32[1] < one_tf32[0]
    keep = resolvable & beyond_tf32
    x, near, far = x[keep], near[keep], far[keep]
    first = (torch.arange(x.shape[0]) % 2 == 0)[:, None]
    pairs = torch.stack([torch.where(first, near, far), torch.where(first, far, near)], dim=1)
    nearest = 2 * torch.arange(x.shape[0]) + (~first[:, 0]).long()
    return x.float(), pairs.reshape(-1, dim).float(), nearest


@pytest.mark.parametrize(("dim", "radius"), [(32, 4.0), (64, 8.0)], ids=["one-D-tile", "D-chunks"])
def test_3xtf32_resolves_near_ties_that_one_tf32_product_cannot(device, dim, radius) -> None:
    # Every row's two codes are further apart in squared distance than 3xTF32's rounding can bridge,
    # and one TF32 product of the rounded operands picks the far one (see _near_ties); the entries are
    # placed so that leaving out either cross product x_hi e_lo or x_lo e_hi also picks it on most rows.
    # So the split and all three products must be there for every row to find its nearer code.
    x, codebook, nearest = _near_ties(256, dim, radius, seed=215)
    assert x.shape[0] >= 128  # most rows keep both properties
    matrix = _l2_matrix(x, codebook)
    assert torch.equal(matrix.argmin(dim=1), nearest)
    x, codebook = x.to(device), codebook.to(device)
    indices, distances = fastvae.vq_nearest(x, codebook, precision="3xtf32")
    assert torch.equal(indices.cpu(), nearest)
    assert_close(distances, matrix.gather(1, nearest[:, None]).squeeze(1), torch.float32)
    assert torch.equal(fastvae.vector_quantize(x, codebook, precision="3xtf32").indices.cpu(), nearest)


def test_3xtf32_is_the_exact_search_on_the_torch_and_cuda_backends(device) -> None:
    # Documented: the torch backend ignores precision, and the cuda backend has no 3xTF32 kernel and
    # runs its exact float32 ("ieee") search, at least as accurate as the promise.
    if backend_module.get_backend() == "triton":
        pytest.skip("the triton backend has a 3xTF32 search (tested above)")
    x, codebook, _ = _near_ties(64, 48, 4.0, seed=216)
    x, codebook = x.to(device), codebook.to(device)
    exact, split = (fastvae.vq_nearest(x, codebook, precision=p) for p in ("ieee", "3xtf32"))
    assert torch.equal(exact[0], split[0]) and torch.equal(exact[1], split[1])


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float64), ids=str)
def test_precision_changes_nothing_outside_float32(device, dtype) -> None:
    x = _rand(129, 40, dtype=dtype, device=device, seed=221)
    codebook = _rand(70, 40, dtype=dtype, device=device, seed=222)
    exact = fastvae.vq_nearest(x, codebook, precision="ieee")
    for precision in ("tf32", "3xtf32"):
        other = fastvae.vq_nearest(x, codebook, precision=precision)
        assert torch.equal(exact[0], other[0]) and torch.equal(exact[1], other[1])
    exact = fastvae.vector_quantize(x, codebook, precision="ieee")
    for precision in ("tf32", "3xtf32"):
        for a, b in zip(exact, fastvae.vector_quantize(x, codebook, precision=precision)):
            assert torch.equal(a, b)


# --- vq_nearest: gradients of the distances -----------------------------------------------------------


def _separated(rows_per_code: int, num_codes: int, dim: int, device: torch.device, seed: int):
    """float64 codes far apart and rows close to them, so a finite-difference step never changes the argmin."""
    generator = torch.Generator().manual_seed(seed)
    codebook = 10.0 * torch.randn(num_codes, dim, generator=generator, dtype=torch.float64)
    owner = torch.arange(num_codes).repeat_interleave(rows_per_code)
    x = codebook[owner] + 0.3 * torch.randn(owner.numel(), dim, generator=generator, dtype=torch.float64)
    return x.to(device).requires_grad_(), codebook.to(device).requires_grad_()


@pytest.mark.parametrize("metric", ("l2", "cosine"))
def test_vq_nearest_distance_gradients_pass_gradcheck(device, metric) -> None:
    x, codebook = _separated(3, 5, 4, device, seed=61)
    x = x.detach().reshape(3, 5, 4).requires_grad_()  # leading dims

    def distances(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        return fastvae.vq_nearest(x, codebook, metric=metric)[1]

    assert torch.autograd.gradcheck(distances, (x, codebook), eps=DISTANCE_GRADCHECK_EPS, **DISTANCE_GRADCHECK)


def test_vq_nearest_indices_are_not_differentiable(device) -> None:
    x, codebook = _separated(2, 3, 4, device, seed=62)
    indices, distances = fastvae.vq_nearest(x, codebook)
    assert not indices.requires_grad and distances.requires_grad


# --- vector_quantize: values ----------------------------------------------------------------------------


def _entropy_perplexity(indices: torch.Tensor, num_codes: int) -> float:
    """exp(-sum p log p) of the code usage, by hand from bincount (0 log 0 = 0)."""
    counts = torch.bincount(indices.reshape(-1).cpu(), minlength=num_codes).double()
    p = counts / counts.sum()
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


@pytest.mark.parametrize("beta", (0.0, 0.25, 3.0))
@pytest.mark.parametrize(("rows", "num_codes", "dim"), [(1, 1, 1), (7, 2, 3), (129, 33, 64), (129, 257, 65)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_vector_quantize_values_match_float64_formulas(device, dtype, rows, num_codes, dim, beta) -> None:
    x = _rand(rows, dim, dtype=dtype, device=device, seed=71 + rows)
    codebook = _rand(num_codes, dim, dtype=dtype, device=device, seed=72 + num_codes)
    out = fastvae.vector_quantize(x, codebook, beta=beta)
    assert isinstance(out, fastvae.VQOutput)
    assert out._fields == ("quantized", "indices", "loss", "commitment_loss", "codebook_loss", "perplexity")
    assert out.quantized.shape == x.shape and out.quantized.dtype == dtype
    assert out.indices.shape == (rows,)
    for value in (out.loss, out.commitment_loss, out.codebook_loss, out.perplexity):
        assert value.shape == () and value.dtype == dtype

    chosen = _assert_nearest(out.indices, _l2_matrix(x, codebook), dtype)
    assert torch.equal(out.quantized, codebook[out.indices])
    # The losses are F.mse_loss: the mean over the N D elements, as every peer library reports them.
    mse = F.mse_loss(x.cpu().double(), codebook.cpu().double()[out.indices.cpu()])
    assert_close(out.commitment_loss, mse, dtype)
    assert_close(out.codebook_loss, mse, dtype)
    assert_close(out.loss, (1.0 + beta) * mse, dtype)
    assert_close(out.perplexity, torch.tensor(_entropy_perplexity(out.indices, num_codes), dtype=torch.float64), dtype)


def test_vector_quantize_perplexity_by_hand(device) -> None:
    # Usage (2, 1, 1, 0) of 4 rows: p = (1/2, 1/4, 1/4), entropy = 1.5 log 2, perplexity = 2 ** 1.5.
    codebook = torch.tensor([[0.0], [10.0], [20.0], [30.0]], dtype=torch.float64, device=device)
    x = torch.tensor([[1.0], [-1.0], [11.0], [19.0]], dtype=torch.float64, device=device)
    out = fastvae.vector_quantize(x, codebook)
    assert out.indices.cpu().tolist() == [0, 0, 1, 2]
    assert out.perplexity.item() == pytest.approx(2.0**1.5, rel=FLOAT64_REORDERED.rtol)
    assert out.commitment_loss.item() == pytest.approx(1.0, rel=FLOAT64_REORDERED.rtol)  # every (x - e)^2 is 1 (D = 1)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_vector_quantize_leading_dims(device, dtype) -> None:
    x = _rand(2, 6, 3, 5, dtype=dtype, device=device, seed=81).movedim(1, -1)  # (2, 3, 5, 6), strided
    codebook = _rand(7, 6, dtype=dtype, device=device, seed=82)
    out = fastvae.vector_quantize(x, codebook)
    assert out.quantized.shape == x.shape and out.indices.shape == (2, 3, 5)
    rows = x.reshape(-1, 6)
    chosen = _assert_nearest(out.indices.reshape(-1), _l2_matrix(rows, codebook), dtype)
    assert torch.equal(out.quantized, codebook[out.indices])
    assert_close(out.commitment_loss, _mse(rows, codebook, out.indices.reshape(-1)), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_vector_quantize_cosine_values(device, dtype) -> None:
    x = _rand(129, 64, dtype=dtype, device=device, seed=91, scale=4.0)
    codebook = _rand(33, 64, dtype=dtype, device=device, seed=92, scale=0.2)
    out = fastvae.vector_quantize(x, codebook, beta=0.5, metric="cosine")
    chosen = _assert_nearest(out.indices, _cosine_matrix(x, codebook), dtype)
    unit_codes = F.normalize(codebook.cpu().double(), dim=-1)
    assert_close(out.quantized.cpu(), unit_codes[out.indices.cpu()], dtype)
    assert_close(out.commitment_loss, chosen.mean() / 64, dtype)  # |x^ - e^|^2 = 2 - 2 cos, over D = 64
    assert_close(out.loss, 1.5 * chosen.mean() / 64, dtype)


# --- vector_quantize: gradients -------------------------------------------------------------------------


def _float64_vq_grads(x: torch.Tensor, codebook: torch.Tensor, indices: torch.Tensor, which: str, beta: float):
    """Gradients (d x, d codebook) of one VQ output in float64 autograd with explicit stop-gradients."""
    x64 = x.detach().cpu().double().requires_grad_()
    codebook64 = codebook.detach().cpu().double().requires_grad_()
    e = codebook64[indices.cpu()]
    commitment = F.mse_loss(x64, e.detach())
    codebook_loss = F.mse_loss(e, x64.detach())
    objective = {
        "commitment_loss": commitment,
        "codebook_loss": codebook_loss,
        "loss": codebook_loss + beta * commitment,
    }[which]
    grad_x, grad_codebook = torch.autograd.grad(objective, (x64, codebook64), allow_unused=True)
    return (
        torch.zeros_like(x64) if grad_x is None else grad_x,
        torch.zeros_like(codebook64) if grad_codebook is None else grad_codebook,
    )


def _grad_or_zeros(tensor: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(tensor) if tensor.grad is None else tensor.grad


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_vector_quantize_straight_through_gradient(device, dtype) -> None:
    x = _rand(129, 33, dtype=dtype, device=device, seed=101).requires_grad_()
    codebook = _rand(17, 33, dtype=dtype, device=device, seed=102).requires_grad_()
    out = fastvae.vector_quantize(x, codebook)
    upstream = _rand(129, 33, dtype=dtype, device=device, seed=103)
    out.quantized.backward(upstream)
    assert torch.equal(x.grad, upstream)
    assert not _grad_or_zeros(codebook).any()


def test_vector_quantize_straight_through_of_sum_is_ones(device) -> None:
    x = _rand(7, 3, dtype=torch.float32, device=device, seed=104).requires_grad_()
    codebook = _rand(5, 3, dtype=torch.float32, device=device, seed=105).requires_grad_()
    fastvae.vector_quantize(x, codebook).quantized.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert not _grad_or_zeros(codebook).any()


@pytest.mark.parametrize("which", ("commitment_loss", "codebook_loss", "loss"))
@pytest.mark.parametrize(("rows", "num_codes", "dim"), [(1, 1, 1), (7, 3, 5), (129, 33, 65)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_vector_quantize_loss_gradients_match_float64_autograd(device, dtype, rows, num_codes, dim, which) -> None:
    beta = 0.7
    x = _rand(rows, dim, dtype=dtype, device=device, seed=111 + rows).requires_grad_()
    # Fewer codes than rows: several rows share a code, so the codebook gradient is a segment sum.
    codebook = _rand(num_codes, dim, dtype=dtype, device=device, seed=112 + dim).requires_grad_()
    out = fastvae.vector_quantize(x, codebook, beta=beta)
    getattr(out, which).backward()
    expected_x, expected_codebook = _float64_vq_grads(x, codebook, out.indices, which, beta)
    # The gradients are 2 (x - e) / N: the table's tolerances apply to them as computed values.
    assert x.grad.dtype == dtype and codebook.grad.dtype == dtype
    assert_close(x.grad.cpu(), expected_x, dtype)
    assert_close(codebook.grad.cpu(), expected_codebook, dtype)
    if which == "commitment_loss":
        assert not codebook.grad.any()
    if which == "codebook_loss":
        assert not x.grad.any()


def test_vector_quantize_gradients_by_hand(device) -> None:
    # Two rows on code 0 = (0, 0), one on code 1 = (10, 0); code 2 unused. N = 3, beta = 0.5.
    codebook = torch.tensor([[0.0, 0.0], [10.0, 0.0], [50.0, 50.0]], dtype=torch.float64, device=device)
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [9.0, 1.0]], dtype=torch.float64, device=device)
    x.requires_grad_()
    codebook.requires_grad_()
    out = fastvae.vector_quantize(x, codebook, beta=0.5)
    out.loss.backward()
    # N D = 6 elements: the losses are (1 + 4 + 2) / 6, and every gradient carries 2 / 6.
    diff = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]], dtype=torch.float64)
    assert_close(x.grad.cpu(), 0.5 * 2.0 * diff / 6.0, torch.float64)
    # d codebook_loss / d e_k = -2/(N D) * sum over the rows on code k of (x_n - e_k).
    expected_codebook = torch.tensor(
        [[-2.0 * (1.0 + 0.0) / 6.0, -2.0 * (0.0 + 2.0) / 6.0], [-2.0 * -1.0 / 6.0, -2.0 * 1.0 / 6.0], [0.0, 0.0]],
        dtype=torch.float64,
    )
    assert_close(codebook.grad.cpu(), expected_codebook, torch.float64)
    assert_close(out.loss, torch.tensor((1.0 + 0.5) * (1.0 + 4.0 + 2.0) / 6.0, dtype=torch.float64), torch.float64)


@pytest.mark.parametrize("beta", (0.0, 0.25, 2.0))
def test_vector_quantize_beta_scales_only_the_commitment_term(device, beta) -> None:
    x = _rand(33, 5, dtype=torch.float64, device=device, seed=121).requires_grad_()
    codebook = _rand(7, 5, dtype=torch.float64, device=device, seed=122).requires_grad_()
    out = fastvae.vector_quantize(x, codebook, beta=beta)
    grad_x, grad_codebook = torch.autograd.grad(out.loss, (x, codebook), retain_graph=True)
    commit_x, _ = torch.autograd.grad(out.commitment_loss, (x, codebook), retain_graph=True)
    _, book_codebook = torch.autograd.grad(out.codebook_loss, (x, codebook))
    assert_close(out.loss, out.codebook_loss.detach() + beta * out.commitment_loss.detach(), torch.float64)
    assert_close(grad_x, beta * commit_x, torch.float64)
    assert_close(grad_codebook, book_codebook, torch.float64)
    if beta == 0.0:
        assert not grad_x.any()


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
def test_vector_quantize_cosine_gradients_match_float64_autograd(device, dtype) -> None:
    x = _rand(33, 8, dtype=dtype, device=device, seed=131, scale=3.0).requires_grad_()
    codebook = _rand(5, 8, dtype=dtype, device=device, seed=132).requires_grad_()
    beta = 0.4
    out = fastvae.vector_quantize(x, codebook, beta=beta, metric="cosine")
    upstream = _rand(33, 8, dtype=dtype, device=device, seed=133)
    (out.quantized * upstream).sum().add(out.loss).backward()

    x64 = x.detach().cpu().double().requires_grad_()
    codebook64 = codebook.detach().cpu().double().requires_grad_()
    unit_x = x64 / x64.norm(dim=-1, keepdim=True)
    unit_e = (codebook64 / codebook64.norm(dim=-1, keepdim=True))[out.indices.cpu()]
    quantized = unit_x + (unit_e - unit_x).detach()
    commitment = F.mse_loss(unit_x, unit_e.detach())
    codebook_loss = F.mse_loss(unit_e, unit_x.detach())
    (quantized * upstream.cpu().double()).sum().add(codebook_loss + beta * commitment).backward()
    assert_close(x.grad.cpu(), x64.grad, dtype)
    assert_close(codebook.grad.cpu(), codebook64.grad, dtype)


# --- vq_code_stats ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "num_codes"), [((1, 1), 1), ((7, 3), 5), ((129, 64), 33), ((2, 5, 3), 257)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_vq_code_stats_match_one_hot(device, dtype, shape, num_codes) -> None:
    x = _rand(*shape, dtype=dtype, device=device, seed=141 + num_codes).requires_grad_()
    generator = torch.Generator().manual_seed(142)
    # Only the lower half of the codes is used, so unused codes must come out as zeros.
    indices = torch.randint(0, max(1, num_codes // 2), shape[:-1], generator=generator).to(device)
    counts, sums = fastvae.vq_code_stats(x, indices, num_codes)
    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
    assert counts.dtype == accumulate and sums.dtype == accumulate
    assert counts.shape == (num_codes,) and sums.shape == (num_codes, shape[-1])
    assert not counts.requires_grad and not sums.requires_grad
    one_hot = F.one_hot(indices.reshape(-1).cpu(), num_codes).double()  # (N, K)
    rows = x.detach().reshape(-1, shape[-1]).cpu().double()
    assert torch.equal(counts.cpu().double(), one_hot.sum(0))
    # The sums accumulate in float32 (float64), so that dtype's tolerance applies; each adds up to N
    # rounded terms, whose rounding errors grow like sqrt(N): hence scale = sqrt(N).
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    assert_close(sums.cpu(), one_hot.T @ rows, compute, scale=math.sqrt(math.prod(shape[:-1])))


# --- bad input ------------------------------------------------------------------------------------


def _cpu(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype)


BAD_X_CODEBOOK = [
    pytest.param(lambda: (_cpu(4, 3, dtype=torch.int64), _cpu(5, 3)), {}, TypeError, r"^x\b", id="integer-x"),
    pytest.param(lambda: (_cpu(4, 3), _cpu(5, 3, dtype=torch.int32)), {}, TypeError, r"^codebook\b", id="int-codebook"),
    pytest.param(lambda: (_cpu(4, 3, dtype=torch.bool), _cpu(5, 3)), {}, TypeError, r"^x\b", id="bool-x"),
    pytest.param(
        lambda: (_cpu(4, 3), _cpu(5, 3, dtype=torch.float64)), {}, TypeError, r"^codebook\b", id="mixed-dtypes"
    ),
    pytest.param(
        lambda: (_cpu(4, 3, dtype=torch.bfloat16), _cpu(5, 3, dtype=torch.float16)),
        {},
        TypeError,
        r"^codebook\b",
        id="mixed-half-dtypes",
    ),
    pytest.param(
        lambda: (_cpu(4, 3), torch.zeros(5, 3, device="meta")), {}, ValueError, r"^codebook\b", id="codebook-on-meta"
    ),
    pytest.param(
        lambda: (torch.zeros(4, 3, device="meta"), _cpu(5, 3)), {}, ValueError, r"^codebook\b", id="x-on-meta"
    ),
    pytest.param(lambda: (_cpu(4, 3), _cpu(5, 4)), {}, ValueError, r"^codebook\b", id="d-mismatch"),
    pytest.param(lambda: (_cpu(2, 4, 3), _cpu(5, 2)), {}, ValueError, r"^codebook\b", id="d-mismatch-leading-dims"),
    pytest.param(lambda: (_cpu(4, 3), _cpu(0, 3)), {}, ValueError, r"^codebook\b", id="empty-codebook"),
    pytest.param(lambda: (_cpu(4, 3), _cpu(3)), {}, ValueError, r"^codebook\b", id="1d-codebook"),
    pytest.param(lambda: (_cpu(4, 3), _cpu(2, 5, 3)), {}, ValueError, r"^codebook\b", id="3d-codebook"),
    pytest.param(lambda: (_cpu(), _cpu(5, 1)), {}, ValueError, r"^x\b", id="0d-x"),
    pytest.param(lambda: ([[0.0, 0.0]], _cpu(5, 2)), {}, TypeError, r"^x\b", id="list-x"),
    pytest.param(lambda: (_cpu(4, 2), [[0.0, 0.0]]), {}, TypeError, r"^codebook\b", id="list-codebook"),
    pytest.param(lambda: (_cpu(4, 3), _cpu(5, 3)), {"metric": "dot"}, ValueError, r"^metric\b", id="unknown-metric"),
    pytest.param(lambda: (_cpu(4, 3), _cpu(5, 3)), {"metric": "L2"}, ValueError, r"^metric\b", id="metric-case"),
    pytest.param(lambda: (_cpu(4, 3), _cpu(5, 3)), {"metric": None}, ValueError, r"^metric\b", id="metric-none"),
    pytest.param(
        lambda: (_cpu(4, 3), _cpu(5, 3)), {"precision": "fp32"}, ValueError, r"^precision\b", id="unknown-precision"
    ),
    pytest.param(
        lambda: (_cpu(4, 3), _cpu(5, 3)), {"precision": "TF32"}, ValueError, r"^precision\b", id="precision-case"
    ),
    pytest.param(
        lambda: (_cpu(4, 3), _cpu(5, 3)), {"precision": None}, ValueError, r"^precision\b", id="precision-none"
    ),
]

BAD_BETA = [
    pytest.param(-0.1, ValueError, id="negative"),
    pytest.param(float("nan"), ValueError, id="nan"),
    pytest.param("0.25", TypeError, id="string"),
    pytest.param(None, TypeError, id="none"),
    pytest.param(torch.tensor(0.25), TypeError, id="tensor"),
]


@pytest.fixture
def kernel_calls(monkeypatch) -> list[str]:
    """Records every backend dispatch: the checks must reject bad input before any kernel is chosen."""
    calls: list[str] = []
    original = backend_module.resolve_for

    def spy(op: str, t: torch.Tensor):
        calls.append(op)
        return original(op, t)

    # Ops find their backend function through resolve_for (which calls resolve only on a cache miss).
    monkeypatch.setattr(backend_module, "resolve_for", spy)
    return calls


@pytest.mark.parametrize("op", ("vq_nearest", "vector_quantize"))
@pytest.mark.parametrize(("make", "kwargs", "error", "match"), BAD_X_CODEBOOK)
def test_bad_input_is_rejected_before_any_kernel(kernel_calls, op, make, kwargs, error, match) -> None:
    x, codebook = make()
    with pytest.raises(error, match=match):
        getattr(fastvae, op)(x, codebook, **kwargs)
    assert kernel_calls == []


@pytest.mark.parametrize(("beta", "error"), BAD_BETA)
def test_bad_beta_is_rejected_before_any_kernel(kernel_calls, beta, error) -> None:
    with pytest.raises(error, match=r"^beta\b"):
        fastvae.vector_quantize(_cpu(4, 3), _cpu(5, 3), beta=beta)
    assert kernel_calls == []


def test_spy_sees_kernels_on_good_input(kernel_calls) -> None:
    # The control for the two tests above: good input does reach the dispatch the spy watches.
    fastvae.vq_nearest(_cpu(4, 3), _cpu(5, 3))
    fastvae.vector_quantize(_cpu(4, 3), _cpu(5, 3))
    assert kernel_calls == ["vq_nearest_fwd", "vector_quantize_fwd"]


def _index(*shape: int, dtype: torch.dtype = torch.int64, device: str = "cpu") -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype, device=device)


BAD_CODE_STATS = [
    pytest.param(lambda: (_cpu(4, 3, dtype=torch.int64), _index(4), 5), TypeError, r"^x\b", id="int-x"),
    pytest.param(lambda: (_cpu(4, 3), _index(4, dtype=torch.int32), 5), TypeError, r"^indices\b", id="int32-indices"),
    pytest.param(lambda: (_cpu(4, 3), _index(4, dtype=torch.float32), 5), TypeError, r"^indices\b", id="float-indices"),
    pytest.param(lambda: (_cpu(4, 3), _index(5), 5), ValueError, r"^indices\b", id="shape"),
    pytest.param(lambda: (_cpu(4, 3), _index(4, 1), 5), ValueError, r"^indices\b", id="rank"),
    pytest.param(lambda: (_cpu(4, 3), _index(4, device="meta"), 5), ValueError, r"^indices\b", id="meta"),
    pytest.param(lambda: (_cpu(4, 3), _index(4), 0), ValueError, r"^num_codes\b", id="k0"),
    pytest.param(lambda: (_cpu(4, 3), _index(4), 5.0), TypeError, r"^num_codes\b", id="float-k"),
    pytest.param(lambda: (_cpu(4, 3), _index(4), True), TypeError, r"^num_codes\b", id="bool-k"),
]


@pytest.mark.parametrize(("make", "error", "match"), BAD_CODE_STATS)
def test_vq_code_stats_bad_input(kernel_calls, make, error, match) -> None:
    x, indices, num_codes = make()
    with pytest.raises(error, match=match):
        fastvae.vq_code_stats(x, indices, num_codes)
    assert kernel_calls == []


# --- empty batches ------------------------------------------------------------------------------------


@pytest.mark.parametrize("leading", [(0,), (2, 0), (0, 3)], ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_empty_batch_gives_empty_results(device, dtype, leading) -> None:
    x = torch.zeros(*leading, 4, dtype=dtype, device=device, requires_grad=True)
    codebook = _rand(5, 4, dtype=dtype, device=device, seed=151).requires_grad_()
    indices, distances = fastvae.vq_nearest(x, codebook)
    assert indices.shape == leading and indices.dtype == torch.int64
    assert distances.shape == leading and distances.dtype == dtype

    out = fastvae.vector_quantize(x, codebook)
    assert out.quantized.shape == x.shape and out.indices.shape == leading
    # Documented: the mean over zero vectors is NaN, as is the perplexity of no usage.
    for value in (out.loss, out.commitment_loss, out.codebook_loss, out.perplexity):
        assert value.shape == () and bool(value.isnan())
    out.quantized.sum().backward()
    assert x.grad.shape == x.shape
    assert not _grad_or_zeros(codebook).any()

    counts, sums = fastvae.vq_code_stats(x, indices, 5)
    assert not counts.any() and not sums.any() and sums.shape == (5, 4)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_zero_width_vectors_take_code_zero_with_nan_losses(device, dtype) -> None:
    # D = 0: every code is at distance 0, so the lowest index wins; the losses are means over no
    # elements (NaN, as F.mse_loss gives); all rows share code 0, so the perplexity is 1.
    x = torch.zeros(5, 0, dtype=dtype, device=device, requires_grad=True)
    codebook = torch.zeros(4, 0, dtype=dtype, device=device, requires_grad=True)
    indices, distances = fastvae.vq_nearest(x, codebook)
    assert indices.cpu().tolist() == [0] * 5 and distances.cpu().tolist() == [0.0] * 5
    out = fastvae.vector_quantize(x, codebook)
    assert out.indices.cpu().tolist() == [0] * 5 and out.quantized.shape == (5, 0)
    for value in (out.loss, out.commitment_loss, out.codebook_loss):
        assert value.shape == () and value.dtype == dtype and bool(value.isnan())
    assert out.perplexity.item() == 1.0
    out.quantized.sum().backward()
    assert x.grad.shape == (5, 0) and codebook.grad.shape == (4, 0)
