"""The model: ``Embedding -> (LSTM | GRU) x layers -> Dense(vocab)``, built from a dataclass.

The Keras *training* model maps a batch of token windows to next-token logits at every
position. Generation (:mod:`lstmgen.generation`) reads the same layers' weights and runs one
cell step per token with the recurrent state carried.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from lstmgen.errors import LstmgenError

CELLS = ("lstm", "gru")
# What a word model needs instead of the character defaults: bench/bench_wikitext2.py
# (WikiText-2 on 2 CPU cores; bench/RESULTS.md).
WORD_MODEL_DEFAULTS = dict(embedding_dim=256, units=256, layers=1, dropout=0.2,
                           softmax="adaptive", tie_embeddings=True)


@dataclass
class ModelConfig:
    """Sizes of the network.

    Example:
        >>> ModelConfig(units=256, layers=2).cell
        'lstm'
    """

    embedding_dim: int = 64
    units: int = 512
    layers: int = 1
    dropout: float = 0.3
    # Dropout on the first layer's inputs (the embedded tokens), one mask per sequence.
    input_dropout: float = 0.0
    cell: str = "lstm"
    # Variational dropout on the recurrent state (one mask per sequence, Gal & Ghahramani).
    recurrent_dropout: float = 0.0
    # DropConnect on the recurrent weights (AWD-LSTM's weight drop): one mask per batch.
    weight_drop: float = 0.0
    # Layer normalisation inside the LSTM cell (each gate's pre-activation, and the cell
    # state before its tanh; Ba et al. 2016).
    layer_norm: bool = False
    # The output layer (lstmgen.heads): "full", "adaptive" (for large vocabularies), or
    # "auto" (adaptive from 8192 tokens; a run stores what it resolved to).
    softmax: str = "auto"
    cutoffs: list[int] | None = None  # adaptive softmax clusters (default: heads.default_cutoffs)
    tie_embeddings: bool = False  # the output matrix is the embedding matrix
    # Every stream (generation, a fresh training window, a reset lane) starts from a learned
    # state instead of zeros (lstmgen.start_state).
    learned_start: bool = True

    def validate(self) -> ModelConfig:
        for name in ("embedding_dim", "units", "layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise LstmgenError(f"{name} must be a positive integer, got {value!r}")
        for name in ("dropout", "input_dropout", "recurrent_dropout", "weight_drop"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise LstmgenError(f"{name.replace('_', '-')} must be in [0, 1), got {value!r}")
        if self.cell not in CELLS:
            raise LstmgenError(f"unknown cell {self.cell!r}", hint="use lstm or gru")
        if not isinstance(self.layer_norm, bool):
            raise LstmgenError(f"layer-norm must be true or false, got {self.layer_norm!r}")
        if self.layer_norm and self.cell != "lstm":
            raise LstmgenError("--layer-norm needs the LSTM cell",
                               hint="add --cell lstm, or drop --layer-norm")
        if self.weight_drop and self.cell != "lstm":
            raise LstmgenError("--weight-drop needs the LSTM cell",
                               hint="add --cell lstm, or --weight-drop 0")
        from lstmgen.heads import SOFTMAXES

        if self.softmax not in SOFTMAXES:
            raise LstmgenError(f"unknown softmax {self.softmax!r}",
                               hint=f"use one of {', '.join(SOFTMAXES)}")
        if not isinstance(self.learned_start, bool):
            raise LstmgenError(f"learned-start must be true or false, got "
                               f"{self.learned_start!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise LstmgenError(f"tie-embeddings must be true or false, got "
                               f"{self.tie_embeddings!r}")
        if self.tie_embeddings and self.embedding_dim != self.units:
            raise LstmgenError(
                f"tied embeddings need --embedding-dim equal to --units (got "
                f"{self.embedding_dim} and {self.units})",
                hint=f"add --embedding-dim {self.units}, or drop --tie-embeddings")
        return self

    @classmethod
    def defaults(cls, tokenizer: str = "char") -> ModelConfig:
        """The default sizes for a tokenizer: the dataclass defaults for characters (and
        BPE), :data:`WORD_MODEL_DEFAULTS` for words.

        Example:
            >>> ModelConfig.defaults("word").tie_embeddings, ModelConfig.defaults().units
            (True, 512)
        """
        return cls(**WORD_MODEL_DEFAULTS) if tokenizer == "word" else cls()

    def for_vocabulary(self, vocab_size: int) -> ModelConfig:
        """This config with ``softmax`` and ``cutoffs`` resolved for ``vocab_size`` tokens.

        Example:
            >>> ModelConfig().for_vocabulary(33278).cutoffs
            [2000, 10000]
        """
        from lstmgen.heads import check_cutoffs, default_cutoffs, resolve_softmax

        softmax = resolve_softmax(self.softmax, vocab_size)
        if softmax == "full":
            return replace(self, softmax=softmax, cutoffs=None)
        cutoffs = self.cutoffs or default_cutoffs(vocab_size)
        return replace(self, softmax=softmax, cutoffs=check_cutoffs(cutoffs, vocab_size))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        # Runs saved before these settings had a full softmax, started from zeros and
        # dropped no weights.
        data = {"softmax": "full", "learned_start": False, "weight_drop": 0.0, **data}
        return cls(**{k: v for k, v in data.items() if k in known}).validate()

    @property
    def states_per_layer(self) -> int:
        return 2 if self.cell == "lstm" else 1


def _host_zeros(shape, dtype=None):
    return np.zeros(shape, dtype or "float32")


def start_batch(starts: list | None, batch: int, units: int, count: int) -> list[np.ndarray]:
    """``count`` start states of shape ``(batch, units)`` from the learned start vectors
    (``None``: zeros), as host arrays for the JAX programs that read streams.

    Example:
        >>> [a.shape for a in start_batch(None, batch=2, units=3, count=2)]
        [(2, 3), (2, 3)]
        >>> start_batch([np.arange(3.0)], batch=2, units=3, count=1)[0].tolist()
        [[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]
    """
    if starts is None:
        return [np.zeros((batch, units), np.float32) for _ in range(count)]
    return [np.broadcast_to(np.asarray(s, np.float32), (batch, units)).copy() for s in starts]


class LanguageModel:
    """The layers of one model and the Keras training model over them.

    Example:
        >>> lm = LanguageModel(ModelConfig(units=32, embedding_dim=8), vocab_size=20)
        >>> lm.training_model.output_shape
        (None, None, 20)
    """

    def __init__(self, config: ModelConfig, vocab_size: int, initialize: bool = True):
        import keras

        self.config = config = config.validate().for_vocabulary(vocab_size)
        self.vocab_size = vocab_size
        # Weights about to be loaded need no random (orthogonal: a QR) initialisation, and
        # host zeros: a JAX initializer compiles one small XLA program per weight shape.
        rnn_init = {} if initialize else {"kernel_initializer": _host_zeros,
                                          "recurrent_initializer": _host_zeros,
                                          "bias_initializer": _host_zeros}
        self.embedding = keras.layers.Embedding(
            vocab_size, config.embedding_dim, name="embedding",
            **({} if initialize else {"embeddings_initializer": _host_zeros}))
        from lstmgen.layers import FusedLSTM

        rnn = FusedLSTM if config.cell == "lstm" else keras.layers.GRU
        self.rnns = [
            rnn(config.units, return_sequences=True, return_state=True,
                dropout=config.dropout if i > 0 else config.input_dropout,
                recurrent_dropout=config.recurrent_dropout, name=f"{config.cell}_{i}",
                **({"weight_drop": config.weight_drop} if config.weight_drop else {}),
                **({"layer_norm": True} if config.layer_norm else {}),
                **rnn_init)
            for i in range(config.layers)
        ]
        # The first LSTM reads its inputs through the embedding table: a lookup instead of
        # a product per token (the stock layer, in benchmarks and tests, has no such method).
        self._fold = hasattr(self.rnns[0], "fold_embedding")
        if self._fold:
            self.rnns[0].fold_embedding(self.embedding)
        self.output_dropout = keras.layers.Dropout(config.dropout, name="output_dropout")
        from lstmgen.heads import make_output_layer

        self.head = make_output_layer(
            config.softmax, config.cutoffs, vocab_size,
            embedding=self.embedding if config.tie_embeddings else None, initialize=initialize)

        from lstmgen.start_state import StartState

        self.start = StartState(config.units, self.num_states) if config.learned_start else None
        tokens = keras.Input((None,), dtype="int32", name="tokens")
        self.training_model = keras.Model(tokens, self._apply(tokens), name="lstmgen")
        self._stateful_model = None

    def _apply(self, tokens):
        return self.apply_from(tokens, None)[0]

    @property
    def stateful_model(self):
        """The same layers as a model that also takes and returns the recurrent states,
        ``[tokens, *states] -> [logits, *states]``: long text read window by window.

        Example:
            >>> lm = LanguageModel(ModelConfig(units=32, embedding_dim=8, layers=2), 20)
            >>> [tuple(t.shape) for t in lm.stateful_model.outputs]
            [(None, None, 20), (None, 32), (None, 32), (None, 32), (None, 32)]
        """
        if self._stateful_model is None:
            import keras

            tokens = keras.Input((None,), dtype="int32", name="tokens")
            states = [keras.Input((self.config.units,), name=f"state_{i}")
                      for i in range(self.num_states)]
            logits, final = self.apply_from(tokens, states)
            self._stateful_model = keras.Model([tokens, *states], [logits, *final],
                                               name="lstmgen_stateful")
        return self._stateful_model

    def apply_from(self, tokens, states: list) -> tuple:
        """The layers on ``tokens`` from initial ``states`` (per layer: h, c for an LSTM);
        returns the logits and the final states (``states=None``: from the start state)."""
        k = self.config.states_per_layer
        if states is None and self.start is not None:
            states = self.start(tokens)
        x, final = self.embedding(tokens), []
        for i, rnn in enumerate(self.rnns):
            kwargs = {"token_ids": tokens} if i == 0 and self._fold else {}
            if states is not None:
                kwargs["initial_state"] = states[k * i : k * i + k]
            x, *carried = rnn(x, **kwargs)
            final += carried
        return self.head(self.output_dropout(x)), final

    @property
    def num_states(self) -> int:
        return self.config.layers * self.config.states_per_layer

    def count_params(self) -> int:
        return self.training_model.count_params()

    def flops_per_token(self) -> int:
        """Forward + backward FLOPs per trained token (6 x multiply-adds of the matmuls)."""
        from lstmgen.heads import output_shapes

        c = self.config
        gates = 4 if c.cell == "lstm" else 3
        rnn = sum(gates * c.units * ((c.embedding_dim if i == 0 else c.units) + c.units)
                  for i in range(c.layers))
        shapes = output_shapes(c.softmax, c.cutoffs, c.units, self.vocab_size,
                               c.tie_embeddings)
        head = sum(int(np.prod(s)) for s in shapes if len(s) == 2)
        if c.tie_embeddings:
            head += c.units * (self.vocab_size if c.softmax == "full" else c.cutoffs[0])
        return 6 * (rnn + head)
