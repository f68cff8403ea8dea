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
interchangeable with the stock layer. Dropout and recurrent dropout draw the stock layer's
masks (one per gate with recurrent dropout, as Keras does). Configurations it does not cover
(masking, ``go_backwards``, other activations, other backends) fall back to the stock loop,
and so does a GPU, where Keras runs cuDNN's LSTM.
:class:`~lstmgen.model.LanguageModel` uses it for every LSTM layer. Measured in
``bench/bench_training.py`` (2-core CPU): 0.97-1.18x the stock layer's training speed with
one layer and no recurrent dropout (least at 256 units), 1.27x with recurrent
dropout, 1.50x with two layers and recurrent dropout (``bench/RESULTS.md``).
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

    # With recurrent dropout, Keras's LSTM draws one mask per gate (and one input mask per
    # gate): gate g sees (x * in_mask[g]) @ kernel_g + (h * rec_mask[g]) @ recurrent_g. The
    # masks are (4, batch, features) arrays, or None for none; their cotangents are zero.
    # Per gate, the products are four separate ones on column blocks sliced once, outside
    # the loops (a batched einsum over the gates ran slower than the stock layer).
    def project(xs, kernel, in_mask):
        steps, batch, features = xs.shape
        if in_mask is None:  # all timesteps as one product, already time-major
            z = xs.reshape(steps * batch, features) @ kernel
        else:
            z = jnp.concatenate([(xs * m).reshape(steps * batch, features) @ k
                                 for m, k in zip(in_mask, jnp.split(kernel, 4, axis=1))], -1)
        return z.reshape(steps, batch, -1)

    def recur(recurrent, rec_mask):
        if rec_mask is None:
            return lambda h: h @ recurrent
        blocks = jnp.split(recurrent, 4, axis=1)
        return lambda h: jnp.concatenate([(h * m) @ r for m, r in zip(rec_mask, blocks)], -1)

    def forward(xs, h0, c0, kernel, recurrent, bias, in_mask, rec_mask):
        recurrent_product = recur(recurrent, rec_mask)

        def step(carry, z_t):
            h, c = carry
            i, f, g, o = jnp.split(z_t + bias + recurrent_product(h), 4, axis=-1)
            i, f, g, o = _sigmoid(i), _sigmoid(f), jnp.tanh(g), _sigmoid(o)
            c = f * c + i * g
            h = o * jnp.tanh(c)
            return (h, c), (h, c, jnp.concatenate([i, f, g, o], axis=-1))

        (h, c), (hs, cs, acts) = jax.lax.scan(step, (h0, c0), project(xs, kernel, in_mask))
        return hs, cs, acts, h, c

    @jax.custom_vjp
    def recurrence(xs, h0, c0, kernel, recurrent, bias, in_mask, rec_mask):
        hs, _, _, h, c = forward(xs, h0, c0, kernel, recurrent, bias, in_mask, rec_mask)
        return hs, h, c

    def recurrence_fwd(xs, h0, c0, kernel, recurrent, bias, in_mask, rec_mask):
        hs, cs, acts, h, c = forward(xs, h0, c0, kernel, recurrent, bias, in_mask, rec_mask)
        saved = (xs, h0, c0, kernel, recurrent, hs, cs, acts, in_mask, rec_mask)
        return (hs, h, c), saved

    def recurrence_bwd(saved, grads):
        xs, h0, c0, kernel, recurrent, hs, cs, acts, in_mask, rec_mask = saved
        d_hs, d_h_last, d_c_last = grads
        c_prev = jnp.concatenate([c0[None], cs[:-1]], axis=0)
        if rec_mask is None:
            recurrent_t = recurrent.T
            d_h_prev = lambda dz: dz @ recurrent_t  # noqa: E731
        else:
            blocks_t = [r.T for r in jnp.split(recurrent, 4, axis=1)]

            def d_h_prev(dz):
                return sum((d @ r) * m for d, r, m in
                           zip(jnp.split(dz, 4, axis=-1), blocks_t, rec_mask))

        def step(carry, inputs):
            dh_next, dc_next = carry
            act, cp, c_t, dh_out = inputs
            i, f, g, o = jnp.split(act, 4, axis=-1)
            tc = jnp.tanh(c_t)
            dh = dh_out + dh_next
            dc = dc_next + dh * o * (1.0 - tc * tc)
            dz = jnp.concatenate([dc * g * i * (1 - i), dc * cp * f * (1 - f),
                                  dc * i * (1 - g * g), dh * tc * o * (1 - o)], axis=-1)
            return (d_h_prev(dz), dc * f), dz

        (dh0, dc0), dz = jax.lax.scan(
            step, (d_h_last, d_c_last), (acts, c_prev, cs, d_hs), reverse=True
        )
        # Every weight gradient is one large product over all timesteps, not a small one
        # per step accumulated in the loop.
        steps, batch, features = xs.shape
        h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
        dz_2d = dz.reshape(steps * batch, -1)
        dz_gates = jnp.split(dz, 4, axis=-1)  # per gate, with masks (XLA drops it otherwise)
        if rec_mask is None:
            d_recurrent = jnp.einsum("tbh,tbg->hg", h_prev, dz)
        else:
            d_recurrent = jnp.concatenate(
                [jnp.einsum("tbh,tbg->hg", h_prev * m, d) for m, d in zip(rec_mask, dz_gates)],
                axis=1)
        if in_mask is None:
            d_kernel = xs.reshape(steps * batch, features).T @ dz_2d
            d_xs = (dz_2d @ kernel.T).reshape(steps, batch, features)
        else:
            d_kernel = jnp.concatenate(
                [jnp.einsum("tbe,tbg->eg", xs * m, d) for m, d in zip(in_mask, dz_gates)],
                axis=1)
            d_xs = sum(jnp.einsum("tbg,eg->tbe", d, k) * m for m, d, k in
                       zip(in_mask, dz_gates, jnp.split(kernel, 4, axis=1)))
        zeros = [None if m is None else jnp.zeros_like(m) for m in (in_mask, rec_mask)]
        return (d_xs, dh0, dc0, d_kernel, d_recurrent, dz_2d.sum(axis=0), *zeros)

    recurrence.defvjp(recurrence_fwd, recurrence_bwd)
    return recurrence


_RECURRENCE = None


def _on_gpu() -> bool:
    import jax

    return jax.default_backend() == "gpu"


def _lstm_recurrence(xs, h0, c0, kernel, recurrent, bias, in_mask=None, rec_mask=None):
    global _RECURRENCE
    if _RECURRENCE is None:
        _RECURRENCE = _make_recurrence()
    return _RECURRENCE(xs, h0, c0, kernel, recurrent, bias, in_mask, rec_mask)


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
            and cell.use_bias
            and cell.activation is keras.activations.tanh
            and cell.recurrent_activation is keras.activations.sigmoid
        )

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not self._fusable(mask):
            return super().inner_loop(sequences, initial_state, mask, training=training)
        cell = self.cell
        h0, c0 = initial_state
        in_mask = rec_mask = None
        # The stock loop's masks, drawn in its order: one per sequence, used at every step;
        # with recurrent dropout Keras draws one per gate (four) of each kind.
        if training and 0.0 < cell.dropout < 1.0:
            dropout_mask = cell.get_dropout_mask(sequences[:, 0, :])
            if isinstance(dropout_mask, (list, tuple)):
                in_mask = ops.stack(dropout_mask)
            else:
                sequences = sequences * ops.expand_dims(dropout_mask, 1)
        if training and 0.0 < cell.recurrent_dropout < 1.0:
            rec_mask = ops.stack(cell.get_recurrent_dropout_mask(h0))
        # Time-major before the input projection: transposing the (batch, time, features)
        # input is cheaper than transposing the 4x wider projection.
        hs, h, c = _lstm_recurrence(
            ops.transpose(sequences, (1, 0, 2)), h0, c0, ops.convert_to_tensor(cell.kernel),
            ops.convert_to_tensor(cell.recurrent_kernel), ops.convert_to_tensor(cell.bias),
            in_mask, rec_mask)
        outputs = ops.transpose(hs, (1, 0, 2)) if self.return_sequences else h
        return h, outputs, [h, c]
