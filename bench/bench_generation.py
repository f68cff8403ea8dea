"""Generation speed: characters per second for 1 and 64 streams, and the time from
``lstmgen generate RUN`` to its first streamed character.

A run folder with an untrained model (speed does not depend on the weights) is written to a
temporary folder for each size. Targets: 1 stream >= 20k chars/s at LSTM 512, 64 streams
>= 150k chars/s in total, first character <= 2 s (warm disk).

    python bench/bench_generation.py           # LSTM 256 and 512
    python bench/bench_generation.py --quick   # shorter generations, fewer repeats

The controls table times, side by side (interleaved), generation with no controls against
the same with a stop sequence that never appears, a repetition penalty, min-p, and all of
them: what each costs when used. Unused, each is off in the compiled program (static flags)
and the stop filter does not run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, interleaved, load, median_time  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "jax")
ALPHABET = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # 65 chars


def make_run(path: Path, units: int):
    """An untrained run folder (config, tokenizer, a 'best' checkpoint) for ``units``."""
    from lstmgen.checkpoint import save_checkpoint
    from lstmgen.model import LanguageModel, ModelConfig
    from lstmgen.run import Run
    from lstmgen.tokenizers import CharTokenizer

    tokenizer = CharTokenizer.fit([ALPHABET])
    config = ModelConfig(embedding_dim=64, units=units)
    run = Run.create(path, model=config, train={"seq_len": 128}, tokenizer=tokenizer,
                     corpus={})
    lm = LanguageModel(config, tokenizer.vocab_size)
    run.checkpoint_path("best").parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(lm.training_model, run.checkpoint_path("best"), {"step": 0})
    return run


def time_to_first_char(run: Path) -> tuple[float, float]:
    """Seconds from starting ``lstmgen generate`` to its first character, and to its end."""
    command = [sys.executable, "-m", "lstmgen.cli", "generate", str(run), "--length", "200",
               "--seed", "0"]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.read(1)
    first_at = time.perf_counter() - started
    proc.stdout.read()
    proc.wait()
    if proc.returncode or not first:
        sys.exit(f"lstmgen generate failed: {proc.stderr.read().decode()[-2000:]}")
    return first_at, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--units", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 64])
    args = parser.parse_args()
    length = 1024 if args.quick else 4096
    repeats = 2 if args.quick else 3

    header("bench_generation: chars/s and time to first character")
    import lstmgen

    tmp = Path(tempfile.mkdtemp(prefix="lstmgen-bench-gen-"))
    results = {}
    try:
        print(f"{'H':>5s} {'streams':>7s} {'chars':>7s} {'s':>7s} {'chars/s':>10s} "
              f"{'per stream':>10s}")
        for units in args.units:
            run_dir = tmp / f"run{units}"
            make_run(run_dir, units)
            model = lstmgen.load(run_dir)
            for streams in args.streams:
                def go(n=streams, model=model):
                    model.generate("ROMEO:", length, num_samples=n, temperature=0.8, seed=0)

                seconds = median_time(go, repeats=repeats, warmup=1)
                rate = streams * length / seconds
                results[(units, streams)] = rate
                print(f"{units:5d} {streams:7d} {length:7d} {seconds:7.3f} {rate:10,.0f} "
                      f"{rate / streams:10,.0f}", flush=True)

        top = max(args.units)
        model = lstmgen.load(tmp / f"run{top}")
        controls = {"none": {}, "stop (never met)": {"stop": ["\x00\x01", "QQQ"]},
                    "repetition penalty 1.2": {"repetition_penalty": 1.2},
                    "min-p 0.05": {"min_p": 0.05},
                    "all three": {"stop": ["\x00\x01"], "repetition_penalty": 1.2,
                                  "min_p": 0.05}}
        for streams in args.streams:
            fns = {name: (lambda n=streams, kw=kw: model.generate(
                "ROMEO:", length, num_samples=n, temperature=0.8, seed=0, **kw))
                for name, kw in controls.items()}
            times = interleaved(fns, repeats=repeats + 2)
            print(f"\ncontrols at H={top}, {streams} stream(s), {length} tokens each "
                  f"(interleaved, median of {repeats + 2}):")
            for name, seconds in times.items():
                print(f"  {name:24s} {streams * length / seconds:10,.0f} chars/s "
                      f"{times['none'] / seconds:6.3f}x", flush=True)

        print("\n`lstmgen generate RUN --length 200` (fresh process; first call warms the "
              "disk cache)")
        for units in args.units:
            runs = [time_to_first_char(tmp / f"run{units}") for _ in range(repeats + 1)]
            firsts = [r[0] for r in runs[1:]]
            print(f"  H={units}: first character after {statistics.median(firsts):.2f} s "
                  f"(runs: {', '.join(f'{r[0]:.2f}' for r in runs)}; whole command "
                  f"{statistics.median(r[1] for r in runs[1:]):.2f} s)", flush=True)
            results[(units, "first")] = statistics.median(firsts)

        print("\nagainst the targets:")
        if (top, 1) in results:
            print(f"  1 stream at H={top}: {results[(top, 1)]:,.0f} chars/s "
                  f"({results[(top, 1)] / 20_000:.2f}x the 20k target)")
        if (top, 64) in results:
            print(f"  64 streams at H={top}: {results[(top, 64)]:,.0f} chars/s "
                  f"({results[(top, 64)] / 150_000:.2f}x the 150k target)")
        print(f"  first character at H={top}: {results[(top, 'first')]:.2f} s (target <= 2 s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nend: {load()}")


if __name__ == "__main__":
    main()
