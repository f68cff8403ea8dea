"""Training with the recurrent state carried from one batch to the next.

By default every training window starts from a zero state, so the model only ever learns to
predict from the last ``seq_len`` tokens. With ``TrainConfig(carry_state=True)`` batch row
``i`` reads one contiguous lane of the corpus, window after window (see
:class:`~lstmgen.dataset.WindowOrder`), and each window starts from the state the previous one
ended in: truncated backpropagation through time, as char-rnn trains. Gradients stop at the
window boundary; the state flows on. This is also how the model is used afterwards —
generation and evaluation carry the state through the whole text.

Every generation, though, starts from the model's start state (learned:
:class:`~lstmgen.start_state.StartState`), and a lane reaches it only at the start of an epoch: on a
large corpus a model would almost never see it, and its first tokens after a short prime
would be garbage. So at each window a random share of the lanes starts again from the start
state, which those windows train: the dataset draws the ``keep`` mask from (seed, epoch,
batch) (:meth:`~lstmgen.dataset.WindowOrder.keep`), so resume stays exact. The share is small
in the first pass over the text (``TrainConfig.first_epoch_reset``, 0.04), where every window
is new text and a broken lane costs the carried loss most, and larger after it
(``state_reset``, 0.3; :meth:`~lstmgen.training.TrainConfig.reset_share`). Reading some lanes'
windows a second time from the start state as extra rows, which leaves every lane unbroken,
did worse on both counts (``bench/RESULTS.md``, "Fresh start").

The states live in the non-trainable variables of a :class:`StateStore` layer in a second Keras
model over the same layers (:func:`carried_training_model`), so ``fit``, the optimizer and the
JAX trainer's variable threading are all stock Keras. The training model the rest of lstmgen
loads (:attr:`LanguageModel.training_model`) is unchanged: a checkpoint of a carried-state run
loads into it, and the stored states (Keras saves them with the store layer) only
matter when the run is resumed.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

STORE_NAME = "carried_state"


class StateStore(keras.layers.Layer):
    """The recurrent states at the end of the last training batch.

    Called on the ``keep`` mask of a batch (shape ``(batch, 1)``: 1 carries a row's state on,
    0 gives it zeros, to which the model adds its start state) it reads them, the next
    window's initial states; called on
    ``[logits, *final_states]`` it stores the final states and passes the logits on. Both calls
    sit in the same graph, so one ``fit`` step reads, trains and writes.

    Example:
        >>> store = StateStore(batch_size=2, units=3, count=2)
        >>> [tuple(v.shape) for v in store.states]
        [(2, 3), (2, 3)]
        >>> _ = store([ops.zeros((2, 5, 7)), ops.ones((2, 3)), ops.ones((2, 3))])
        >>> float(ops.sum(store(ops.ones((2, 1)))[1]))
        6.0
        >>> float(ops.sum(store(ops.array([[1.0], [0.0]]))[1]))  # row 1 starts afresh
        3.0
    """

    def __init__(self, batch_size: int, units: int, count: int, **kwargs):
        super().__init__(name=kwargs.pop("name", STORE_NAME), **kwargs)
        self.batch_size, self.units, self.count = batch_size, units, count
        self.states = [
            self.add_weight(shape=(batch_size, units), initializer="zeros", trainable=False,
                            name=f"state_{i}")
            for i in range(count)
        ]

    def call(self, inputs):
        if isinstance(inputs, (list, tuple)):
            logits, *final = inputs
            for variable, value in zip(self.states, final, strict=True):
                variable.assign(value)
            return logits
        # Truncated backpropagation: the gradient stops where the window starts.
        keep = ops.cast(inputs, "float32")
        return [ops.stop_gradient(state.value) * keep for state in self.states]

    def compute_output_spec(self, inputs):
        if isinstance(inputs, (list, tuple)):
            return keras.KerasTensor(inputs[0].shape, dtype=inputs[0].dtype)
        return [keras.KerasTensor((self.batch_size, self.units)) for _ in range(self.count)]

    def reset(self) -> None:
        """Zero the states (at the start of each epoch: every lane starts over)."""
        for state in self.states:
            state.assign(np.zeros(state.shape, state.dtype))


def carried_training_model(lm, batch_size: int) -> keras.Model:
    """A model over ``lm``'s layers that starts each batch from the last one's final states.

    Its inputs are the tokens and the ``keep`` mask (rows whose state goes on); its batch size
    is fixed (the store holds one state per batch row). Same variables as
    ``lm.training_model`` plus the store's.

    Example:
        >>> from lstmgen.model import LanguageModel, ModelConfig
        >>> lm = LanguageModel(ModelConfig(units=8, embedding_dim=4), vocab_size=10)
        >>> model = carried_training_model(lm, batch_size=3)
        >>> model.output_shape
        (3, None, 10)
    """
    store = StateStore(batch_size, lm.config.units, lm.num_states)
    tokens = keras.Input((None,), batch_size=batch_size, dtype="int32", name="tokens")
    keep = keras.Input((1,), batch_size=batch_size, dtype="float32", name="keep")
    states = store(keep)
    if lm.start is not None:
        states = lm.start(tokens, carried=states, keep=keep)
    logits, final = lm.apply_from(tokens, states)
    logits = store([logits, *final])
    model = keras.Model([tokens, keep], logits, name="lstmgen_carried")
    model.state_store = store
    return model
