"""Where a training step of the LSTM goes, and how fast each matrix product runs: XLA vs
PyTorch vs numpy's OpenBLAS at the same shapes, side by side.

For each H (embedding 128, batch 64 x seq 128, as ``bench_training.py``), the layer's
training step (:class:`lstmgen.layers.FusedLSTM`'s maths: ``lstmgen.layers._project`` and
``_recurrence``) split into its parts, each jitted on its own and timed interleaved:

- ``input projection``: all timesteps' ``x @ kernel`` (one product);
- ``forward loop``: the time loop (``h @ recurrent`` + gates per step);
- ``bare recurrence``: the same loop without the gates (``h @ recurrent`` and a tanh): the
  products alone;
- ``forward + backward``: the whole layer's gradient (the backward part is the difference);

the loop and the gradient on both paths of the time loop, the JAX loop and the native kernel
(:mod:`lstmgen.native`, where it builds), side by side.

Then the rates of the products that make up the step, as single calls (the recurrent one
also as a chain of 128 dependent calls), in XLA (JAX), PyTorch and numpy (OpenBLAS). The
question it answers: how much of the gap to PyTorch's fused ``nn.LSTM`` is XLA's own matrix
product at these shapes.

    python bench/bench_lstm_parts.py                 # H = 256, 512
    python bench/bench_lstm_parts.py --units 1024
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, hugepages, interleaved, load  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "jax")
EMBED, BATCH, SEQ = 128, 64, 128


def layer_parts(units: int, repeats: int) -> dict[str, dict[str, float]]:
    """Seconds per part, per path of the time loop: the JAX loop and, where it loads, the
    native kernel (:mod:`lstmgen.native`); the input projection and the bare recurrence are
    XLA on both."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lstmgen import native
    from lstmgen.layers import _project, _recurrence

    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(SEQ, BATCH, EMBED)), "float32")
    kernel = jnp.asarray(rng.normal(size=(EMBED, 4 * units)) * 0.05, "float32")
    recurrent = jnp.asarray(rng.normal(size=(units, 4 * units)) * 0.05, "float32")
    bias = jnp.zeros(4 * units)
    h0 = c0 = jnp.zeros((BATCH, units))

    project = jax.jit(lambda xs, k: _project(xs, k, None))
    zs = project(xs, kernel)

    @jax.jit
    def bare(zs, r):
        def step(h, z):  # every column of the product is used, so none is optimised away
            p = h @ r + z
            return jnp.tanh(p[:, :units] + p[:, units:2 * units] + p[:, 2 * units:3 * units]
                            + p[:, 3 * units:]), None
        return jax.lax.scan(step, h0, zs)[0]

    def loss(xs, k, r, b):
        hs, h, c = _recurrence(_project(xs, k, None), h0, c0, r, b)
        return (hs * hs).sum() + c.sum()

    fns = {("input projection", "both"): lambda: project(xs, kernel).block_until_ready(),
           ("bare recurrence", "both"): lambda: bare(zs, recurrent).block_until_ready()}
    paths = {"JAX loop": "0"}
    if native.recurrence_or_none() is not None:
        paths["native"] = "1"
    saved = os.environ.get("LSTMGEN_NATIVE")
    for path, flag in paths.items():
        # The layer picks its loop when it is traced: trace each under its setting.
        os.environ["LSTMGEN_NATIVE"] = flag
        loop = jax.jit(lambda zs, r: _recurrence(zs, h0, c0, r, bias)[0])
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
        loop(zs, recurrent).block_until_ready()
        jax.block_until_ready(grad(xs, kernel, recurrent, bias))
        fns[("forward loop", path)] = \
            lambda loop=loop: loop(zs, recurrent).block_until_ready()
        fns[("forward + backward", path)] = \
            lambda grad=grad: jax.block_until_ready(grad(xs, kernel, recurrent, bias))
    if saved is None:
        os.environ.pop("LSTMGEN_NATIVE")
    else:
        os.environ["LSTMGEN_NATIVE"] = saved
    times = interleaved(fns, repeats)
    profiles = {}
    for path in paths:
        parts = {name: times[(name, p)] for name, p in times if p in (path, "both")}
        parts["backward (difference)"] = (parts["forward + backward"]
                                          - parts["input projection"] - parts["forward loop"])
        profiles[path] = parts
    return profiles


def product_rates(units: int, repeats: int) -> list[tuple[str, dict[str, float]]]:
    """GFLOP/s of the step's products, per library."""
    import jax
    import numpy as np

    try:
        import torch
    except ImportError:
        torch = None
    rows = []
    tokens = BATCH * SEQ
    shapes = [("h @ recurrent (one step)", BATCH, units, 4 * units),
              ("x @ kernel (all steps)", tokens, EMBED, 4 * units),
              ("h_prevᵀ @ dz (dR)", units, tokens, 4 * units),
              ("dz @ kernelᵀ (dx)", tokens, 4 * units, EMBED)]
    rng = np.random.default_rng(1)
    for name, m, k, n in shapes:
        a = rng.normal(size=(m, k)).astype("float32")
        b = rng.normal(size=(k, n)).astype("float32")
        calls = max(1, int(4e9 / (2 * m * k * n)))  # ~4 GFLOP per timing
        ja, jb = jax.device_put(a), jax.device_put(b)
        product = jax.jit(lambda x, y: x @ y)

        def run_jax(ja=ja, jb=jb, calls=calls, product=product):
            for _ in range(calls):
                out = product(ja, jb)
            out.block_until_ready()

        def run_numpy(a=a, b=b, calls=calls):
            for _ in range(calls):
                a @ b

        fns = {"XLA": run_jax, "numpy": run_numpy}
        if torch is not None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)

            def run_torch(ta=ta, tb=tb, calls=calls):
                for _ in range(calls):
                    ta @ tb

            fns["PyTorch"] = run_torch
        times = interleaved(fns, repeats, settle=0.2)
        rows.append((name, {lib: 2 * m * k * n * calls / t / 1e9 for lib, t in times.items()}))

    # The recurrent product as the loop runs it: 128 dependent calls.
    h = rng.normal(size=(BATCH, units)).astype("float32")
    r = (rng.normal(size=(units, 4 * units)) * 0.05).astype("float32")

    @jax.jit
    def chain(h, r):
        def step(h, _):
            p = h @ r
            return jax.numpy.tanh(p[:, :units] + p[:, units:2 * units]
                                  + p[:, 2 * units:3 * units] + p[:, 3 * units:]), None
        return jax.lax.scan(step, h, None, length=SEQ)[0]

    jh, jr = jax.device_put(h), jax.device_put(r)
    fns = {"XLA": lambda: chain(jh, jr).block_until_ready()}
    if torch is not None:
        th, tr = torch.from_numpy(h), torch.from_numpy(r)

        def torch_chain():
            x = th
            for _ in range(SEQ):
                p = x @ tr
                x = torch.tanh(p[:, :units] + p[:, units:2 * units] + p[:, 2 * units:3 * units]
                               + p[:, 3 * units:])
        fns["PyTorch"] = torch_chain
    flops = 2 * BATCH * units * 4 * units * SEQ
    times = interleaved(fns, repeats, settle=0.2)
    rows.append(("h @ recurrent, 128 chained", {lib: flops / t / 1e9 for lib, t in times.items()}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--hugepages", action=argparse.BooleanOptionalAction, default=True,
                        help="huge pages for the large buffers, as `lstmgen train` (default)")
    args = parser.parse_args()
    hugepages(args.hugepages)
    header("bench_lstm_parts: the LSTM layer's training step, part by part; product rates")
    print(f"embedding {EMBED}, batch {BATCH} x {SEQ}; medians of {args.repeats}, interleaved")
    for units in args.units:
        profiles = layer_parts(units, args.repeats)
        matmul = 2 * BATCH * SEQ * 4 * units
        loop_flops = matmul * units
        print(f"\nH={units}: the layer's training step, {3 * matmul * (EMBED + units) / 1e9:.1f} "
              "GFLOP of products (forward and backward); ms and share of the step, per path "
              "of the time loop")
        paths = list(profiles)
        print(f"  {'':22s}" + "".join(f" {path:>18s}" for path in paths))
        for name in ("input projection", "forward loop", "bare recurrence",
                     "backward (difference)", "forward + backward"):
            cells = []
            for path in paths:
                seconds, total = profiles[path][name], profiles[path]["forward + backward"]
                cells.append(f"{seconds * 1e3:8.1f} ms {100 * seconds / total:5.1f}%")
            print(f"  {name:22s}" + "".join(f" {cell:>18s}" for cell in cells))
        for path in paths:
            parts = profiles[path]
            gates = parts["forward loop"] - parts["bare recurrence"]
            print(f"  {path}: the step's products at "
                  f"{3 * matmul * (EMBED + units) / parts['forward + backward'] / 1e9:.0f} "
                  f"GFLOP/s overall; the forward loop is the bare products "
                  f"{'+' if gates >= 0 else '-'} {abs(1e3 * gates):.0f} ms")
        print(f"  the bare recurrence (XLA, h @ recurrent + a tanh): "
              f"{loop_flops / profiles[paths[0]]['bare recurrence'] / 1e9:.0f} GFLOP/s")
        rows = product_rates(units, max(3, args.repeats // 2))
        libs = list(rows[0][1])
        print(f"  {'product (GFLOP/s)':30s} " + " ".join(f"{lib:>8s}" for lib in libs))
        for name, rates in rows:
            print(f"  {name:30s} " + " ".join(f"{rates.get(lib, float('nan')):8.1f}"
                                            for lib in libs))
    print(f"\nend: {load()}")


if __name__ == "__main__":
    main()
