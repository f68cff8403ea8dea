"""The model: ``Embedding -> (LSTM | GRU) x layers -> Dense(vocab)``, built from a dataclass.

Two Keras models share one set of layers: the *training* model maps a batch of token windows
to next-token logits at every position; the *step* model takes one token and the recurrent
state of every layer and returns logits and the new state, so generation costs one step per
token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from lstmgen.errors import LstmgenError

CELLS = ("lstm", "gru")


@dataclass
class ModelConfig:
    """Sizes of the network.

    Example:
        >>> ModelConfig(units=256, layers=2).cell
        'lstm'
    """

    embedding_dim: int = 64
    units: int = 256
    layers: int = 1
    dropout: float = 0.0
    cell: str = "lstm"

    def validate(self) -> ModelConfig:
        for name in ("embedding_dim", "units", "layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise LstmgenError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LstmgenError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.cell not in CELLS:
            raise LstmgenError(f"unknown cell {self.cell!r}", hint="use lstm or gru")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}).validate()

    @property
    def states_per_layer(self) -> int:
        return 2 if self.cell == "lstm" else 1


class LanguageModel:
    """The layers of one model and the two Keras models over them.

    Example:
        >>> lm = LanguageModel(ModelConfig(units=32, embedding_dim=8), vocab_size=20)
        >>> lm.training_model.output_shape
        (None, None, 20)
    """

    def __init__(self, config: ModelConfig, vocab_size: int):
        import keras

        self.config = config.validate()
        self.vocab_size = vocab_size
        self.embedding = keras.layers.Embedding(vocab_size, config.embedding_dim,
                                                name="embedding")
        rnn = keras.layers.LSTM if config.cell == "lstm" else keras.layers.GRU
        self.rnns = [
            rnn(config.units, return_sequences=True, return_state=True,
                dropout=config.dropout if i > 0 else 0.0, name=f"{config.cell}_{i}")
            for i in range(config.layers)
        ]
        self.output_dropout = keras.layers.Dropout(config.dropout, name="output_dropout")
        self.head = keras.layers.Dense(vocab_size, name="logits")

        tokens = keras.Input((None,), dtype="int32", name="tokens")
        logits, _ = self._apply(tokens, None)
        self.training_model = keras.Model(tokens, logits, name="lstmgen")

        step_tokens = keras.Input((1,), dtype="int32", name="token")
        states = [
            keras.Input((config.units,), name=f"state_{i}_{j}")
            for i in range(config.layers)
            for j in range(config.states_per_layer)
        ]
        step_logits, new_states = self._apply(step_tokens, states)
        self.step_model = keras.Model([step_tokens, *states], [step_logits, *new_states],
                                      name="lstmgen_step")

    def _apply(self, tokens, states):
        x = self.embedding(tokens)
        new_states = []
        per = self.config.states_per_layer
        for i, rnn in enumerate(self.rnns):
            initial = None if states is None else states[i * per : (i + 1) * per]
            x, *layer_states = rnn(x, initial_state=initial)
            new_states.extend(layer_states)
        return self.head(self.output_dropout(x)), new_states

    @property
    def num_states(self) -> int:
        return self.config.layers * self.config.states_per_layer

    def count_params(self) -> int:
        return self.training_model.count_params()

    def flops_per_token(self) -> int:
        """Forward + backward FLOPs per trained token (6 x multiply-adds of the matmuls)."""
        c = self.config
        gates = 4 if c.cell == "lstm" else 3
        rnn = sum(gates * c.units * ((c.embedding_dim if i == 0 else c.units) + c.units)
                  for i in range(c.layers))
        return 6 * (rnn + c.units * self.vocab_size)
