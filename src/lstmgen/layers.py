"""A faster LSTM layer for the JAX backend: same weights, same outputs as ``keras.layers.LSTM``.

Keras's generic recurrent loop (used on CPU, where there is no cuDNN) multiplies each
timestep's input by the input kernel *inside* the scan, and its gradient sums the kernel's
gradient one small matrix product per timestep. :class:`FusedLSTM` hoists the input projection
out of the loop: one ``(batch*time, input) x (input, 4*units)`` product for the whole sequence,
so only ``h @ recurrent_kernel`` remains per step. On the backward pass a custom gradient runs
the per-step recurrence alone and forms both kernels' gradients afterwards, again as single
large matrix products over all timesteps.

It subclasses ``keras.layers.LSTM`` and keeps its cell and variables, so checkpoints are
interchangeable with the stock layer; configurations it does not cover (masking, recurrent
dropout, ``go_backwards``, other activations, other backends) fall back to the stock loop.

Measured on a 2-core CPU (``bench/bench_training.py``) it is no faster than the stock layer
(0.8-1.1x): XLA's per-step products there already run near the matmul rate. It is kept for
accelerators, where per-step latency dominates (``bench/bench_gpu.py`` measures it), and is
not used by :class:`~lstmgen.model.LanguageModel`.
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

    def forward(z_x, h0, c0, w):
        def step(carry, z_t):
            h, c = carry
            i, f, g, o = jnp.split(z_t + h @ w, 4, axis=-1)
            i, f, g, o = _sigmoid(i), _sigmoid(f), jnp.tanh(g), _sigmoid(o)
            c = f * c + i * g
            h = o * jnp.tanh(c)
            return (h, c), (h, c, jnp.concatenate([i, f, g, o], axis=-1))

        (h, c), (hs, cs, acts) = jax.lax.scan(step, (h0, c0), z_x)
        return hs, cs, acts, h, c

    @jax.custom_vjp
    def recurrence(z_x, h0, c0, w):
        hs, _, _, h, c = forward(z_x, h0, c0, w)
        return hs, h, c

    def recurrence_fwd(z_x, h0, c0, w):
        hs, cs, acts, h, c = forward(z_x, h0, c0, w)
        return (hs, h, c), (h0, c0, w, hs, cs, acts)

    def recurrence_bwd(saved, grads):
        h0, c0, w, hs, cs, acts = saved
        d_hs, d_h_last, d_c_last = grads
        c_prev = jnp.concatenate([c0[None], cs[:-1]], axis=0)
        w_t = w.T

        def step(carry, inputs):
            dh_next, dc_next = carry
            act, cp, c_t, dh_out = inputs
            i, f, g, o = jnp.split(act, 4, axis=-1)
            tc = jnp.tanh(c_t)
            dh = dh_out + dh_next
            dc = dc_next + dh * o * (1.0 - tc * tc)
            dz = jnp.concatenate([dc * g * i * (1 - i), dc * cp * f * (1 - f),
                                  dc * i * (1 - g * g), dh * tc * o * (1 - o)], axis=-1)
            return (dz @ w_t, dc * f), dz

        (dh0, dc0), dz = jax.lax.scan(
            step, (d_h_last, d_c_last), (acts, c_prev, cs, d_hs), reverse=True
        )
        units = w.shape[0]
        h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
        # The recurrent kernel's gradient: one large product over all timesteps.
        dw = h_prev.reshape(-1, units).T @ dz.reshape(-1, 4 * units)
        return dz, dh0, dc0, dw

    recurrence.defvjp(recurrence_fwd, recurrence_bwd)
    return recurrence


_RECURRENCE = None


def _lstm_recurrence(z_x, h0, c0, w):
    global _RECURRENCE
    if _RECURRENCE is None:
        _RECURRENCE = _make_recurrence()
    return _RECURRENCE(z_x, h0, c0, w)


@keras.saving.register_keras_serializable(package="lstmgen")
class FusedLSTM(keras.layers.LSTM):
    """``keras.layers.LSTM`` with the input projection hoisted out of the time loop.

    A drop-in replacement: same arguments, same variables (so the same checkpoints), same
    outputs to float32 rounding.

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
        # (batch, time, 4*units), then time-major for the scan: a plain 2-D matrix product
        # (XLA on CPU is ~3x slower when asked for the time-major result directly).
        z_x = ops.transpose(ops.matmul(sequences, cell.kernel) + cell.bias, (1, 0, 2))
        h0, c0 = initial_state
        hs, h, c = _lstm_recurrence(z_x, h0, c0, ops.convert_to_tensor(cell.recurrent_kernel))
        outputs = ops.transpose(hs, (1, 0, 2)) if self.return_sequences else h
        return h, outputs, [h, c]
