"""Count the distinct Triton JIT variants a test run launches, as a GPU run would compile them.

On a GPU, Triton compiles a kernel once per *specialisation key*: the constexpr values, the dtype of
each pointer and whether its address is 16-byte aligned, for each integer argument its width and
whether it is divisible by 16 (or equal to 1) unless the kernel lists it in ``do_not_specialize``,
and the launch options (``num_warps``, ``num_stages``). Every new key is a cold compile of a second
or more, which is what a GPU run of the suite pays for. Under ``TRITON_INTERPRET=1`` nothing is
compiled, so this module wraps the interpreter's launch, computes the same key for every launch and
counts the distinct ones per kernel.

The key follows Triton's own rules (``specialize_impl`` and ``parse_attr`` of the CUDA backend);
it is an estimate of what the JIT compiles only in that a GPU's allocator may align some tensors
differently from the CPU's.
"""

from __future__ import annotations

import inspect
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

#: kernel name -> the distinct keys launched so far.
VARIANTS: dict[str, set[tuple[Any, ...]]] = defaultdict(set)


def _int_key(value: int, specialize: bool) -> tuple[str, str]:
    width = "i32" if -(2**31) <= value < 2**31 else "i64"
    if not specialize:
        return width, ""
    if value == 1:
        return width, "1"
    return width, "D" if value % 16 == 0 else ""


def _arg_key(value: Any, specialize: bool, align: bool) -> Any:
    if isinstance(value, torch.Tensor):
        aligned = specialize and align and value.data_ptr() % 16 == 0
        return str(value.dtype), "D" if aligned else ""
    if isinstance(value, bool):
        return "i1", value if specialize else ""
    if isinstance(value, int):
        return _int_key(value, specialize)
    if isinstance(value, float):
        return ("fp32",)
    return ("other", repr(value))


def launch_key(kernel: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The specialisation key of ``kernel[grid](*args, **kwargs)`` (``kernel`` interpreted)."""
    parameters = list(inspect.signature(kernel.fn).parameters.values())
    no_spec = set(kernel.kwargs.get("do_not_specialize") or ())
    no_align = set(kernel.kwargs.get("do_not_specialize_on_alignment") or ())
    bound = dict(zip((p.name for p in parameters), args))
    bound.update({k: v for k, v in kwargs.items() if k in {p.name for p in parameters}})
    key: list[Any] = []
    for index, parameter in enumerate(parameters):
        value = bound.get(parameter.name, parameter.default)
        if "constexpr" in str(parameter.annotation):
            key.append(("constexpr", repr(value)))
            continue
        specialize = index not in no_spec and parameter.name not in no_spec
        align = index not in no_align and parameter.name not in no_align
        key.append(_arg_key(value, specialize, align))
    key.append(("num_warps", kwargs.get("num_warps", 4)))
    key.append(("num_stages", kwargs.get("num_stages", 3)))
    return tuple(key)


def install() -> bool:
    """Wrap the interpreter's launch so that every launch records its key; False when not interpreting."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    original: Callable[..., Any] = InterpretedFunction.run
    if getattr(original, "_counts_variants", False):
        return True

    def run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        VARIANTS[self.fn.__name__].add(launch_key(self, args, kwargs))
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    run._counts_variants = True  # type: ignore[attr-defined]
    InterpretedFunction.run = run
    return True


def total() -> int:
    """Distinct variants launched so far, over all kernels."""
    return sum(len(keys) for keys in VARIANTS.values())


def write(path: Path) -> None:
    """Per-kernel counts and the total as JSON."""
    counts = {name: len(keys) for name, keys in sorted(VARIANTS.items())}
    path.write_text(json.dumps({"total": total(), "kernels": counts}, indent=1) + "\n")
