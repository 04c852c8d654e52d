"""Build fastvae: the Python package and the extension fastvae._C.

Metadata lives in pyproject.toml; this file adds the package layout and the extension, which CMake
(Ninja generator) builds from CMakeLists.txt and csrc/: always its CPU kernels (csrc/cpu/, the ``cpu``
backend), and its CUDA kernels when a CUDA toolkit is found. The extension does not use PyTorch, so
the build never needs it. Without a toolkit the extension is optional: if even the CPU build fails
(no C++ compiler, say) a warning says so and the pure-Python package is installed, whose CPU tensors
then take the ``torch`` reference.

CUDA toolkit, first match wins:
  1. $CUDA_HOME, else $CUDA_PATH: if set, only that directory is considered (so setting it to a
     directory without a toolkit builds without the extension);
  2. nvcc on PATH, following symlinks; a wrapper script is resolved by asking nvcc where it lives;
  3. /usr/local/cuda.
No toolkit: the extension is built with the CPU kernels only, and a warning says why. A toolkit
that fails to build the extension fails the install (set FASTVAE_NO_CUDA=1 to build it without
CUDA).

Environment variables:
  FASTVAE_NO_CUDA=1      build the extension without its CUDA kernels.
  FASTVAE_NO_EXTENSION=1 skip the extension altogether (the pure-Python package).
  FASTVAE_CUDA_ARCHS     CUDA architectures, as CMake's CUDA_ARCHITECTURES entries separated by
                         ";", "," or spaces: "80;90a", "80 90a-real", or with dots, "8.0 9.0a"
                         (the dot is dropped). An entry NN means sm_NN code plus compute_NN PTX,
                         NN-real only sm_NN code. Default "80;90a-real".
  FASTVAE_CUDA_WERROR=1  treat host and device compiler warnings as errors (CI).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.errors import CompileError

ROOT = Path(__file__).resolve().parent
DEFAULT_CUDA_ARCHS = "80;90a-real"
_ARCH_ENTRY = re.compile(r"\d+[af]?(-real|-virtual)?|all|all-major|native")


def _is_toolkit(root: Path) -> bool:
    """Whether `root` holds a CUDA toolkit: bin/nvcc and the runtime headers.

    The headers are in include/ or, as in conda environments, in targets/<platform>/include/.
    """
    headers = [root / "include", *root.glob("targets/*/include")]
    return (root / "bin" / "nvcc").is_file() and any(
        (include / "cuda_runtime_api.h").is_file() for include in headers
    )


def _toolkit_of_nvcc(nvcc: str) -> Path | None:
    """Toolkit root of the nvcc at `nvcc`, or None.

    Symlinks are followed; for a wrapper script (e.g. /usr/local/bin/nvcc that execs the real one)
    nvcc's dry run tells the directory it really runs from.
    """
    root = Path(nvcc).resolve().parent.parent
    if _is_toolkit(root):
        return root
    try:
        dry_run = subprocess.run(
            [nvcc, "--dryrun", "-E", "-x", "cu", os.devnull],
            capture_output=True, text=True, timeout=60, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    here = re.search(r"^#\$ _HERE_=(.+)$", dry_run.stdout + dry_run.stderr, re.MULTILINE)
    if here is None:
        return None
    root = Path(here.group(1).strip()).parent
    return root if _is_toolkit(root) else None


def find_cuda_toolkit() -> tuple[Path | None, str]:
    """Locate the CUDA toolkit (order in the module docstring).

    Returns (root, how it was found) or (None, why the extension is skipped).
    """
    if os.environ.get("FASTVAE_NO_CUDA", "") not in ("", "0"):
        return None, "FASTVAE_NO_CUDA is set"
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value:
            if _is_toolkit(Path(value)):
                return Path(value), f"${var}"
            return None, (
                f"${var}={value} is not a CUDA toolkit (no bin/nvcc and cuda_runtime_api.h)"
            )
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        root = _toolkit_of_nvcc(nvcc)
        if root is not None:
            return root, f"nvcc on PATH ({nvcc})"
    default = Path("/usr/local/cuda")
    if _is_toolkit(default):
        return default, str(default)
    return None, "no CUDA toolkit found ($CUDA_HOME, $CUDA_PATH, nvcc on PATH, /usr/local/cuda)"


def cuda_architectures(spec: str | None) -> str:
    """CMake CUDA_ARCHITECTURES list (";"-separated) from a FASTVAE_CUDA_ARCHS value.

    >>> cuda_architectures("8.0 9.0a")
    '80;90a'
    """
    if spec is None or not spec.strip():
        return DEFAULT_CUDA_ARCHS
    archs = [entry.replace(".", "") for entry in re.split(r"[;,\s]+", spec.strip()) if entry]
    for arch in archs:
        if not _ARCH_ENTRY.fullmatch(arch):
            raise ValueError(
                f"FASTVAE_CUDA_ARCHS={spec!r}: {arch!r} is not a CUDA architecture "
                "(expected entries like 80, 90a, 90a-real or 8.0)"
            )
    return ";".join(archs)


def _build_tool(name: str) -> str:
    """Path of build tool `name` (cmake, ninja): PATH first, then beside the running Python."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        raise CompileError(
            f"{name} not found, but it is needed to build fastvae._C: pip install cmake ninja, "
            "or set FASTVAE_NO_EXTENSION=1 to install without the extension"
        )
    return path


class CMakeExtension(Extension):
    """An extension module that CMakeLists.txt builds, with the CUDA toolkit at `cuda_toolkit` or,
    when that is None, with the CPU kernels alone (then the extension is optional: a failed build
    is a warning)."""

    def __init__(self, name: str, cuda_toolkit: Path | None, found_by: str) -> None:
        super().__init__(name, sources=[], optional=cuda_toolkit is None)
        self.cuda_toolkit = cuda_toolkit
        self.found_by = found_by


class CMakeBuild(build_ext):
    """Configure and build CMakeLists.txt with Ninja; the module lands where setuptools expects it."""

    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        toolkit = ext.cuda_toolkit
        werror = os.environ.get("FASTVAE_CUDA_WERROR", "") not in ("", "0")
        output_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / ext.name
        cmake, ninja = _build_tool("cmake"), _build_tool("ninja")
        configure = [
            cmake, "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={ninja}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={output_dir}",
            f"-DCMAKE_COMPILE_WARNING_AS_ERROR={'ON' if werror else 'OFF'}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPython_EXECUTABLE={sys.executable}",
        ]
        if toolkit is None:
            configure.append("-DFASTVAE_WITH_CUDA=OFF")
            what = f"the CPU kernels only ({ext.found_by})"
        else:
            archs = cuda_architectures(os.environ.get("FASTVAE_CUDA_ARCHS"))
            configure += [
                "-DFASTVAE_WITH_CUDA=ON",
                f"-DCMAKE_CUDA_COMPILER={toolkit / 'bin' / 'nvcc'}",
                f"-DCUDAToolkit_ROOT={toolkit}",
                f"-DCMAKE_CUDA_ARCHITECTURES={archs}",
            ]
            what = f"the CUDA toolkit at {toolkit} (found by {ext.found_by}), architectures {archs}"
        print(f"building fastvae._C with {what}, warnings as errors {'on' if werror else 'off'}", flush=True)
        try:
            subprocess.run(configure, check=True)
            subprocess.run([cmake, "--build", str(build_dir)], check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            if toolkit is None:
                raise CompileError(f"building fastvae._C (CPU kernels only) failed ({exc})") from exc
            raise CompileError(
                f"building fastvae._C with the CUDA toolkit at {toolkit} failed ({exc}); fix the "
                "error above, or set FASTVAE_NO_CUDA=1 to build it without CUDA"
            ) from exc


class BuildPy(build_py):
    """build_py that also warns, once per build, what of the extension is left out and why."""

    def run(self) -> None:
        if NO_EXTENSION:
            warnings.warn("fastvae._C is not built: FASTVAE_NO_EXTENSION is set; installing the pure-Python package")
        elif CUDA_TOOLKIT is None:
            warnings.warn(f"fastvae._C is built without its CUDA kernels: {TOOLKIT_NOTE}")
        super().run()


NO_EXTENSION = os.environ.get("FASTVAE_NO_EXTENSION", "") not in ("", "0")
CUDA_TOOLKIT, TOOLKIT_NOTE = find_cuda_toolkit()

setup(
    packages=[*find_packages(include=["fastvae", "fastvae.*"]), "fastvae.kernels"],
    package_dir={"fastvae.kernels": "kernels"},
    ext_modules=[] if NO_EXTENSION else [CMakeExtension("fastvae._C", CUDA_TOOLKIT, found_by=TOOLKIT_NOTE)],
    cmdclass={"build_ext": CMakeBuild, "build_py": BuildPy},
)
