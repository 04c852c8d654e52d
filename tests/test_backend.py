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
    assert set(names) <= {"torch", "triton", "cuda"}


@pytest.mark.parametrize("setter", [fastvae.set_backend, lambda name: fastvae.use_backend(name).__enter__()])
def test_unknown_backend_name_is_a_value_error(setter):
    with pytest.raises(ValueError, match="name must be one of 'auto', 'torch', 'triton', 'cuda', got 'tpu'"):
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


@pytest.mark.parametrize("name", ["triton", "cuda"])
def test_forcing_an_unavailable_backend_names_what_is_missing(name):
    if name in fastvae.available_backends():
        pytest.skip(f"{name} is available here")
    with pytest.raises(fastvae.BackendUnavailableError, match=f"backend '{name}' is not available: .+"):
        fastvae.set_backend(name)
    assert backend.get_backend() == "auto"


def test_auto_runs_the_reference_on_cpu():
    mu, logvar = torch.randn(3, 4), torch.randn(3, 4)
    with fastvae.use_backend("auto"):
        auto = fastvae.gaussian_kl(mu, logvar)
    with fastvae.use_backend("torch"):
        forced = fastvae.gaussian_kl(mu, logvar)
    torch.testing.assert_close(auto, forced, rtol=0, atol=0)


def test_resolve_names_op_when_backend_lacks_it(monkeypatch):
    monkeypatch.setattr(backend, "_missing", lambda name, device=None: None)
    with fastvae.use_backend("cuda"):
        with pytest.raises(fastvae.BackendUnavailableError, match="cannot run gaussian_kl: it has no implementation"):
            backend.resolve("gaussian_kl", torch.device("cpu"))


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
