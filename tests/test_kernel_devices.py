"""Triton host functions launch on their inputs' device, not on whichever CUDA device is current.

Triton launches on the current device, so a host function that forgot the guard would run a
``cuda:1`` tensor's kernel on ``cuda:0``: an illegal address at best. Every public host function of
``fastvae.kernels`` is wrapped by :func:`fastvae.kernels.on_input_device`; with two GPUs the ops
are checked end to end with the other device current.
"""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch
from tolerances import assert_close

import fastvae
from fastvae.kernels import on_input_device

MODULES = ("gaussian", "iwae", "vq")


def _host_functions() -> list[tuple[str, object]]:
    found = []
    for name in MODULES:
        module = importlib.import_module(f"fastvae.kernels.{name}")
        for attr, value in vars(module).items():
            if inspect.isfunction(value) and not attr.startswith("_") and attr.endswith(("_fwd", "_bwd")):
                found.append((f"{name}.{attr}", value))
    return found


def test_there_are_host_functions_to_check() -> None:
    names = {name for name, _ in _host_functions()}
    assert {"gaussian.reparameterize_kl_fwd", "iwae.iwae_log_weights_bwd", "vq.vq_nearest_fwd"} <= names


@pytest.mark.parametrize(("name", "host"), _host_functions(), ids=lambda item: item if isinstance(item, str) else "")
def test_every_host_function_runs_on_its_inputs_device(name: str, host: object) -> None:
    wrapped = getattr(host, "__wrapped__", None)
    assert wrapped is not None, f"{name} is not wrapped by fastvae.kernels.on_input_device"
    assert host.__code__ is on_input_device(wrapped).__code__, f"{name} is wrapped by something else"


def test_on_input_device_passes_cpu_tensors_through() -> None:
    seen = []

    @on_input_device
    def host(x: torch.Tensor, scale: float, *, shift: float = 0.0) -> torch.Tensor:
        seen.append(x.device)
        return x * scale + shift

    out = host(torch.ones(3), 2.0, shift=1.0)
    assert torch.equal(out, torch.full((3,), 3.0)) and seen == [torch.device("cpu")]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_triton_ops_on_the_second_gpu_while_the_first_is_current() -> None:
    device = torch.device("cuda", 1)
    generator = torch.Generator().manual_seed(5)
    mu, logvar = (torch.randn(37, 19, generator=generator).to(device) for _ in range(2))
    x, codebook = torch.randn(53, 24, generator=generator).to(device), torch.randn(70, 24, generator=generator).to(device)
    with torch.cuda.device(0), fastvae.use_backend("triton"):
        kl = fastvae.gaussian_kl(mu, logvar)
        indices, _ = fastvae.vq_nearest(x, codebook)
    with fastvae.use_backend("torch"):
        expected_kl = fastvae.gaussian_kl(mu.cpu(), logvar.cpu())
        expected_indices, _ = fastvae.vq_nearest(x.cpu(), codebook.cpu())
    assert kl.device == device and indices.device == device
    assert_close(kl.cpu(), expected_kl, torch.float32)
    assert torch.equal(indices.cpu(), expected_indices)
