"""Train a model on a corpus with ``model.fit`` over a streaming dataset.

Training state lives in the checkpoint beside the weights and the optimizer: epoch, batch
within the epoch, global step, best validation loss, early-stopping counter, elapsed time.
The batch order is a pure function of (seed, epoch, batch), and the learning-rate schedule a
function of the optimizer's own step counter, so a resumed run trains on exactly the batches,
at exactly the learning rates, that an uninterrupted one would have.
"""

from __future__ import annotations

import csv
import io
import math
import os
import signal
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from lstmgen import atomic
from lstmgen.checkpoint import load_checkpoint, save_checkpoint
from lstmgen.corpus import default_corpus
from lstmgen.dataset import EncodedCorpus, WindowDataset, WindowOrder, encode_corpus
from lstmgen.distributed import Cluster, DistributedConfig
from lstmgen.distributed import setup as distributed_setup
from lstmgen.errors import Interrupted, LstmgenError
from lstmgen.model import LanguageModel, ModelConfig
from lstmgen.run import Run, TrainedModel

SCHEDULES = ("constant", "cosine")
# Word models train best on longer windows of words (bench/bench_wikitext2.py).
WORD_TRAIN_DEFAULTS = dict(batch_size=32, seq_len=64, learning_rate=4e-3)
# Settings that may change when a run is resumed; the rest define the run.
RESUMABLE_OVERRIDES = ("epochs", "max_steps", "max_time", "early_stopping", "checkpoint_every",
                       "eval_every", "sample_length", "val_tokens", "tensorboard")
METRIC_FIELDS = ("step", "epoch", "elapsed_s", "tokens", "learning_rate", "train_loss",
                 "val_loss", "val_bpc", "val_perplexity", "val_word_perplexity",
                 "val_fresh_start")


@dataclass
class TrainConfig:
    """How to train. Every field has a default; the simple path needs none.

    Example:
        >>> TrainConfig(batch_size=16, seq_len=128).validate().schedule
        'cosine'
    """

    # Defaults from bench/bench_quality.py: the best validation loss per minute found on
    # tiny-shakespeare (1 MB) on 2 CPU cores.
    batch_size: int = 32
    seq_len: int = 64
    learning_rate: float = 4e-3
    clipnorm: float = 5.0
    epochs: int = 10
    max_steps: int | None = None
    max_time: float | None = None
    schedule: str = "cosine"
    warmup_steps: int = 100
    schedule_steps: int | None = None
    val_fraction: float = 0.05
    val_tokens: int | None = 1_000_000
    eval_every: int | None = None
    checkpoint_every: int = 500
    early_stopping: int | None = None
    sample_length: int = 200
    seed: int = 0
    # Carry the recurrent state from batch to batch along lanes of the text (truncated
    # backpropagation through time; lstmgen.carried_state) instead of zeros per window.
    carry_state: bool = True
    # With carry_state: the share of lanes that start each window from a zero state, as every
    # generation starts (see lstmgen.carried_state). Measured in bench/bench_fresh_start.py.
    state_reset: float = 0.3
    tensorboard: bool = False
    encoding_errors: str = "strict"

    def validate(self) -> TrainConfig:
        for name in ("batch_size", "seq_len", "epochs", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise LstmgenError(f"{name.replace('_', '-')} must be a positive integer, "
                                   f"got {value!r}")
        for name in ("max_steps", "eval_every", "early_stopping", "val_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise LstmgenError(f"{name.replace('_', '-')} must be a positive integer, "
                                   f"got {value!r}")
        if not self.learning_rate > 0 or not math.isfinite(self.learning_rate):
            raise LstmgenError(f"learning-rate must be > 0, got {self.learning_rate}")
        if not self.clipnorm > 0:
            raise LstmgenError(f"clipnorm must be > 0, got {self.clipnorm}")
        if self.max_time is not None and not self.max_time > 0:
            raise LstmgenError(f"max-time must be > 0 seconds, got {self.max_time}")
        if self.schedule not in SCHEDULES:
            raise LstmgenError(f"unknown schedule {self.schedule!r}",
                               hint=f"use one of {', '.join(SCHEDULES)}")
        if self.warmup_steps < 0:
            raise LstmgenError(f"warmup-steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.val_fraction < 1:
            raise LstmgenError(f"val-fraction must be in [0, 1), got {self.val_fraction}")
        if not isinstance(self.carry_state, bool):
            raise LstmgenError(f"carry-state must be true or false, got {self.carry_state!r}")
        if (isinstance(self.state_reset, bool) or not isinstance(self.state_reset, (int, float))
                or not 0.0 <= self.state_reset <= 1.0):
            raise LstmgenError(f"state-reset must be a share in [0, 1], got {self.state_reset!r}")
        if self.sample_length < 0:
            raise LstmgenError(f"sample-length must be >= 0, got {self.sample_length}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def defaults(cls, tokenizer: str = "char") -> TrainConfig:
        """The default training settings for a tokenizer (:data:`WORD_TRAIN_DEFAULTS` for
        words).

        Example:
            >>> TrainConfig.defaults("word").seq_len >= TrainConfig.defaults("char").seq_len
            True
        """
        return cls(**WORD_TRAIN_DEFAULTS) if tokenizer == "word" else cls()

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        # Runs saved before these settings existed neither carried nor reset the state.
        data = {"carry_state": False, "state_reset": 0.0, **data}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainingState:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    elapsed: float = 0.0
    best_val_loss: float | None = None
    best_val_bpc: float | None = None
    best_val_fresh_start: float | None = None
    best_val_word_perplexity: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    finished: bool = False
    stop_reason: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> TrainingState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ----------------------------------------------------------------------------------------
def train(
    corpus=None,
    out: str | os.PathLike = "runs/default",
    *,
    model: ModelConfig | None = None,
    config: TrainConfig | None = None,
    tokenizer: str = "char",
    tokenizer_options: dict | None = None,
    val=None,
    resume: bool = False,
    init_from: str | os.PathLike | None = None,
    overwrite: bool = False,
    verbose: int = 1,
    callbacks: list | None = None,
    distributed: DistributedConfig | None = None,
    **overrides,
) -> TrainedModel:
    """Train a language model and return it, loaded from its best checkpoint.

    ``corpus`` is a path, folder or glob (or a list of them), or any iterable of strings;
    ``None`` uses the built-in corpus (the Python standard library's sources). ``val`` is an
    optional validation corpus (default: the last ``val_fraction`` of the tokens). With
    ``resume=True`` training continues in ``out`` exactly where its last checkpoint left off;
    ``init_from`` starts from another run's weights and vocabulary (fine-tuning).
    Keyword ``overrides`` set :class:`TrainConfig` fields (``epochs=3``); ``callbacks`` are
    extra Keras callbacks passed to ``fit``; ``distributed`` spreads training over devices,
    processes and hosts (see :mod:`lstmgen.distributed`).

    Example:
        >>> import lstmgen
        >>> m = lstmgen.train("book.txt", out="runs/book", epochs=2)      # doctest: +SKIP
        >>> print(m.generate("Once", length=100)[0])                       # doctest: +SKIP
    """
    if overrides:
        try:
            config = replace(config or TrainConfig.defaults(tokenizer), **overrides)
        except TypeError as e:
            raise LstmgenError(f"unknown training setting: {e}",
                               hint="see lstmgen.TrainConfig for the settings") from None
    cluster = distributed_setup(distributed)
    if resume:
        return _resume(out, config, overrides, verbose, callbacks, cluster)
    config = (config or TrainConfig.defaults(tokenizer)).validate()
    run_path = Path(out)
    failure = None
    if cluster.is_chief:  # one process encodes and writes the run folder; the rest read it
        try:
            _prepare_run(corpus, run_path, model, config, tokenizer, tokenizer_options, val,
                         init_from, overwrite, verbose)
        except LstmgenError as e:
            failure = e
    if cluster.any(failure is not None):
        raise failure or LstmgenError("process 0 could not prepare the run",
                                      hint="see the output of process 0")
    run = Run.open(run_path)
    tokenizer = run.tokenizer
    data = EncodedCorpus.open(run.data_dir)
    config = TrainConfig.from_dict(run.config["train"])
    import keras

    keras.utils.set_random_seed(config.seed)
    lm = LanguageModel(run.model_config, tokenizer.vocab_size)
    if init_from:
        base = TrainedModel(Run.open(init_from), "best")
        lm.training_model.set_weights(base.lm.training_model.get_weights())
    if verbose and cluster.is_chief:
        print(f"{run_path}: {tokenizer.kind} tokenizer, vocabulary {tokenizer.vocab_size}, "
              f"{data.meta.n_train:,} training and {data.meta.n_val:,} validation tokens, "
              f"{lm.count_params():,} parameters"
              + (f", {cluster.num_devices} devices in {cluster.num_processes} process(es)"
                 if cluster.num_devices > 1 else ""), flush=True)
    trainer = Trainer(run, lm, tokenizer, data, config, TrainingState(), verbose, callbacks,
                      cluster)
    return trainer.fit()


def _prepare_run(corpus, run_path: Path, model, config: TrainConfig, tokenizer,
                 tokenizer_options, val, init_from, overwrite, verbose) -> None:
    """Encode the corpus and write the run folder's config and tokenizer."""
    if (run_path / "config.json").exists() and not overwrite:
        raise LstmgenError(f"{run_path} already holds a run",
                           hint="resume it with --resume, or choose another --out")
    if corpus is None:
        corpus = default_corpus()
        config = replace(config, encoding_errors="replace")
    base = Run.open(init_from) if init_from else None
    model = base.model_config if base else (model or ModelConfig.defaults(tokenizer)).validate()
    fitted, data = encode_corpus(
        corpus,
        run_path / "data",
        tokenizer=base.tokenizer if base else tokenizer,
        tokenizer_options=tokenizer_options,
        val_source=val,
        val_fraction=config.val_fraction,
        encoding_errors=config.encoding_errors,
        verbose=verbose > 0,
    )
    config = _fit_batch_to_data(config, data)
    model = model.for_vocabulary(fitted.vocab_size)  # the run records the softmax it gets
    if config.schedule_steps is None:  # the schedule's length is fixed when the run starts
        per_epoch = WindowOrder(data.meta.n_train, config.seq_len, config.batch_size,
                                config.seed).batches_per_epoch
        steps = config.epochs * per_epoch
        config = replace(config, schedule_steps=min(steps, config.max_steps or steps))
    corpus_info = {
        "sources": data.meta.sources,
        "train_tokens": data.meta.n_train,
        "val_tokens": data.meta.n_val,
        "train_chars": data.meta.n_train_chars,
        "val_chars": data.meta.n_val_chars,
        "init_from": os.fspath(init_from) if init_from else None,
    }
    run = Run.create(run_path, model=model, train=config.to_dict(), tokenizer=fitted,
                     corpus=corpus_info)
    for stale in (run.metrics_path, run.samples_path, run.checkpoint_path("last"),
                  run.checkpoint_path("best")):
        stale.unlink(missing_ok=True)


def _resume(out, config, overrides, verbose, callbacks, cluster) -> TrainedModel:
    run = Run.open(out)
    saved = TrainConfig.from_dict(run.config.get("train", {}))
    changes = {k: v for k, v in (overrides or {}).items() if k in RESUMABLE_OVERRIDES}
    fixed = sorted(k for k in (overrides or {}) if k not in RESUMABLE_OVERRIDES)
    if fixed:
        raise LstmgenError(f"cannot change {', '.join(fixed)} when resuming",
                           hint="these define the run; start a new run to change them")
    config = replace(saved, **changes).validate()
    tokenizer = run.tokenizer
    data = EncodedCorpus.open(run.data_dir)
    lm = LanguageModel(run.model_config, tokenizer.vocab_size)
    trainer = Trainer(run, lm, tokenizer, data, config, TrainingState(), verbose, callbacks,
                      cluster)
    if run.has_checkpoint("last"):
        state = TrainingState.from_dict(load_checkpoint(trainer.model,
                                                        run.checkpoint_path("last")))
        trainer.state = replace(state, finished=False, stop_reason=None)
        if verbose and cluster.is_chief:
            print(f"resuming {run.path} at step {state.step} (epoch {state.epoch + 1}, "
                  f"batch {state.batch})", flush=True)
    cluster.barrier("lstmgen-resume-loaded")  # everyone has read the files before any write
    if cluster.is_chief:
        run.remove_stale_temporaries()
        trainer.truncate_metrics()
        run.write_config(model=lm.config, train=config.to_dict(), tokenizer=tokenizer.kind,
                         corpus=run.config.get("corpus", {}))
    return trainer.fit()


def _fit_batch_to_data(config: TrainConfig, data: EncodedCorpus) -> TrainConfig:
    n = data.meta.n_train
    if n < config.seq_len + 1:
        raise LstmgenError(
            f"the training text has {n} tokens, fewer than one sequence "
            f"(seq-len {config.seq_len} + 1)",
            hint="use more text or a smaller --seq-len",
        )
    windows = (n - 1) // config.seq_len
    if windows < config.batch_size:
        warnings.warn(f"the training text holds only {windows} windows of {config.seq_len} "
                      f"tokens; batch size lowered from {config.batch_size} to {windows}",
                      stacklevel=3)
        config = replace(config, batch_size=windows)
    return config


# ----------------------------------------------------------------------------------------
class Trainer:
    """Runs the epochs of one run: fit, validate, sample, checkpoint, plot."""

    def __init__(self, run: Run, lm: LanguageModel, tokenizer, data: EncodedCorpus,
                 config: TrainConfig, state: TrainingState, verbose: int = 1,
                 callbacks: list | None = None, cluster: Cluster | None = None):
        from lstmgen.evaluation import Evaluator

        self.run, self.lm, self.tokenizer, self.data = run, lm, tokenizer, data
        self.cluster = cluster or Cluster()
        self.writes = self.cluster.is_chief  # only process 0 writes files and prints
        self.config, self.state = config, state
        self.verbose = verbose if self.writes else 0
        self.order = WindowOrder(data.meta.n_train, config.seq_len, config.batch_size,
                                 config.seed, lanes=config.carry_state)
        if config.carry_state:
            from lstmgen.carried_state import carried_training_model

            self.model = carried_training_model(lm, config.batch_size)
        else:
            self.model = lm.training_model
        self.evaluator = Evaluator(lm, seq_len=config.seq_len)
        self._val_words = None
        self.generator = None
        self.user_callbacks = list(callbacks or [])
        self._last_eval_step = None
        self._stop_agreed = False
        self.tensorboard = None
        if config.tensorboard and self.writes:
            from lstmgen.tensorboard import TensorBoardLogger

            self.tensorboard = TensorBoardLogger(run.logs_dir)
        self.interrupted = False
        self._compile()

    # -- setup ------------------------------------------------------------------------------
    def total_steps(self) -> int:
        steps = self.config.epochs * self.order.batches_per_epoch
        return min(steps, self.config.max_steps) if self.config.max_steps else steps

    def _compile(self) -> None:
        import keras

        from lstmgen.heads import training_loss

        c = self.config
        lr = c.learning_rate
        if c.schedule == "cosine":
            length = c.schedule_steps or self.total_steps()
            warmup = min(c.warmup_steps, length // 10)  # a short run gets a short warm-up
            lr = keras.optimizers.schedules.CosineDecay(
                initial_learning_rate=0.0 if warmup else c.learning_rate,
                decay_steps=max(1, length - warmup), alpha=0.1,
                warmup_target=c.learning_rate if warmup else None,
                warmup_steps=warmup,
            )
        self.model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=lr, clipnorm=c.clipnorm),
            loss=training_loss(self.lm.config.softmax),
        )
        self.model.optimizer.build(self.model.trainable_variables)

    def current_lr(self) -> float:
        opt = self.model.optimizer
        lr = opt.learning_rate
        return float(np.asarray(lr.value if hasattr(lr, "value") else lr))

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> TrainedModel:
        c, s = self.config, self.state
        if self.order.batches_per_epoch == 0:
            raise LstmgenError("the training split is smaller than one batch",
                               hint="use more text or a smaller --batch-size/--seq-len")
        callbacks = [*self.user_callbacks, _StepCallback(self)]
        previous = signal.signal(signal.SIGINT, self._on_sigint) \
            if _main_thread() else None
        self._clock = time.monotonic() - s.elapsed
        try:
            while s.epoch < c.epochs and not self._agreed_stop():
                dataset = WindowDataset(
                    self.data.train_reader(), seq_len=c.seq_len, batch_size=c.batch_size,
                    seed=c.seed, epoch=s.epoch, first_batch=s.batch,
                    num_batches=self._batches_this_epoch(), shard=self.cluster.shard,
                    lanes=c.carry_state, state_reset=c.state_reset,
                )
                if self.verbose:
                    print(f"epoch {s.epoch + 1}/{c.epochs}", flush=True)
                if len(dataset):
                    # shuffle=False: the order is ours (WindowOrder), so resume can replay it.
                    self.model.fit(dataset, epochs=1, verbose=self.verbose, shuffle=False,
                                   callbacks=callbacks)
                if self._stop_agreed:
                    break
                s.epoch, s.batch = s.epoch + 1, 0
                self.end_of_epoch()
            self.interrupted = self.cluster.any(self.interrupted)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if self.interrupted:
            self.save("last")
            raise Interrupted(f"interrupted at step {s.step}; checkpoint saved",
                              hint=f"continue with: lstmgen train --resume {self.run.path}")
        if not s.finished:
            s.finished = True
            s.stop_reason = s.stop_reason or "completed"
            if s.batch:  # stopped mid-epoch: record where, and show a sample
                if self._last_eval_step != s.step:
                    self.evaluate_and_record()
                self.print_sample()
            self.save("last")
        if self.verbose:
            print(f"done: {s.stop_reason} at step {s.step}; best validation loss "
                  f"{_fmt(s.best_val_loss)} nats/token, {_fmt(s.best_val_bpc)} bits/char "
                  f"(step {s.best_step}). Run folder: {self.run.path}", flush=True)
        self.cluster.barrier("lstmgen-done")  # the chief's files are complete for everyone
        return TrainedModel(self.run, "best")

    def _batches_this_epoch(self) -> int:
        per_epoch = self.order.batches_per_epoch
        if self.config.max_steps:
            left = self.config.max_steps - self.state.step
            return min(per_epoch, self.state.batch + max(0, left))
        return per_epoch

    def _should_stop(self) -> bool:
        c, s = self.config, self.state
        if c.max_steps and s.step >= c.max_steps:
            s.stop_reason = "max steps reached"
            return True
        if c.max_time and self.elapsed() >= c.max_time:
            s.stop_reason = "time budget reached"
            return True
        if c.early_stopping and s.evals_without_improvement >= c.early_stopping:
            s.stop_reason = f"early stopping (no improvement in {c.early_stopping} evaluations)"
            return True
        return s.stop_reason is not None and s.stop_reason != "completed"

    def _on_sigint(self, signum, frame):
        if self.interrupted:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.interrupted = True
        print("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to abort)",
              flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self._clock

    # -- per step / per epoch -------------------------------------------------------------------
    def after_step(self, logs, sync) -> bool:
        """Book-keeping after each training step; returns True to stop training.

        ``sync()`` attaches the in-flight training state to the model's variables; it is
        called only before the (occasional) evaluations and checkpoints that read them."""
        c, s = self.config, self.state
        s.step += 1
        s.batch += 1
        self._last_train_loss = logs.get("loss") if logs else None
        evaluate = bool(c.eval_every) and s.step % c.eval_every == 0
        checkpoint = s.step % c.checkpoint_every == 0
        if evaluate or checkpoint:
            sync()
        if evaluate:
            self.evaluate_and_record()
        if checkpoint:
            self.save("last")
        return self._agreed_stop()

    def _agreed_stop(self) -> bool:
        """Every process must stop at the same step: they agree with a tiny collective."""
        self._stop_agreed = self.cluster.any(self.interrupted or self._should_stop())
        return self._stop_agreed

    def end_of_epoch(self) -> None:
        self.evaluate_and_record()
        self.print_sample()
        self.save("last")

    def evaluate_and_record(self) -> None:
        s, c = self.state, self.config
        s.elapsed = self.elapsed()
        self._last_eval_step = s.step
        val = None
        if self.data.meta.n_val > 1:
            if self._val_words is None:  # the words of the text scored, counted once
                from lstmgen.evaluation import count_words_in_ids

                self._val_words = count_words_in_ids(self.tokenizer,
                                                     self.data.val[: c.val_tokens])
            val = self.evaluator(self.data.val, chars=self.data.meta.n_val_chars,
                                 max_tokens=c.val_tokens, words=self._val_words)
        row = {
            "step": s.step, "epoch": s.epoch + (s.batch / self.order.batches_per_epoch),
            "elapsed_s": round(s.elapsed, 2), "tokens": s.step * c.batch_size * c.seq_len,
            "learning_rate": self.current_lr(),
            "train_loss": _float(getattr(self, "_last_train_loss", None)),
            "val_loss": val.loss if val else None,
            "val_bpc": val.bits_per_char if val else None,
            "val_perplexity": val.perplexity if val else None,
            "val_word_perplexity": val.word_perplexity if val else None,
            "val_fresh_start": val.fresh_start if val else None,
        }
        self.append_metrics(row)
        if self.tensorboard:
            self.tensorboard.log(row)
        if val is not None:
            if s.best_val_loss is None or val.loss < s.best_val_loss:
                s.best_val_loss, s.best_val_bpc, s.best_step = val.loss, val.bits_per_char, s.step
                s.best_val_fresh_start = val.fresh_start
                s.best_val_word_perplexity = val.word_perplexity
                s.evals_without_improvement = 0
                self.save("best")
            else:
                s.evals_without_improvement += 1
        if self.verbose:
            vtext = (f"val loss {val.loss:.4f}, {val.bits_per_char:.3f} bits/char, "
                     f"perplexity {val.perplexity:.2f}"
                     + (f" ({val.word_perplexity:.1f} per word)"
                        if val.word_perplexity and self.tokenizer.kind != "char" else "")
                     + f", fresh start {_fmt(val.fresh_start)}" if val else "no validation split")
            print(f"step {s.step}: train loss {_fmt(row['train_loss'])}, {vtext}", flush=True)
        self.plot()

    def print_sample(self) -> None:
        length = self.config.sample_length
        if not length or not self.writes:
            return
        if self.generator is None:
            from lstmgen.generation import Generator

            self.generator = Generator.from_model(self.lm, self.tokenizer)
        text = self.generator.generate("", length, temperature=0.8,
                                       seed=self.config.seed + self.state.step)[0]
        block = f"--- sample at step {self.state.step} ---\n{text}\n"
        if not self.writes:
            return
        with open(self.run.samples_path, "a", encoding="utf-8") as f:
            f.write(block)
        if self.verbose:
            print(block, flush=True)

    # -- files ------------------------------------------------------------------------------
    def save(self, which: str) -> None:
        self.state.elapsed = self.elapsed() if hasattr(self, "_clock") else self.state.elapsed
        if self.writes:
            save_checkpoint(self.model, self.run.checkpoint_path(which), asdict(self.state))
            return
        # Reading distributed variables is a collective step: every process takes part, and
        # only the chief keeps the file.
        with tempfile.TemporaryDirectory() as scratch:
            save_checkpoint(self.model, Path(scratch) / "x.weights.h5", asdict(self.state))

    def read_metrics(self) -> list[dict]:
        if not self.run.metrics_path.is_file():
            return []
        with open(self.run.metrics_path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def append_metrics(self, row: dict) -> None:
        if not self.writes:
            return
        rows = self.read_metrics() + [row]
        self._write_metrics(rows)

    def truncate_metrics(self) -> None:
        """Drop rows newer than the checkpoint being resumed (they will be redone)."""
        rows = [r for r in self.read_metrics() if int(r["step"]) <= self.state.step]
        self._write_metrics(rows)

    def _write_metrics(self, rows: list[dict]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k))
                             for k in METRIC_FIELDS})
        atomic.write_text(self.run.metrics_path, buffer.getvalue())

    def plot(self) -> None:
        if not self.writes:
            return
        from lstmgen.plotting import plot_metrics

        plot_metrics(self.read_metrics(), self.run.plot_path)


class _StepCallback:
    """Keras callback that hands each finished step to the trainer."""

    def __new__(cls, trainer):
        import keras

        class StepCallback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if trainer.after_step(logs, sync=lambda: self.model):
                    self.model.stop_training = True

        return StepCallback()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _float(value):
    if value is None:
        return None
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return None


def _fmt(value) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"
