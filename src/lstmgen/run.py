"""The run folder: everything needed to generate, evaluate or resume, in one place.

::

    RUN/
      config.json            versions, model and training settings, corpus description
      tokenizer.json         the frozen vocabulary
      data/tokens.bin        the encoded corpus (train split, then validation split)
      data/meta.json
      checkpoints/last.weights.h5   weights + optimizer + training state (resume)
      checkpoints/best.weights.h5   lowest validation loss so far (generate / evaluate)
      metrics.csv, loss.png, samples.txt, logs/ (TensorBoard, on request)
"""

from __future__ import annotations

import os
from pathlib import Path

from lstmgen import atomic
from lstmgen.errors import LstmgenError
from lstmgen.model import LanguageModel, ModelConfig
from lstmgen.tokenizers import tokenizer_from_dict

FORMAT_VERSION = 1
CHECKPOINTS = ("best", "last")


def lstmgen_version() -> str:
    from lstmgen import __version__

    return __version__


class Run:
    """A run folder on disk.

    Example:
        >>> run = Run.open("runs/shakespeare")                     # doctest: +SKIP
        >>> run.generate("ROMEO:", length=100, temperature=0.8)    # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- layout ---------------------------------------------------------------------------
    config_path = property(lambda self: self.path / "config.json")
    tokenizer_path = property(lambda self: self.path / "tokenizer.json")
    data_dir = property(lambda self: self.path / "data")
    metrics_path = property(lambda self: self.path / "metrics.csv")
    plot_path = property(lambda self: self.path / "loss.png")
    samples_path = property(lambda self: self.path / "samples.txt")
    logs_dir = property(lambda self: self.path / "logs")

    def checkpoint_path(self, which: str) -> Path:
        if which not in CHECKPOINTS:
            raise LstmgenError(f"unknown checkpoint {which!r}", hint="use best or last")
        return self.path / "checkpoints" / f"{which}.weights.h5"

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporary files a killed writer left (``kill -9`` mid-write: the file
        it was replacing is intact, see :mod:`lstmgen.atomic`); returns what was removed.
        Called by training when it starts or resumes, the only writer of a run folder."""
        stale = [p for p in self.path.rglob(".*.tmp*") if p.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    # -- creation and loading -------------------------------------------------------------
    @classmethod
    def create(cls, path, *, model: ModelConfig, train: dict, tokenizer, corpus: dict) -> Run:
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        atomic.write_json(run.tokenizer_path, tokenizer.to_dict())
        run.write_config(model=model, train=train, tokenizer=tokenizer.kind, corpus=corpus)
        return run

    def write_config(self, *, model: ModelConfig, train: dict, tokenizer: str,
                     corpus: dict) -> None:
        atomic.write_json(self.config_path, {
            "format_version": FORMAT_VERSION,
            "lstmgen_version": lstmgen_version(),
            "model": model.to_dict(),
            "train": train,
            "tokenizer": tokenizer,
            "corpus": corpus,
        })

    @classmethod
    def open(cls, path) -> Run:
        run = cls(path)
        if not run.path.is_dir():
            raise LstmgenError(f"no run folder at {run.path}",
                               hint="train one first: lstmgen train CORPUS --out RUN")
        if not run.config_path.is_file():
            raise LstmgenError(f"{run.path} is not an lstmgen run folder (no config.json)",
                               hint="pass the folder that `lstmgen train --out` wrote")
        config = run.config
        if config.get("format_version") != FORMAT_VERSION:
            raise LstmgenError(
                f"{run.path} was written by lstmgen {config.get('lstmgen_version', '?')} "
                f"(run format {config.get('format_version')}); this lstmgen reads format "
                f"{FORMAT_VERSION}",
                hint="use the lstmgen version that wrote it, or retrain",
            )
        return run

    @property
    def config(self) -> dict:
        try:
            config = atomic.read_json(self.config_path)
        except (OSError, ValueError) as e:
            raise LstmgenError(f"{self.config_path} is damaged ({e})",
                               hint="restore it or retrain") from None
        if not isinstance(config, dict) or "model" not in config:
            raise LstmgenError(f"{self.config_path} is damaged (no model section)",
                               hint="restore it or retrain")
        return config

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.config["model"])

    @property
    def tokenizer(self):
        try:
            data = atomic.read_json(self.tokenizer_path)
        except (OSError, ValueError) as e:
            raise LstmgenError(f"{self.tokenizer_path} is missing or damaged ({e})",
                               hint="restore it or retrain") from None
        return tokenizer_from_dict(data)

    def has_checkpoint(self, which: str = "last") -> bool:
        return self.checkpoint_path(which).is_file()

    def trained_checkpoint(self, checkpoint: str = "best") -> Path:
        """The file of a checkpoint (``best`` falls back to ``last``)."""
        path = self.checkpoint_path(checkpoint)
        if checkpoint == "best" and not path.is_file():
            path = self.checkpoint_path("last")
        if not path.is_file():
            raise LstmgenError(f"{self.path} has no trained weights yet",
                               hint="train it first (or resume: lstmgen train --resume RUN)")
        return path

    def load_model(self, checkpoint: str = "best", tokenizer=None) -> tuple[LanguageModel, dict]:
        """Build the Keras model and load a checkpoint (``best`` falls back to ``last``)."""
        from lstmgen.checkpoint import load_checkpoint

        tokenizer = tokenizer or self.tokenizer
        path = self.trained_checkpoint(checkpoint)
        lm = LanguageModel(self.model_config, tokenizer.vocab_size, initialize=False)
        state = load_checkpoint(lm.training_model, path)
        return lm, state


class TrainedModel:
    """A trained model loaded from a run folder, ready to generate and evaluate.

    Example:
        >>> model = lstmgen.load("runs/books")                          # doctest: +SKIP
        >>> print(model.generate("It was a dark", length=400)[0])       # doctest: +SKIP
    """

    def __init__(self, run: Run, checkpoint: str = "best"):
        from lstmgen.checkpoint import read_state

        self.run = run
        self.tokenizer = run.tokenizer
        self.which = checkpoint
        self.checkpoint = run.trained_checkpoint(checkpoint)
        self.state = read_state(self.checkpoint)
        self._lm = None
        self._generator = None

    @property
    def lm(self) -> LanguageModel:
        """The Keras model, built on first use (generation does not need it)."""
        if self._lm is None:
            self._lm, _ = self.run.load_model(self.which, self.tokenizer)
        return self._lm

    @property
    def generator(self):
        if self._generator is None:
            from lstmgen.generation import Generator, model_weights

            try:  # straight from the file, without building (or importing) Keras
                self._generator = Generator.from_checkpoint(
                    self.checkpoint, self.run.model_config, self.tokenizer)
            except LstmgenError:  # a layout only Keras reads: it says what is wrong, if any
                self._generator = Generator(self.run.model_config, self.tokenizer,
                                            model_weights(self.lm))
        return self._generator

    def generate(self, prime="", length: int = 200, **sampling) -> list[str]:
        """``num_samples`` continuations of ``prime``, or one per prime of a list, each
        ending at ``length`` tokens or a ``stop`` sequence (see :meth:`Generator.stream`).

        Example:
            >>> model.generate(["ROMEO:", "JULIET:"], 300, stop="\\n\\n",
            ...                repetition_penalty=1.2, seed=3)        # doctest: +SKIP
        """
        return self.generator.generate(prime, length, **sampling)

    def stream(self, prime="", length: int = 200, **sampling):
        """Yield new text block by block, one string per sample; the returned
        :class:`~lstmgen.generation.TextStream` also tells the seed and finish reasons."""
        return self.generator.stream(prime, length, **sampling)

    def session(self, **sampling):
        """An interactive :class:`~lstmgen.session.Session`: feed text, get replies, the
        whole conversation carried as the model's state."""
        from lstmgen.session import Session

        return Session(self.generator, **sampling)

    def evaluate(self, source, *, encoding_errors: str = "strict", max_tokens=None,
                 carry_state: bool = True):
        """Loss, bits per character and perplexity of the model on a corpus (paths or an
        iterable of strings), streamed chunk by chunk; see :func:`evaluate_corpus`."""
        from lstmgen.evaluation import evaluate_corpus

        return evaluate_corpus(self, source, encoding_errors=encoding_errors,
                               max_tokens=max_tokens, carry_state=carry_state)

    def info(self) -> dict:
        """A summary: config, vocabulary, parameters, steps, best validation figures."""
        config = self.run.config
        return {
            "run": str(self.run.path),
            "lstmgen_version": config.get("lstmgen_version"),
            "tokenizer": config.get("tokenizer"),
            "vocab_size": self.tokenizer.vocab_size,
            "parameters": self.lm.count_params(),
            "model": config["model"],
            "train": config.get("train", {}),
            "corpus": config.get("corpus", {}),
            "step": self.state.get("step"),
            "epoch": self.state.get("epoch"),
            "best_val_loss": self.state.get("best_val_loss"),
            "best_val_bpc": self.state.get("best_val_bpc"),
            "best_val_fresh_start": self.state.get("best_val_fresh_start"),
            "best_val_word_perplexity": self.state.get("best_val_word_perplexity"),
            "best_step": self.state.get("best_step"),
        }


def load(path, checkpoint: str = "best") -> TrainedModel:
    """Load a trained model from a run folder.

    Example:
        >>> model = lstmgen.load("runs/books")                       # doctest: +SKIP
        >>> model.generate("The ", length=50, seed=0, temperature=0.7)   # doctest: +SKIP
    """
    return TrainedModel(Run.open(path), checkpoint)
