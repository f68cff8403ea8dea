"""WikiText-2, word level: train on wiki.train.tokens for a wall-clock budget (validation on
wiki.valid.tokens), then report perplexity on the whole of wiki.test.tokens.

lstmgen's word tokenizer keeps spaces and newlines as tokens, so its per-token perplexity is
not the published one. The published figure is per *word*: whitespace-separated tokens plus
one ``<eos>`` per line (245,569 in the test set). The script therefore also reports
``exp(total test NLL / published word count)``: the same probability of the same text,
divided by the same count as the papers use. Every test word is in the training
vocabulary (WikiText marks rare words with ``<unk>``, and lstmgen reads that as its own
unknown token), so nothing is merged into ``<unk>`` beyond what the dataset already does.

    python bench/bench_wikitext2.py                       # 600 s budget
    python bench/bench_wikitext2.py --budget 270 --units 256
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_dir, header  # noqa: E402

AWD_LSTM_TEST_PPL = 65.8  # Merity, Keskar, Socher 2017 (arXiv:1708.02182), GPU-days


def published_word_count(path: Path) -> int:
    """Whitespace tokens plus one ``<eos>`` per line, as in Merity et al. 2016."""
    with open(path, encoding="utf-8") as f:
        return sum(len(line.split()) + 1 for line in f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds")
    parser.add_argument("--vocab-size", type=int, default=40_000,
                        help="word vocabulary cap (default 40000: all of WikiText-2)")
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--val-tokens", type=int, default=20_000,
                        help="validation tokens per evaluation during training")
    parser.add_argument("--test-tokens", type=int, default=None,
                        help="score only this many test tokens (default: the whole test set)")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    args = parser.parse_args()

    import lstmgen
    from lstmgen.corpus import iter_corpus_text
    from lstmgen.tokenizers import UnknownTokensWarning

    folder = data_dir()
    wiki = folder / "wikitext2" if folder else None
    if not wiki or not (wiki / "wiki.train.tokens").is_file():
        sys.exit("WikiText-2 not found: set LSTMGEN_DATA to the folder holding wikitext2/")
    header("WikiText-2 word level")
    out = Path(args.out or tempfile.mkdtemp(prefix="wt2-")) / "run"
    model_config = lstmgen.ModelConfig(units=args.units, embedding_dim=args.embedding_dim,
                                       layers=args.layers)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownTokensWarning)  # the vocabulary must cover val
        trained = lstmgen.train(
            wiki / "wiki.train.tokens", out=out, tokenizer="word",
            tokenizer_options={"vocab_size": args.vocab_size}, val=wiki / "wiki.valid.tokens",
            model=model_config, batch_size=args.batch_size, seq_len=args.seq_len,
            learning_rate=args.learning_rate, max_time=args.budget, epochs=1000,
            val_tokens=args.val_tokens, eval_every=200, checkpoint_every=200,
            sample_length=0, overwrite=True, verbose=0,
        )
    train_wall = time.perf_counter() - started
    info = trained.info()
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnknownTokensWarning)
        result = trained.evaluate(wiki / "wiki.test.tokens", max_tokens=args.test_tokens)
    test_wall = time.perf_counter() - started
    test = wiki / "wiki.test.tokens"
    words = published_word_count(test)
    all_tokens = sum(len(trained.tokenizer.encode(c, warn=False))
                     for c in iter_corpus_text(test))
    words_scored = words * result.tokens / max(all_tokens - 1, 1)
    word_ppl = math.exp(result.nll / words_scored)
    report = {
        "config": {"model": info["model"], "train": {k: info["train"][k] for k in (
            "batch_size", "seq_len", "learning_rate", "max_time", "val_tokens")},
            "vocab_size": info["vocab_size"], "parameters": info["parameters"]},
        "train_tokens": info["corpus"]["train_tokens"],
        "steps": info["step"], "epochs": round(info["step"] * args.batch_size * args.seq_len
                                              / info["corpus"]["train_tokens"], 3),
        "train_wall_s": round(train_wall, 1), "test_eval_wall_s": round(test_wall, 1),
        "best_val_loss_per_token": info["best_val_loss"],
        "test_tokens_scored": result.tokens, "test_tokens_total": all_tokens - 1,
        "test_unknown_warnings": len(caught),
        "test_loss_per_token": round(result.loss, 4),
        "test_perplexity_per_token": round(result.perplexity, 2),
        "test_bits_per_char": round(result.bits_per_char, 4),
        "test_words_published_count": words,
        "test_perplexity_per_word": round(word_ppl, 1),
        "awd_lstm_test_perplexity": AWD_LSTM_TEST_PPL,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
