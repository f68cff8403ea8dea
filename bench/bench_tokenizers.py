"""Tokenizers side by side: fit time and encoding speed of char, word and BPE on the same text.

The text is the shared corpora (war_and_peace, WikiText-2 train, the Gutenberg books, Faust,
Hong Lou Meng) read through lstmgen's corpus reader, repeated or cut to ``--mb`` megabytes of
UTF-8. Each tokenizer is fitted on the whole text, then encodes it chunk by chunk (1 MB chunks
ending at line breaks, held in memory so disk speed is not measured), as ``encode_corpus`` does.

    python bench/bench_tokenizers.py            # ~30 MB
    python bench/bench_tokenizers.py --mb 100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_dir, header  # noqa: E402

SOURCES = ["war_and_peace/warpeace_input.txt", "wikitext2/wiki.train.tokens",
           "gutenberg/pg11.txt", "gutenberg/pg1342.txt", "gutenberg/pg1661.txt",
           "gutenberg/pg2701.txt", "unicode/goethe_faust.txt", "unicode/goethe_faust_2.txt",
           "unicode/hongloumeng.txt"]


def corpus_chunks(megabytes: float) -> list[str]:
    """Chunks of the shared corpora, cycled until ``megabytes`` of UTF-8 (or Python's sources
    when the shared data is absent)."""
    from lstmgen.corpus import default_corpus, iter_corpus_text

    folder = data_dir()
    paths = [folder / s for s in SOURCES] if folder else []
    paths = [p for p in paths if p.is_file()] or default_corpus()
    base = list(iter_corpus_text(paths, encoding_errors="replace", chunk_bytes=1 << 20))
    target, chunks, size = int(megabytes * 1e6), [], 0
    while size < target:
        for chunk in base:
            chunks.append(chunk)
            size += len(chunk.encode("utf-8"))
            if size >= target:
                break
    return chunks


def measure(kind: str, chunks: list[str], vocab_size: int | None) -> dict:
    from lstmgen.tokenizers import tokenizer_class

    started = time.perf_counter()
    options = {"vocab_size": vocab_size} if vocab_size and kind != "char" else {}
    tok = tokenizer_class(kind).fit(iter(chunks), **options)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    n_tokens = sum(len(tok.encode(chunk, warn=False)) for chunk in chunks)
    encode_s = time.perf_counter() - started
    return {"kind": kind, "vocab": tok.vocab_size, "fit_s": fit_s, "encode_s": encode_s,
            "tokens": n_tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=30.0, help="megabytes of text (default 30)")
    parser.add_argument("--word-vocab", type=int, default=10_000)
    parser.add_argument("--bpe-vocab", type=int, default=4096)
    args = parser.parse_args()

    import tokenizers

    header("tokenizers: fit and encode speed, same text")
    chunks = corpus_chunks(args.mb)
    n_bytes = sum(len(c.encode("utf-8")) for c in chunks)
    n_chars = sum(len(c) for c in chunks)
    print(f"text: {n_bytes / 1e6:.1f} MB UTF-8, {n_chars / 1e6:.1f}M characters, "
          f"{len(chunks)} chunks; tokenizers {tokenizers.__version__}", flush=True)
    rows = [measure("char", chunks, None), measure("word", chunks, args.word_vocab),
            measure("bpe", chunks, args.bpe_vocab)]
    print("\n| tokenizer | vocabulary | fit s | encode s | encode MB/s | tokens | "
          "chars/token |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kind']} | {r['vocab']:,} | {r['fit_s']:.1f} | {r['encode_s']:.1f} | "
              f"{n_bytes / 1e6 / r['encode_s']:.1f} | {r['tokens'] / 1e6:.2f}M | "
              f"{n_chars / r['tokens']:.2f} |")


if __name__ == "__main__":
    main()
