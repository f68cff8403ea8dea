"""What ``--layer-norm`` costs in speed: the 30-minute recipe's model (embedding 64, LSTM
768, dropout 0.4, weight drop 0.2, Dense 65, batch 32 x 64, Adam with clipnorm 5) with the
plain and the layer-normalised cell, both on the native kernel, interleaved in one process
(A B A B ...); and the recurrence alone, forward + backward, jitted: plain native,
normalised native, normalised JAX loop (autodiff of a scan, the ``LSTMGEN_NATIVE=0`` path).

    python bench/bench_layer_norm.py                  # 9 repeats
    python bench/bench_layer_norm.py --units 512 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, interleaved, load  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "jax")

def training_step(units: int, batch: int, seq: int, layer_norm: bool):
    """``bench_training.py``'s compiled Keras step on the recipe's model."""
    import bench_training as bt

    bt.EMBED, bt.BATCH, bt.SEQ = 64, batch, seq
    bt.MODEL = {"dropout": 0.4, "weight_drop": 0.2, "layer_norm": layer_norm}
    return bt.keras_step(units, stock=False)


def recurrence_steps(units: int, batch: int, seq: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import lstmgen.layers
    from lstmgen import native

    rng = np.random.default_rng(0)
    f32 = lambda *shape, scale=1.0: jnp.asarray(  # noqa: E731
        rng.normal(size=shape) * scale, "float32")
    base = (f32(seq, batch, 4 * units), f32(batch, units, scale=0.1),
            f32(batch, units, scale=0.1), f32(units, 4 * units, scale=units ** -0.5),
            f32(4 * units, scale=0.1))
    norm = (1 + f32(4 * units, scale=0.1), 1 + f32(units, scale=0.1), f32(units, scale=0.1))
    impls = {
        "plain native": (native.recurrence_or_none(), base),
        "norm native": (native.ln_recurrence_or_none(), base + norm),
        "norm jax": (lambda zs, h0, c0, r, b, *n: lstmgen.layers._ln_recurrence_jax(
            zs, h0, c0, r, b, None, *n), base + norm),
    }

    def grad_of(fn, args):
        def loss(*a):
            hs, h, c = fn(*a)
            return (hs * hs).sum() + (h * h).sum() + c.sum()
        g = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))
        return lambda: jax.block_until_ready(g(*args))

    return {name: grad_of(fn, args) for name, (fn, args) in impls.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=768)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()

    from lstmgen import native

    header("bench_layer_norm: the layer-normalised LSTM cell's cost in speed")
    print(f"native: {native.info()}")
    if native.ln_recurrence_or_none() is None:
        sys.exit("native kernel unavailable")
    tokens = args.batch * args.seq
    print(f"\n== training step: embedding 64, LSTM {args.units}, batch {args.batch} x "
          f"{args.seq}; {load()}", flush=True)
    steps = {name: training_step(args.units, args.batch, args.seq, layer_norm)
             for name, layer_norm in (("plain", False), ("layer norm", True))}
    times = interleaved(steps, args.repeats, warmup=2)
    for name, seconds in times.items():
        print(f"{name:12s} {seconds:8.4f} s/step {tokens / seconds:10,.0f} tokens/s")
    print(f"\n== recurrence alone, forward + backward; {load()}", flush=True)
    rec = interleaved(recurrence_steps(args.units, args.batch, args.seq), args.repeats,
                      warmup=2)
    for name, seconds in rec.items():
        print(f"{name:12s} {seconds * 1e3:8.1f} ms")
    print(f"\nratios (time, > 1: slower than plain): training step "
          f"{times['layer norm'] / times['plain']:.3f}x; recurrence: norm native "
          f"{rec['norm native'] / rec['plain native']:.3f}x, norm jax "
          f"{rec['norm jax'] / rec['plain native']:.3f}x")
    print(f"end: {load()}")


if __name__ == "__main__":
    main()
