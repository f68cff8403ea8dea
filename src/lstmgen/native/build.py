"""Compile ``lstm_kernel.cc`` into a shared library, once per source and toolchain.

    python -m lstmgen.native.build          # builds now (lstmgen also builds on first use)

Needs a C++17 compiler (``CXX``, default ``g++``), jaxlib's FFI headers
(``jax.ffi.include_dir()``) and the ``scipy-openblas32`` wheel (a dependency of lstmgen:
OpenBLAS's headers and ``libscipy_openblas.so``; symbols prefixed ``scipy_``). Flags: ``-O3
-std=c++17 -fPIC -fno-math-errno -fno-trapping-math`` (the last lets GCC vectorise the
clamps in the gate loops), ``-fopenmp-simd`` (the ``omp simd`` reductions of the layer
normalisation's statistics; no OpenMP runtime); no ``-march=native``: the gate loops and
the packed GEMM of the per-step products are compiled for baseline x86-64 and for
AVX2+FMA in the source (``__attribute__((target))``) and picked at load time from the
CPU's features.

The library goes to ``LSTMGEN_NATIVE_CACHE`` (default ``~/.cache/lstmgen``, or
``$XDG_CACHE_HOME/lstmgen``), named by a hash of the source, the compiler command and the
jaxlib and OpenBLAS versions, so an upgrade of any of them builds a new one and a
read-only installation never needs writing. It does not record where OpenBLAS lives: the
loader (:mod:`lstmgen.native`) loads the wheel's OpenBLAS first.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "lstm_kernel.cc"


def cache_dir() -> Path:
    if os.environ.get("LSTMGEN_NATIVE_CACHE"):
        return Path(os.environ["LSTMGEN_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lstmgen"


def command(output: Path) -> list[str]:
    import jax
    import scipy_openblas32 as blas

    return [os.environ.get("CXX", "g++"), "-O3", "-std=c++17", "-fPIC", "-shared",
            "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", f"-I{jax.ffi.include_dir()}",
            f"-I{blas.get_include_dir()}", str(SOURCE), "-o", str(output),
            f"-L{blas.get_lib_dir()}", f"-l{blas.get_library()}"]


def library_path() -> Path:
    """Where the library for this source and toolchain is (or will be) built."""
    import jaxlib
    import scipy_openblas32 as blas

    key = hashlib.sha256(SOURCE.read_bytes())
    key.update(shlex.join(command(Path("OUT"))).encode())
    key.update(f"{jaxlib.__version__} {blas.__version__}".encode())
    return cache_dir() / f"lstm_kernel-{key.hexdigest()[:16]}.so"


def build(verbose: bool = False) -> Path:
    """Compile the library unless it is there (to a temporary name, then renamed into place,
    so concurrent builds and loads never see half a file); raises on failure."""
    library = library_path()
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", prefix=".lstm_kernel.", dir=library.parent)
    os.close(fd)
    try:
        cmd = command(Path(tmp))
        if verbose:
            print(shlex.join(cmd), flush=True)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:  # no compiler
            raise RuntimeError(f"cannot run the C++ compiler {cmd[0]!r}: {e.strerror}") from e
        if done.returncode != 0:
            raise RuntimeError(f"building {library.name} failed:\n{done.stderr[-4000:]}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, library)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return library


if __name__ == "__main__":
    print(build(verbose=True))
    sys.exit(0)
