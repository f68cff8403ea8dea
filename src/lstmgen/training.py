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
from dataclasses import asdict, dataclass, field, fields, replace
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
DEFAULT_EPOCHS = 10
# A validation of this many windows compiles the programs a full one runs
# (lstmgen.evaluation lays the text out in up to 32 streams of at least 16 windows).
WARM_UP_WINDOWS = 32 * 16
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
    # Passes over the training text; None: DEFAULT_EPOCHS, or with max_time as many as fit in
    # the time (the cosine schedule is then sized to the time budget: lstmgen.schedule).
    epochs: int | None = None
    max_steps: int | None = None
    max_time: float | None = None
    schedule: str = "cosine"
    warmup_steps: int = 100
    # The cosine's last learning rate, as a share of the peak: 0.01 against 0.1 measured
    # 1.4236 against 1.4353 with the defaults' 10 minutes on tiny-shakespeare (bench/RESULTS.md).
    lr_floor: float = 0.01
    schedule_steps: int | None = None
    val_fraction: float = 0.05
    val_tokens: int | None = 1_000_000
    eval_every: int | None = None
    checkpoint_every: int = 500
    early_stopping: int | None = None
    sample_length: int = 200
    seed: int = 0
    # Carry the recurrent state from batch to batch along lanes of the text (truncated
    # backpropagation through time; lstmgen.carried_state) instead of the start state per
    # window.
    carry_state: bool = True
    # With carry_state: the share of lanes that start each window from the model's start state,
    # as every generation starts (lstmgen.carried_state), from the second pass over the text
    # on; in the first pass first_epoch_reset (None: state_reset). Every window of a first pass
    # is new text, and there restarts cost the carried loss most: measured in
    # bench/bench_fresh_start.py, 0.3 cost a 16 MB corpus seen 0.36 times 0.039 nats, five
    # times what it cost tiny-shakespeare over 4.4 passes; 0.05 cost it 0.010, 0.04 0.008
    # (and kept its fresh start within 0.05 of a model trained from fresh states only).
    state_reset: float = 0.3
    first_epoch_reset: float | None = 0.04
    tensorboard: bool = False
    encoding_errors: str = "strict"

    def validate(self) -> TrainConfig:
        for name in ("batch_size", "seq_len", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise LstmgenError(f"{name.replace('_', '-')} must be a positive integer, "
                                   f"got {value!r}")
        for name in ("epochs", "max_steps", "eval_every", "early_stopping", "val_tokens"):
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
        for name in ("lr_floor", "state_reset", "first_epoch_reset"):
            value = getattr(self, name)
            if value is None and name == "first_epoch_reset":
                continue
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not 0.0 <= value <= 1.0):
                raise LstmgenError(f"{name.replace('_', '-')} must be a share in [0, 1], "
                                   f"got {value!r}")
        if self.sample_length < 0:
            raise LstmgenError(f"sample-length must be >= 0, got {self.sample_length}")
        return self

    @property
    def epoch_limit(self) -> int | None:
        """The number of epochs to train; ``None``: no limit but the time budget.

        Example:
            >>> TrainConfig().epoch_limit, TrainConfig(max_time=60).epoch_limit
            (10, None)
        """
        if self.epochs is not None:
            return self.epochs
        return None if self.max_time else DEFAULT_EPOCHS

    def reset_share(self, epoch: int) -> float:
        """The share of carried lanes restarted at each window of ``epoch`` (from 0).

        Example:
            >>> TrainConfig().reset_share(0), TrainConfig().reset_share(1)
            (0.04, 0.3)
            >>> TrainConfig(state_reset=0.2, first_epoch_reset=None).reset_share(0)
            0.2
        """
        if epoch == 0 and self.first_epoch_reset is not None:
            return self.first_epoch_reset
        return self.state_reset

    @property
    def sized_by_time(self) -> bool:
        """Whether the cosine schedule's length is fixed by measuring the run against its
        time budget (``max_time`` without ``schedule_steps``)."""
        return (self.schedule == "cosine" and self.schedule_steps is None
                and self.max_time is not None)

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
        # Runs saved before these settings existed neither carried nor reset the state, nor
        # left the epochs to the time budget.
        data = {"carry_state": False, "state_reset": 0.0, "first_epoch_reset": None,
                "epochs": DEFAULT_EPOCHS, **data}
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
    # A schedule sized to the time budget: its hold and last step, fixed once measured, and
    # every plan made as [after step, hold, last step] (lstmgen.schedule.REPLAN_AT).
    schedule_hold: int | None = None
    schedule_steps: int | None = None
    schedule_plans: list = field(default_factory=list)
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
    if config.schedule_steps is None and config.epoch_limit is not None \
            and not config.sized_by_time:
        # The schedule's length is fixed when the run starts (a time budget fixes it later).
        per_epoch = WindowOrder(data.meta.n_train, config.seq_len, config.batch_size,
                                config.seed).batches_per_epoch
        steps = config.epoch_limit * per_epoch
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
        self._eval_seconds = 0.0
        self._evals_run = 0  # by this process: the first one compiles
        self._stop_agreed = False
        self.tensorboard = None
        if config.tensorboard and self.writes:
            from lstmgen.tensorboard import TensorBoardLogger

            self.tensorboard = TensorBoardLogger(run.logs_dir)
        self.interrupted = False
        self._compile()

    # -- setup ------------------------------------------------------------------------------
    def total_steps(self) -> int | None:
        """The step training ends at by its epoch and step limits (None: only time)."""
        limit = self.config.epoch_limit
        steps = limit * self.order.batches_per_epoch if limit is not None else None
        if self.config.max_steps:
            return min(steps, self.config.max_steps) if steps else self.config.max_steps
        return steps

    def _compile(self) -> None:
        import keras

        from lstmgen.heads import token_fractions, training_loss
        from lstmgen.schedule import WarmupCosine

        c = self.config
        lr = c.learning_rate
        self.schedule = None
        if c.schedule == "cosine":
            if c.sized_by_time:  # the length is set once the run has measured itself
                warmup = c.warmup_steps
                length = self.total_steps() or 10**9
            else:
                length = c.schedule_steps or self.total_steps()
                warmup = min(c.warmup_steps, length // 10)  # a short run: a short warm-up
            lr = self.schedule = WarmupCosine(c.learning_rate, warmup=warmup, hold=warmup,
                                              total=length, alpha=c.lr_floor)
        model = self.lm.config
        fractions = (token_fractions(self.data.train, model.cutoffs)
                     if model.softmax == "adaptive" else None)
        self.model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=lr, clipnorm=c.clipnorm),
            loss=training_loss(model.softmax, self.lm.head, fractions),
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
        self._timing = None
        self._overhead = 0.0  # seconds spent between steps: validations, samples, checkpoints
        self._fit_started = time.monotonic()
        self._compile_seconds = None  # the first step's, this process
        self._reschedule = False
        self._apply_saved_schedule()
        try:
            while ((c.epoch_limit is None or s.epoch < c.epoch_limit)
                   and not self._agreed_stop()):
                dataset = WindowDataset(
                    self.data.train_reader(), seq_len=c.seq_len, batch_size=c.batch_size,
                    seed=c.seed, epoch=s.epoch, first_batch=s.batch,
                    num_batches=self._batches_this_epoch(), shard=self.cluster.shard,
                    lanes=c.carry_state, state_reset=c.reset_share(s.epoch),
                )
                if self.verbose and s.batch == 0:
                    print(f"epoch {s.epoch + 1}/{c.epoch_limit or '(until the time budget)'}",
                          flush=True)
                if len(dataset):
                    # shuffle=False: the order is ours (WindowOrder), so resume can replay it.
                    self.model.fit(dataset, epochs=1, verbose=self.verbose, shuffle=False,
                                   callbacks=callbacks)
                if self._reschedule:  # the schedule was just sized: go on with it
                    self._reschedule = False
                    self.model.train_function = None  # retrace: the schedule is a constant
                    continue
                if self._stop_agreed:
                    break
                s.epoch, s.batch = s.epoch + 1, 0
                began = time.monotonic()
                self.end_of_epoch()
                self._overhead += time.monotonic() - began
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
        size = self._time_schedule_now(logs)
        if evaluate or checkpoint or size:
            sync()
        if evaluate or checkpoint:
            _wait_for(logs)  # what follows is not the steps' time
            began = time.monotonic()
            if evaluate:
                self.evaluate_and_record()
            if checkpoint:
                self.save("last")
            self._overhead += time.monotonic() - began
        if size:
            self._size_schedule_to_time()
        return self._agreed_stop() or self._reschedule

    # -- a schedule sized to the time budget ---------------------------------------------------
    def _time_schedule_now(self, logs) -> bool:
        """Whether this step ends the measurement of a run whose schedule the time budget
        sizes: past the warm-up, and :data:`~lstmgen.schedule.MEASURED_STEPS` steps and
        :func:`~lstmgen.schedule.measure_seconds` after the first step this process ran with
        its step function (which compiled); a planned schedule is measured again once
        :data:`~lstmgen.schedule.REPLAN_AT` of the budget is spent."""
        from lstmgen.schedule import MEASURED_STEPS, REPLAN_AT, measure_seconds

        c, s = self.config, self.state
        if self.schedule is None or not c.sized_by_time or len(s.schedule_plans) >= 2 or (
                s.schedule_steps is not None and not s.schedule_plans):  # a run from before
            return False
        if self._timing is None:
            _wait_for(logs)
            self._timing = (s.step, time.monotonic(), self._overhead)
            if self._compile_seconds is None:
                # The step function is compiled again once the schedule is set: about as
                # long as the first time.
                self._compile_seconds = self._timing[1] - self._fit_started
            return False
        first, started, overhead = self._timing
        stepping = time.monotonic() - started - (self._overhead - overhead)
        ready = (s.step >= max(c.warmup_steps, first + MEASURED_STEPS)
                 and stepping >= measure_seconds(c.max_time)
                 and (not s.schedule_plans or self.elapsed() >= REPLAN_AT * c.max_time))
        if not self.cluster.any(ready):  # every process sizes it at the same step
            return False
        _wait_for(logs)
        stepping = time.monotonic() - started - (self._overhead - overhead)
        self._seconds_per_step = stepping / (s.step - first)
        # Wall time per step, validations, samples and checkpoints included: what a re-plan
        # goes by, since by then they have recurred at their own rate.
        self._wall_per_step = (time.monotonic() - started) / (s.step - first)
        return True

    def _size_schedule_to_time(self) -> None:
        """Fix the cosine's length so that it ends inside the time budget, from the measured
        step rate and the cost of a validation (run one now if none was), the same on every
        process; the learning rate holds its peak from the warm-up's end to this step. Planned
        again later, the cosine goes on from the learning rate it had reached."""
        from lstmgen.schedule import REPLAN_TOLERANCE, continue_cosine, steps_in_time

        c, s = self.config, self.state
        if s.schedule_plans:  # the wall time per step includes everything between steps
            seconds_per_step, eval_seconds, evals_per_step = self._wall_per_step, 0.0, 0.0
        else:
            seconds_per_step = self._seconds_per_step
            eval_seconds = self._validation_seconds()
            evals_per_step = 1 / self.order.batches_per_epoch + (
                1 / c.eval_every if c.eval_every else 0.0)
        left = c.max_time - self.elapsed() - self._compile_seconds
        last = steps_in_time(s.step, left, seconds_per_step, eval_seconds, evals_per_step)
        cap = self.total_steps()
        last = int(self.cluster.min(min(last, cap) if cap else last))
        self._timing = None  # a new plan compiles a new step function: measure after it
        if not s.schedule_plans:
            hold, was = s.step, None
        else:
            was = s.schedule_steps
            # Too late to plan again (a short budget, a slow compile): a new plan would
            # spend much of what is left compiling, and could end the cosine abruptly.
            late = left < max(0.2 * c.max_time, 2 * self._compile_seconds)
            if late or abs(last - was) <= REPLAN_TOLERANCE * max(1, was - s.step):
                s.schedule_plans.append([s.step, s.schedule_hold, was])  # the plan holds
                return
            hold = continue_cosine(s.step, s.schedule_hold, was, last)
        s.schedule_hold, s.schedule_steps = hold, last
        s.schedule_plans.append([s.step, hold, last])
        self._apply_saved_schedule()
        self._reschedule = True
        if self.verbose:
            print(f"step {s.step}: {1 / seconds_per_step:.2f} steps/s measured; the cosine "
                  f"schedule ends at step {last}"
                  + (f" (planned: {was})" if was is not None else "")
                  + f" to fit the {c.max_time:g}-s budget", flush=True)

    def _validation_seconds(self) -> float:
        """What one validation costs once its programs are compiled; the first one of a
        process compiles them, so it is not the one timed."""
        if self.data.meta.n_val <= 1:
            return 0.0
        if self._evals_run == 0:  # compile on a prefix of the same layout, then time
            self.evaluator(self.data.val, max_tokens=WARM_UP_WINDOWS * self.config.seq_len + 1,
                           words=0)
        if self._last_eval_step != self.state.step:
            self.evaluate_and_record()
            return self._eval_seconds
        if self._evals_run == 1:  # this step's validation was the compiling one
            started = time.monotonic()
            self._validate()
            return time.monotonic() - started
        return self._eval_seconds

    def _apply_saved_schedule(self) -> None:
        s = self.state
        if self.schedule is not None and s.schedule_steps is not None:
            self.schedule.hold, self.schedule.total = s.schedule_hold, s.schedule_steps

    def _agreed_stop(self) -> bool:
        """Every process must stop at the same step: they agree with a tiny collective."""
        self._stop_agreed = self.cluster.any(self.interrupted or self._should_stop())
        if self._stop_agreed and not self.cluster.any(self.interrupted) \
                and self.state.stop_reason is None:
            # Only the processes' clocks differ (steps, limits and validations agree): a
            # peer's time budget ran out first.
            self.state.stop_reason = "time budget reached"
        return self._stop_agreed

    def end_of_epoch(self) -> None:
        self.evaluate_and_record()
        self.print_sample()
        self.save("last")

    def _validate(self):
        c = self.config
        if self._val_words is None:  # the words of the text scored, counted once
            from lstmgen.evaluation import count_words_in_ids

            self._val_words = count_words_in_ids(self.tokenizer, self.data.val[: c.val_tokens])
        return self.evaluator(self.data.val, chars=self.data.meta.n_val_chars,
                              max_tokens=c.val_tokens, words=self._val_words)

    def evaluate_and_record(self) -> None:
        s, c = self.state, self.config
        started = time.monotonic()
        s.elapsed = self.elapsed()
        self._last_eval_step = s.step
        val = None
        if self.data.meta.n_val > 1:
            val = self._validate()
        self._evals_run += 1
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
        self._eval_seconds = time.monotonic() - started

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


def _wait_for(logs) -> None:
    """Wait until the step that produced ``logs`` has run (JAX dispatches steps ahead)."""
    if logs and "loss" in logs:
        np.asarray(logs["loss"])


def _float(value):
    if value is None:
        return None
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return None


def _fmt(value) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"
