"""Tests of fastvae._extension (lazy loading of fastvae._C) and of the extension's plumbing.

The loader tests run anywhere. The argument-check tests need the extension built but no GPU: the
checks run before any CUDA call. The device tests are marked ``gpu``.
"""

from __future__ import annotations

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
