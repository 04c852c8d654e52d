"""Resource check of the built CUDA kernels: registers, shared memory, stack and local memory, spills.

Reads the machine code of a built fastvae._C (the extension module .so, the kernel library .a or an
object file) with ``cuobjdump``: ``-res-usage`` gives each kernel's registers (REG), static shared
memory (SHARED), stack frame (STACK) and local memory (LOCAL) per architecture, and the SASS from
``-sass`` gives its local-memory stores and loads (STL / LDL instructions: register spills, or
arrays the compiler could not keep in registers). It prints one row per kernel and architecture and
exits with status 1 if any hot kernel touches local memory: STACK, LOCAL, STL or LDL above zero.

Hot kernels are every kernel of the op families (gaussian.cu, iwae.cu, vq.cu, ...): all kernels but
the plumbing in COLD_KERNELS. Their speed depends on staying in registers, and local memory in one
of them is a regression (a spill, or a math function's slow path such as sinf's huge-argument
reduction). Only the kernels linked into the given file are seen: the .so holds those that
bindings.cpp reaches, the .a every kernel compiled.

cuobjdump is taken from, first match wins: --cuobjdump; $CUDA_HOME/bin or $CUDA_PATH/bin; beside
nvcc on PATH (symlinks followed); PATH; /usr/local/cuda/bin; the copy Triton bundles
(triton/backends/nvidia/bin, found without importing triton).

With ``--report`` it also prints, per kernel and architecture, the static figures of issue 15
(as ``python -m fastvae.kernels.aot --report`` does for the Triton kernels, whose SASS reading it
reuses from kernels/aot.py): threads per block (the ``__launch_bounds__`` in the ELF's
EIATTR_MAX_THREADS), CTAs per SM, global loads of 16 bytes among all of them, ``bar.sync`` in the
steady-state loop and in all, the tensor-core instruction kind, and for the element-wise and row
kernels of gaussian.cu and iwae.cu the SASS instructions per element of the steady-state loop: the
loop's instructions over the chunk (``kChunk``) a thread moves per iteration, read from the kernel's
template arguments. The report checks no bounds: the CUDA kernels have none yet.

Run: ``python csrc/check_resources.py build/ci-werror/_C.cpython-*.so [--cuobjdump PATH] [--report]``.
Standard library only.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

#: Kernels allowed to use local memory (name prefixes): none today, every kernel is an op kernel.
COLD_KERNELS: tuple[str, ...] = ()

_ARCH = re.compile(r"^arch = (sm_\w+)", re.MULTILINE)
_FUNCTION = re.compile(r"Function\s*:?\s*([^\s:]+)")
_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_LOCAL_STORE = re.compile(r"\bSTL(\.[\w.]+)?\s")
_LOCAL_LOAD = re.compile(r"\bLDL(\.[\w.]+)?\s")
_ELF_FUNCTION = re.compile(r"^\.nv\.info\.(\S+)")
_ELF_VALUE = re.compile(r"Value:\s*0x([0-9a-f]+)")

#: Bytes of the element types the kernels are instantiated for, by their demangled name.
_TYPE_BYTES = {"float": 4, "double": 8, "__half": 2, "__nv_bfloat16": 2}


def _gaussian_chunk(type_bytes: int, vec: bool) -> int:
    """gaussian.cu's kChunk: a 16-byte vector of at least 4 elements with VEC, else 4 scalars."""
    return max(16 // type_bytes, 4) if vec else 4


def _iwae_chunk(type_bytes: int, vec: bool) -> int:
    """iwae.cu's kChunk: a 16-byte vector with VEC, else 4 scalars."""
    return 16 // type_bytes if vec else 4


#: Elements a thread moves per iteration of the steady-state loop (its chunk) of the element-wise and
#: row kernels, from their template arguments ``<T, VEC, ...>``.
CHUNKS = {
    **dict.fromkeys(
        ("reparameterize_fwd_kernel", "reparameterize_bwd_kernel", "gaussian_kl_fwd_kernel",
         "gaussian_kl_bwd_kernel", "gaussian_log_prob_fwd_kernel", "gaussian_log_prob_bwd_kernel"),
        _gaussian_chunk,
    ),
    **dict.fromkeys(("iwae_log_weights_fwd_kernel", "iwae_log_weights_bwd_kernel"), _iwae_chunk),
}  # fmt: skip


def _load_aot() -> ModuleType:
    """kernels/aot.py of this checkout (standard library at import), for its SASS reading."""
    path = Path(__file__).resolve().parent.parent / "kernels" / "aot.py"
    spec = importlib.util.spec_from_file_location("_fastvae_kernels_aot", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Kernel:
    """One kernel's resources on one architecture (sizes in bytes per thread, SHARED per block)."""

    arch: str
    mangled: str
    name: str = ""
    registers: int = 0
    stack: int = 0
    shared: int = 0
    local: int = 0
    local_stores: int = 0
    local_loads: int = 0
    threads: int = 0
    sass: str = ""

    @property
    def hot(self) -> bool:
        return not any(self.name.startswith(cold) for cold in COLD_KERNELS)

    @property
    def uses_local_memory(self) -> bool:
        return self.stack > 0 or self.local > 0 or self.local_stores > 0 or self.local_loads > 0


def find_cuobjdump(explicit: str | None) -> str:
    """Path of cuobjdump (search order in the module docstring).

    Raises:
        FileNotFoundError: none was found.
    """
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "bin" / "cuobjdump")
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent / "cuobjdump")
    on_path = shutil.which("cuobjdump")
    if on_path:
        candidates.append(Path(on_path))
    candidates.append(Path("/usr/local/cuda/bin/cuobjdump"))
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise FileNotFoundError(
        "no cuobjdump found (tried: " + ", ".join(str(c) for c in candidates) + "); pass --cuobjdump"
    )


def _run(cuobjdump: str, option: str, binary: Path) -> str:
    result = subprocess.run([cuobjdump, option, str(binary)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{cuobjdump} {option} {binary} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def _sections(dump: str) -> list[tuple[str, str]]:
    """``(arch, text)`` of each "Fatbin elf code" section of a cuobjdump listing."""
    sections = []
    for chunk in dump.split("Fatbin elf code:")[1:]:
        arch = _ARCH.search(chunk)
        if arch is None:
            raise RuntimeError(f"no 'arch = sm_..' line in a cuobjdump section:\n{chunk[:500]}")
        sections.append((arch.group(1), chunk.split("Fatbin ptx code:")[0]))
    return sections


def read_kernels(cuobjdump: str, binary: Path, keep_sass: bool = False) -> list[Kernel]:
    """Every kernel of ``binary`` per architecture, with its resources and local-memory accesses (and
    its SASS listing with ``keep_sass``)."""
    kernels: dict[tuple[str, str], Kernel] = {}
    listings: dict[int, list[str]] = {}
    for arch, text in _sections(_run(cuobjdump, "-res-usage", binary)):
        for function, usage in zip(_FUNCTION.finditer(text), _RESOURCES.finditer(text)):
            registers, stack, shared, local = (int(g) for g in usage.groups())
            kernels[(arch, function.group(1))] = Kernel(arch, function.group(1), "", registers, stack, shared, local)
        if len(_FUNCTION.findall(text)) != len(_RESOURCES.findall(text)):
            raise RuntimeError(f"unexpected cuobjdump -res-usage listing for {arch}:\n{text[:2000]}")
    for arch, text in _sections(_run(cuobjdump, "-sass", binary)):
        current: Kernel | None = None
        for line in text.splitlines():
            function = _FUNCTION.search(line)
            if function is not None and "Function" in line:
                current = kernels.get((arch, function.group(1)))
                if current is None:
                    raise RuntimeError(f"{function.group(1)} ({arch}) is in the SASS but not in -res-usage")
            elif current is not None:
                current.local_stores += bool(_LOCAL_STORE.search(line))
                current.local_loads += bool(_LOCAL_LOAD.search(line))
                if keep_sass:
                    listings.setdefault(id(current), []).append(line)
    for kernel in kernels.values():
        kernel.sass = "\n".join(listings.get(id(kernel), []))
    names = _demangle([kernel.mangled for kernel in kernels.values()])
    for kernel, name in zip(kernels.values(), names):
        kernel.name = name
    return sorted(kernels.values(), key=lambda k: (k.name, k.arch))


def read_launch_bounds(cuobjdump: str, binary: Path) -> dict[tuple[str, str], int]:
    """``(arch, mangled name) -> threads per block`` of every kernel of ``binary`` with
    ``__launch_bounds__`` (:func:`launch_bounds` of each architecture's ``cuobjdump -elf``)."""
    return {
        (arch, function): threads
        for arch, text in _sections(_run(cuobjdump, "-elf", binary))
        for function, threads in launch_bounds(text).items()
    }


def launch_bounds(elf_listing: str) -> dict[str, int]:
    """``mangled name -> threads per block`` from one architecture's ``cuobjdump -elf`` listing: the
    EIATTR_MAX_THREADS attribute in the kernel's ``.nv.info.<name>`` section."""
    bounds: dict[str, int] = {}
    function, attribute = None, ""
    for line in elf_listing.splitlines():
        section = _ELF_FUNCTION.match(line)
        if section is not None:
            function, attribute = section.group(1), ""
        elif "Attribute:" in line:
            attribute = line.split("Attribute:")[1].strip()
        elif attribute == "EIATTR_MAX_THREADS" and function is not None:
            value = _ELF_VALUE.search(line)
            if value is not None:
                bounds[function] = int(value.group(1), 16)
                attribute = ""
    return bounds


def chunk(name: str) -> int | None:
    """Elements a thread of kernel ``name`` (``kernel<T, VEC, ...>``) moves per iteration of its
    steady-state loop (:data:`CHUNKS`), or None for kernels outside that table."""
    base, _, arguments = name.partition("<")
    rule = CHUNKS.get(base)
    parts = [part.strip() for part in arguments.rstrip(">").split(",")]
    if rule is None or len(parts) < 2 or parts[0] not in _TYPE_BYTES:
        return None
    return rule(_TYPE_BYTES[parts[0]], parts[1] == "true")


def print_report(kernels: list[Kernel], aot: ModuleType) -> None:
    """The static figures of every kernel (module docstring), one row per kernel and architecture."""
    width = max([len("kernel")] + [len(k.name) for k in kernels])
    print(
        f"{'arch':<7} {'kernel':<{width}} {'thr':>4} {'CTA/SM':>6} {'ld16':>7} {'bar loop/all':>12} {'mma':>5} "
        f"{'instr/elem':>10}"
    )
    for k in kernels:
        arch = int(re.search(r"\d+", k.arch).group(0))
        instructions = aot.parse_sass(k.sass)
        loop = aot.steady_state_loop(instructions)
        loads, wide, _, _ = aot.access_counts(loop or instructions)
        ctas = aot.ctas_per_sm(arch, k.registers, k.shared, k.threads // 32) if k.threads and arch in aot.SM_LIMITS else None
        elements = chunk(k.name)
        per_element = f"{len(loop) / elements:.1f}" if loop and elements else "-"
        print(
            f"{k.arch:<7} {k.name:<{width}} {k.threads or '-':>4} {'-' if ctas is None else ctas:>6} "
            f"{f'{wide}/{loads}':>7} {f'{aot.barriers(loop)}/{aot.barriers(instructions)}':>12} "
            f"{aot.mma_kind(instructions):>5} {per_element:>10}"
        )


def _demangle(mangled: list[str]) -> list[str]:
    """Readable kernel names, ``name<template arguments>``, via c++filt when it exists."""
    cxxfilt = shutil.which("c++filt") or shutil.which("cu++filt")
    if cxxfilt is None:
        return mangled
    result = subprocess.run([cxxfilt], input="\n".join(mangled), capture_output=True, text=True, check=False)
    lines = result.stdout.splitlines()
    if result.returncode != 0 or len(lines) != len(mangled):
        return mangled
    return [_short_name(line) for line in lines]


def _short_name(demangled: str) -> str:
    """``void ns::(anonymous namespace)::kernel<T, true>(args)`` -> ``kernel<T, true>``."""
    name = demangled.removeprefix("void ")
    depth, end = 0, len(name)
    for i, char in enumerate(name):  # cut the parameter list: the first "(" outside template brackets
        if char == "<":
            depth += 1
        elif char == ">":
            depth -= 1
        elif char == "(" and depth == 0 and not name.startswith("(anonymous", i):
            end = i
            break
    name = name[:end]
    name = re.sub(r"^(\w+::|\(anonymous namespace\)::)+", "", name)
    return name.replace("(anonymous namespace)::", "").replace("fastvae::", "")


def print_table(kernels: list[Kernel]) -> None:
    """One row per kernel and architecture."""
    width = max([len("kernel")] + [len(k.name) for k in kernels])
    header = f"{'arch':<7} {'kernel':<{width}} {'REG':>4} {'SHARED':>7} {'STACK':>6} {'LOCAL':>6} {'STL':>4} {'LDL':>4}  hot"
    print(header)
    print("-" * len(header))
    for k in kernels:
        flag = ("yes" if k.hot else "no") + ("  <-- local memory" if k.uses_local_memory else "")
        print(
            f"{k.arch:<7} {k.name:<{width}} {k.registers:>4} {k.shared:>7} {k.stack:>6} {k.local:>6} "
            f"{k.local_stores:>4} {k.local_loads:>4}  {flag}"
        )


def main(argv: list[str] | None = None) -> int:
    """Check every binary given; 0 when no hot kernel uses local memory, 1 otherwise (2: usage)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binaries", nargs="+", type=Path, help="built _C*.so, libfastvae_kernels.a or .o files")
    parser.add_argument("--cuobjdump", help="path of cuobjdump (default: searched, see the module docstring)")
    parser.add_argument("--report", action="store_true", help="also print the static figures (module docstring)")
    args = parser.parse_args(argv)
    cuobjdump = find_cuobjdump(args.cuobjdump)
    print(f"check_resources: {cuobjdump}")
    failures: list[Kernel] = []
    for binary in args.binaries:
        if not binary.is_file():
            parser.error(f"{binary} is not a file")
        kernels = read_kernels(cuobjdump, binary, keep_sass=args.report)
        if not kernels:
            print(f"check_resources: {binary}: no kernels found", file=sys.stderr)
            return 1
        print(f"\n{binary}: {len(kernels)} kernel builds on {', '.join(sorted({k.arch for k in kernels}))}")
        print_table(kernels)
        if args.report:
            bounds = read_launch_bounds(cuobjdump, binary)
            for kernel in kernels:
                kernel.threads = bounds.get((kernel.arch, kernel.mangled), 0)
            print(f"\nstatic report of {binary} (issue 15):")
            print_report(kernels, _load_aot())
        failures += [k for k in kernels if k.hot and k.uses_local_memory]
        hot = [k for k in kernels if k.hot]
        if hot:
            heaviest = max(hot, key=lambda k: k.registers)
            print(f"most registers: {heaviest.registers} ({heaviest.name}, {heaviest.arch})")
    if failures:
        print(f"\ncheck_resources: {len(failures)} hot kernel build(s) use local memory (spills or stack):", file=sys.stderr)
        for k in failures:
            print(
                f"  {k.arch} {k.name}: STACK {k.stack}, LOCAL {k.local}, {k.local_stores} STL, {k.local_loads} LDL",
                file=sys.stderr,
            )
        return 1
    print("\ncheck_resources: no hot kernel uses local memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
