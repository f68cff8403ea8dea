"""GPU: training tokens/s and generation chars/s of lstmgen (Keras 3, JAX on CUDA) vs plain
PyTorch on the same GPU. A few minutes on one GPU; on a machine without one it says so and
exits (0).

Training: Embedding 128 -> LSTM H -> Dense 65, batch 64 x seq 128, H = 512 and 1024 (and a
larger batch of 256): lstmgen's model (:class:`lstmgen.layers.FusedLSTM`, which leaves a GPU
to Keras's cuDNN path through ``jax.experimental.rnn``), the same model with Keras's own
``keras.layers.LSTM``, and ``torch.nn.LSTM`` (cuDNN). Generation: lstmgen's ``Generator`` vs
a plain PyTorch sampling loop (one ``nn.LSTM`` step per token), 1 and 64 streams.

Needs ``jax[cuda12]`` (or the CUDA build that matches the machine) and a CUDA build of torch.

    python bench/bench_gpu.py
    python bench/bench_gpu.py --dry-run     # the same code paths on the CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, load  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "jax")
EMBED, VOCAB, SEQ = 128, 65, 128


def jax_gpu() -> bool:
    try:
        import jax

        return bool(jax.devices("gpu"))
    except Exception:  # no CUDA plugin, no device
        return False


def timed(step, repeats: int, sync) -> float:
    for _ in range(2):
        sync(step())
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        sync(step())
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def keras_train_step(units: int, batch: int, stock: bool):
    import keras
    import numpy as np
    from _common import lstm_layer

    from lstmgen.model import LanguageModel, ModelConfig

    with lstm_layer(stock):
        lm = LanguageModel(ModelConfig(embedding_dim=EMBED, units=units), VOCAB)
    model = lm.training_model
    model.compile(optimizer=keras.optimizers.Adam(3e-3, clipnorm=5.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).integers(0, VOCAB, (batch, SEQ + 1)).astype("int32")
    return lambda: model.train_on_batch(x[:, :-1], x[:, 1:])


class TorchLM:
    def __init__(self, units: int, device):
        import torch

        torch.manual_seed(0)
        self.torch = torch
        self.embedding = torch.nn.Embedding(VOCAB, EMBED).to(device)
        self.lstm = torch.nn.LSTM(EMBED, units, batch_first=True).to(device)
        self.head = torch.nn.Linear(units, VOCAB).to(device)
        self.params = [*self.embedding.parameters(), *self.lstm.parameters(),
                       *self.head.parameters()]
        self.device = device

    def __call__(self, x, state=None):
        out, state = self.lstm(self.embedding(x), state)
        return self.head(out), state

    def train_step(self, batch: int):
        torch = self.torch
        opt = torch.optim.Adam(self.params, lr=3e-3)
        x = torch.randint(0, VOCAB, (batch, SEQ + 1), device=self.device)

        def step():
            opt.zero_grad(set_to_none=True)
            logits, _ = self(x[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB),
                                                     x[:, 1:].reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 5.0)
            opt.step()
            return loss

        return step

    def generate(self, streams: int, length: int):
        torch = self.torch
        with torch.no_grad():
            token = torch.zeros((streams, 1), dtype=torch.long, device=self.device)
            state, out = None, []
            for _ in range(length):
                logits, state = self(token, state)
                probs = torch.softmax(logits[:, -1] / 0.8, dim=-1)
                token = torch.multinomial(probs, 1)
                out.append(token)
            return torch.cat(out, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="run the code paths on the CPU with tiny sizes (a test)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    header("bench_gpu: lstmgen (JAX) vs PyTorch on one GPU")
    if not args.dry_run and not jax_gpu():
        print("no GPU, skipped (JAX sees no CUDA device)")
        return
    try:
        import torch
    except ImportError:
        torch = None
    device = "cpu" if args.dry_run else "cuda"
    if torch is not None and device == "cuda" and not torch.cuda.is_available():
        print("torch has no CUDA here: the PyTorch columns are skipped")
        torch = None
    units_list = [32] if args.dry_run else [512, 1024]
    batches = [8] if args.dry_run else [64, 256]
    repeats = 2 if args.dry_run else args.repeats
    import jax

    print(f"jax devices: {jax.devices()}; torch: "
          f"{torch.cuda.get_device_name(0) if torch is not None and device == 'cuda' else device}")

    def torch_sync(value):
        if torch is not None and device == "cuda":
            torch.cuda.synchronize()
        return value

    def jax_sync(value):
        return jax.block_until_ready(value)

    print(f"\ntraining, seq {SEQ}:")
    print(f"{'H':>5s} {'batch':>5s} {'impl':7s} {'ms/step':>8s} {'tokens/s':>11s} "
          f"{'TFLOP/s':>8s}")
    for units in units_list:
        flops = 6 * (4 * units * (EMBED + units) + units * VOCAB)
        for batch in batches:
            times = {
                "lstmgen": timed(keras_train_step(units, batch, False), repeats, jax_sync),
                "stock": timed(keras_train_step(units, batch, True), repeats, jax_sync),
            }
            if torch is not None:
                times["torch"] = timed(TorchLM(units, device).train_step(batch), repeats,
                                       torch_sync)
            for name, seconds in times.items():
                tokens = batch * SEQ / seconds
                print(f"{units:5d} {batch:5d} {name:7s} {seconds * 1e3:8.1f} {tokens:11,.0f} "
                      f"{tokens * flops / 1e12:8.2f}", flush=True)
            if "torch" in times:
                print(f"      lstmgen/torch {times['torch'] / times['lstmgen']:.2f}x, "
                      f"stock/torch {times['torch'] / times['stock']:.2f}x")

    from bench_generation import make_run

    import lstmgen

    length = 64 if args.dry_run else 2048
    print(f"\ngeneration, {length} tokens per stream (chars/s, all streams together):")
    with tempfile.TemporaryDirectory() as tmp:
        for units in units_list:
            make_run(Path(tmp) / f"run{units}", units)
            model = lstmgen.load(Path(tmp) / f"run{units}")
            for streams in (1, 64):
                def ours(n=streams, m=model):
                    return m.generate("", length, num_samples=n, temperature=0.8, seed=0)

                rates = {"lstmgen": streams * length / timed(ours, 2, lambda v: v)}
                if torch is not None:
                    tlm = TorchLM(units, device)
                    rates["torch"] = streams * length / timed(
                        lambda n=streams, t=tlm: t.generate(n, length), 2, torch_sync)
                shown = ", ".join(f"{k} {v:,.0f}" for k, v in rates.items())
                print(f"  H={units} streams={streams}: {shown}", flush=True)
    print(f"\nend: {load()}")


if __name__ == "__main__":
    main()
