"""The ``lstmgen`` command: a thin layer that parses arguments and calls the Python API."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

EXAMPLES = {
    "train": """examples:
  lstmgen train books/ --out runs/books                 # a folder, recursively
  lstmgen train books/ --out runs/books --processes 2   # data-parallel, 2 local processes
  lstmgen train 'corpus/*.txt.gz' --out runs/big --val held_out.txt --units 1024 --layers 2
  lstmgen train --resume runs/books --epochs 20         # continue exactly where it stopped
  lstmgen train new.txt --from runs/books --out runs/tuned   # fine-tune, same vocabulary
  lstmgen train                                         # no corpus: the built-in demo corpus""",
    "generate": """examples:
  lstmgen generate runs/books --prime "It was a dark" --length 400 --temperature 0.8
  lstmgen generate runs/books --num-samples 4 --top-p 0.9 --seed 7
  lstmgen generate runs/books --temperature 0          # greedy
  lstmgen generate runs/plays --prime "ROMEO:" --prime "JULIET:" --stop "\\n\\n"
  lstmgen generate runs/books --prime-file primes.txt --output samples.jsonl
  lstmgen generate runs/plays --interactive --stop "\\n\\n"   # a line at a time""",
    "evaluate": """examples:
  lstmgen evaluate runs/books held_out.txt
  lstmgen evaluate runs/books test/ --json
  lstmgen evaluate runs/books held_out.txt --reset-state   # as the training windows see it""",
    "info": """examples:
  lstmgen info runs/books""",
    "demo": """examples:
  lstmgen demo                      # ~3 minutes on 2 CPU cores, then samples
  lstmgen demo --max-time 60 --out runs/quick""",
    "serve": """examples:
  lstmgen serve runs/books                 # http://127.0.0.1:8000
  lstmgen serve runs/books --host 0.0.0.0 --port 9000 --api-key "$KEY"
  # OpenAI-compatible: openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x")""",
}

MODEL_ARGS = ("embedding_dim", "units", "layers", "dropout", "input_dropout",
              "recurrent_dropout", "weight_drop", "layer_norm", "cell", "softmax", "cutoffs",
              "tie_embeddings", "learned_start")
TRAIN_ARGS = ("batch_size", "seq_len", "learning_rate", "clipnorm", "epochs", "max_steps",
              "max_time", "schedule", "warmup_steps", "lr_floor", "val_fraction",
              "val_tokens", "eval_every", "checkpoint_every", "early_stopping",
              "sample_length", "seed", "carry_state", "state_reset", "first_epoch_reset",
              "tensorboard", "encoding_errors")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _add_sampling(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--length", type=_nonneg_int, default=400,
                   help="tokens to generate per sample (default 400)")
    g.add_argument("--temperature", type=float, default=0.8,
                   help="0 = greedy; 1 = as trained; lower is safer (default 0.8)")
    g.add_argument("--top-k", type=_nonneg_int, default=0,
                   help="sample among the k likeliest tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0,
                   help="sample from the smallest set with this probability (1 = off)")
    g.add_argument("--min-p", type=float, default=0.0,
                   help="keep tokens at least this share as likely as the likeliest "
                   "(0 = off, e.g. 0.05)")
    g.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="above 1 repeats tokens of the text less, e.g. 1.2 (1 = off)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end a sample where TEXT first appears, not shown (repeatable; "
                   "\\n and \\t as typed)")
    g.add_argument("--seed", type=int, default=None, help="seed for reproducible output")
    g.add_argument("--num-samples", type=_positive_int, default=1,
                   help="samples per prime, generated together as one batch")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model (fixed once a run starts)")
    m.add_argument("--embedding-dim", type=_positive_int, help="embedding size (64)")
    m.add_argument("--units", type=_positive_int, help="units per recurrent layer (512)")
    m.add_argument("--layers", type=_positive_int, help="recurrent layers (1)")
    m.add_argument("--dropout", type=float,
                   help="dropout into each layer after the first and into the output (0.3)")
    m.add_argument("--input-dropout", type=float,
                   help="dropout on the first layer's inputs (the embedded tokens), one mask "
                   "per sequence (0)")
    m.add_argument("--recurrent-dropout", type=float,
                   help="dropout on the recurrent state, one mask per sequence (0)")
    m.add_argument("--weight-drop", type=float,
                   help="DropConnect on the recurrent weights, one mask per batch (0)")
    m.add_argument("--layer-norm", action="store_true", default=None,
                   help="layer normalisation inside the LSTM cell: each gate's "
                   "pre-activation and the cell state (off)")
    m.add_argument("--cell", choices=("lstm", "gru"), help="recurrent cell (lstm)")
    m.add_argument("--softmax", choices=("auto", "full", "adaptive"),
                   help="output layer: adaptive softmax for large vocabularies (auto: from "
                   "8192 tokens on)")
    m.add_argument("--cutoffs", type=_positive_int, nargs="+", metavar="N",
                   help="adaptive softmax clusters: vocabulary ranks where they start "
                   "(default 2000 10000 50000 200000, those below the vocabulary size)")
    m.add_argument("--tie-embeddings", action="store_true", default=None,
                   help="the output matrix is the embedding matrix (needs --embedding-dim "
                   "equal to --units)")
    m.add_argument("--learned-start", action=argparse.BooleanOptionalAction, default=None,
                   help="every stream (generation, a fresh training window) starts from a "
                   "learned state, or from zeros (--no-learned-start) (on)")
    t = p.add_argument_group("training")
    t.add_argument("--tokenizer", choices=("char", "word", "bpe"), default=None,
                   help="token unit (char)")
    t.add_argument("--vocab-size", type=_positive_int, default=None,
                   help="vocabulary cap for word/bpe tokenizers")
    t.add_argument("--batch-size", type=_positive_int, help="sequences per step (32)")
    t.add_argument("--seq-len", type=_positive_int, help="tokens per sequence (64)")
    t.add_argument("--learning-rate", type=float, help="Adam learning rate (4e-3)")
    t.add_argument("--clipnorm", type=float, help="gradient norm clip (5)")
    t.add_argument("--epochs", type=_positive_int,
                   help="passes over the training text (10; with --max-time, as many as fit)")
    t.add_argument("--max-steps", type=_positive_int, help="stop after this many steps")
    t.add_argument("--max-time", type=float,
                   help="stop cleanly after this many seconds; the cosine schedule is sized to "
                   "end inside them (measured after the warm-up)")
    t.add_argument("--schedule", choices=("constant", "cosine"),
                   help="learning-rate schedule (cosine)")
    t.add_argument("--warmup-steps", type=_nonneg_int,
                   help="linear warm-up steps of the cosine schedule (100)")
    t.add_argument("--lr-floor", type=float, metavar="SHARE",
                   help="the cosine schedule's last learning rate, as a share of "
                   "--learning-rate (0.01)")
    t.add_argument("--carry-state", action=argparse.BooleanOptionalAction, default=None,
                   help="carry the LSTM state from batch to batch along contiguous lanes of "
                   "the text (truncated BPTT; the default), or start each randomly drawn "
                   "window from the start state (--no-carry-state)")
    t.add_argument("--state-reset", type=float, metavar="SHARE",
                   help="with the state carried: the share of lanes that start each window "
                   "from the start state, as generation does, from the second pass over the "
                   "text on (0.3)")
    t.add_argument("--first-epoch-reset", type=float, metavar="SHARE",
                   help="the same in the first pass, where every window is new text and the "
                   "carried context is worth the most (0.04)")
    t.add_argument("--val", nargs="+", default=None, metavar="PATH",
                   help="validation corpus (default: the last --val-fraction of the text)")
    t.add_argument("--val-fraction", type=float, help="held-out share of the text (0.05)")
    t.add_argument("--val-tokens", type=_positive_int,
                   help="validation tokens scored at each evaluation (1,000,000)")
    t.add_argument("--eval-every", type=_positive_int,
                   help="also validate every N steps (default: each epoch)")
    t.add_argument("--checkpoint-every", type=_positive_int, help="steps per checkpoint (500)")
    t.add_argument("--early-stopping", type=_positive_int, metavar="PATIENCE",
                   help="stop after PATIENCE evaluations without improvement")
    t.add_argument("--sample-length", type=_nonneg_int, help="sample printed each epoch (200)")
    t.add_argument("--seed", type=int, help="seed for initialisation and data order (0)")
    t.add_argument("--tensorboard", action="store_true", default=None,
                   help="write TensorBoard logs to RUN/logs")
    t.add_argument("--encoding-errors", choices=("strict", "replace", "ignore"),
                   help="what to do with invalid UTF-8 (strict: stop with an error)")
    d = p.add_argument_group("data-parallel training (see README: Scaling out)")
    d.add_argument("--devices", type=_positive_int, default=None,
                   help="local devices per process (on CPU, the host is split into N)")
    d.add_argument("--processes", type=_positive_int, default=None,
                   help="launch P local processes joined by a coordinator on 127.0.0.1")
    d.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="address of process 0 (multi-process / multi-host; env "
                   "LSTMGEN_COORDINATOR)")
    d.add_argument("--num-processes", type=_positive_int, default=None,
                   help="processes in the job (env LSTMGEN_NUM_PROCESSES)")
    d.add_argument("--process-id", type=_nonneg_int, default=None,
                   help="this process's index, 0 = chief (env LSTMGEN_PROCESS_ID)")


def build_parser() -> argparse.ArgumentParser:
    from lstmgen import __version__

    parser = argparse.ArgumentParser(
        prog="lstmgen",
        description="Train LSTM language models on text of any size and generate from them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run `lstmgen COMMAND --help` for a command's options and examples",
    )
    parser.add_argument("--version", action="version", version=f"lstmgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name, help_text):
        return sub.add_parser(name, help=help_text, description=help_text,
                              epilog=EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("train", "train a model on a corpus (files, folders, globs, .gz/.bz2/.xz)")
    p.add_argument("corpus", nargs="*", help="text to train on (none: the built-in corpus)")
    p.add_argument("--out", default=None, help="run folder to write (default runs/default)")
    p.add_argument("--resume", metavar="RUN", default=None,
                   help="continue the run in RUN from its last checkpoint")
    p.add_argument("--from", dest="init_from", metavar="RUN", default=None,
                   help="start from RUN's weights and vocabulary (fine-tuning)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_train_options(p)

    p = command("generate", "generate text from a trained run")
    p.add_argument("run", help="run folder")
    p.add_argument("--prime", action="append", default=None,
                   help="text to continue (any length; default none); repeat it for several "
                   "primes, generated as one batch")
    p.add_argument("--prime-file", default=None,
                   help="read the primes from a file, one per line")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--output", metavar="FILE", default=None,
                   help="write the samples to FILE (.jsonl: one JSON object per sample; "
                   "else text)")
    p.add_argument("--interactive", action="store_true",
                   help="read a line at a time from stdin and continue the conversation "
                   "(the state carries across turns)")
    _add_sampling(p)

    p = command("evaluate", "loss, bits per character and perplexity on held-out text")
    p.add_argument("run", help="run folder")
    p.add_argument("corpus", nargs="+", help="text to score (files, folders, globs)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--max-tokens", type=_positive_int, default=None)
    p.add_argument("--encoding-errors", choices=("strict", "replace", "ignore"),
                   default="strict")
    p.add_argument("--reset-state", action="store_true",
                   help="restart the state every training window instead of carrying it "
                        "through the text (scores each window as in training)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("info", "show a run's config, size, progress and best validation figures")
    p.add_argument("run", help="run folder")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("demo", "train briefly on the built-in corpus (Python's own sources), sample")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--max-time", type=float, default=150.0,
                   help="training budget in seconds (default 150)")

    p = command("serve", "serve a trained run over HTTP, with a web page to play with it")
    p.add_argument("run", help="run folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-length", type=_positive_int, default=2000,
                   help="longest generation a request may ask for")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                   "(default: $LSTMGEN_API_KEY, else none)")
    return parser


# ----------------------------------------------------------------------------------------
def _strip_option(argv: list[str], option: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def cmd_train(args) -> None:
    import lstmgen
    from lstmgen.distributed import DistributedConfig, launch_local

    if args.processes and args.processes > 1:
        if args.coordinator or args.num_processes or args.process_id is not None:
            raise lstmgen.LstmgenError("--processes launches its own processes",
                                       hint="drop --coordinator/--num-processes/--process-id")
        code = launch_local(_strip_option(args.argv, "--processes"), args.processes)
        if code:
            raise SystemExit(1 if code < 0 else code)
        return
    distributed = DistributedConfig(devices=args.devices, coordinator=args.coordinator,
                                    num_processes=args.num_processes,
                                    process_id=args.process_id)

    model_overrides = {k: getattr(args, k) for k in MODEL_ARGS if getattr(args, k) is not None}
    train_overrides = {k: getattr(args, k) for k in TRAIN_ARGS if getattr(args, k) is not None}
    verbose = 0 if args.quiet else 1
    if args.resume:
        if args.corpus or model_overrides or args.tokenizer or args.init_from:
            raise lstmgen.LstmgenError(
                "--resume continues a run as it was set up",
                hint="drop the corpus/model/tokenizer arguments, or start a new run",
            )
        lstmgen.train(out=args.resume, resume=True, verbose=verbose, distributed=distributed,
                      **train_overrides)
        return
    tokenizer_options = {"vocab_size": args.vocab_size} if args.vocab_size else None
    from dataclasses import replace

    tokenizer = args.tokenizer or "char"
    lstmgen.train(
        args.corpus or None,
        out=args.out or "runs/default",
        model=replace(lstmgen.ModelConfig.defaults(tokenizer), **model_overrides),
        tokenizer=tokenizer,
        tokenizer_options=tokenizer_options,
        val=args.val,
        init_from=args.init_from,
        overwrite=args.overwrite,
        verbose=verbose,
        distributed=distributed,
        **train_overrides,
    )


def _primes(args) -> list[str]:
    import lstmgen

    primes = list(args.prime or [])
    if args.prime_file:
        try:
            with open(args.prime_file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise lstmgen.LstmgenError(f"cannot read the prime file: {e}",
                                       hint="give a UTF-8 text file, one prime per line"
                                       ) from None
        lines = [line for line in lines if line]
        if not lines:
            raise lstmgen.LstmgenError(f"the prime file {args.prime_file} has no primes",
                                       hint="write one prime per line")
        primes += lines
    return primes or [""]


def cmd_generate(args) -> None:
    import lstmgen
    from lstmgen.stopping import stop_list, unescape

    primes = _primes(args)
    stops = list(stop_list([unescape(s) for s in args.stop]))
    settings = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                    stop=stops)
    if args.interactive and (args.output or args.num_samples != 1 or len(primes) > 1):
        raise lstmgen.LstmgenError(
            "--interactive holds one conversation",
            hint="drop --output, --num-samples and extra primes, or --interactive")
    model = lstmgen.load(args.run, checkpoint=args.checkpoint)
    if args.interactive:
        return _interactive(model.session(**settings, seed=args.seed), primes[0], args.length)
    batch = [p for p in primes for _ in range(args.num_samples)]
    stream = model.stream(batch if len(batch) > 1 else batch[0], args.length, **settings,
                          seed=args.seed)
    out = sys.stdout
    if len(batch) == 1 and not args.output:
        out.write(batch[0])
        for block in stream:
            out.write(block[0])
            out.flush()
        out.write("\n")
        return
    texts = [""] * len(batch)
    for block in stream:
        texts = [t + b for t, b in zip(texts, block)]
    if args.output:
        _write_samples(args.output, batch, texts, stream, {"length": args.length, **settings})
        print(f"wrote {len(texts)} sample(s) to {args.output}", file=sys.stderr)
        return
    out.write(_as_text(batch, texts))
    out.flush()


def _as_text(primes: list[str], texts: list[str]) -> str:
    if len(texts) == 1:
        return f"{primes[0]}{texts[0]}\n"
    return "".join(f"=== sample {i + 1} ===\n{p}{t}\n"
                   for i, (p, t) in enumerate(zip(primes, texts)))


def _write_samples(path: str, primes, texts, stream, settings: dict) -> None:
    """The samples as JSON lines (``.jsonl``) or as the text the terminal shows, atomically."""
    from lstmgen import atomic
    from lstmgen.errors import LstmgenError

    if path.endswith(".jsonl"):
        rows = [{"sample": i + 1, "prime": p, "text": t, "finish_reason": reason,
                 "seed": stream.seed, "settings": settings}
                for i, (p, t, reason) in enumerate(zip(primes, texts, stream.finish_reasons))]
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    else:
        text = _as_text(primes, texts)
    try:
        atomic.write_text(path, text)
    except OSError as e:
        raise LstmgenError(f"cannot write {path}: {e.strerror or e}",
                           hint="choose a writable path for --output") from None


def _interactive(session, prime: str, length: int) -> None:
    """A line at a time from stdin: each line joins the context as typed, the model's
    continuation is printed and joins it too (with the line break printed after it), so the
    context is exactly the transcript. Ends at EOF or Ctrl-C."""
    tty = sys.stdin.isatty()
    if prime:
        session.feed(prime)
    try:
        while True:
            if tty:
                print("> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line:
                break
            line = line.rstrip("\r\n")
            session.feed(line)
            if not tty:  # a terminal shows what was typed already
                sys.stdout.write(line)
            text = ""
            for piece in session.reply(length):
                text += piece
                sys.stdout.write(piece)
                sys.stdout.flush()
            if not text.endswith("\n"):
                sys.stdout.write("\n")
                session.feed("\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        print(file=sys.stderr)


def cmd_evaluate(args) -> None:
    import lstmgen
    from lstmgen.evaluation import FRESH_START_TOKENS

    model = lstmgen.load(args.run, checkpoint=args.checkpoint)
    result = model.evaluate(args.corpus, encoding_errors=args.encoding_errors,
                            max_tokens=args.max_tokens, carry_state=not args.reset_state)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    print(f"tokens          {result.tokens:,}")
    print(f"characters      {result.chars:,}")
    print(f"loss            {result.loss:.4f} nats/token")
    print(f"bits per char   {result.bits_per_char:.4f}")
    print(f"perplexity      {result.perplexity:.3f} (per token)")
    if result.word_perplexity is not None:
        print(f"per word        {result.word_perplexity:.3f} ({result.words:,} words incl. line "
              "ends)")
    if result.fresh_start is not None:
        print(f"fresh start     {result.fresh_start:.4f} nats/token (first {FRESH_START_TOKENS} "
              f"tokens from a fresh state, {result.fresh_tokens // FRESH_START_TOKENS:,} "
              "windows)")


def cmd_info(args) -> None:
    import lstmgen
    from lstmgen.evaluation import FRESH_START_TOKENS

    info = lstmgen.load(args.run).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return
    model = info["model"]
    corpus = info["corpus"]
    print(f"run             {info['run']} (lstmgen {info['lstmgen_version']})")
    print(f"model           {model['layers']} x {model['cell'].upper()} {model['units']}, "
          f"embedding {model['embedding_dim']}, dropout {model['dropout']}"
          + "".join(f", {name.replace('_', ' ')} {model[name]}"
                    for name in ("input_dropout", "recurrent_dropout", "weight_drop")
                    if model.get(name)))
    print(f"parameters      {info['parameters']:,}")
    print(f"tokenizer       {info['tokenizer']}, vocabulary {info['vocab_size']:,}")
    print(f"corpus          {', '.join(corpus.get('sources', [])) or '?'} "
          f"({corpus.get('train_tokens', 0):,} train / {corpus.get('val_tokens', 0):,} "
          "validation tokens)")
    print(f"trained         {info['step']} steps (epoch {info['epoch']})")
    best = info["best_val_loss"]
    if best is not None:
        print(f"best validation {best:.4f} nats/token, {info['best_val_bpc']:.4f} bits/char "
              f"(step {info['best_step']})")
    per_word = info.get("best_val_word_perplexity")
    if per_word is not None:
        print(f"  per word      perplexity {per_word:.2f} (words incl. line ends)")
    fresh = info.get("best_val_fresh_start")
    if fresh is not None:
        print(f"  fresh start   {fresh:.4f} nats/token (first {FRESH_START_TOKENS} tokens from "
              "a fresh state)")


DEMO_VOCABULARY = 2048
DEMO_PRIMES = ("def ", "class ", "import ")
DEMO_SAMPLE_TOKENS = 150  # ~450 characters
DEMO_TEMPERATURE = 0.6


def cmd_demo(args) -> None:
    import lstmgen
    from lstmgen.evaluation import FRESH_START_TOKENS

    print("lstmgen demo: learning to write Python from Python's own standard library, "
          "in subword tokens.\n"
          f"Training for {args.max_time:.0f} s; the run goes to {args.out}.", flush=True)
    model = lstmgen.train(
        None, out=args.out, overwrite=True,
        # Subwords, not characters: an indentation is one token. A character model
        # of this size cannot count a run of spaces, and at the demo's temperature it fell
        # into runs of 200-300 of them (bench/RESULTS.md, "The demo's samples").
        tokenizer="bpe", tokenizer_options={"vocab_size": DEMO_VOCABULARY},
        model=lstmgen.ModelConfig(embedding_dim=64, units=256, layers=1),
        # A constant rate: in 150 s the model is far from converged, and a decaying one
        # scored worse (for characters: 1.59 vs 1.51 nats/char, bench/RESULTS.md).
        batch_size=32, seq_len=64, learning_rate=4e-3, schedule="constant",
        max_time=args.max_time, eval_every=100, checkpoint_every=250, sample_length=0,
        val_tokens=100_000,
    )
    state = model.state
    if state.get("best_val_fresh_start") is not None:
        print(f"\nvalidation: {state['best_val_loss']:.4f} nats/token with the state carried "
              f"through the text; fresh start (first {FRESH_START_TOKENS} tokens) "
              f"{state['best_val_fresh_start']:.4f} nats/token", flush=True)
    for prime in DEMO_PRIMES:
        text = model.generate(prime, DEMO_SAMPLE_TOKENS, temperature=DEMO_TEMPERATURE,
                              seed=len(prime))[0]
        print(f"\n=== sample (prime {prime!r}, temperature {DEMO_TEMPERATURE}) ===\n"
              f"{prime}{text}")


def cmd_serve(args) -> None:
    from lstmgen.serve import serve

    serve(args.run, host=args.host, port=args.port, max_length=args.max_length,
          api_key=args.api_key)


COMMANDS = {"train": cmd_train, "generate": cmd_generate, "evaluate": cmd_evaluate,
            "info": cmd_info, "demo": cmd_demo, "serve": cmd_serve}


# Keras imports these at start-up when they are installed, for notebook display and image
# plots; only training (matplotlib, for loss.png) needs one: ~1 s of the other commands' start.
OPTIONAL_IMPORTS = ("IPython", "matplotlib")
PLOTTING_COMMANDS = ("train", "demo")


def _skip_unused_imports(command: str) -> None:
    if command in PLOTTING_COMMANDS:
        return
    for name in OPTIONAL_IMPORTS:
        if name not in sys.modules:
            sys.modules[name] = None  # `import name` now raises ImportError, which Keras expects


def _enable_compilation_cache() -> None:
    """Keep compiled XLA programs between runs (``LSTMGEN_CACHE_DIR``; ``0`` turns it off),
    so a second ``lstmgen generate`` starts streaming in about half the time."""
    path = os.environ.get("LSTMGEN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lstmgen", "jax")
    if path == "0" or os.environ.get("KERAS_BACKEND", "jax") != "jax":
        return
    try:
        import jax

        jax.config.update("jax_compilation_cache_dir", path)
        # Every program, however small: loading one costs ~1 ms, compiling it 20-100 ms.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    except Exception:  # a cache is an optimisation: never fail a command over it
        pass


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None, fresh_process: bool = False) -> int:
    """Run one command; returns the exit status. ``fresh_process``: this process runs
    nothing else, so modules the command does not need may be kept from loading."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.showwarning = _show_warning
    from lstmgen.errors import Interrupted, LstmgenError

    if fresh_process:
        _skip_unused_imports(args.command)
    _enable_compilation_cache()
    try:
        COMMANDS[args.command](args)
    except Interrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return 130
    except LstmgenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\naborted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0


# Commands that train or evaluate: they run again with huge pages for XLA's buffers.
HUGEPAGE_COMMANDS = ("train", "evaluate", "demo")


def entry_point() -> None:
    """The ``lstmgen`` console script."""
    if len(sys.argv) > 1 and sys.argv[1] in HUGEPAGE_COMMANDS:
        from lstmgen.hugepages import restart_with_hugepages

        restart_with_hugepages()
    sys.exit(main(fresh_process=True))


if __name__ == "__main__":
    entry_point()
