"""Fresh start vs carried state: what a short prime gets, side by side, at equal training time.

Every generation starts from the model's start state. A model trained with the state carried
from window to window meets it only at the start of each epoch's lanes, so its first tokens
after a short prime can be worse than letter frequencies while its carried validation loss
looks fine. This script trains, at equal wall time on the same machine (or equal steps), one
run per variant —

  * ``0z``          the state carried, never reset, streams from zeros (lstmgen's default
                    before the fix),
  * ``R``           the state carried, a share R of the lanes restarted at each window from
                    the learned start state (``Rz``: from zeros, as before it existed);
                    ``A/B``: a share A in the first epoch, B after it (the default: 0.04/0.3),
  * ``none``        every window from the start state (``--no-carry-state``),

on tiny-shakespeare (nanoGPT split, seen ~10 times in 10 minutes) and on a corpus seen less
than once in the time (War and Peace + the four Gutenberg books + WikiText-2's training text,
~16 MB; 3% of each file held out). For each it reports the validation loss with the state
carried through the text and the fresh-start loss (windows of 8 tokens from the start state,
one every 64 tokens; lstmgen.evaluation), the unigram entropy of the validation text, and the
first characters sampled after a short prime.

    python bench/bench_fresh_start.py                        # 10 minutes per run, 6 runs
    python bench/bench_fresh_start.py --budget 150 --corpus large --variants 0z 0.05 0.1 none
    python bench/bench_fresh_start.py --corpus large --steps 2829 --variants 0.05  # vs a log
    python bench/bench_fresh_start.py --quick                # 60 s per run, a smoke run

The step cost of the variants is the same, so one probe per corpus sizes a cosine schedule
that all of them share (as bench_quality.py does); each run also stops at ``--budget``.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_dir, header, hugepages, load, tiny_shakespeare  # noqa: E402
from bench_quality import steps_per_second  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "jax")
PRIMES = ("The ", "ROMEO:", "\n")


def shakespeare_split(tmp: Path) -> None:
    text = tiny_shakespeare().read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    (tmp / "train.txt").write_text(text[:cut], encoding="utf-8")
    (tmp / "val.txt").write_text(text[cut:], encoding="utf-8")


def large_split(tmp: Path, held_out: float = 0.03) -> None:
    root = data_dir()
    files = [root / "war_and_peace" / "warpeace_input.txt",
             *sorted((root / "gutenberg").glob("pg*.txt")),
             root / "wikitext2" / "wiki.train.tokens"]
    with open(tmp / "train.txt", "w", encoding="utf-8") as train, \
            open(tmp / "val.txt", "w", encoding="utf-8") as val:
        for path in files:
            text = path.read_text(encoding="utf-8", errors="replace")
            cut = int(len(text) * (1 - held_out))
            train.write(text[:cut] + "\n")
            val.write(text[cut:] + "\n")


CORPORA = {"shakespeare": shakespeare_split, "large": large_split}


def unigram_entropy(train: str, val: str) -> float:
    """Nats per character of the validation text under the training text's character
    frequencies (add-one smoothed): what a model that knows only letter frequencies scores."""
    counts = collections.Counter(train)
    total = sum(counts.values()) + len(counts) + 1
    return -sum(n * math.log((counts.get(c, 0) + 1) / total)
                for c, n in collections.Counter(val).items()) / len(val)


def variant_settings(name: str) -> tuple[dict, dict]:
    """(training settings, model settings) of a variant: a reset share or ``none``, with
    ``z`` appended for streams that start from zeros instead of the learned start state."""
    model = {"learned_start": False} if name.endswith("z") else {}
    name = name.removesuffix("z")
    if name == "none":
        return {"carry_state": False}, model
    first, _, later = name.partition("/")  # "A/B": A in the first epoch, B after it
    return {"carry_state": True, "state_reset": float(later or first),
            "first_epoch_reset": float(first)}, model


def label(name: str, default_reset: str) -> str:
    zero = ", zero start" if name.endswith("z") else ""
    name = name.removesuffix("z")
    if name == "none":
        return "no carry" + zero
    first, _, later = name.partition("/")
    shares = f"{float(first):g}, then {float(later):g}" if later else f"{float(first):g}"
    return f"reset {shares}" + zero + (" (default)" if name == default_reset else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--quick", action="store_true", help="60 s per run")
    parser.add_argument("--corpus", choices=(*CORPORA, "both"), default="both")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="state-reset shares, or 'none' for --no-carry-state; a 'z' "
                        "suffix starts streams from zeros, not the learned start state "
                        "(default: 0z, the CLI's default, none)")
    parser.add_argument("--probe-seconds", type=float, default=45.0)
    parser.add_argument("--steps", type=int, default=None,
                        help="train this many steps per run instead of probing the speed "
                        "(implies --equal-steps; compares with runs of another day)")
    parser.add_argument("--evals", type=int, default=6, help="evaluations over the budget")
    parser.add_argument("--hugepages", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--equal-steps", action="store_true",
                        help="every run trains the probe's number of steps, however long it "
                        "takes (this VM's speed drifts between runs; the variants' step cost "
                        "is the same)")
    args = parser.parse_args()
    hugepages(args.hugepages)
    budget = 60.0 if args.quick else args.budget
    import lstmgen

    defaults = lstmgen.TrainConfig()
    default_reset = f"{defaults.first_epoch_reset:g}/{defaults.state_reset:g}"
    variants = args.variants or ["0z", default_reset, "none"]
    corpora = list(CORPORA) if args.corpus == "both" else [args.corpus]
    header(f"bench_fresh_start: carried vs fresh-start validation loss, {budget:.0f} s per run")
    results = []
    for corpus in corpora:
        tmp = Path(tempfile.mkdtemp(prefix="lstmgen-bench-fresh-"))
        try:
            CORPORA[corpus](tmp)
            train_text = (tmp / "train.txt").read_text(encoding="utf-8")
            val_text = (tmp / "val.txt").read_text(encoding="utf-8")
            unigram = unigram_entropy(train_text, val_text)
            frequent = "".join(c for c, _ in collections.Counter(train_text).most_common(20))
            del train_text, val_text
            model = lstmgen.ModelConfig()
            defaults = lstmgen.TrainConfig()
            config = dict(batch_size=defaults.batch_size, seq_len=defaults.seq_len,
                          max_time=budget, epochs=10_000, checkpoint_every=10**9,
                          sample_length=0, val_tokens=10**7)
            if args.steps:
                steps, rate = args.steps, args.steps / (0.93 * budget)
            else:
                rate = steps_per_second(tmp, model, config, False,
                                        min(args.probe_seconds, budget / 3))
                steps = max(10, int(0.93 * budget * rate))
            if args.equal_steps or args.steps:
                config.update(max_time=None, max_steps=steps)
            config.update(schedule_steps=steps, warmup_steps=min(100, steps // 20),
                          eval_every=max(5, steps // args.evals))
            print(f"\n== {corpus}: {(tmp / 'train.txt').stat().st_size:,} training bytes; "
                  f"unigram entropy of the validation text {unigram:.4f} nats/char; "
                  f"{rate:.2f} steps/s measured, cosine schedule of {steps} steps", flush=True)
            for name in variants:
                training, model_settings = variant_settings(name)
                settings = dict(config, **training)
                started = time.perf_counter()
                trained = lstmgen.train(tmp / "train.txt", out=tmp / f"run-{name}",
                                        val=tmp / "val.txt", verbose=0,
                                        model=dataclasses.replace(model, **model_settings),
                                        overwrite=True, **settings)
                wall = time.perf_counter() - started
                with open(trained.run.metrics_path, newline="") as f:
                    rows = [r for r in csv.DictReader(f) if r["val_loss"]]
                best = min(rows, key=lambda r: float(r["val_loss"]))
                firsts = []
                for seed in range(8):
                    firsts += [trained.generate(p, 3, temperature=0.8, seed=seed)[0]
                               for p in PRIMES]
                share = sum(c in frequent for s in firsts for c in s) / max(
                    1, sum(len(s) for s in firsts))
                sample = trained.generate("The ", 120, temperature=0.8, seed=0)[0]
                results.append((corpus, label(name, default_reset), float(best["val_loss"]),
                                float(best["val_fresh_start"]), unigram, share,
                                int(rows[-1]["step"]), float(rows[-1]["epoch"]), wall))
                print(f"  {label(name, default_reset):26s} carried {float(best['val_loss']):.4f}"
                      f"  fresh start {float(best['val_fresh_start']):.4f}  (step "
                      f"{best['step']} of {rows[-1]['step']}, epoch {float(rows[-1]['epoch']):.2f}"
                      f", {wall:.0f} s)\n      curve: "
                      + ", ".join(f"{float(r['elapsed_s']) / 60:.1f} min {float(r['val_loss']):.3f}"
                                  f"/{float(r['val_fresh_start']):.3f}" for r in rows)
                      + f"\n      first characters sampled among the corpus' 20 most frequent:"
                      f" {share:.0%}\n      sample: The {sample!r}", flush=True)
                shutil.rmtree(tmp / f"run-{name}", ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print("\n| corpus | variant | carried val loss | fresh start (first 8) | unigram | "
          "frequent first chars | steps | epochs | wall s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for corpus, name, carried, fresh, unigram, share, steps, epochs, wall in results:
        print(f"| {corpus} | {name} | {carried:.4f} | {fresh:.4f} | {unigram:.3f} | "
              f"{share:.0%} | {steps} | {epochs:.2f} | {wall:.0f} |")
    print(f"\nend: {load()}")


if __name__ == "__main__":
    main()
