"""Training throughput: lstmgen's Keras model (JAX) vs plain PyTorch ``nn.LSTM``, side by side.

Embedding 128 -> LSTM H -> Dense 65, batch 64 x seq 128, Adam with gradient clipping, for
H in 256/512/1024. Measured in one process, one after the other, for each H:

- ``lstmgen``: lstmgen's ``LanguageModel`` (:class:`lstmgen.layers.FusedLSTM`: input
  projection hoisted out of the scan, custom gradient, the first layer's input projection
  looked up in ``embeddings @ kernel``), ``train_on_batch``;
- ``product`` (with ``--lookup-ablation``): the same, the first layer's input projection a
  product over the batch as in the other layers;
- ``stock``: the same model with Keras's own ``keras.layers.LSTM``;
- ``torch`` / ``torch1``: ``nn.Embedding -> nn.LSTM -> nn.Linear`` on the CPU with all threads
  / one thread (skipped if torch is absent);
- ``matmul``: a 4096^2 fp32 matrix product (JAX and torch), the practical peak of the machine.

Figures are medians of ``--repeats`` steps after warm-up steps; FLOPs per token are counted
as 6 * (4*H*(E+H) + H*V) (forward + backward of the matrix products).

    python bench/bench_training.py            # H = 256, 512, 1024
    python bench/bench_training.py --quick    # H = 256, 512; fewer repeats
    python bench/bench_training.py --quick --one-thread   # JAX and torch on one thread
    python bench/bench_training.py --no-hugepages  # without glibc's huge pages (both sides)
    python bench/bench_training.py --lookup-ablation  # + lstmgen without the table lookup
    python bench/bench_training.py --default-model --layers 2 --recurrent-dropout 0.2

Like ``lstmgen train``, the script starts itself again with huge pages for the large
buffers (``lstmgen.hugepages``); PyTorch, in the same process, gets them too.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, hugepages, interleaved, load, lstm_layer, median_time  # noqa: E402,E501

os.environ.setdefault("KERAS_BACKEND", "jax")

EMBED, VOCAB, BATCH, SEQ = 128, 65, 64, 128
MODEL = {}  # more ModelConfig fields: --layers, --dropout, --recurrent-dropout


def flops_per_token(units: int) -> int:
    layers = MODEL.get("layers", 1)
    return 6 * (4 * units * (EMBED + units) + (layers - 1) * 4 * units * 2 * units
                + units * VOCAB)


def keras_step(units: int, stock: bool, lookup: bool = True):
    import keras
    import numpy as np

    import lstmgen.layers
    from lstmgen.model import LanguageModel, ModelConfig

    with lstm_layer(stock):
        lm = LanguageModel(ModelConfig(embedding_dim=EMBED, units=units, **MODEL), VOCAB)
    model = lm.training_model
    model.compile(optimizer=keras.optimizers.Adam(3e-3, clipnorm=5.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB, (BATCH, SEQ)).astype("int32")
    y = rng.integers(0, VOCAB, (BATCH, SEQ)).astype("int32")
    folds = lstmgen.layers.folds_embedding
    if not lookup:  # decided when the step is traced, i.e. at the first call
        lstmgen.layers.folds_embedding = lambda tokens, vocab_size: False
    try:
        model.train_on_batch(x, y)
    finally:
        lstmgen.layers.folds_embedding = folds
    return lambda: model.train_on_batch(x, y)


def torch_step(units: int, threads: int):
    import torch

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(VOCAB, EMBED)
            self.lstm = torch.nn.LSTM(EMBED, units, batch_first=True,
                                      num_layers=MODEL.get("layers", 1),
                                      dropout=MODEL.get("dropout", 0.3) if "layers" in MODEL
                                      else 0.0)
            self.head = torch.nn.Linear(units, VOCAB)

        def forward(self, x):
            out, _ = self.lstm(self.embedding(x))
            return self.head(out)

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x = torch.randint(0, VOCAB, (BATCH, SEQ))
    y = torch.randint(0, VOCAB, (BATCH, SEQ))

    def step():
        torch.set_num_threads(threads)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x).reshape(-1, VOCAB), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        return loss.item()

    return step


def matmul_gflops(repeats: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    n = 4096
    a = np.random.default_rng(0).normal(size=(n, n)).astype("float32")
    result = {}
    ja = jnp.asarray(a)
    dot = jax.jit(lambda p, q: p @ q)
    result["jax"] = 2 * n**3 / median_time(lambda: dot(ja, ja).block_until_ready(), repeats) / 1e9
    torch = _torch()
    if torch is not None:
        ta = torch.from_numpy(a)
        result["torch"] = 2 * n**3 / median_time(lambda: ta @ ta, repeats) / 1e9
    return result


def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(_threads())
    return torch


def _threads() -> int:
    return int(os.environ.get("LSTMGEN_BENCH_THREADS", 0)) or os.cpu_count() or 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="H = 256, 512; 3 repeats")
    parser.add_argument("--units", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--one-thread", action="store_true",
                        help="JAX and torch on one thread each (steadier on a loaded machine)")
    parser.add_argument("--hugepages", action=argparse.BooleanOptionalAction, default=True,
                        help="huge pages for the large buffers, as `lstmgen train` (default)")
    parser.add_argument("--default-model", action="store_true",
                        help="the CLI's default model and batch: embedding 64, LSTM 512, "
                             "batch 32 x 64")
    parser.add_argument("--lookup-ablation", action="store_true",
                        help="add lstmgen without the first layer's table lookup ('product')")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--recurrent-dropout", type=float, default=None,
                        help="(no PyTorch column: nn.LSTM has no recurrent dropout)")
    args = parser.parse_args()
    hugepages(args.hugepages)
    global EMBED, BATCH, SEQ
    if args.default_model:
        EMBED, BATCH, SEQ = 64, 32, 64
        args.units = args.units or [512]
    for name in ("layers", "dropout", "recurrent_dropout"):
        if getattr(args, name) is not None:
            MODEL[name] = getattr(args, name)
    if args.one_thread:  # before JAX starts
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false"
                                   " intra_op_parallelism_threads=1")
        os.environ["LSTMGEN_BENCH_THREADS"] = "1"
    units_list = args.units or ([256, 512] if args.quick else [256, 512, 1024])
    repeats = args.repeats or (3 if args.quick else 5)

    header("bench_training: tokens/s, lstmgen (JAX) vs the stock Keras LSTM vs PyTorch")
    print(f"embedding {EMBED}, batch {BATCH} x {SEQ}, vocabulary {VOCAB}"
          + (f", {MODEL}" if MODEL else ""))
    torch = None if MODEL.get("recurrent_dropout") else _torch()
    if torch is None:
        print("torch not installed: the PyTorch column is skipped "
              "(pip install torch==2.13.0 for the CPU build)")
    else:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peak = matmul_gflops(repeats)
    print("fp32 matmul 4096^2: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()),
          flush=True)
    best_peak = max(peak.values())

    rows = []
    print(f"\n{'H':>5s} {'impl':7s} {'s/step':>7s} {'tokens/s':>9s} {'GFLOP/s':>8s} "
          f"{'% peak':>7s}")
    for units in units_list:
        candidates = [("lstmgen", lambda u=units: keras_step(u, stock=False)),
                      ("stock", lambda u=units: keras_step(u, stock=True))]
        if args.lookup_ablation:
            candidates.insert(1, ("product",
                                  lambda u=units: keras_step(u, stock=False, lookup=False)))
        if torch is not None:
            # Under load, two spinning OpenMP threads can be far slower than one: show both.
            candidates.append(("torch", lambda u=units: torch_step(u, _threads())))
            if _threads() > 1:
                candidates.append(("torch1", lambda u=units: torch_step(u, 1)))
        steps = {name: make() for name, make in candidates}
        times = interleaved(steps, repeats, warmup=2)  # warm-up: compilation
        for name, seconds in times.items():
            tokens = BATCH * SEQ / seconds
            gflops = tokens * flops_per_token(units) / 1e9
            print(f"{units:5d} {name:7s} {seconds:7.3f} {tokens:9,.0f} {gflops:8.1f} "
                  f"{100 * gflops / best_peak:6.1f}%", flush=True)
        del steps
        rows.append((units, times))

    print("\nratios (speed-up, higher is faster):")
    for units, t in rows:
        parts = [f"lstmgen/stock {t['stock'] / t['lstmgen']:.2f}x"]
        if "product" in t:
            parts.append(f"lookup/product {t['product'] / t['lstmgen']:.2f}x")
        if "torch" in t:
            best = min(t["torch"], t.get("torch1", t["torch"]))
            parts += [f"lstmgen/torch(best of 1 or all threads) {best / t['lstmgen']:.2f}x",
                      f"stock/torch(best) {best / t['stock']:.2f}x"]
        print(f"  H={units}: " + ", ".join(parts))
    print(f"\nend: {load()}")


if __name__ == "__main__":
    main()
