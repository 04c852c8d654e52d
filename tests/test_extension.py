"""Tests of fastvae._extension (lazy loading of fastvae._C) and of the extension's plumbing.

The loader tests run anywhere. The argument-check tests need the extension built but no GPU: the
checks run before any CUDA call. The device tests are marked ``gpu``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from fastvae import _extension
from tolerances import assert_close

# Arguments that pass every check of gaussian_kl_fwd (the binding the plumbing tests call: two rows
# of three float32 elements, no prior); tests override one at a time.
VALID_KL = {"dtype": 0, "mu_ptr": 256, "logvar_ptr": 512, "mu_p_ptr": 0, "logvar_p_ptr": 0, "kl_ptr": 768,
            "rows": 2, "dim": 3, "stream": 0}


@pytest.fixture
def fresh_import() -> Iterator[None]:
    """Forget the cached import of fastvae._C before and after the test."""
    _extension._import.cache_clear()
    yield
    _extension._import.cache_clear()


@pytest.fixture
def C() -> types.ModuleType:
    """The built extension with its CUDA kernels; skips the test when fastvae._C was not built,
    does not import, or was built without CUDA."""
    module = _extension.load()
    if module is None or not module.has_cuda:
        pytest.skip(f"fastvae._C's CUDA kernels are unavailable: {_extension.unavailable_reason()}")
    return module


@pytest.fixture
def C_cpu() -> types.ModuleType:
    """The extension's CPU kernels; skips the test when fastvae._C was not built or does not import."""
    reason = _extension.cpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"fastvae._C's CPU kernels are unavailable: {reason}")
    return _extension.load().cpu


def _visible_devices(C: types.ModuleType) -> int:
    """Devices the extension's CUDA runtime sees: 0 also when no usable driver is installed."""
    try:
        return C.device_count()
    except RuntimeError as exc:
        assert "cudaGetDeviceCount" in str(exc)
        return 0


# --- the loader ---------------------------------------------------------------------------------


def test_load_and_unavailable_reason_agree() -> None:
    module, reason = _extension.load(), _extension.unavailable_reason()
    assert _extension.is_available() == (reason is None)
    if module is None:
        assert isinstance(reason, str) and reason
    if reason is None:
        assert module is not None and torch.cuda.is_available()


def test_load_imports_once() -> None:
    module = _extension.load()
    assert _extension.load() is module
    if module is not None:
        assert sys.modules["fastvae._C"] is module


def test_not_built_extension_is_reported(
    monkeypatch: pytest.MonkeyPatch, fresh_import: None
) -> None:
    monkeypatch.setitem(sys.modules, "fastvae._C", None)  # makes the import fail as "not found"
    assert _extension.load() is None
    assert _extension.unavailable_reason() == _extension.NOT_BUILT
    assert not _extension.is_available()


@pytest.mark.parametrize(
    "error",
    [
        ImportError("libfoo.so: undefined symbol: cudaBar"),
        ModuleNotFoundError("No module named 'baz'", name="baz"),
    ],
    ids=["broken", "missing-dependency"],
)
def test_import_error_text_is_the_reason(
    error: ImportError, monkeypatch: pytest.MonkeyPatch, fresh_import: None
) -> None:
    def failing_import(name: str) -> types.ModuleType:
        raise error

    monkeypatch.setattr(_extension.importlib, "import_module", failing_import)
    assert _extension.load() is None
    assert _extension.unavailable_reason() == f"fastvae._C failed to import: {error}"


@pytest.mark.parametrize("cuda_available", [False, True])
def test_device_visibility_decides_availability(
    cuda_available: bool, monkeypatch: pytest.MonkeyPatch, fresh_import: None
) -> None:
    fake = types.ModuleType("fastvae._C")
    monkeypatch.setitem(sys.modules, "fastvae._C", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    assert _extension.load() is fake
    assert _extension.unavailable_reason() == (None if cuda_available else _extension.NO_DEVICE)
    assert _extension.is_available() == cuda_available


def test_a_module_built_without_cuda_says_so(monkeypatch: pytest.MonkeyPatch, fresh_import: None) -> None:
    fake = types.ModuleType("fastvae._C")
    fake.has_cuda = False
    fake.cpu = types.ModuleType("fastvae._C.cpu")
    monkeypatch.setitem(sys.modules, "fastvae._C", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _extension.unavailable_reason() == _extension.NO_CUDA
    assert not _extension.is_available()
    assert _extension.cpu_unavailable_reason() is None


def test_a_module_without_cpu_kernels_is_reported(monkeypatch: pytest.MonkeyPatch, fresh_import: None) -> None:
    monkeypatch.setitem(sys.modules, "fastvae._C", types.ModuleType("fastvae._C"))
    assert "no CPU kernels" in _extension.cpu_unavailable_reason()
    monkeypatch.setitem(sys.modules, "fastvae._C", None)
    _extension._import.cache_clear()
    assert _extension.cpu_unavailable_reason() == _extension.NOT_BUILT


# --- the CPU kernels ----------------------------------------------------------------------------


def _check_normal_stream(cpu: types.ModuleType) -> None:
    """The compiled stream equals the reference's to float32 rounding of log, sqrt, cos and sin."""
    from fastvae.reference.philox import normal_stream

    for rows, dim, seed in [(5, 9, 0), (33, 130, 2**63 - 1), (1, 1, 12345)]:
        out = torch.full((rows, dim), float("nan"))
        cpu.normal_stream(out.data_ptr(), rows, dim, seed)
        assert_close(out, normal_stream(rows, dim, seed), torch.float32)


def test_cpu_normal_stream_is_the_reference_stream(C_cpu: types.ModuleType) -> None:
    _check_normal_stream(C_cpu)


def test_cpu_vq_select_near_ties_of_non_finite_distances(C_cpu: types.ModuleType) -> None:
    # Finite scores handed in make every code a candidate; the recomputed distances are then NaN
    # (inf - inf) for all of row 0, inf for all of row 1, and NaN for code 0 only in the last call.
    # All-NaN candidates keep the first least score's code with its own NaN distance, as the reference
    # gives; all-inf ones tie, so the lowest index wins; a NaN distance never beats a number.
    inf = float("inf")
    x = torch.tensor([[inf, 0.0], [0.0, inf]])
    codebook = torch.tensor([[inf, 0.0], [inf, 1.0], [inf, 2.0]])
    scores = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.5, 1.0]])
    indices, distances = _select(C_cpu, x, codebook, scores, 0.1)
    assert indices.tolist() == [1, 0]
    assert distances[0].isnan() and distances[1].item() == inf
    codebook = torch.tensor([[float("nan"), 0.0], [3.0, 0.0], [0.0, 2.0]])
    indices, distances = _select(C_cpu, torch.zeros(1, 2), codebook, torch.zeros(1, 3), 0.1)
    assert indices.tolist() == [2] and distances.tolist() == [4.0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"rows": -1}, "rows must be >= 0, got -1"),
        ({"seed": -2}, "seed must be >= 0, got -2"),
        ({"mu_ptr": 0}, "mu_ptr must be a non-null pointer, got 0"),
        ({"dtype": 7}, "unsupported dtype code 7"),
    ],
)
def test_cpu_kernels_check_their_arguments(C_cpu: types.ModuleType, override: dict[str, Any], message: str) -> None:
    mu, z = torch.zeros(2, 3), torch.zeros(2, 3)
    args = {"dtype": 0, "mu_ptr": mu.data_ptr(), "logvar_ptr": mu.data_ptr(), "eps_ptr": 0, "z_ptr": z.data_ptr(),
            "kl_ptr": 0, "rows": 2, "dim": 3, "seed": 0, "stream": 0}
    with pytest.raises(ValueError, match=message):
        C_cpu.reparameterize_fwd(**{**args, **override})


_STREAM_SCRIPT = """
import sys, torch
from fastvae import _extension
cpu = _extension.load().cpu
outs = []
for rows, dim, seed in [(1024, 128, 5), (5, 9, 0), (33, 130, 2**63 - 1), (7, 61, 99), (3, 3000, 7)]:
    out = torch.full((rows, dim), float("nan"))
    cpu.normal_stream(out.data_ptr(), rows, dim, seed)
    outs.append(out)
torch.save(outs, sys.argv[1])
"""


def test_cpu_noise_stream_is_the_same_bits_with_and_without_avx512(C_cpu: types.ModuleType, tmp_path) -> None:
    # Where the CPU has AVX-512 the stream is drawn 16 lanes at a time; FASTVAE_CPU_NO_AVX512=1
    # (read once per process) makes it take the 8-lane AVX2 path. Lanes are independent, so the two
    # must write the same bits: forward and backward may then run on either and still agree.
    import os
    import subprocess

    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("this CPU has no AVX-512: only one noise stream path runs here")
    files = []
    for off in ("", "1"):
        files.append(tmp_path / f"stream{off}.pt")
        env = {**os.environ, "FASTVAE_CPU_NO_AVX512": off}
        subprocess.run([sys.executable, "-c", _STREAM_SCRIPT, str(files[-1])], env=env, check=True, timeout=120)
    wide, narrow = (torch.load(f) for f in files)
    for a, b in zip(wide, narrow, strict=True):
        assert not a.isnan().any() and torch.equal(a, b)


def _select(cpu: types.ModuleType, x: torch.Tensor, codebook: torch.Tensor, scores: torch.Tensor, tau_scale: float):
    """``cpu.vq_select`` on float32 or float64 tensors; returns (indices, distances)."""
    code_sq = (codebook * codebook).sum(-1)
    indices = torch.full(x.shape[:1], -1, dtype=torch.int64)
    distances = torch.full(x.shape[:1], float("nan"), dtype=x.dtype)
    cpu.vq_select(
        0 if x.dtype == torch.float32 else 3, x.data_ptr(), codebook.data_ptr(), code_sq.data_ptr(),
        scores.contiguous().data_ptr(), indices.data_ptr(), distances.data_ptr(), x.shape[0], codebook.shape[0],
        x.shape[1], tau_scale,
    )  # fmt: skip
    return indices, distances


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
@pytest.mark.parametrize(("rows", "num_codes", "dim"), [(1, 1, 1), (37, 5, 3), (20, 70, 33), (9, 300, 64)], ids=str)
def test_cpu_vq_select_decides_the_exact_nearest_despite_score_rounding(
    C_cpu: types.ModuleType, dtype: torch.dtype, rows: int, num_codes: int, dim: int
) -> None:
    # The scores handed in are the exact ones perturbed by up to a quarter of the candidate reach, as
    # a BLAS's rounding may (here far more than it would): near-ties then rank wrongly by score, and
    # the exact recomputation must still find the float64 brute force's nearest (lowest on ties).
    generator = torch.Generator().manual_seed(rows * num_codes + dim)
    codebook = torch.randn(num_codes, dim, generator=generator, dtype=torch.float64)
    codebook[max(1, num_codes // 2) :: 3] = codebook[0].clone()  # copies of code 0 after it
    owner = torch.randint(0, num_codes, (rows,), generator=generator)
    x = codebook[owner] + 1e-3 * torch.randn(rows, dim, generator=generator, dtype=torch.float64)
    x, codebook = x.to(dtype), codebook.to(dtype)
    x64, e64 = x.double(), codebook.double()
    exact = ((x64[:, None] - e64[None]) ** 2).sum(-1)
    best = exact.min(dim=1).values
    # Lowest index among the exact minima (copies of a code are bitwise equal rows of exact).
    expected = (exact == best[:, None]).to(torch.int8).argmax(dim=1)
    tau_scale = 0.05
    reach = tau_scale * ((e64 * e64).sum(-1).max() + x64.norm(dim=1) * (e64 * e64).sum(-1).max().sqrt())
    score = (e64 * e64).sum(-1)[None] - 2.0 * x64 @ e64.T
    noise = (torch.rand(rows, num_codes, generator=generator, dtype=torch.float64) - 0.5) * 0.5 * reach[:, None]
    indices, distances = _select(C_cpu, x, codebook, (score + noise).to(dtype), tau_scale)
    assert torch.equal(indices, expected)
    assert_close(distances, best, dtype)


def test_cpu_vq_select_takes_the_least_score_when_no_code_is_near_it(C_cpu: types.ModuleType) -> None:
    # With tau_scale 0 only the least score is a candidate: the selection trusts the scores then (here
    # scores that contradict the distances, to show which decided), and NaN scores are never chosen.
    x, codebook = torch.zeros(3, 2), torch.arange(8.0).reshape(4, 2)
    scores = torch.tensor([[5.0, 3.0, 1.0, 7.0], [float("nan"), 4.0, float("nan"), 2.0], [float("nan")] * 4])
    indices, distances = _select(C_cpu, x, codebook, scores, 0.0)
    assert indices.tolist() == [2, 3, 0]
    assert distances.tolist() == [4.0**2 + 5.0**2, 6.0**2 + 7.0**2, 0.0**2 + 1.0**2]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"rows": -1}, "rows must be >= 0, got -1"),
        ({"codes": 0}, "codes must be at least 1, got 0"),
        ({"x_ptr": 0}, "x_ptr must be a non-null pointer, got 0"),
        ({"scores_ptr": 0}, "scores_ptr must be a non-null pointer, got 0"),
        ({"tau_scale": -1.0}, "tau_scale must be finite and non-negative"),
        ({"tau_scale": float("nan")}, "tau_scale must be finite and non-negative"),
        ({"dtype": 1}, "float32 \\(dtype 0\\) or float64 \\(dtype 3\\), got dtype 1"),
    ],
)
def test_cpu_vq_select_checks_its_arguments(C_cpu: types.ModuleType, override: dict[str, Any], message: str) -> None:
    x, scores = torch.zeros(2, 3), torch.zeros(2, 4)
    indices = torch.zeros(2, dtype=torch.int64)
    args = {"dtype": 0, "x_ptr": x.data_ptr(), "codebook_ptr": x.data_ptr(), "code_sq_ptr": x.data_ptr(),
            "scores_ptr": scores.data_ptr(), "indices_ptr": indices.data_ptr(), "distances_ptr": x.data_ptr(),
            "rows": 2, "codes": 2, "dim": 3, "tau_scale": 0.0}
    with pytest.raises(ValueError, match=message):
        C_cpu.vq_select(**{**args, **override})
    assert torch.equal(indices, torch.zeros(2, dtype=torch.int64))


def _cpu_results(threads: int) -> list[torch.Tensor]:
    """Every CPU kernel's outputs (and gradients) on inputs past the size where it splits its rows
    over threads, computed with ``threads`` OpenMP threads (torch.set_num_threads sets their count)."""
    import fastvae

    generator = torch.Generator().manual_seed(3)
    mu, logvar, mu_p, logvar_p, x = (torch.randn(1000, 130, generator=generator) for _ in range(5))
    z = torch.randn(16, 300, 70, generator=generator)
    log_px_z = torch.randn(16, 300, generator=generator)
    codebook = torch.randn(300, 70, generator=generator)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with fastvae.use_backend("cpu"):
            leaves = [t.clone().requires_grad_() for t in (mu, logvar, mu_p, logvar_p, x, z)]
            m, lv, mp, lvp, xs, zs = leaves
            sample = fastvae.reparameterize(m, lv, seed=11)
            sample_kl, row_kl = fastvae.reparameterize_kl(m, lv, seed=12)
            outputs = [
                sample, sample_kl, row_kl, fastvae.gaussian_kl(m, lv), fastvae.gaussian_kl(m, lv, mp, lvp),
                fastvae.gaussian_log_prob(xs, m, lv), fastvae.iwae_log_weights(log_px_z, zs, m[:300, :70], lv[:300, :70]),
            ]  # fmt: skip
            loss = sum((out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum() for out in outputs)
            grads = torch.autograd.grad(loss, leaves)
            indices, distances = fastvae.vq_nearest(x[:, :70], codebook)
    finally:
        torch.set_num_threads(previous)
    return [*(out.detach() for out in outputs), *grads, indices, distances]


def test_cpu_kernels_give_the_same_bits_on_any_thread_count(C_cpu: types.ModuleType) -> None:
    # Large calls split their rows over OpenMP threads; each row is still computed whole by one
    # thread, noise drawn by its absolute row, so one thread and two must agree to the bit.
    for one, two in zip(_cpu_results(1), _cpu_results(2), strict=True):
        assert torch.equal(one, two)


_FORK_SCRIPT = """
import os, signal, sys, torch, fastvae
fastvae.set_backend("cpu")
mu, logvar = torch.randn(4096, 256), torch.randn(4096, 256)
first = fastvae.reparameterize(mu, logvar, seed=1)  # large enough to run in OpenMP's thread pool
pid = os.fork()
if pid == 0:  # the child compares bytes in numpy: a parallel PyTorch op would itself hang here
    signal.alarm(30)  # a hung child ends (SIGALRM) rather than outliving the test
    again = fastvae.reparameterize(mu, logvar, seed=1)
    os._exit(0 if again.numpy().tobytes() == first.numpy().tobytes() else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_cpu_kernels_run_in_a_forked_child(C_cpu: types.ModuleType) -> None:
    # GNU OpenMP's pool does not survive fork(): a parallel region in the child would wait forever
    # for the parent's threads. The extension's atfork handler keeps such a child on one thread.
    if not hasattr(os, "fork"):
        pytest.skip("no fork() on this platform")
    result = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], timeout=60, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_cpu_only_build_imports_and_runs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The extension built without a CUDA toolkit (``.ci/run`` builds one with CMake and
    ``-DFASTVAE_WITH_CUDA=OFF`` and names it in FASTVAE_CPU_ONLY_EXTENSION): it imports, says it has
    no CUDA, and its CPU kernels run."""
    import importlib.machinery
    import importlib.util
    import os

    path = os.environ.get("FASTVAE_CPU_ONLY_EXTENSION")
    if not path:
        pytest.skip("FASTVAE_CPU_ONLY_EXTENSION does not name a CPU-only build of fastvae._C")
    loader = importlib.machinery.ExtensionFileLoader("_C", path)
    spec = importlib.util.spec_from_file_location("_C", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    assert module.has_cuda is False
    assert not hasattr(module, "device_count")
    _check_normal_stream(module.cpu)


# --- the extension, no GPU needed ---------------------------------------------------------------


def test_runtime_version_is_cuda_12_or_later(C: types.ModuleType) -> None:
    version = C.cuda_runtime_version()
    assert version >= 12000
    assert version % 10 == 0


@pytest.mark.parametrize(
    ("override", "name"),
    [({"mu_ptr": 0}, "mu_ptr"), ({"kl_ptr": 0}, "kl_ptr"), ({"rows": -1}, "rows"), ({"dim": -1}, "dim")],
)
def test_bad_argument_raises_value_error_naming_it(C: types.ModuleType, override: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        C.gaussian_kl_fwd(**{**VALID_KL, **override})


def test_negative_pointer_is_a_type_error(C: types.ModuleType) -> None:
    with pytest.raises(TypeError):
        C.gaussian_kl_fwd(**{**VALID_KL, "mu_ptr": -VALID_KL["mu_ptr"]})


def test_negative_device_index_raises_value_error(C: types.ModuleType) -> None:
    with pytest.raises(ValueError, match=r"^index must be >= 0, got -1"):
        C.device_properties(-1)


@pytest.mark.parametrize("empty", [{"rows": 0}, {"dim": 0}])
def test_an_empty_launch_launches_nothing(C: types.ModuleType, empty: dict[str, int]) -> None:
    # No CUDA call at all: this passes without a device too.
    assert C.gaussian_kl_fwd(**{**VALID_KL, **empty}) is None


@pytest.mark.parametrize(
    ("dtype", "tf32", "dim", "tile"),
    [
        (3, True, 1000, (64, 64)),  # float64: exact products, whatever tf32 says
        (0, False, 8, (64, 64)),  # float32 "ieee": exact products
        (0, True, 32, (256, 64)),  # tf32: a row of 128 bytes stays resident
        (0, True, 33, (128, 128)),  # one more element streams
        (1, False, 1, (256, 64)),  # float16: tensor cores, with or without tf32
        (2, True, 64, (256, 64)),
        (2, False, 65, (128, 128)),
    ],
)
def test_the_vq_search_tile_is_chosen_next_to_the_launch(
    C: types.ModuleType, dtype: int, tf32: bool, dim: int, tile: tuple[int, int]
) -> None:
    # Host code only: no device needed. The Python side sizes the search's workspace from this answer.
    assert C.vq_search_tile(dtype, tf32, dim) == tile


def test_vq_search_checks_its_splits_against_its_own_tile(C: types.ModuleType) -> None:
    # float16, D = 8: 64-code tiles, so one split of one tile misses codes 64..99.
    sizes = {"num_rows": 4, "num_codes": 100, "dim": 8, "splits": 1, "tiles_per_split": 1, "stream": 0}
    with pytest.raises(ValueError, match="must cover num_codes = 100"):
        C.vq_search(1, False, 256, 512, 768, 1024, 1280, **sizes)
    with pytest.raises(ValueError, match="^dtype: unsupported dtype code 7"):
        C.vq_search_tile(7, False, 8)


def test_device_calls_without_a_device_raise_runtime_error(C: types.ModuleType) -> None:
    if _visible_devices(C) > 0:
        pytest.skip("a CUDA device is visible")
    with pytest.raises(RuntimeError, match="cudaGetDeviceProperties"):
        C.device_properties(0)
    with pytest.raises(RuntimeError, match="gaussian_kl_fwd_kernel"):
        C.gaussian_kl_fwd(**VALID_KL)


# --- the extension on a GPU ---------------------------------------------------------------------


@pytest.mark.gpu
def test_device_count_matches_torch(C: types.ModuleType) -> None:
    assert C.device_count() == torch.cuda.device_count()


@pytest.mark.gpu
def test_device_properties_match_torch(C: types.ModuleType) -> None:
    for index in range(torch.cuda.device_count()):
        expected = torch.cuda.get_device_properties(index)
        assert C.device_properties(index) == {
            "name": expected.name,
            "compute_capability": (expected.major, expected.minor),
            "multiprocessor_count": expected.multi_processor_count,
            "total_memory": expected.total_memory,
            "l2_cache_size": expected.L2_cache_size,
        }


@pytest.mark.gpu
def test_properties_of_a_missing_device_raise_runtime_error(C: types.ModuleType) -> None:
    with pytest.raises(RuntimeError, match="cudaGetDeviceProperties"):
        C.device_properties(C.device_count())


@pytest.mark.gpu
def test_driver_supports_the_runtime_major_version(C: types.ModuleType) -> None:
    assert C.driver_version() // 1000 >= C.cuda_runtime_version() // 1000


@pytest.mark.gpu
def test_a_launch_runs_on_the_given_stream(C: types.ModuleType) -> None:
    rows, dim = 4096, 64
    mu = torch.full((rows, dim), 2.0, device="cuda")
    logvar = torch.zeros(rows, dim, device="cuda")
    source = torch.zeros(rows, dim, device="cuda")
    kl = torch.full((rows,), float("nan"), device="cuda")
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        # Keep the side stream busy: a kernel enqueued on another stream would run before the copy
        # and read mu = 0.
        torch.cuda._sleep(100_000_000)
        mu.copy_(source.add_(1.0))
        C.gaussian_kl_fwd(0, mu.data_ptr(), logvar.data_ptr(), 0, 0, kl.data_ptr(), rows, dim, side.cuda_stream)
    side.synchronize()
    # KL(N(1, 1) || N(0, 1)) per element is 1/2: dim / 2 per row.
    assert torch.equal(kl, torch.full_like(kl, dim / 2))
