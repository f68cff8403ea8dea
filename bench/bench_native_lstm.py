"""The native LSTM kernel (``lstmgen.native``) vs FusedLSTM's JAX loop vs PyTorch,
interleaved in one process (A B C A B C ...), so load on the machine hits each alike.

Per configuration:

- training step, tokens/s, ``Embedding -> LSTM -> Dense(65)`` with Adam (clipnorm 5), the
  model and step of ``bench_training.py``: ``jax`` (FusedLSTM, ``LSTMGEN_NATIVE=0``),
  ``native`` (FusedLSTM on the native kernel, its default: the batch rows split over one
  worker thread per CPU, each step's product by the packed AVX2+FMA GEMM),
  ``openblas`` (the same kernel with OpenBLAS's single-threaded sgemm for the products, as
  before the packed GEMM and on CPUs without AVX2),
  ``torch`` (``nn.LSTM``, all CPUs'
  threads), ``torch1`` (one thread);
- the recurrence alone, forward + backward (``jax.grad`` of a loss of ``hs``, ``h``, ``c``
  with respect to ``zs``, ``h0``, ``c0``, recurrent, bias), jitted: ``jax`` vs ``native``
  (and ``openblas``); and the forward alone.

Configurations: H = 256, 512 and 1024 with embedding 128, batch 64 x 128
(``bench_training.py``'s) and the CLI's default model (embedding 64, LSTM 512, batch
32 x 64; LSTM 384 before 2026-12-04).

    python bench/bench_native_lstm.py                 # all four, 7 repeats
    python bench/bench_native_lstm.py --repeats 5 --only 256
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, hugepages, interleaved, load  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "jax")

CONFIGS = {  # name: (embedding, units, batch, seq)
    "256": (128, 256, 64, 128),
    "512": (128, 512, 64, 128),
    "1024": (128, 1024, 64, 128),
    "default": (64, 512, 32, 64),
}


def with_native(enabled: bool, make):
    """Build (and trace: the switch is read when the step is traced) with the native
    kernel on or off."""
    previous = os.environ.get("LSTMGEN_NATIVE")
    os.environ["LSTMGEN_NATIVE"] = "1" if enabled else "0"
    try:
        return make()
    finally:
        if previous is None:
            del os.environ["LSTMGEN_NATIVE"]
        else:
            os.environ["LSTMGEN_NATIVE"] = previous


def with_openblas(fn):
    """``fn`` run with the native kernel's products by OpenBLAS's sgemm (the packed GEMM
    off; read at each call of the kernel)."""
    import jax

    from lstmgen import native

    def run():
        native.library().lstmgen_set_packed_gemm(0)
        try:
            return jax.block_until_ready(fn())
        finally:
            native.library().lstmgen_set_packed_gemm(1)

    return run


def recurrence_steps(units: int, batch: int, seq: int, threads: int):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import lstmgen.layers
    from lstmgen import native

    rng = np.random.default_rng(0)
    args = (jnp.asarray(rng.normal(size=(seq, batch, 4 * units)), "float32"),
            jnp.asarray(rng.normal(size=(batch, units)) * 0.1, "float32"),
            jnp.asarray(rng.normal(size=(batch, units)) * 0.1, "float32"),
            jnp.asarray(rng.normal(size=(units, 4 * units)) / np.sqrt(units), "float32"),
            jnp.zeros(4 * units, "float32"))
    jax_fn = lstmgen.layers._make_recurrence()
    impls = {"jax": lambda *a: jax_fn(*a, None), "native": native.recurrence_or_none()}

    def grad_of(fn):
        def loss(*a):
            hs, h, c = fn(*a)
            return (hs * hs).sum() + (h * h).sum() + c.sum()
        g = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
        return lambda: jax.block_until_ready(g(*args))

    def forward_of(fn):
        f = jax.jit(fn)
        return lambda: jax.block_until_ready(f(*args))

    steps = {}
    for kind, wrap in (("fwd+bwd", grad_of), ("fwd", forward_of)):
        for name, fn in impls.items():
            steps[f"{kind} {name}"] = wrap(fn)
        steps[f"{kind} openblas"] = with_openblas(steps[f"{kind} native"])
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--no-recurrence", action="store_true",
                        help="skip the recurrence-alone measurements")
    parser.add_argument("--hugepages", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    hugepages(args.hugepages)

    import bench_training as bt

    from lstmgen import native

    header("bench_native_lstm: native LSTM kernel vs FusedLSTM's JAX loop vs PyTorch")
    info = native.info()
    print(f"native: {info}")
    if not info["available"]:
        sys.exit("native kernel unavailable")
    threads = info["threads"]  # the kernel's workers (LSTMGEN_NATIVE_THREADS, else all CPUs)
    all_cpus = bt._threads()
    torch = bt._torch()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads" if torch
          else "torch not installed", flush=True)

    results = {}
    for name in args.only:
        embed, units, batch, seq = CONFIGS[name]
        bt.EMBED, bt.BATCH, bt.SEQ = embed, batch, seq
        print(f"\n== {name}: embedding {embed}, LSTM {units}, batch {batch} x {seq}; {load()}",
              flush=True)
        steps = {"jax": with_native(False, lambda u=units: bt.keras_step(u, stock=False)),
                 "native": with_native(True, lambda u=units: bt.keras_step(u, stock=False))}
        steps["openblas"] = with_openblas(steps["native"])
        if torch is not None:
            steps["torch"] = bt.torch_step(units, all_cpus)
            if all_cpus > 1:
                steps["torch1"] = bt.torch_step(units, 1)
        times = interleaved(steps, args.repeats, warmup=2)
        print(f"{'train step':16s} {'s/step':>8s} {'tokens/s':>10s}")
        for impl, seconds in times.items():
            print(f"{impl:16s} {seconds:8.4f} {batch * seq / seconds:10,.0f}")
        results[name] = times
        del steps
        if not args.no_recurrence:
            rec = interleaved(recurrence_steps(units, batch, seq, threads), args.repeats,
                              warmup=2)
            print(f"{'recurrence':16s} {'s/call':>8s}")
            for impl, seconds in rec.items():
                print(f"{impl:16s} {seconds:8.4f}")
            results[name + " recurrence"] = rec
        print(flush=True)

    print("ratios (speed-up, > 1: the first is faster):")
    for name in args.only:
        t = results[name]
        parts = [f"native/jax {t['jax'] / t['native']:.2f}x"]
        parts.append(f"native/openblas {t['openblas'] / t['native']:.2f}x")
        if "torch" in t:
            parts += [f"native/torch {t['torch'] / t['native']:.2f}x",
                      f"jax/torch {t['torch'] / t['jax']:.2f}x"]
        if "torch1" in t:
            parts.append(f"native/torch1 {t['torch1'] / t['native']:.2f}x")
        print(f"  {name} train step: " + ", ".join(parts))
        r = results.get(name + " recurrence")
        if r:
            def one(k, r=r):
                return f" (openblas/jax {r[k + ' jax'] / r[k + ' openblas']:.2f}x)"

            print(f"  {name} recurrence: fwd+bwd native/jax "
                  f"{r['fwd+bwd jax'] / r['fwd+bwd native']:.2f}x{one('fwd+bwd')}, "
                  f"fwd native/jax {r['fwd jax'] / r['fwd native']:.2f}x{one('fwd')}")
    print(f"\nend: {load()}")


if __name__ == "__main__":
    main()
