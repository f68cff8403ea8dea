"""The learned state every stream starts from.

A generation starts from one state whatever its prime, and so does every fresh training
window (``--no-carry-state``), every lane that ``--state-reset`` or ``--first-epoch-reset``
restarts (:mod:`lstmgen.carried_state`) and every evaluation stream. Zeros are a state the network
never produces itself; a learned start (one trainable vector per recurrent state: h and c of
each LSTM layer) lets the restarted windows teach the model where to begin, so fewer of them
buy the same fresh-start loss and the lanes keep more of their long context
(``bench/bench_fresh_start.py``). Runs saved before it existed start from zeros
(``ModelConfig.learned_start`` false).
"""

from __future__ import annotations

import keras
from keras import ops

NAME = "start_state"


class StartState(keras.layers.Layer):
    """Trainable start states, zeros at first.

    Called on a batch of tokens it gives their start states, one ``(batch, units)`` array per
    recurrent state; called with ``carried`` states and a ``keep`` mask (``(batch, 1)``: 1 for
    rows whose state goes on, whose carried state it returns; 0 for rows that restart, whose
    carried state must be zeros) it adds the start state to the restarting rows.

    Example:
        >>> import numpy as np
        >>> start = StartState(units=3, count=2)
        >>> _ = start.starts[0].assign(np.ones(3, "float32"))
        >>> [tuple(s.shape) for s in start(np.zeros((4, 7), "int32"))]
        [(4, 3), (4, 3)]
        >>> h, c = start(np.zeros((2, 7), "int32"), carried=[np.full((2, 3), 5.0)] * 2,
        ...              keep=np.array([[1.0], [0.0]]))
        >>> np.asarray(h).tolist()
        [[5.0, 5.0, 5.0], [6.0, 6.0, 6.0]]
    """

    def __init__(self, units: int, count: int, **kwargs):
        super().__init__(name=kwargs.pop("name", NAME), **kwargs)
        self.units, self.count = units, count
        from lstmgen.model import _host_zeros  # a JAX initializer compiles a small program

        self.starts = [self.add_weight(shape=(units,), initializer=_host_zeros,
                                       name=f"start_{i}")
                       for i in range(count)]

    def call(self, tokens, carried=None, keep=None):
        batch = ops.shape(tokens)[0]
        starts = [ops.broadcast_to(ops.expand_dims(s.value, 0), (batch, self.units))
                  for s in self.starts]
        if carried is None:
            return starts
        restart = 1.0 - ops.cast(keep, "float32")
        return [c + restart * s for c, s in zip(carried, starts, strict=True)]

    def compute_output_spec(self, tokens, carried=None, keep=None):
        return [keras.KerasTensor((tokens.shape[0], self.units)) for _ in range(self.count)]
