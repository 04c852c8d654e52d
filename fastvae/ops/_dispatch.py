"""How an op is defined: one spec (:func:`define`) registers the ``torch.library`` custom op, its fake
and its autograd, and returns the op with a direct eager path.

A call through a custom op in eager mode pays for the dispatcher twice (the Autograd key, then the
backend key) and for a generated ``autograd.Function`` around it: tens of microseconds, more than the
whole op costs at the sizes users call it with (64 to 1,024 rows of a latent). :class:`Dispatched`
keeps the custom op, with its fake and autograd formula, for code being compiled or traced
(``torch.compiler.is_compiling()``, or a ``TorchDispatchMode`` such as fake tensors active), and
otherwise calls the backend function directly: through a plain ``torch.autograd.Function`` built from
the same ``setup_context`` / ``backward`` pair when an input requires grad (in the form torch.func's
transforms accept while one is active, the faster classic form otherwise), and with no autograd
layer at all when none does. Both paths run the same backend function and the same backward formula,
so they give the same numbers.

Names: the backend op ``<op>_fwd`` (every backend's function of that name, :mod:`fastvae.backend`)
runs in the custom op ``fastvae::<op>``, and ``<op>_bwd`` in ``fastvae::<op>_backward``.

Seeds: a schema argument named ``seed`` is a 0-dim int64 tensor in the custom op (so that
``torch.compile`` traces the draw) and reaches the backend as a Python int. Callers pass an int, or
None to draw one from torch's generator: the draw happens here, where whether the call is traced is
decided once (a tensor from :func:`fastvae.ops._seed.draw_traced` then, an int from
:func:`fastvae.ops._seed.draw` otherwise, which saves allocating a tensor per eager call).
``setup_context`` functions keep the seed on ``ctx`` as the custom op or backend received it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch._library.custom_ops import CustomOpDef

from fastvae import backend
from fastvae.ops._seed import draw, draw_traced

__all__ = ["Dispatched", "define", "tracing"]

_any_requires_grad = torch._C._any_requires_grad
_dispatch_modes = torch._C._len_torch_dispatch_stack
_below_autograd = torch._C._AutoDispatchBelowAutograd
_functorch_active = torch._C._are_functorch_transforms_active
_is_compiling = torch.compiler.is_compiling


def tracing() -> bool:
    """Whether ops called now are being traced (``torch.compile``, export, ``make_fx``, ``opcheck``,
    fake tensors): then they run as custom ops, and seeds must be tensors."""
    return _is_compiling() or _dispatch_modes() > 0


class Dispatched:
    """A callable op: the custom op ``custom`` while tracing, its implementation directly otherwise.

    Attributes:
        custom: the registered ``torch.library`` custom op (``torch.ops.fastvae.<name>``'s definition).
    """

    def __init__(
        self,
        custom: CustomOpDef,
        name: str,
        eager: Callable[..., Any],
        function: type[torch.autograd.Function] | None,
        transformable: type[torch.autograd.Function] | None,
        seed_at: int | None,
        device_at: int,
        direct: bool,
    ) -> None:
        self.custom = custom
        self._name = name
        self._eager = eager
        self._device_at = device_at
        # Whether the backend function's result is the op's output as it is, so that a call with no
        # gradient can run it without the ``eager`` wrapper (one Python frame less per call).
        self._direct = direct
        self._function = function
        # The C++ Function.apply, without the Python wrapper's pytree pass over the arguments (about
        # 3 us a call), which only matters to torch.func, whose calls take the transformable form.
        self._apply = None if function is None else super(torch.autograd.Function, function).apply
        self._transformable = transformable
        self._seed_at = seed_at
        self.__name__ = custom._name

    def __call__(self, *args: Any) -> Any:
        at = self._seed_at
        if _is_compiling() or _dispatch_modes():
            # Traced (torch.compile, export, make_fx, opcheck, fake tensors): the custom op, whose
            # fake implementation and registered autograd the tracer understands.
            return self.custom(*self._seed_as_tensor(args))
        if at is not None and args[at] is None:
            args = (*args[:at], draw(), *args[at + 1 :])
        if _functorch_active():
            return self._call_transformed(args)
        if not torch.is_grad_enabled():
            # Nothing records (under no_grad, or a backward op during backward): the backend
            # function itself, resolved here when its result needs no mapping.
            if self._direct:
                return backend.resolve_for(self._name, args[self._device_at])(*args)
            return self._eager(*args)
        if _any_requires_grad(*args):
            if self._apply is None:
                # A backward op asked for a graph (double backward): the custom op, which says that
                # it has no derivative.
                return self.custom(*self._seed_as_tensor(args))
            return self._apply(*args)
        # No gradient is needed: the backend's own torch ops skip the autograd layer (as the custom
        # op's would), which for the reference's many small ops is most of their cost.
        with _below_autograd():
            return self._eager(*args)

    def _call_transformed(self, args: tuple[Any, ...]) -> Any:
        """A call under torch.func's transforms (grad, vmap, jacrev)."""
        if self._transformable is not None and torch.is_grad_enabled() and _any_requires_grad(*args):
            return self._transformable.apply(*args)
        # torch.func's wrapped tensors have no storage that a compiled kernel could read; the
        # reference's torch ops run on them. (torch.func.grad runs a backward op this way, so only
        # first derivatives are right.)
        with backend.use_backend("torch"), _below_autograd():
            return self._eager(*args)

    def _seed_as_tensor(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """``args`` with the seed as the 0-dim tensor the custom op takes: an int (the eager path's)
        converted, None drawn (:func:`fastvae.ops._seed.draw_traced`)."""
        at = self._seed_at
        seed = args[at] if at is not None else None
        if at is None or isinstance(seed, torch.Tensor):
            return args
        seed = draw_traced() if seed is None else torch.tensor(seed, dtype=torch.int64)
        return (*args[:at], seed, *args[at + 1 :])

    def __repr__(self) -> str:
        return f"Dispatched(fastvae::{self.__name__})"


def define(
    name: str,
    schema: str,
    fake: Callable[..., Any],
    *,
    setup_context: Callable[..., None] | None = None,
    backward: Callable[..., Any] | None = None,
    outputs: Callable[[Any], Any] | None = None,
) -> Dispatched:
    """Define the custom op that runs backend op ``name``, with its fake and autograd, in one call.

    Args:
        name: ``"<op>_fwd"`` (registered as ``fastvae::<op>``) or ``"<op>_bwd"`` (registered as
            ``fastvae::<op>_backward``); the backends' functions of this name run it.
        schema: the custom op's schema without its name, e.g.
            ``"(Tensor mu, Tensor logvar, Tensor? eps, Tensor seed) -> Tensor"``. The first
            non-optional tensor argument decides the device; an argument named ``seed`` is handed to
            the backend as an int (see the module docstring).
        fake: the shape function: the schema's arguments -> empty outputs of the right shapes and
            dtypes (for fake tensors, ``torch.compile`` and export).
        setup_context: ``(ctx, inputs, output) -> None``, as for ``torch.library.register_autograd``.
        backward: ``(ctx, *grads) -> grads of the inputs``; None for an op with no gradient (the
            backward ops themselves), which is then called directly in eager mode.
        outputs: maps the backend function's result to the custom op's outputs, where the two differ.

    Returns:
        A :class:`Dispatched` callable taking the custom op's positional arguments.
    """
    if (setup_context is None) != (backward is None):
        raise ValueError("setup_context and backward must be given together")
    op, _, kind = name.rpartition("_")
    if kind not in ("fwd", "bwd") or not op:
        raise ValueError(f"name must be '<op>_fwd' or '<op>_bwd', got {name!r}")
    arguments = torch._C.parse_schema(f"f{schema}").arguments
    seed_at = next((i for i, a in enumerate(arguments) if a.name == "seed"), None)
    device_at = next(i for i, a in enumerate(arguments) if str(a.type) == "Tensor")

    def eager(*args: Any) -> Any:
        result = backend.resolve_for(name, args[device_at])(*args)
        return result if outputs is None else outputs(result)

    def run(*args: Any) -> Any:
        return eager(*(args if seed_at is None else (*args[:seed_at], int(args[seed_at]), *args[seed_at + 1 :])))

    custom = torch.library.custom_op(
        f"fastvae::{op if kind == 'fwd' else op + '_backward'}", run, mutates_args=(), schema=schema
    )
    custom.register_fake(fake)
    if backward is None:
        return Dispatched(custom, name, eager, None, None, seed_at, device_at, outputs is None)
    torch.library.register_autograd(custom, backward, setup_context=setup_context)

    def forward_with_context(ctx: Any, *args: Any) -> Any:
        # Grad mode is off inside Function.forward: nothing here records.
        result = backend.resolve_for(name, args[device_at])(*args)
        output = result if outputs is None else outputs(result)
        setup_context(ctx, args, output)
        return output

    # The classic form (forward takes ctx) is the fast one: Function.apply of the form with a separate
    # setup_context costs about 35 us more per call (measured, torch 2.13 on the CPU), but only that
    # form works under torch.func's transforms (grad, jacrev), so both are built.
    function = type(
        f"{op}_eager",
        (torch.autograd.Function,),
        {"forward": staticmethod(forward_with_context), "backward": staticmethod(backward)},
    )
    transformable = type(
        f"{op}_func",
        (torch.autograd.Function,),
        {
            "forward": staticmethod(eager),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward),
        },
    )
    return Dispatched(custom, name, eager, function, transformable, seed_at, device_at, outputs is None)
