"""Quality per minute on tiny-shakespeare: validation loss (nats/char) against wall-clock time.

The nanoGPT split: the first 90% of the characters train, the last 10% validate. The script
measures the step rate of the chosen model in a short training run, sizes the cosine
schedule to end with the time budget (training goes on at its final learning rate until
``max_time``, the hard stop), trains with ``lstmgen.train`` and prints the validation loss
at each evaluation, and at 2/5/8/10 minutes.
For orientation, nanoGPT's CPU baby-GPT reaches 1.89 at 2 min and ~1.59 at 8.3 min; the
issue's targets are <= 1.50 at 10 min and <= 1.45 at 30 min.

    python bench/bench_quality.py                      # 10 minutes, the CLI's default model
    python bench/bench_quality.py --budget 1800        # the 30-minute target
    python bench/bench_quality.py --quick              # 90 s, a smoke run
    python bench/bench_quality.py --no-carry-state     # each window from a zero state
    python bench/bench_quality.py --stock-lstm         # Keras's own LSTM layer
    python bench/bench_quality.py --units 1024         # other configs; --help for all
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, hugepages, load, lstm_layer, tiny_shakespeare  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "jax")
NANOGPT_CPU = [(120, 1.89), (500, 1.59)]  # (seconds, val loss), for orientation


def steps_per_second(tmp: Path, model, config: dict, stock: bool, seconds: float) -> float:
    """The training loop's own step rate: a short ``lstmgen.train`` run on the same text
    with the same settings (evaluations on a few windows), compilation excluded. A
    ``train_on_batch`` loop beforehand misjudged it by up to 15%, ending the cosine schedule
    minutes early."""
    import lstmgen

    probe = dict(config, schedule="constant", max_steps=None, max_time=seconds,
                 eval_every=20, val_tokens=config["batch_size"] * config["seq_len"])
    with lstm_layer(stock):
        run = lstmgen.train(tmp / "train.txt", out=tmp / "probe", val=tmp / "val.txt",
                            model=model, verbose=0, **probe).run
    with open(run.metrics_path, newline="") as f:
        rows = [(int(r["step"]), float(r["elapsed_s"])) for r in csv.DictReader(f)]
    shutil.rmtree(tmp / "probe")
    (first_step, first_s), (last_step, last_s) = rows[0], rows[-1]
    if last_step <= first_step:
        raise SystemExit("the rate probe recorded too few steps: raise --probe-seconds")
    return (last_step - first_step) / (last_s - first_s)


def loss_at(curve: list[tuple[float, float]], seconds: float) -> float | None:
    """The best validation loss evaluated by ``seconds`` of training."""
    seen = [loss for t, loss in curve if t <= seconds]
    return min(seen) if seen else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of training")
    parser.add_argument("--quick", action="store_true", help="a 90-second smoke run")
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--recurrent-dropout", type=float, default=0.0)
    parser.add_argument("--learning-rate", type=float, default=4e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=None,
                        help="length of the cosine schedule (default: from a measured rate)")
    parser.add_argument("--probe-seconds", type=float, default=45.0,
                        help="length of the run that measures the step rate first")
    parser.add_argument("--evals", type=int, default=8, help="evaluations over the budget")
    parser.add_argument("--carry-state", action=argparse.BooleanOptionalAction, default=None,
                        help="carry the state from batch to batch (default: the CLI's)")
    parser.add_argument("--stock-lstm", action="store_true",
                        help="Keras's own LSTM layer instead of lstmgen's FusedLSTM")
    parser.add_argument("--hugepages", action=argparse.BooleanOptionalAction, default=True,
                        help="huge pages for the large buffers, as `lstmgen train` (default)")
    args = parser.parse_args()
    hugepages(args.hugepages)
    budget = 90.0 if args.quick else args.budget
    probe_seconds = min(args.probe_seconds, budget / 3)

    header("bench_quality: tiny-shakespeare validation loss vs wall-clock time")
    import lstmgen

    text = tiny_shakespeare().read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    tmp = Path(tempfile.mkdtemp(prefix="lstmgen-bench-quality-"))
    try:
        (tmp / "train.txt").write_text(text[:cut], encoding="utf-8")
        (tmp / "val.txt").write_text(text[cut:], encoding="utf-8")
        model = lstmgen.ModelConfig(embedding_dim=args.embedding_dim, units=args.units,
                                    layers=args.layers, dropout=args.dropout,
                                    recurrent_dropout=args.recurrent_dropout)
        config = dict(batch_size=args.batch_size, seq_len=args.seq_len,
                      learning_rate=args.learning_rate, max_time=budget, epochs=10_000,
                      checkpoint_every=10**9, sample_length=0)
        config["carry_state"] = (lstmgen.TrainConfig().carry_state if args.carry_state is None
                                 else args.carry_state)
        rate = (None if args.max_steps else
                steps_per_second(tmp, model, config, args.stock_lstm, probe_seconds))
        # Compilation and the full evaluations take time too: the cosine schedule ends at
        # 93% of the steps the rate allows. This VM's speed drifts by 10-20% within minutes,
        # so training does not stop there: it goes on at the schedule's final learning rate
        # until max_time (unless --max-steps).
        steps = args.max_steps or max(10, int(0.93 * budget * rate))
        config.update(schedule="cosine", warmup_steps=min(100, steps // 20),
                      schedule_steps=steps, max_steps=args.max_steps,
                      eval_every=max(5, steps // args.evals), val_tokens=10**7)
        print(f"model {model}, stock LSTM layer={args.stock_lstm}\ntraining {config}\n"
              + (f"measured {rate:.2f} steps/s ({rate * args.batch_size * args.seq_len:,.0f} "
                 f"tokens/s) in a {probe_seconds:.0f}-second probe run" if rate else
                 "--max-steps given"), flush=True)
        started = time.perf_counter()
        with lstm_layer(args.stock_lstm):
            trained = lstmgen.train(tmp / "train.txt", out=tmp / "run", val=tmp / "val.txt",
                                    model=model, verbose=0, **config)
        wall = time.perf_counter() - started
        with open(trained.run.metrics_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["val_loss"]]
        curve = [(float(r["elapsed_s"]), float(r["val_loss"])) for r in rows]
        print(f"\n{'step':>6s} {'epoch':>6s} {'elapsed s':>9s} {'val loss':>9s} "
              f"{'train loss':>10s}")
        for r in rows:
            print(f"{int(r['step']):6d} {float(r['epoch']):6.2f} {float(r['elapsed_s']):9.1f} "
                  f"{float(r['val_loss']):9.4f} {float(r['train_loss'] or 'nan'):10.4f}")
        print(f"\ntrain() returned after {wall:.0f} s (includes encoding and setup)")
        print("best validation loss by wall-clock time (nats/char):")
        for seconds in (120, 300, 480, 600, 1800):
            if seconds <= budget + 60:
                value = loss_at(curve, seconds)
                shown = f"{value:.4f}" if value is not None else "n/a"
                print(f"  {seconds / 60:4.0f} min: {shown}")
        print("  nanoGPT CPU reference: " + ", ".join(f"{loss} at {t / 60:.1f} min"
                                                      for t, loss in NANOGPT_CPU))
        print("validation loss of the best checkpoint, the two ways of reading the text:")
        for carry in (True, False):
            result = trained.evaluate(tmp / "val.txt", carry_state=carry)
            how = ("state carried through the text (the figures above)" if carry else
                   f"state reset every {args.seq_len} characters (training windows)")
            print(f"  {result.loss:.4f} nats/char, {result.bits_per_char:.3f} bits/char: {how}")
        sample = trained.generate("ROMEO:", 200, temperature=0.8, seed=0)[0]
        print(f"\nsample (temperature 0.8):\nROMEO:{sample}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nend: {load()}")


if __name__ == "__main__":
    main()
