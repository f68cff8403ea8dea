"""Compile ``lstm_kernel.cc`` into ``_lstm_kernel.so`` beside it.

    python -m lstmgen.native.build          # or: python src/lstmgen/native/build.py

Needs a C++17 compiler (``CXX``, default ``g++``), jaxlib's FFI headers
(``jax.ffi.include_dir()``) and the ``scipy-openblas32`` wheel (OpenBLAS's headers and
``libscipy_openblas.so``; symbols prefixed ``scipy_``). Flags: ``-O3 -std=c++17 -fPIC -fno-math-errno
-fno-trapping-math`` (the last lets GCC vectorise the clamps in the gate loops);
no ``-march=native``: the gate loops are compiled for baseline x86-64 and for AVX2+FMA in
the source (``__attribute__((target))``) and picked at load time from the CPU's features.
The library finds OpenBLAS through an rpath to the wheel's ``lib`` folder.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "lstm_kernel.cc"
LIBRARY = HERE / "_lstm_kernel.so"


def command(output: Path) -> list[str]:
    import jax
    import scipy_openblas32 as blas

    lib_dir = blas.get_lib_dir()
    return [os.environ.get("CXX", "g++"), "-O3", "-std=c++17", "-fPIC", "-shared",
            "-fno-math-errno", "-fno-trapping-math", f"-I{jax.ffi.include_dir()}",
            f"-I{blas.get_include_dir()}", str(SOURCE), "-o", str(output), f"-L{lib_dir}", f"-l{blas.get_library()}",
            f"-Wl,-rpath,{lib_dir}"]


def stale() -> bool:
    return not LIBRARY.exists() or LIBRARY.stat().st_mtime < SOURCE.stat().st_mtime


def build(verbose: bool = False) -> Path:
    """Compile the library (to a temporary name, then renamed into place, so concurrent
    builds and loads never see half a file); raises on failure."""
    fd, tmp = tempfile.mkstemp(suffix=".so", prefix="._lstm_kernel.", dir=HERE)
    os.close(fd)
    try:
        cmd = command(Path(tmp))
        if verbose:
            print(shlex.join(cmd), flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building {LIBRARY.name} failed:\n{done.stderr[-4000:]}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, LIBRARY)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return LIBRARY


if __name__ == "__main__":
    print(build(verbose=True))
    sys.exit(0)
