"""Every op is a fastvae custom op that passes torch.library.opcheck, and torch.compile traces them.

opcheck runs the schema, fake-tensor, autograd-registration and AOT-dispatch checks on each op with
the canonical layouts the public functions pass. The backward ops are first-order only (fastvae does
not support double backward), so they are checked with inputs that do not require grad.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import fastvae

ops = torch.ops.fastvae


def _cases() -> list[tuple[str, object, tuple]]:
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int, grad: bool = True) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_(grad)

    def const(*shape: int) -> torch.Tensor:
        return rand(*shape, grad=False)

    seed = torch.tensor(1234)
    return [
        ("reparameterize", ops.reparameterize, (rand(5, 7), rand(5, 7), None, seed)),
        ("reparameterize_eps", ops.reparameterize, (rand(5, 7), rand(5, 7), rand(5, 7), seed)),
        ("reparameterize_backward", ops.reparameterize_backward, (const(5, 7), const(5, 7), seed)),
        ("reparameterize_kl", ops.reparameterize_kl, (rand(5, 7), rand(5, 7), None, seed)),
        ("reparameterize_kl_eps", ops.reparameterize_kl, (rand(5, 7), rand(5, 7), rand(5, 7), seed)),
        ("reparameterize_kl_backward", ops.reparameterize_kl_backward, (const(5, 7), const(5), const(5, 7), const(5, 7), seed)),
        ("gaussian_kl", ops.gaussian_kl, (rand(5, 7), rand(5, 7), None, None)),
        ("gaussian_kl_prior", ops.gaussian_kl, (rand(5, 7), rand(5, 7), rand(5, 7), rand(5, 7))),
        ("gaussian_kl_backward", ops.gaussian_kl_backward, (const(5), const(5, 7), const(5, 7), const(5, 7), const(5, 7))),
        ("gaussian_log_prob", ops.gaussian_log_prob, (rand(5, 7), rand(5, 7), rand(5, 7))),
        ("gaussian_log_prob_std", ops.gaussian_log_prob, (rand(5, 7), None, None)),
        ("gaussian_log_prob_backward", ops.gaussian_log_prob_backward, (const(5), const(5, 7), None, const(5, 7))),
        ("iwae_log_weights", ops.iwae_log_weights, (rand(3, 5), rand(3, 5, 7), rand(5, 7), rand(5, 7))),
        ("iwae_log_weights_backward", ops.iwae_log_weights_backward, (const(3, 5), const(3, 5, 7), const(5, 7), const(5, 7))),
        ("iwae_bound", ops.iwae_bound, (rand(4, 6),)),
        ("iwae_bound_backward", ops.iwae_bound_backward, (const(6), const(4, 6), const(6))),
        ("miwae_bound", ops.miwae_bound, (rand(4, 3, 6),)),
        ("miwae_bound_backward", ops.miwae_bound_backward, (const(6), const(4, 3, 6), const(3, 6))),
        ("vq_nearest", ops.vq_nearest, (rand(9, 7), rand(4, 7), "ieee")),
        ("vq_nearest_tf32", ops.vq_nearest, (rand(9, 7), rand(4, 7), "tf32")),
        ("vector_quantize", ops.vector_quantize, (rand(9, 7), rand(4, 7), "ieee")),
        (
            "vector_quantize_backward",
            ops.vector_quantize_backward,
            (const(9, 7), const(()), const(()), const(9, 7), const(4, 7), torch.randint(0, 4, (9,), generator=g)),
        ),
        ("vq_code_stats", ops.vq_code_stats, (rand(9, 7, grad=False), torch.randint(0, 4, (9,), generator=g), 4)),
        ("rvq_nearest", ops.rvq_nearest, (const(9, 7), rand(3, 4, 7))),
        ("rvq_nearest_backward", ops.rvq_nearest_backward, (const(9, 7), torch.randint(0, 4, (9, 3), generator=g), 4)),
        ("fsq", ops.fsq, (rand(9, 4), [8, 5, 5, 5])),
        ("fsq_backward", ops.fsq_backward, (const(9, 4), const(9, 4), [8, 5, 5, 5])),
    ]


CASES = _cases()


@pytest.mark.parametrize("op,args", [(op, args) for _, op, args in CASES], ids=[name for name, _, _ in CASES])
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_every_fastvae_op_is_covered():
    checked = {
        name.removesuffix("_eps").removesuffix("_prior").removesuffix("_std").removesuffix("_tf32")
        for name, _, _ in CASES
    }
    registered = {name for name in dir(ops) if not name.startswith("_") and isinstance(getattr(ops, name), torch._ops.OpOverloadPacket)}
    assert registered and registered <= checked, f"ops without an opcheck case: {sorted(registered - checked)}"


class _TinyVAE(torch.nn.Module):
    """A Gaussian encoder whose sample is vector-quantised and decoded."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(12, 16)
        self.decoder = torch.nn.Linear(8, 12)
        self.codebook = torch.nn.Parameter(torch.randn(5, 4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        z, kl = fastvae.reparameterize_kl(mu, logvar, seed=7, reduction="mean")
        vq = fastvae.vector_quantize(z.reshape(-1, 2, 4), self.codebook, beta=0.25)
        recon = self.decoder(vq.quantized.reshape(-1, 8))
        return ((recon - x) ** 2).sum(-1).mean() + kl + vq.loss, vq.perplexity


def test_compile_fullgraph_vae_step_matches_eager():
    torch.manual_seed(0)
    model = _TinyVAE()
    x = torch.randn(10, 12)
    loss, perplexity = model(x)
    loss.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    compiled_loss, compiled_perplexity = compiled(x)
    compiled_loss.backward()

    torch.testing.assert_close(compiled_loss, loss)
    torch.testing.assert_close(compiled_perplexity, perplexity)
    for eager, param in zip(eager_grads, model.parameters()):
        torch.testing.assert_close(param.grad, eager)


def test_compile_draws_seed_from_torch_generator():
    """seed=None inside a compiled function is traced (no graph break) and repeatable under manual_seed."""

    def sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return fastvae.reparameterize(mu, logvar)

    torch._dynamo.reset()
    compiled = torch.compile(sample, fullgraph=True)
    mu, logvar = torch.zeros(4, 6), torch.zeros(4, 6)
    torch.manual_seed(3)
    first = compiled(mu, logvar)
    torch.manual_seed(3)
    again = compiled(mu, logvar)
    other = compiled(mu, logvar)
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)


def _differentiable_cases() -> list[tuple[str, object, tuple]]:
    return [case for case in CASES if not case[0].endswith("_backward") and case[0] != "vq_code_stats"]


def _dispatched(name: str):
    from fastvae.ops import gaussian, iwae, rvq, vq

    fsq = importlib.import_module("fastvae.ops.fsq")  # the module; the package's fsq is the function
    op_name = name.removesuffix("_eps").removesuffix("_prior").removesuffix("_std").removesuffix("_tf32")
    for module in (gaussian, iwae, vq, rvq, fsq):
        found = getattr(module, f"_{op_name}", None)
        if found is not None:
            return found
    raise LookupError(name)


@pytest.mark.parametrize("name,op,args", _differentiable_cases(), ids=[case[0] for case in _differentiable_cases()])
def test_eager_path_matches_the_custom_op_and_its_gradients(name, op, args):
    # The eager path (a plain autograd.Function around the backend) and the custom op (what
    # torch.compile traces) run the same functions: identical outputs and gradients.
    eager = _dispatched(name)
    leaves = [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args]
    custom_out = op(*args)
    eager_out = eager(*leaves)
    custom_out = custom_out if isinstance(custom_out, tuple) else (custom_out,)
    eager_out = eager_out if isinstance(eager_out, tuple) else (eager_out,)
    for got, expected in zip(eager_out, custom_out):
        assert torch.equal(got, expected)
    weights = [torch.linspace(0.5, 1.5, o.numel()).reshape(o.shape) for o in custom_out if o.is_floating_point()]
    sum(((o * w).sum() for o, w in zip([o for o in custom_out if o.is_floating_point()], weights))).backward()
    sum(((o * w).sum() for o, w in zip([o for o in eager_out if o.is_floating_point()], weights))).backward()
    for original, copy in zip(args, leaves):
        if isinstance(original, torch.Tensor) and original.requires_grad:
            assert torch.equal(copy.grad, original.grad)
        if isinstance(original, torch.Tensor) and original.grad is not None:
            original.grad = None


def test_eager_calls_do_not_go_through_the_custom_op(monkeypatch):
    # The point of the eager path: no dispatcher round trip per call, forward or backward.
    from fastvae.ops import gaussian

    def refuse(*args, **kwargs):
        raise AssertionError("the custom op was called in eager mode")

    for name in ("_reparameterize_kl", "_reparameterize_kl_bwd", "_gaussian_kl", "_gaussian_kl_bwd"):
        monkeypatch.setattr(getattr(gaussian, name), "custom", refuse)
    mu = torch.randn(6, 5, requires_grad=True)
    logvar = torch.randn(6, 5, requires_grad=True)
    z, kl = fastvae.reparameterize_kl(mu, logvar, seed=3, reduction="sum")
    (z.sum() + kl + fastvae.gaussian_kl(mu, logvar, reduction="sum")).backward()
    with torch.no_grad():
        fastvae.reparameterize_kl(mu, logvar, seed=3)
    assert mu.grad is not None and logvar.grad is not None


def test_no_autograd_node_without_inputs_that_require_grad():
    mu, logvar = torch.randn(6, 5), torch.randn(6, 5)
    z, kl = fastvae.reparameterize_kl(mu, logvar, seed=3)
    assert z.grad_fn is None and kl.grad_fn is None
    z_grad, _ = fastvae.reparameterize_kl(mu.requires_grad_(), logvar, seed=3)
    assert z_grad.grad_fn is not None
    assert torch.equal(z_grad.detach(), z)


def test_torch_func_grad_runs_through_the_eager_path():
    # torch.func.grad needs autograd.Functions with a separate setup_context, as the eager path has.
    mu, logvar = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    grad_mu = torch.func.grad(lambda m: fastvae.gaussian_kl(m, logvar, reduction="sum"))(mu)
    torch.testing.assert_close(grad_mu, mu)  # d/dmu of 0.5 * sum(mu^2 + ...) is mu
