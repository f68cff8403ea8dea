"""A faster LSTM layer for the JAX backend: same weights, same outputs as ``keras.layers.LSTM``.

Keras's generic recurrent loop (used on CPU, where there is no cuDNN) multiplies each
timestep's input by the input kernel *inside* the scan, and autodiff of that scan forms the
kernels' gradients one small matrix product per timestep, accumulated into a full-size
gradient at every step. :class:`FusedLSTM` runs the same maths in an order that suits XLA on
a CPU: the input projection of all timesteps as one product (on the time-major input, so the
4x wider projection is never transposed), only ``h @ recurrent_kernel`` and the gates inside
the loop, and a custom gradient whose backward loop carries ``dh`` and ``dc`` alone; the
weight gradients are then single large products over all timesteps.

It subclasses ``keras.layers.LSTM`` and keeps its cell and variables, so checkpoints are
interchangeable with the stock layer; configurations it does not cover (masking, recurrent
dropout, ``go_backwards``, other activations, other backends) fall back to the stock loop, and
so does a GPU, where Keras runs cuDNN's LSTM.
:class:`~lstmgen.model.LanguageModel` uses it for every LSTM layer. Measured in
``bench/bench_training.py`` (2-core CPU): 1.0-1.15x the stock layer's training speed.
"""

from __future__ import annotations

import keras
from keras import ops


def _make_recurrence():
    import jax
    import jax.numpy as jnp

    def _sigmoid(x):
        # The same function as jax.nn.sigmoid (to float32 rounding); XLA's CPU tanh is a
        # vectorised rational approximation, faster than its exp-based logistic.
        return 0.5 * jnp.tanh(0.5 * x) + 0.5

    def forward(xs, h0, c0, kernel, recurrent, bias):
        steps, batch, features = xs.shape
        # All timesteps' input projections as one product, already time-major.
        z_x = (xs.reshape(steps * batch, features) @ kernel).reshape(steps, batch, -1)

        def step(carry, z_t):
            h, c = carry
            i, f, g, o = jnp.split(z_t + bias + h @ recurrent, 4, axis=-1)
            i, f, g, o = _sigmoid(i), _sigmoid(f), jnp.tanh(g), _sigmoid(o)
            c = f * c + i * g
            h = o * jnp.tanh(c)
            return (h, c), (h, c, jnp.concatenate([i, f, g, o], axis=-1))

        (h, c), (hs, cs, acts) = jax.lax.scan(step, (h0, c0), z_x)
        return hs, cs, acts, h, c

    @jax.custom_vjp
    def recurrence(xs, h0, c0, kernel, recurrent, bias):
        hs, _, _, h, c = forward(xs, h0, c0, kernel, recurrent, bias)
        return hs, h, c

    def recurrence_fwd(xs, h0, c0, kernel, recurrent, bias):
        hs, cs, acts, h, c = forward(xs, h0, c0, kernel, recurrent, bias)
        return (hs, h, c), (xs, h0, c0, kernel, recurrent, hs, cs, acts)

    def recurrence_bwd(saved, grads):
        xs, h0, c0, kernel, recurrent, hs, cs, acts = saved
        d_hs, d_h_last, d_c_last = grads
        c_prev = jnp.concatenate([c0[None], cs[:-1]], axis=0)
        recurrent_t = recurrent.T

        def step(carry, inputs):
            dh_next, dc_next = carry
            act, cp, c_t, dh_out = inputs
            i, f, g, o = jnp.split(act, 4, axis=-1)
            tc = jnp.tanh(c_t)
            dh = dh_out + dh_next
            dc = dc_next + dh * o * (1.0 - tc * tc)
            dz = jnp.concatenate([dc * g * i * (1 - i), dc * cp * f * (1 - f),
                                  dc * i * (1 - g * g), dh * tc * o * (1 - o)], axis=-1)
            return (dz @ recurrent_t, dc * f), dz

        (dh0, dc0), dz = jax.lax.scan(
            step, (d_h_last, d_c_last), (acts, c_prev, cs, d_hs), reverse=True
        )
        # Every weight gradient is one large product over all timesteps, not a small one
        # per step accumulated in the loop.
        steps, batch, features = xs.shape
        h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
        dz_2d = dz.reshape(steps * batch, -1)
        d_recurrent = jnp.einsum("tbh,tbg->hg", h_prev, dz)
        d_kernel = xs.reshape(steps * batch, features).T @ dz_2d
        d_xs = (dz_2d @ kernel.T).reshape(steps, batch, features)
        return d_xs, dh0, dc0, d_kernel, d_recurrent, dz_2d.sum(axis=0)

    recurrence.defvjp(recurrence_fwd, recurrence_bwd)
    return recurrence


_RECURRENCE = None


def _on_gpu() -> bool:
    import jax

    return jax.default_backend() == "gpu"


def _lstm_recurrence(xs, h0, c0, kernel, recurrent, bias):
    global _RECURRENCE
    if _RECURRENCE is None:
        _RECURRENCE = _make_recurrence()
    return _RECURRENCE(xs, h0, c0, kernel, recurrent, bias)


@keras.saving.register_keras_serializable(package="lstmgen")
class FusedLSTM(keras.layers.LSTM):
    """``keras.layers.LSTM`` with the input projection hoisted out of the time loop and a
    custom gradient (see the module's docstring).

    A drop-in replacement: same arguments, same variables (so the same checkpoints), same
    outputs and gradients to float32 rounding.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")
        >>> stock = keras.layers.LSTM(4, return_sequences=True)
        >>> fused = FusedLSTM(4, return_sequences=True)
        >>> _ = stock(x), fused(x)
        >>> fused.set_weights(stock.get_weights())
        >>> bool(np.allclose(stock(x), fused(x), atol=1e-5))
        True
    """

    def _fusable(self, mask) -> bool:
        cell = self.cell
        return (
            keras.backend.backend() == "jax"
            and not _on_gpu()  # Keras's own path uses cuDNN there
            and mask is None
            and not self.go_backwards
            and not cell.recurrent_dropout
            and cell.use_bias
            and cell.activation is keras.activations.tanh
            and cell.recurrent_activation is keras.activations.sigmoid
        )

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not self._fusable(mask):
            return super().inner_loop(sequences, initial_state, mask, training=training)
        cell = self.cell
        if training and 0.0 < cell.dropout < 1.0:
            # The stock loop applies one mask per sequence at every timestep; so does this.
            sequences = sequences * ops.expand_dims(cell.get_dropout_mask(sequences[:, 0, :]), 1)
        # Time-major before the input projection: transposing the (batch, time, features)
        # input is cheaper than transposing the 4x wider projection.
        h0, c0 = initial_state
        hs, h, c = _lstm_recurrence(
            ops.transpose(sequences, (1, 0, 2)), h0, c0, ops.convert_to_tensor(cell.kernel),
            ops.convert_to_tensor(cell.recurrent_kernel), ops.convert_to_tensor(cell.bias))
        outputs = ops.transpose(hs, (1, 0, 2)) if self.return_sequences else h
        return h, outputs, [h, c]
