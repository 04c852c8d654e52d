"""Ahead-of-time compile check of every Triton kernel, for GPUs this machine need not have.

Each kernel module lists the launch configurations its host functions use in ``AOT_CONFIGS``, derived
from the launch heuristics the host functions call at run time (evaluated at every size in
:data:`SIZES`, duplicates dropped by :func:`distinct`), not written by hand; this
compiles each one with ``triton.compile(..., target=GPUTarget("cuda", arch, 32))`` for every
requested architecture and both specialisations the JIT applies at run time: ``aligned`` (every
pointer 16-byte aligned and every integer argument divisible by 16, except those the kernel lists in
``do_not_specialize``: the variant aligned, contiguous rows of a multiple of 16 elements get) and
``unaligned`` (nothing known: odd sizes and misaligned pointers). Kernels that take their rows'
alignment as the ``ALIGNED`` constexpr (and list those pointers in ``do_not_specialize_on_alignment``)
get ``ALIGNED=True`` in the first and ``False`` in the second, as their host functions pass it. It reads registers and local memory (spills) of the resulting cubin with
``cuobjdump -res-usage`` and shared memory from Triton's metadata, and reports them. It fails (exit status 1) on a compile error, on spills in any configuration, and
when a module that promises tensor-core code (``WGMMA_KERNELS``) shows no ``wgmma`` on sm_90.

Run: ``python -m fastvae.kernels.aot [--arch 80 90] [--json report.json]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

#: Kernel modules (under fastvae.kernels) that hold AOT_CONFIGS.
MODULES: tuple[str, ...] = ("gaussian", "iwae", "vq")

#: The sizes (row lengths D, column counts) at which the modules evaluate their launch heuristics to
#: list what the host functions can launch. Every heuristic's choice changes at sizes of 257 or less
#: (tile widths up to 256, and one past them), so past 1024 no size gives a launch not seen below it.
SIZES = range(1, 1025)


class AotConfig(NamedTuple):
    """One launch configuration of a kernel, as its host function would launch it.

    Attributes:
        kernel: the ``@triton.jit`` function.
        signature: argument name -> Triton type (``"*fp32"``, ``"i64"``, ``"fp32"``, ``"constexpr"``).
        constexprs: values of the ``constexpr`` arguments.
        num_warps: warps per program.
        num_stages: software-pipelining stages.
    """

    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3


def distinct(configs: Iterable[AotConfig]) -> list[AotConfig]:
    """``configs`` without repeats (the same kernel, signature, constexprs, warps and stages), in order."""
    seen: set[str] = set()
    unique = []
    for config in configs:
        key = repr((id(config.kernel), sorted(config.signature.items()), sorted(config.constexprs.items()),
                    config.num_warps, config.num_stages))  # fmt: skip
        if key not in seen:
            seen.add(key)
            unique.append(config)
    return unique


class AotResult(NamedTuple):
    """What compiling one configuration for one architecture gave."""

    module: str
    kernel: str
    arch: int
    config: str
    specialization: str
    registers: int
    shared_bytes: int
    stack_bytes: int
    spill_bytes: int
    wgmma: bool


def _cuobjdump() -> str:
    """cuobjdump to read resource usage with: the one Triton ships, else the CUDA toolkit's."""
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if bundled.is_file():
        return str(bundled)
    found = shutil.which("cuobjdump")
    if found:
        return found
    raise FileNotFoundError("no cuobjdump bundled with triton and none on PATH")


def _resources(cubin: bytes) -> tuple[int, int, int]:
    """(registers, stack bytes, local-memory bytes) per thread of the kernel in ``cubin``.

    Read with ``cuobjdump -res-usage`` from the cubin Triton's own ptxas produced, so the numbers
    are what would run. Register spills land in local memory; the stack is the call frame of
    subroutines such as 64-bit integer division, reported but not a spill.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        report = subprocess.run([_cuobjdump(), "-res-usage", str(path)], capture_output=True, text=True, check=True).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", report)
    if usage is None:
        raise RuntimeError(f"cuobjdump -res-usage printed no resource line:\n{report}")
    registers, stack, local = (int(group) for group in usage.groups())
    return registers, stack, local


def _kernel_name(config: AotConfig) -> str:
    return getattr(config.kernel, "__name__", None) or config.kernel.fn.__name__


#: The run-time specialisations compiled for every configuration (see the module docstring).
SPECIALIZATIONS: tuple[str, ...] = ("aligned", "unaligned")


def not_specialized(kernel: Any) -> set[str]:
    """Names of the arguments ``kernel`` excludes from specialisation (its ``do_not_specialize``)."""
    names = list(kernel.arg_names)
    return {names[item] if isinstance(item, int) else item for item in (getattr(kernel, "do_not_specialize", None) or ())}


def not_aligned(kernel: Any) -> set[str]:
    """Names of the pointer arguments ``kernel`` excludes from alignment specialisation
    (its ``do_not_specialize_on_alignment``: their alignment comes in as the ``ALIGNED`` constexpr)."""
    names = list(kernel.arg_names)
    items = getattr(kernel, "do_not_specialize_on_alignment", None) or ()
    return {names[item] if isinstance(item, int) else item for item in items}


def specialization_attrs(config: AotConfig, specialization: str, target: Any) -> dict[tuple[int, ...], Any]:
    """Triton's ``attrs`` for ``config`` under ``specialization``: ``tt.divisibility = 16`` on every
    pointer and integer argument the JIT would mark so (``aligned``), or none (``unaligned``)."""
    if specialization == "unaligned":
        return {}
    from triton.compiler import make_backend

    divisible = make_backend(target).parse_attr("D")
    skipped = not_specialized(config.kernel) | not_aligned(config.kernel)
    names = list(config.kernel.arg_names)
    return {
        (names.index(name),): divisible
        for name, kind in config.signature.items()
        if name not in skipped and (kind.startswith("*") or kind in ("i32", "i64"))
    }


def specialization_constexprs(config: AotConfig, specialization: str) -> dict[str, Any]:
    """``config``'s constexprs under ``specialization``: a kernel that takes ``ALIGNED`` (its host
    function's verdict on pointer alignment and row length) gets it True when ``aligned``."""
    if "ALIGNED" not in config.signature:
        return dict(config.constexprs)
    return {**config.constexprs, "ALIGNED": specialization == "aligned"}


def compile_config(module: str, config: AotConfig, arch: int, specialization: str = "aligned") -> AotResult:
    """Compile ``config`` for sm_``arch`` under ``specialization`` (one of :data:`SPECIALIZATIONS`) and measure it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    attrs = specialization_attrs(config, specialization, target)
    constexprs = specialization_constexprs(config, specialization)
    source = ASTSource(fn=config.kernel, signature=config.signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(
        source,
        target=target,
        options={"num_warps": config.num_warps, "num_stages": config.num_stages},
    )
    ptx = compiled.asm["ptx"]
    registers, stack, spills = _resources(compiled.asm["cubin"])
    pointers = "/".join(sorted({t[1:] for t in config.signature.values() if t.startswith("*")}))
    constants = ", ".join(f"{k}={v}" for k, v in constexprs.items())
    return AotResult(
        module=module,
        kernel=_kernel_name(config),
        arch=arch,
        specialization=specialization,
        config=f"{pointers}; {constants}; warps={config.num_warps}, stages={config.num_stages}",
        registers=registers,
        shared_bytes=int(compiled.metadata.shared),
        stack_bytes=stack,
        spill_bytes=spills,
        wgmma="wgmma" in ptx,
    )


def run(
    archs: Sequence[int], modules: Sequence[str] = MODULES, specializations: Sequence[str] = SPECIALIZATIONS
) -> tuple[list[AotResult], list[str]]:
    """Compile every configuration of ``modules`` for ``archs`` and ``specializations``; returns (results, failures)."""
    results: list[AotResult] = []
    failures: list[str] = []
    for name in modules:
        module = importlib.import_module(f"fastvae.kernels.{name}")
        for config in module.AOT_CONFIGS:
            for arch in archs:
                for specialization in specializations:
                    try:
                        result = compile_config(name, config, arch, specialization)
                    except Exception as error:  # noqa: BLE001 - every compile failure is reported
                        failures.append(f"{name}.{_kernel_name(config)} sm_{arch} {specialization}: {error}")
                        continue
                    results.append(result)
                    if result.spill_bytes:
                        failures.append(
                            f"{name}.{result.kernel} sm_{arch} {specialization} [{result.config}]: "
                            f"{result.spill_bytes} bytes spilled"
                        )
        for kernel in getattr(module, "WGMMA_KERNELS", ()):
            if 90 in archs and not any(r.wgmma for r in results if r.module == name and r.kernel == kernel and r.arch == 90):
                failures.append(f"{name}.{kernel}: no wgmma instruction in its sm_90 code")
    return results, failures


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: compile, print a table, optionally write JSON; exit 1 on any failure."""
    parser = argparse.ArgumentParser(prog="python -m fastvae.kernels.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="SM architectures (default 80 90)")
    parser.add_argument("--module", nargs="+", default=list(MODULES), choices=MODULES, help="kernel modules")
    parser.add_argument("--specialization", nargs="+", default=list(SPECIALIZATIONS), choices=SPECIALIZATIONS,
                        help="run-time specialisations to compile (default both)")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    results, failures = run(args.arch, args.module, args.specialization)
    print(f"{'kernel':44} {'arch':>5} {'spec':>9} {'regs':>4} {'smem B':>6} {'stack B':>7} {'spill B':>7} {'wgmma':>5}  config")
    for r in results:
        print(
            f"{r.module + '.' + r.kernel:44} {'sm_' + str(r.arch):>5} {r.specialization:>9} {r.registers:4d} {r.shared_bytes:6d} "
            f"{r.stack_bytes:7d} {r.spill_bytes:7d} {'yes' if r.wgmma else 'no':>5}  {r.config}"
        )
    if args.json:
        args.json.write_text(json.dumps([r._asdict() for r in results], indent=2))
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print(f"{len(results)} compiled, {len(failures)} failed")
    return 1 if failures or not results else 0


if __name__ == "__main__":
    sys.exit(main())
