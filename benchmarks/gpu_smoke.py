"""Smoke check of every fastvae op on every compiled backend: the GPU proof's first look at the kernels.

Each op runs forward and backward on the backends asked for (``triton`` and ``cuda`` on a GPU), in
float32 and bfloat16, at an odd shape (tails everywhere, unaligned row lengths) and an aligned one
(the 16-byte vector paths). Outputs are allocated poisoned: while an op runs, ``torch.empty``,
``torch.empty_like`` and ``Tensor.new_empty`` return NaN-filled floating tensors, so an element a
kernel never writes stays NaN and fails the check. Every output and gradient is compared with a
float64 formula written here, independently of fastvae's own backends (the noise of the sampling
ops is the specified Philox stream, :func:`fastvae.reference.philox.normal_stream`), by the relative
error ``|out - ref| / |ref|`` in the 2-norm; nearest-code indices are judged by the float64 distance
of the chosen code against the nearest one.

One JSON row per (op, backend, dtype, shape) goes to ``--out``: ``status`` ``ok``, ``fail`` (the
error over its bound, a NaN, or an exception, with the message) or ``skipped`` (the reason, e.g. no
GPU). The exit status is 1 when any row failed.

Run: ``python3 benchmarks/gpu_smoke.py --out smoke.json`` (on a GPU: triton and cuda), or
``--rehearse`` on a CPU (tiny shapes; the torch backend and Triton's interpreter run, cuda is
reported skipped).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

#: Relative-error bound per dtype against float64: float32 rounding over sums of up to a few
#: thousand terms, TF32 products, bfloat16 storage of inputs and outputs.
BOUNDS: dict[str, float] = {"fp32": 1e-5, "tf32": 5e-4, "bf16": 2e-2}
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


@contextlib.contextmanager
def poisoned_allocations() -> Iterator[None]:
    """While active, ``torch.empty``, ``torch.empty_like`` and ``Tensor.new_empty`` fill floating results with NaN."""
    originals = (torch.empty, torch.empty_like, torch.Tensor.new_empty)

    def poison(allocate: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def allocate_poisoned(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = allocate(*args, **kwargs)
            if out.is_floating_point():
                out.fill_(math.nan)
            return out

        return allocate_poisoned

    torch.empty, torch.empty_like = poison(originals[0]), poison(originals[1])
    torch.Tensor.new_empty = poison(originals[2])
    try:
        yield
    finally:
        torch.empty, torch.empty_like, torch.Tensor.new_empty = originals


def _rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``|got - want| / |want|`` in the 2-norm, in float64 on the CPU; inf when ``got`` holds a NaN."""
    got, want = got.detach().to("cpu", torch.float64), want.detach().to("cpu", torch.float64)
    if got.shape != want.shape:
        raise AssertionError(f"shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if not torch.isfinite(got).all():
        return math.inf
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


def _draw(shape: tuple[int, ...], seed: int, device: torch.device, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=generator, dtype=torch.float64)).to(device, dtype)


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64).requires_grad_()


# --- one check per op: (outputs, float64 outputs, inputs, float64 inputs) ---------------------------
# A check returns the pairs it compares: [(name, got, want)], after running forward and backward with
# the incoming gradients drawn here (so the backward kernels see non-trivial upstream gradients).


def _backward_pairs(
    outputs: list[torch.Tensor], references: list[torch.Tensor], leaves: list[torch.Tensor], f64_leaves: list[torch.Tensor], seed: int
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    grads = [_draw(tuple(o.shape), seed + i, o.device, o.dtype) for i, o in enumerate(outputs)]
    got = torch.autograd.grad(outputs, leaves, grads)
    want = torch.autograd.grad(references, f64_leaves, [g.to("cpu", torch.float64) for g in grads])
    return [(f"grad[{i}]", g, w) for i, (g, w) in enumerate(zip(got, want))]


def _gaussian_inputs(shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    mu = _draw(shape, 1, device, dtype)
    logvar = _draw(shape, 2, device, dtype, scale=0.5)
    return [mu.requires_grad_(), logvar.requires_grad_()]


def check_reparameterize_kl(fastvae: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> list:
    leaves = _gaussian_inputs(shape, dtype, device)
    seed = 1234
    z, kl = fastvae.reparameterize_kl(*leaves, seed=seed)
    mu, logvar = f64 = [_f64(t) for t in leaves]
    eps = fastvae.reference.philox.normal_stream(shape[0], shape[1], seed).to(torch.float64)
    z_ref = mu + torch.exp(0.5 * logvar) * eps
    kl_ref = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)
    return [("z", z, z_ref), ("kl", kl, kl_ref), *_backward_pairs([z, kl], [z_ref, kl_ref], leaves, f64, 7)]


def check_reparameterize(fastvae: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> list:
    leaves = _gaussian_inputs(shape, dtype, device)
    seed = 99
    z = fastvae.reparameterize(*leaves, seed=seed)
    mu, logvar = f64 = [_f64(t) for t in leaves]
    eps = fastvae.reference.philox.normal_stream(shape[0], shape[1], seed).to(torch.float64)
    z_ref = mu + torch.exp(0.5 * logvar) * eps
    return [("z", z, z_ref), *_backward_pairs([z], [z_ref], leaves, f64, 8)]


def check_gaussian_kl(fastvae: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> list:
    leaves = _gaussian_inputs(shape, dtype, device)
    prior = [_draw(shape[-1:], 3, device, dtype).requires_grad_(), _draw(shape[-1:], 4, device, dtype, 0.5).requires_grad_()]
    kl = fastvae.gaussian_kl(*leaves, *prior)
    mu, logvar, mu_p, logvar_p = f64 = [_f64(t) for t in leaves + prior]
    ref = 0.5 * (torch.exp(logvar - logvar_p) - 1 - (logvar - logvar_p) + (mu - mu_p) ** 2 * torch.exp(-logvar_p)).sum(-1)
    return [("kl", kl, ref), *_backward_pairs([kl], [ref], leaves + prior, f64, 9)]


def check_gaussian_log_prob(fastvae: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> list:
    leaves = [_draw(shape, 5, device, dtype).requires_grad_(), *_gaussian_inputs(shape, dtype, device)]
    out = fastvae.gaussian_log_prob(*leaves)
    x, mu, logvar = f64 = [_f64(t) for t in leaves]
    ref = (-0.5 * (math.log(2 * math.pi) + logvar + (x - mu) ** 2 * torch.exp(-logvar))).sum(-1)
    return [("log_prob", out, ref), *_backward_pairs([out], [ref], leaves, f64, 10)]


def _log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return (-0.5 * (math.log(2 * math.pi) + logvar + (z - mu) ** 2 * torch.exp(-logvar))).sum(-1)


def check_iwae(fastvae: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> list:
    k, b, d = shape
    leaves = [
        _draw((k, b), 11, device, dtype, 3.0).requires_grad_(),
        _draw((k, b, d), 12, device, dtype).requires_grad_(),
        *_gaussian_inputs((b, d), dtype, device),
    ]
    log_w = fastvae.iwae_log_weights(*leaves)
    bound = fastvae.iwae_bound(log_w)
    # miwae_bound over M = 2 groups of the first 2 * (B // 2) columns: (K, 2, B // 2) -> (B // 2,).
    half = b // 2
    miwae = fastvae.miwae_bound(log_w[:, : 2 * half].reshape(k, 2, half))
    log_px_z, z, mu, logvar = f64 = [_f64(t) for t in leaves]
    log_w_ref = log_px_z + _log_normal(z, torch.zeros_like(z), torch.zeros_like(z)) - _log_normal(z, mu, logvar)
    bound_ref = torch.logsumexp(log_w_ref, 0) - math.log(k)
    miwae_ref = (torch.logsumexp(log_w_ref[:, : 2 * half].reshape(k, 2, half), 0) - math.log(k)).mean(0)
    pairs = [("log_w", log_w, log_w_ref), ("iwae_bound", bound, bound_ref), ("miwae_bound", miwae, miwae_ref)]
    return pairs + _backward_pairs([bound, miwae], [bound_ref, miwae_ref], leaves, f64, 13)


def _nearest_f64(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Squared float64 distances of every row to every code, by rows (the smoke shapes are small)."""
    return torch.cdist(x, codebook).square()


def check_vq_nearest(fastvae: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, precision: str) -> list:
    n, k, d = shape
    x, codebook = _draw((n, d), 14, device, dtype), _draw((k, d), 15, device, dtype)
    indices, distances = fastvae.vq_nearest(x, codebook, precision=precision)
    all_d = _nearest_f64(x.to("cpu", torch.float64), codebook.to("cpu", torch.float64))
    chosen = all_d.gather(1, indices.cpu().reshape(-1, 1)).squeeze(1)
    best = all_d.min(1).values
    # The chosen code must be nearest up to the rounding of the search: its float64 distance may
    # exceed the minimum by the bound times the distance scale.
    return [("chosen distance", chosen, best), ("distances", distances, chosen)]


def check_vector_quantize(fastvae: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> list:
    n, k, d = shape
    leaves = [_draw((n, d), 16, device, dtype).requires_grad_(), _draw((k, d), 17, device, dtype).requires_grad_()]
    out = fastvae.vector_quantize(*leaves, beta=0.25)
    x, codebook = f64 = [_f64(t) for t in leaves]
    indices = out.indices.cpu()
    all_d = _nearest_f64(x.detach(), codebook.detach())
    chosen_d = all_d.gather(1, indices.reshape(-1, 1)).squeeze(1)
    codes = codebook[indices]
    quantized_ref = x + (codes - x).detach()
    commitment_ref = torch.nn.functional.mse_loss(x, codes.detach())
    codebook_ref = torch.nn.functional.mse_loss(x.detach(), codes)
    loss_ref = codebook_ref + 0.25 * commitment_ref
    counts, sums = fastvae.vq_code_stats(leaves[0].detach(), out.indices, k)
    counts_ref = torch.bincount(indices, minlength=k).to(torch.float64)
    sums_ref = torch.zeros(k, d, dtype=torch.float64).index_add_(0, indices, x.detach())
    pairs = [
        ("chosen distance", chosen_d, all_d.min(1).values),
        ("quantized", out.quantized, quantized_ref),
        ("loss", out.loss, loss_ref),
        ("code counts", counts, counts_ref),
        ("code sums", sums, sums_ref),
    ]
    return pairs + _backward_pairs([out.quantized, out.loss], [quantized_ref, loss_ref], leaves, f64, 18)


#: Op name -> (check, shapes on a GPU, shapes in the rehearsal). Shapes: an odd one, then an aligned one.
CHECKS: dict[str, tuple[Callable[..., list], list[tuple[int, ...]], list[tuple[int, ...]]]] = {
    "reparameterize": (check_reparameterize, [(1031, 67), (4096, 128)], [(37, 7), (16, 8)]),
    "reparameterize_kl": (check_reparameterize_kl, [(1031, 67), (4096, 128)], [(37, 7), (16, 8)]),
    "gaussian_kl": (check_gaussian_kl, [(1031, 67), (4096, 128)], [(37, 7), (16, 8)]),
    "gaussian_log_prob": (check_gaussian_log_prob, [(1031, 67), (4096, 128)], [(37, 7), (16, 8)]),
    "iwae": (check_iwae, [(17, 515, 33), (64, 1024, 128)], [(5, 9, 7), (4, 16, 8)]),
    "vq_nearest": (check_vq_nearest, [(1031, 257, 33), (8192, 1024, 64)], [(37, 11, 7), (64, 32, 16)]),
    "vector_quantize": (check_vector_quantize, [(1031, 257, 33), (8192, 1024, 64)], [(37, 11, 7), (64, 32, 16)]),
}


def _precisions(op: str, dtype_name: str) -> tuple[str | None, ...]:
    """The search precisions to check: both for a float32 search, the default ("ieee") for other dtypes."""
    if op != "vq_nearest":
        return (None,)
    return ("ieee", "tf32") if dtype_name == "fp32" else ("ieee",)


def _bound(op: str, dtype_name: str, precision: str | None, shape: tuple[int, ...]) -> float:
    name = "tf32" if precision == "tf32" else dtype_name
    bound = BOUNDS[name]
    if op in ("vq_nearest", "vector_quantize"):
        # Distances are sums of D squared differences: relative rounding grows with D.
        bound *= max(1.0, shape[-1] / 16)
    return bound


def run(backends: list[str], device: torch.device, rehearse: bool) -> list[dict[str, Any]]:
    """Every op x backend x dtype x shape, as JSON rows."""
    import fastvae
    import fastvae.reference.philox  # noqa: F401 - the noise ground truth

    rows = []
    for op, (check, gpu_shapes, cpu_shapes) in CHECKS.items():
        for backend in backends:
            for dtype_name, dtype in DTYPES.items():
                for precision in _precisions(op, dtype_name):
                    for shape in cpu_shapes if rehearse else gpu_shapes:
                        row = {"op": op, "backend": backend, "dtype": dtype_name, "shape": list(shape)}
                        if precision:
                            row["precision"] = precision
                        row.update(_run_one(fastvae, op, check, backend, dtype, dtype_name, precision, shape, device))
                        rows.append(row)
                        print(_line(row), flush=True)
    return rows


def _run_one(fastvae: Any, op: str, check: Callable[..., list], backend: str, dtype: torch.dtype,
             dtype_name: str, precision: str | None, shape: tuple[int, ...], device: torch.device) -> dict[str, Any]:  # fmt: skip
    try:
        with fastvae.use_backend(backend):
            for name in _backend_ops(op):
                fastvae.backend.resolve(name, device)
    except fastvae.BackendUnavailableError as error:
        return {"status": "skipped", "reason": str(error)}
    start = time.perf_counter()
    try:
        with fastvae.use_backend(backend), poisoned_allocations():
            args = (fastvae, shape, dtype, device) + ((precision,) if op == "vq_nearest" else ())
            pairs = check(*args)
            errors = {name: _rel_error(got, want) for name, got, want in pairs}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as error:  # noqa: BLE001 - every failure is a row, with its message
        return {"status": "fail", "error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc(limit=4)}
    bound = _bound(op, dtype_name, precision, shape)
    worst = max(errors.values())
    return {
        "status": "ok" if worst <= bound else "fail",
        "max_rel_error": worst,
        "bound": bound,
        "errors": errors,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _backend_ops(op: str) -> tuple[str, ...]:
    return {
        "iwae": ("iwae_log_weights_fwd", "iwae_bound_fwd", "miwae_bound_fwd"),
        "vector_quantize": ("vector_quantize_fwd", "vq_code_stats_fwd"),
    }.get(op, (f"{op}_fwd",))


def _line(row: dict[str, Any]) -> str:
    what = f"{row['op']:18} {row['backend']:7} {row['dtype']:5} {row.get('precision', ''):5} {'x'.join(map(str, row['shape'])):14}"
    if row["status"] == "ok":
        return f"{what} ok    max rel err {row['max_rel_error']:.2e} (bound {row['bound']:.0e})"
    if row["status"] == "skipped":
        return f"{what} skipped: {row['reason']}"
    detail = row.get("error") or f"max rel err {row['max_rel_error']:.2e} > {row['bound']:.0e} {row['errors']}"
    return f"{what} FAIL  {detail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the rows")
    parser.add_argument("--rehearse", action="store_true", help="tiny shapes on the CPU (torch, triton interpreted; cuda skipped)")
    parser.add_argument("--backends", nargs="+", help="default: triton cuda on a GPU; torch triton cuda in the rehearsal")
    args = parser.parse_args(argv)
    if args.rehearse:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        device = torch.device("cpu")
        backends = args.backends or ["torch", "triton", "cuda"]
    elif not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device is visible; use --rehearse on a CPU", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
        backends = args.backends or ["triton", "cuda"]
    rows = run(backends, device, args.rehearse)
    if args.rehearse:
        for row in rows:
            if row["backend"] == "cuda" and row["status"] == "skipped":
                row["reason"] = f"skipped: no GPU ({row['reason']})"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    counts = {status: sum(row["status"] == status for row in rows) for status in ("ok", "fail", "skipped")}
    print(f"gpu_smoke: {counts['ok']} ok, {counts['fail']} failed, {counts['skipped']} skipped")
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
