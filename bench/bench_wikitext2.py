"""WikiText-2, word level: lstmgen against a PyTorch baseline, side by side, at equal wall time.

Both train on ``wiki.train.tokens`` for the same budget on the same cores, one after the other,
then score ``wiki.valid.tokens`` and ``wiki.test.tokens``. Perplexity is per *word*, as
published: whitespace-separated tokens plus one ``<eos>`` per line (245,569 in the test set);
lstmgen's word tokens carry their space, so about one token is one word, and its figure is
``exp(total NLL / words)`` of the same text (``lstmgen.evaluation.count_words``).

The PyTorch baseline is PyTorch's own ``word_language_model`` example as it trains by default
(pytorch/examples, ``main.py``): ``nn.Embedding -> nn.LSTM -> nn.Linear`` over the full 33,278
word vocabulary, 2 x 200 units, embedding 200, dropout 0.2, batch 20 x 35 with the state
carried, SGD at lr 20 with gradient clipping 0.25, the learning rate divided by 4 when the
validation loss stops improving. Words/s counts training words (incl. ``<eos>``) per second of
training, evaluations excluded for both.

    python bench/bench_wikitext2.py                        # 600 s each, lstmgen's word defaults
    python bench/bench_wikitext2.py --system lstmgen --budget 1800
    python bench/bench_wikitext2.py --system lstmgen --tokenizer bpe   # BPE, same budget
    python bench/bench_wikitext2.py --budget 120 --units 200 --layers 2 --softmax full
    # one core each, concurrently (as the issue measured the example):
    taskset -c 0 python bench/bench_wikitext2.py --system lstmgen &
    taskset -c 1 python bench/bench_wikitext2.py --system pytorch
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_dir, header, hugepages, load  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "jax")
AWD_LSTM_TEST_PPL = 65.8  # Merity, Keskar, Socher 2017 (arXiv:1708.02182), GPU-days


def wikitext() -> Path:
    folder = data_dir()
    wiki = folder / "wikitext2" if folder else None
    if not wiki or not (wiki / "wiki.train.tokens").is_file():
        sys.exit("WikiText-2 not found: set LSTMGEN_DATA to the folder holding wikitext2/")
    return wiki


# -- lstmgen ---------------------------------------------------------------------------------
def _rate(metrics_path: Path, column: str) -> float:
    """``column`` (steps or tokens) per second between the first and the last evaluation:
    the training rate after compilation."""
    with open(metrics_path, newline="") as f:
        rows = [(int(r[column]), float(r["elapsed_s"])) for r in csv.DictReader(f)]
    (first, t0), (last, t1) = rows[0], rows[-1]
    if t1 <= t0:
        sys.exit("too few evaluations to measure a rate: raise --budget or lower --eval-every")
    return (last - first) / (t1 - t0)


def run_lstmgen(wiki: Path, args) -> dict:
    import lstmgen
    from lstmgen.evaluation import count_words
    from lstmgen.tokenizers import UnknownTokensWarning

    overrides = {k: v for k, v in dict(
        units=args.units, embedding_dim=args.embedding_dim, layers=args.layers,
        dropout=args.dropout, softmax=args.softmax,
        tie_embeddings=args.tie_embeddings).items() if v is not None}
    from dataclasses import replace

    model = replace(lstmgen.ModelConfig.defaults("word"), **overrides)
    train = lstmgen.TrainConfig.defaults("word")
    train_overrides = {k: v for k, v in dict(batch_size=args.batch_size, seq_len=args.seq_len,
                                             learning_rate=args.learning_rate,
                                             lr_floor=args.lr_floor).items()
                       if v is not None}
    tmp = Path(tempfile.mkdtemp(prefix="wt2-"))
    vocab_size = args.vocab_size or (40_000 if args.tokenizer == "word" else 8_192)
    common = dict(tokenizer=args.tokenizer, tokenizer_options={"vocab_size": vocab_size},
                  model=model, config=train, checkpoint_every=10**9, sample_length=0,
                  overwrite=True, verbose=0, **train_overrides)
    # lstmgen sizes the cosine schedule to the budget itself (lstmgen.schedule): it measures
    # its step rate after the warm-up, as `lstmgen train --max-time` does.
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownTokensWarning)  # the vocabulary covers val
        trained = lstmgen.train(
            wiki / "wiki.train.tokens", out=tmp / "run", val=wiki / "wiki.valid.tokens",
            max_time=args.budget, val_tokens=20_000, eval_every=args.eval_every, **common,
        )
    wall = time.perf_counter() - started
    last = lstmgen.load(trained.run.path, checkpoint="last").state
    print(f"lstmgen: the cosine schedule was sized to end at step {last['schedule_steps']} "
          f"(measured at step {last['schedule_hold']}); {last['step']} steps run", flush=True)
    info = trained.info()
    train_text = (wiki / "wiki.train.tokens").read_text(encoding="utf-8")
    words_per_token = count_words(train_text) / info["corpus"]["train_tokens"]
    c = trained.run.config["train"]
    tokens = last["step"] * c["batch_size"] * c["seq_len"]
    seconds = last["elapsed"]
    rate = _rate(trained.run.metrics_path, "tokens")
    with open(trained.run.metrics_path, newline="") as f:
        rows = list(csv.DictReader(f))
    val = trained.evaluate(wiki / "wiki.valid.tokens", max_tokens=args.eval_tokens)
    test = trained.evaluate(wiki / "wiki.test.tokens", max_tokens=args.eval_tokens)
    sample = trained.generate(" The", 60, temperature=0.8, seed=0)[0]
    return {
        "system": f"lstmgen ({args.tokenizer})", "model": info["model"],
        "batch": [c["batch_size"], c["seq_len"]],
        "learning_rate": c["learning_rate"], "vocab_size": info["vocab_size"],
        "parameters": info["parameters"], "steps": last["step"], "best_step": info["step"],
        "epochs": round(tokens / info["corpus"]["train_tokens"], 3),
        "train_s": round(seconds, 1), "wall_s": round(wall, 1),
        "words_per_s": round(rate * words_per_token),
        "val_curve": [(round(float(r["elapsed_s"])), round(float(r["val_word_perplexity"]), 1))
                      for r in rows if r["val_word_perplexity"]],
        "val_ppl_per_word": round(val.word_perplexity, 1),
        "test_ppl_per_word": round(test.word_perplexity, 1),
        "test_words": test.words, "sample": " The" + sample,
    }


# -- the PyTorch baseline (pytorch/examples word_language_model, main.py defaults) -----------
def run_pytorch(wiki: Path, args) -> dict:
    import torch
    from torch import nn

    torch.manual_seed(1111)
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else os.cpu_count() or 1)  # all cores, or those `taskset` gave
    vocab: dict[str, int] = {}

    def tokenize(path: Path) -> torch.Tensor:
        ids = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                for word in line.split() + ["<eos>"]:
                    ids.append(vocab.setdefault(word, len(vocab)))
        return torch.tensor(ids, dtype=torch.long)

    train, val, test = (tokenize(wiki / f"wiki.{s}.tokens") for s in ("train", "valid", "test"))

    def batchify(data, rows):
        n = data.size(0) // rows
        return data[: n * rows].view(rows, -1).t().contiguous()

    bptt, units, ntokens = 35, 200, len(vocab)

    class RNNModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.2)
            self.encoder = nn.Embedding(ntokens, units)
            self.rnn = nn.LSTM(units, units, 2, dropout=0.2)
            self.decoder = nn.Linear(units, ntokens)
            nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
            nn.init.zeros_(self.decoder.bias)
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

        def forward(self, x, hidden):
            out, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
            return self.decoder(self.drop(out)).view(-1, ntokens), hidden

    model, criterion = RNNModel(), nn.CrossEntropyLoss()

    def zeros(rows):
        return tuple(torch.zeros(2, rows, units) for _ in range(2))

    def evaluate(data) -> float:
        model.eval()
        source, total, hidden = batchify(data, 10), 0.0, zeros(10)
        with torch.no_grad():
            for i in range(0, source.size(0) - 1, bptt):
                n = min(bptt, source.size(0) - 1 - i)
                out, hidden = model(source[i : i + n], hidden)
                total += n * criterion(out, source[i + 1 : i + 1 + n].reshape(-1)).item()
        return total / (source.size(0) - 1)

    lr, best, trained_s, words = 20.0, None, 0.0, 0
    data = batchify(train, 20)
    # The example anneals the learning rate when validation stops improving: check it at
    # a quarter, a half and three quarters of the budget (on 20k tokens: evaluation is slow).
    checks = [args.budget * k / 4 for k in (1, 2, 3)]
    while trained_s < args.budget:
        hidden = zeros(20)
        for i in range(0, data.size(0) - 1, bptt):
            started = time.perf_counter()
            model.train()
            n = min(bptt, data.size(0) - 1 - i)
            hidden = tuple(h.detach() for h in hidden)
            model.zero_grad()
            out, hidden = model(data[i : i + n], hidden)
            criterion(out, data[i + 1 : i + 1 + n].reshape(-1)).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)
            trained_s += time.perf_counter() - started
            words += n * 20
            if checks and trained_s >= checks[0]:
                checks.pop(0)
                loss = evaluate(val[:20_000])
                if best is not None and loss >= best:
                    lr /= 4.0
                best = loss if best is None else min(best, loss)
            if trained_s >= args.budget:
                break
    return {
        "system": "pytorch word_language_model", "model": "2 x LSTM 200, embedding 200, "
        "dropout 0.2, full softmax", "batch": [20, bptt], "vocab_size": ntokens,
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": round(words / train.numel(), 3), "train_s": round(trained_s, 1),
        "words_per_s": round(words / trained_s), "final_lr": lr,
        "val_ppl_per_word": round(math.exp(evaluate(val[: args.eval_tokens])), 1),
        "test_ppl_per_word": round(math.exp(evaluate(test[: args.eval_tokens])), 1),
        "test_words": test[: args.eval_tokens].numel(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds each")
    parser.add_argument("--system", choices=("both", "lstmgen", "pytorch"), default="both")
    parser.add_argument("--tokenizer", choices=("word", "bpe"), default="word",
                        help="lstmgen's tokens (the model and training keep the word defaults)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="lstmgen's vocabulary (40,000 words: all of them; 8,192 for BPE)")
    parser.add_argument("--units", type=int, default=None)
    parser.add_argument("--embedding-dim", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--softmax", choices=("full", "adaptive"), default=None)
    parser.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction,
                        default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--lr-floor", type=float, default=None,
                        help="the cosine's last learning rate, a share of the peak")
    parser.add_argument("--eval-tokens", type=int, default=None,
                        help="score only the first N tokens of valid/test (smoke runs)")
    parser.add_argument("--eval-every", type=int, default=150,
                        help="lstmgen: validate every this many steps")
    args = parser.parse_args()
    hugepages(args.system != "pytorch")  # as `lstmgen train` runs
    wiki = wikitext()
    header(f"bench_wikitext2: {args.system}, {args.budget:.0f} s of training each")
    results = []
    if args.system in ("both", "lstmgen"):
        results.append(run_lstmgen(wiki, args))
        print(json.dumps(results[-1], indent=2), flush=True)
    if args.system in ("both", "pytorch"):
        results.append(run_pytorch(wiki, args))
        print(json.dumps(results[-1], indent=2), flush=True)
    print("\n| system | words/s | epochs | val ppl/word | test ppl/word |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['system']} | {r['words_per_s']:,} | {r['epochs']} | "
              f"{r['val_ppl_per_word']} | {r['test_ppl_per_word']} |")
    if len(results) == 2:
        ratio = results[0]["words_per_s"] / results[1]["words_per_s"]
        print(f"\nlstmgen / PyTorch words/s: {ratio:.2f}x")
    print(f"(AWD-LSTM, GPU-days: test {AWD_LSTM_TEST_PPL})\nend: {load()}")


if __name__ == "__main__":
    main()
