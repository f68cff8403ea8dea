"""What the demo's samples look like, in figures: runs of spaces and known identifiers.

Reads runs trained on the demo corpus (the standard library's top-level ``.py`` files, as
``lstmgen demo`` trains) and samples each at several temperatures from the demo's primes.
Per run and temperature it prints the longest run of spaces (the worst and the median
sample's), how many samples hold a run longer than any in the corpus, and the share of the
samples' identifiers that occur in the corpus (a crude "reads like Python" figure).

    lstmgen demo --out /tmp/demo_bpe                     # the demo as it is (subwords)
    git checkout fe40fbe -- src/lstmgen/cli.py           # the demo before: characters
    lstmgen demo --out /tmp/demo_char; git checkout HEAD -- src/lstmgen/cli.py
    python bench/bench_demo_samples.py /tmp/demo_char /tmp/demo_bpe
"""

from __future__ import annotations

import argparse
import os
import re
import statistics

from _common import header

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
SPACES = re.compile(r" +")


def longest_space_run(text: str) -> int:
    return max((len(m.group()) for m in SPACES.finditer(text)), default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders trained on the demo corpus")
    parser.add_argument("--temperatures", type=float, nargs="+",
                        default=[0.6, 0.7, 0.8, 0.9, 1.0])
    parser.add_argument("--samples", type=int, default=8, help="per prime (default 8)")
    parser.add_argument("--chars", type=int, default=450,
                        help="characters scored per sample (default 450)")
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import lstmgen
    from lstmgen.cli import DEMO_PRIMES
    from lstmgen.corpus import default_corpus, iter_corpus_text

    corpus = "".join(iter_corpus_text(default_corpus(), encoding_errors="replace"))
    known = set(IDENTIFIER.findall(corpus))
    corpus_longest = longest_space_run(corpus)
    header("bench_demo_samples: runs of spaces and known identifiers in demo samples")
    print(f"demo corpus: {len(corpus):,} characters, longest run of spaces {corpus_longest}")
    print("run | tokenizer | temperature | longest run of spaces (worst / median sample) | "
          f"samples with a run > {corpus_longest} | identifiers known in the corpus")
    for path in args.runs:
        model = lstmgen.load(path)
        kind = model.tokenizer.kind
        for temperature in args.temperatures:
            texts = []
            for prime in DEMO_PRIMES:
                # Enough tokens for --chars characters whatever the tokenizer.
                new = model.generate(prime, args.chars, num_samples=args.samples,
                                     temperature=temperature, seed=1)
                texts += [(prime + t)[:args.chars] for t in new]
            runs = [longest_space_run(t) for t in texts]
            words = [w for t in texts for w in IDENTIFIER.findall(t)]
            share = sum(w in known for w in words) / max(1, len(words))
            print(f"{path} | {kind} | {temperature} | {max(runs)} / "
                  f"{statistics.median(runs):.0f} | {sum(r > corpus_longest for r in runs)} of "
                  f"{len(runs)} | {share:.3f}", flush=True)


if __name__ == "__main__":
    main()
