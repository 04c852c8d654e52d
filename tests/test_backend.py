"""Backend selection: names, availability, context manager, environment variable, dispatch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fastvae
from fastvae import backend


def test_torch_is_always_available():
    names = fastvae.available_backends()
    assert names[0] == "torch"
    assert set(names) <= {"torch", "triton", "cuda", "cpu"}


@pytest.mark.parametrize("setter", [fastvae.set_backend, lambda name: fastvae.use_backend(name).__enter__()])
def test_unknown_backend_name_is_a_value_error(setter):
    with pytest.raises(ValueError, match="name must be one of 'auto', 'torch', 'triton', 'cuda', 'cpu', got 'tpu'"):
        setter("tpu")


def test_use_backend_restores_previous_choice():
    fastvae.set_backend("torch")
    try:
        with fastvae.use_backend("auto"):
            assert backend.get_backend() == "auto"
            with fastvae.use_backend("torch"):
                assert backend.get_backend() == "torch"
            assert backend.get_backend() == "auto"
        assert backend.get_backend() == "torch"
    finally:
        fastvae.set_backend("auto")


@pytest.mark.parametrize("name", ["triton", "cuda", "cpu"])
def test_forcing_an_unavailable_backend_names_what_is_missing(name):
    if name in fastvae.available_backends():
        pytest.skip(f"{name} is available here")
    with pytest.raises(fastvae.BackendUnavailableError, match=f"backend '{name}' is not available: .+"):
        fastvae.set_backend(name)
    assert backend.get_backend() == "auto"


def test_auto_runs_the_cpu_kernels_on_cpu_where_built_and_the_reference_otherwise():
    cpu = "cpu" in fastvae.available_backends()
    with fastvae.use_backend("auto"):
        assert backend.resolve("gaussian_kl_fwd", torch.device("cpu")) is backend._IMPLS["gaussian_kl_fwd"]["cpu" if cpu else "torch"]
        assert backend.resolve("iwae_bound_fwd", torch.device("cpu")) is backend._IMPLS["iwae_bound_fwd"]["cpu" if cpu else "torch"]
        assert backend.resolve("vq_nearest_fwd", torch.device("cpu")) is backend._IMPLS["vq_nearest_fwd"]["cpu" if cpu else "torch"]
        assert backend.resolve("rvq_nearest_fwd", torch.device("cpu")) is backend._IMPLS["rvq_nearest_fwd"]["cpu" if cpu else "torch"]
        # No compiled CPU FSQ: the reference runs it.
        assert backend.resolve("fsq_fwd", torch.device("cpu")) is backend._IMPLS["fsq_fwd"]["torch"]


def test_auto_on_cpu_without_the_extension_runs_the_reference(monkeypatch):
    asked = []

    def missing(name, device=None):
        asked.append(name)
        return "not built" if name == "cpu" else None

    monkeypatch.setattr(backend, "_missing", missing)
    monkeypatch.setattr(backend, "_RESOLVED", {})
    with fastvae.use_backend("auto"):
        assert backend.resolve("gaussian_kl_fwd", torch.device("cpu")) is backend._IMPLS["gaussian_kl_fwd"]["torch"]
        assert asked == ["cpu"]
        # The answer is remembered: a later call does not ask again.
        assert backend.resolve("gaussian_kl_fwd", torch.device("cpu")) is backend._IMPLS["gaussian_kl_fwd"]["torch"]
        assert asked == ["cpu"]


def test_the_cpu_backend_refuses_cuda_tensors_and_ops_it_lacks():
    if "cpu" not in fastvae.available_backends():
        pytest.skip("fastvae._C (with its CPU kernels) is not built here")
    with fastvae.use_backend("cpu"):
        with pytest.raises(fastvae.BackendUnavailableError, match="the cpu backend needs CPU tensors, got tensors on cuda"):
            backend.resolve("gaussian_kl_fwd", torch.device("cuda"))
        with pytest.raises(fastvae.BackendUnavailableError, match="cannot run fsq_fwd: it has no implementation"):
            backend.resolve("fsq_fwd", torch.device("cpu"))


@pytest.mark.parametrize("name", ["auto", "torch", "cpu"])
def test_resolve_for_a_tensor_answers_as_resolve_for_its_device(name):
    # resolve_for keys CPU tensors by strings (no torch.device per call): the answer must still be
    # resolve's, follow the backend in force, and send other devices through resolve itself.
    if name not in ("auto", *fastvae.available_backends()):
        pytest.skip(f"backend {name!r} is not available here")
    cpu_tensor, meta_tensor = torch.zeros(2, 3), torch.zeros(2, 3, device="meta")
    with fastvae.use_backend(name):
        for op in ("gaussian_kl_fwd", "reparameterize_bwd", "iwae_bound_fwd"):
            assert backend.resolve_for(op, cpu_tensor) is backend.resolve(op, torch.device("cpu"))
            assert backend.resolve_for(op, cpu_tensor) is backend.resolve(op, torch.device("cpu"))  # cached
        if name == "auto":
            assert backend.resolve_for("gaussian_kl_fwd", meta_tensor) is backend._IMPLS["gaussian_kl_fwd"]["torch"]
        if name == "cpu":
            with pytest.raises(fastvae.BackendUnavailableError, match="the cpu backend needs CPU tensors, got tensors on meta"):
                backend.resolve_for("gaussian_kl_fwd", meta_tensor)
    with fastvae.use_backend("torch"):
        assert backend.resolve_for("gaussian_kl_fwd", cpu_tensor) is backend._IMPLS["gaussian_kl_fwd"]["torch"]


def test_resolve_names_op_when_backend_lacks_it(monkeypatch):
    monkeypatch.setattr(backend, "_missing", lambda name, device=None: None)
    with fastvae.use_backend("cuda"):
        with pytest.raises(fastvae.BackendUnavailableError, match="cannot run gaussian_kl_fwd: it has no implementation"):
            backend.resolve("gaussian_kl_fwd", torch.device("cpu"))


def _import_with_env(value: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FASTVAE_BACKEND": value}
    code = "import fastvae.backend as b; print(b.get_backend())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_variable_sets_the_default():
    result = _import_with_env("torch")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch"


def test_bad_environment_variable_fails_clearly():
    result = _import_with_env("fast")
    assert result.returncode != 0
    assert "FASTVAE_BACKEND must be one of" in result.stderr
