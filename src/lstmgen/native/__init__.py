"""A native CPU kernel for :class:`lstmgen.layers.FusedLSTM`'s time loop.

``lstm_kernel.cc`` runs the whole forward loop (and the whole backward loop) as one XLA FFI
custom call: each step's ``h @ recurrent`` / ``dz @ recurrent.T`` by a register-blocked
AVX2+FMA GEMM on the recurrent weights packed once per call (OpenBLAS's ``sgemm`` from the
``scipy-openblas32`` wheel on CPUs without AVX2+FMA, or with ``LSTMGEN_NATIVE_PACKED=0``),
the gate maths fused in one vectorised pass per step. :func:`recurrence_or_none` gives a
drop-in for the function of ``lstmgen.layers._make_recurrence()`` with ``rec_mask=None``: the
same ``jax.custom_vjp`` structure, the weight gradients kept as single XLA products over all
timesteps. :func:`ln_recurrence_or_none` does the same for the layer-normalised cell
(:func:`lstmgen.layers._ln_recurrence`).

The library is compiled on first use, once per source and toolchain, into a cache folder (see
:mod:`lstmgen.native.build`; ``LSTMGEN_NATIVE_BUILD=0`` forbids that); if it cannot be
built or loaded, :func:`recurrence_or_none` says so once on stderr and returns ``None``.
``LSTMGEN_NATIVE_THREADS=N``: worker threads, each running the whole loop on its share
of the batch rows (default: the CPUs this process may use; at least 8 rows each).
OpenBLAS, where it runs, runs on one thread inside each (``LSTMGEN_NATIVE_BLAS_THREADS`` to
change; this OpenBLAS is the ``scipy-openblas32`` wheel's own copy, not numpy's or scipy's).

Example:
    >>> from lstmgen import native
    >>> sorted(native.info())[:2] in (["available", "blas_threads"], ["available", "error"])
    True
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

_LOCK = threading.Lock()
_STATE: dict = {}  # "lib", "recurrence" once loaded; "error" when unavailable

FWD_TARGET = "lstmgen_lstm_fwd"
BWD_TARGET = "lstmgen_lstm_bwd"
LN_FWD_TARGET = "lstmgen_lstm_ln_fwd"
LN_BWD_TARGET = "lstmgen_lstm_ln_bwd"


def _load():
    import scipy_openblas32 as blas

    from . import build

    library = build.library_path()
    if not library.exists():
        if os.environ.get("LSTMGEN_NATIVE_BUILD", "1") == "0":
            raise RuntimeError(f"{library} is not built and LSTMGEN_NATIVE_BUILD=0")
        build.build()
    # The library names OpenBLAS but not where it is: the wheel's copy, loaded first.
    ctypes.CDLL(os.path.join(blas.get_lib_dir(), f"lib{blas.get_library()}.so"),
                mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(library))
    lib.lstmgen_gate_variant.restype = ctypes.c_char_p
    lib.lstmgen_set_blas_threads.argtypes = [ctypes.c_int]
    lib.lstmgen_get_blas_threads.restype = ctypes.c_int
    lib.lstmgen_set_threads.argtypes = [ctypes.c_int]
    lib.lstmgen_get_threads.restype = ctypes.c_int
    lib.lstmgen_set_packed_gemm.argtypes = [ctypes.c_int]
    lib.lstmgen_gemm_variant.restype = ctypes.c_char_p
    lib.lstmgen_set_packed_gemm(int(os.environ.get("LSTMGEN_NATIVE_PACKED", "1") != "0"))
    # OpenBLAS on one thread: its workers busy-wait between the small per-step products
    # (many times slower on a loaded 2-core machine, bench/bench_native_lstm.py). The
    # kernel's own workers split the batch rows instead, with no synchronisation per step.
    lib.lstmgen_set_blas_threads(int(os.environ.get("LSTMGEN_NATIVE_BLAS_THREADS", "1")))
    lib.lstmgen_set_threads(int(os.environ.get("LSTMGEN_NATIVE_THREADS", 0)) or _cpus())
    import jax

    jax.ffi.register_ffi_target(FWD_TARGET, jax.ffi.pycapsule(lib.LstmFwd), platform="cpu")
    jax.ffi.register_ffi_target(BWD_TARGET, jax.ffi.pycapsule(lib.LstmBwd), platform="cpu")
    jax.ffi.register_ffi_target(LN_FWD_TARGET, jax.ffi.pycapsule(lib.LstmLnFwd),
                                platform="cpu")
    jax.ffi.register_ffi_target(LN_BWD_TARGET, jax.ffi.pycapsule(lib.LstmLnBwd),
                                platform="cpu")
    return lib


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def library():
    """The loaded ctypes library, or ``None`` when it is unavailable (said once)."""
    with _LOCK:
        if "lib" not in _STATE and "error" not in _STATE:
            try:
                _STATE["lib"] = _load()
            except Exception as e:  # noqa: BLE001 -- any failure means: use the JAX loop
                _STATE["error"] = e
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                print(f"lstmgen: native LSTM kernel unavailable ({first}); "
                      "using the JAX loop", file=sys.stderr)
        return _STATE.get("lib")


def info() -> dict:
    """What was loaded: the gate-loop and per-step product variants, the worker threads and
    OpenBLAS's thread count (or the error)."""
    lib = library()
    if lib is None:
        return {"available": False, "error": repr(_STATE.get("error"))}
    return {"available": True, "gate_variant": lib.lstmgen_gate_variant().decode(),
            "gemm": lib.lstmgen_gemm_variant().decode(),
            "threads": lib.lstmgen_get_threads(),
            "blas_threads": lib.lstmgen_get_blas_threads()}


def set_threads(n: int) -> None:
    """The number of worker threads over batch rows (read at each call of the kernel)."""
    lib = library()
    if lib is not None:
        lib.lstmgen_set_threads(int(n))


def _recurrent_gradient(h0, hs, dz):
    """The recurrent kernel's gradient, sum over t of h_{t-1}^T dz_t, as one large XLA
    product over all timesteps (as in the JAX path), not a product per step."""
    import jax.numpy as jnp

    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    return jnp.einsum("tbh,tbg->hg", h_prev, dz)


def _make_recurrence():
    import jax
    import jax.numpy as jnp

    def forward(zs, h0, c0, recurrent, bias):
        steps, batch, gates = zs.shape
        units = recurrent.shape[0]
        f32 = jnp.float32
        state = jax.ShapeDtypeStruct((batch, units), f32)
        seq = jax.ShapeDtypeStruct((steps, batch, units), f32)
        out = (seq, seq, jax.ShapeDtypeStruct((steps, batch, gates), f32), state, state)
        return jax.ffi.ffi_call(FWD_TARGET, out, vmap_method="sequential")(
            zs, h0, c0, recurrent, bias)

    def backward(acts, cs, c0, d_hs, d_h_last, d_c_last, recurrent):
        state = jax.ShapeDtypeStruct(c0.shape, jnp.float32)
        out = (jax.ShapeDtypeStruct(acts.shape, jnp.float32), state, state)
        return jax.ffi.ffi_call(BWD_TARGET, out, vmap_method="sequential")(
            acts, cs, c0, d_hs, d_h_last, d_c_last, recurrent)

    @jax.custom_vjp
    def recurrence(zs, h0, c0, recurrent, bias):
        hs, _, _, h, c = forward(zs, h0, c0, recurrent, bias)
        return hs, h, c

    def recurrence_fwd(zs, h0, c0, recurrent, bias):
        hs, cs, acts, h, c = forward(zs, h0, c0, recurrent, bias)
        return (hs, h, c), (h0, c0, recurrent, hs, cs, acts)

    def recurrence_bwd(saved, grads):
        h0, c0, recurrent, hs, cs, acts = saved
        d_hs, d_h_last, d_c_last = grads
        dz, dh0, dc0 = backward(acts, cs, c0, d_hs, d_h_last, d_c_last, recurrent)
        return dz, dh0, dc0, _recurrent_gradient(h0, hs, dz), dz.sum(axis=(0, 1))

    recurrence.defvjp(recurrence_fwd, recurrence_bwd)
    return recurrence


def _make_ln_recurrence():
    import jax
    import jax.numpy as jnp

    f32 = jnp.float32

    def forward(zs, h0, c0, recurrent, bias, gate_scale, cell_scale, cell_shift):
        steps, batch, gates = zs.shape
        units = recurrent.shape[0]
        state = jax.ShapeDtypeStruct((batch, units), f32)
        seq = jax.ShapeDtypeStruct((steps, batch, units), f32)
        wide = jax.ShapeDtypeStruct((steps, batch, gates), f32)
        out = (seq, seq, wide, wide, jax.ShapeDtypeStruct((steps, batch, 4), f32), seq,
               jax.ShapeDtypeStruct((steps, batch), f32), state, state)
        return jax.ffi.ffi_call(LN_FWD_TARGET, out, vmap_method="sequential")(
            zs, h0, c0, recurrent, bias, gate_scale, cell_scale, cell_shift)

    @jax.custom_vjp
    def recurrence(zs, h0, c0, recurrent, bias, gate_scale, cell_scale, cell_shift):
        hs, *_, h, c = forward(zs, h0, c0, recurrent, bias, gate_scale, cell_scale,
                               cell_shift)
        return hs, h, c

    def recurrence_fwd(zs, h0, c0, recurrent, bias, gate_scale, cell_scale, cell_shift):
        hs, cs, acts, ns, ginv, ms, cinv, h, c = forward(
            zs, h0, c0, recurrent, bias, gate_scale, cell_scale, cell_shift)
        return (hs, h, c), (h0, c0, recurrent, gate_scale, cell_scale, cell_shift, hs, cs,
                            acts, ns, ginv, ms, cinv)

    def recurrence_bwd(saved, grads):
        (h0, c0, recurrent, gate_scale, cell_scale, cell_shift, hs, cs, acts, ns, ginv, ms,
         cinv) = saved
        d_hs, d_h_last, d_c_last = grads
        state = jax.ShapeDtypeStruct(c0.shape, f32)
        out = (jax.ShapeDtypeStruct(acts.shape, f32), jax.ShapeDtypeStruct(acts.shape, f32),
               jax.ShapeDtypeStruct(cs.shape, f32), state, state)
        dz, da, du, dh0, dc0 = jax.ffi.ffi_call(LN_BWD_TARGET, out, vmap_method="sequential")(
            acts, ns, ginv, ms, cinv, cs, c0, d_hs, d_h_last, d_c_last, recurrent, gate_scale,
            cell_scale, cell_shift)
        return (dz, dh0, dc0, _recurrent_gradient(h0, hs, dz), da.sum(axis=(0, 1)),
                (da * ns).sum(axis=(0, 1)), (du * ms).sum(axis=(0, 1)), du.sum(axis=(0, 1)))

    recurrence.defvjp(recurrence_fwd, recurrence_bwd)
    return recurrence


def _built_once(key: str, make):
    """``make()``'s function, made once and kept, or ``None`` when the library is
    unavailable."""
    if library() is None:
        return None
    with _LOCK:
        if key not in _STATE:
            _STATE[key] = make()
        return _STATE[key]


def ln_recurrence_or_none():
    """The native layer-normalised recurrence
    ``(zs, h0, c0, recurrent, bias, gate_scale, cell_scale, cell_shift) -> (hs, h_last,
    c_last)`` (the maths of :func:`lstmgen.layers._ln_recurrence`), or ``None`` when the
    library is unavailable."""
    return _built_once("ln_recurrence", _make_ln_recurrence)


def recurrence_or_none():
    """The native ``recurrence(zs, h0, c0, recurrent, bias) -> (hs, h_last, c_last)``
    (float32, time-major ``zs``), or ``None`` when the library is unavailable."""
    return _built_once("recurrence", _make_recurrence)
