"""One op, two call paths: the ``torch.library`` custom op for ``torch.compile`` and export, and a
direct eager path for everything else.

A call through a custom op in eager mode pays for the dispatcher twice (the Autograd key, then the
backend key) and for a generated ``autograd.Function`` around it: tens of microseconds, more than the
whole op costs at the sizes users call it with (64 to 1,024 rows of a latent). :func:`dispatched`
keeps the custom op, with its fake and autograd formula, for code being compiled or traced
(``torch.compiler.is_compiling()``, or a ``TorchDispatchMode`` such as fake tensors active), and
otherwise calls the backend function directly: through a plain ``torch.autograd.Function`` built from
the same ``setup_context`` / ``backward`` pair when an input requires grad (in the form torch.func's
transforms accept while one is active, the faster classic form otherwise), and with no autograd
layer at all when none does. Both paths run the same backend function and the same backward formula,
so they give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch._library.custom_ops import CustomOpDef

from fastvae import backend

__all__ = ["Dispatched", "dispatched"]

_any_requires_grad = torch._C._any_requires_grad
_dispatch_modes = torch._C._len_torch_dispatch_stack
_below_autograd = torch._C._AutoDispatchBelowAutograd
_functorch_active = torch._C._are_functorch_transforms_active


class Dispatched:
    """A callable op: the custom op ``custom`` while compiling, its implementation directly otherwise.

    Attributes:
        custom: the registered ``torch.library`` custom op (``torch.ops.fastvae.<name>``'s definition).
        impl: the function the custom op wraps (picks the backend and runs it).
    """

    def __init__(
        self,
        custom: CustomOpDef,
        function: type[torch.autograd.Function] | None,
        transformable: type[torch.autograd.Function] | None = None,
    ) -> None:
        self.custom = custom
        self.impl: Callable[..., Any] = custom._init_fn
        self._function = function
        # The C++ Function.apply, without the Python wrapper's pytree pass over the arguments (about
        # 3 us a call), which only matters to torch.func, whose calls take the transformable form.
        self._apply = None if function is None else super(torch.autograd.Function, function).apply
        self._transformable = transformable
        self.__name__ = custom._name
        self.__doc__ = self.impl.__doc__

    def __call__(self, *args: Any) -> Any:
        if torch.compiler.is_compiling() or _dispatch_modes():
            # Traced (torch.compile, export, make_fx, opcheck, fake tensors): the custom op, whose
            # fake implementation and registered autograd the tracer understands.
            return self.custom(*args)
        if torch.is_grad_enabled() and _any_requires_grad(*args):
            if self._function is None and not _functorch_active():
                # A backward op asked for a graph (double backward): the custom op, which says that
                # it has no derivative. (torch.func.grad runs every backward this way; there the
                # backward op runs directly, and only first derivatives are right.)
                return self.custom(*args)
            if self._function is not None:
                if _functorch_active():
                    return self._transformable.apply(*args)
                return self._apply(*args)
        if _functorch_active():
            # torch.func's wrapped tensors (here: a backward op's inputs) have no storage that a
            # compiled kernel could read; the reference's torch ops run on them.
            with backend.use_backend("torch"), _below_autograd():
                return self.impl(*args)
        # No gradient is needed: the backend's own torch ops skip the autograd layer (as the custom
        # op's would), which for the reference's many small ops is most of their cost.
        with _below_autograd():
            return self.impl(*args)

    def __repr__(self) -> str:
        return f"Dispatched(fastvae::{self.__name__})"


def dispatched(
    custom: CustomOpDef,
    *,
    setup_context: Callable[..., None] | None = None,
    backward: Callable[..., Any] | None = None,
) -> Dispatched:
    """Register ``backward`` as ``custom``'s autograd formula and return the op with its eager path.

    Args:
        custom: a custom op made with ``torch.library.custom_op`` (its fake already registered).
        setup_context: ``(ctx, inputs, output) -> None``, as for ``torch.library.register_autograd``.
        backward: ``(ctx, *grads) -> grads of the inputs``; None for ops with no gradient (the
            backward ops themselves), which are called directly in eager mode.

    Returns:
        A :class:`Dispatched` callable taking the custom op's positional arguments.
    """
    if (setup_context is None) != (backward is None):
        raise ValueError("setup_context and backward must be given together")
    if backward is None:
        return Dispatched(custom, None)
    torch.library.register_autograd(custom, backward, setup_context=setup_context)
    impl = custom._init_fn

    def forward_with_context(ctx: Any, *args: Any) -> Any:
        with _below_autograd():
            output = impl(*args)
        setup_context(ctx, args, output)
        return output

    def forward(*args: Any) -> Any:
        with _below_autograd():
            return impl(*args)

    # The classic form (forward takes ctx) is the fast one: Function.apply of the form with a separate
    # setup_context costs about 35 us more per call (measured, torch 2.13 on the CPU), but only that
    # form works under torch.func's transforms (grad, jacrev), so both are built.
    function = type(
        f"{custom._name}_eager",
        (torch.autograd.Function,),
        {"forward": staticmethod(forward_with_context), "backward": staticmethod(backward)},
    )
    transformable = type(
        f"{custom._name}_func",
        (torch.autograd.Function,),
        {
            "forward": staticmethod(forward),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward),
        },
    )
    return Dispatched(custom, function, transformable)
