"""A faster LSTM layer for the JAX backend: same weights, same outputs as ``keras.layers.LSTM``.

Keras's generic recurrent loop (used on CPU, where there is no cuDNN) multiplies each
timestep's input by the input kernel *inside* the scan, and autodiff of that scan forms the
kernels' gradients one small matrix product per timestep, accumulated into a full-size
gradient at every step. :class:`FusedLSTM` runs the same maths in an order that suits XLA on
a CPU: the input projection of all timesteps as one product (on the time-major input, so the
4x wider projection is never transposed), only ``h @ recurrent_kernel`` and the gates inside
the loop, and a custom gradient whose backward loop carries ``dh`` and ``dc`` alone; the
weight gradients are then single large products over all timesteps.

Reading embedded tokens (:meth:`FusedLSTM.fold_embedding`), the input projection of a token
is a row of ``embeddings @ kernel``: with a character vocabulary, a batch holds each token
many times over, and looking the rows up (gradient: a scatter-add into the vocabulary's
rows) replaces three products over the whole batch by three over the vocabulary.

It subclasses ``keras.layers.LSTM`` and keeps its cell and variables, so checkpoints are
interchangeable with the stock layer. Dropout and recurrent dropout draw the stock layer's
masks (one per gate with recurrent dropout, as Keras does). Configurations it does not cover
(masking, ``go_backwards``, other activations, other backends) fall back to the stock loop,
and so does a GPU, where Keras runs cuDNN's LSTM.
:class:`~lstmgen.model.LanguageModel` uses it for every LSTM layer. Measured in
``bench/bench_training.py`` (2-core CPU): 1.09-1.27x the stock layer's training speed with
one layer and no recurrent dropout (1.13x on the CLI's default model), 1.27x with recurrent
dropout, 1.50x with two layers and recurrent dropout (``bench/RESULTS.md``).

Without recurrent dropout, the time loop runs in a native kernel when it builds and loads
(:mod:`lstmgen.native`: one XLA FFI call per loop, a packed-weight GEMM per step, the gate
maths fused in C++); ``LSTMGEN_NATIVE=0`` keeps the JAX loop.

``layer_norm=True`` makes it the layer-normalised cell (Ba et al. 2016; ``--layer-norm``):
each gate's pre-activation normalised over its units, scaled by ``gate_scale`` and shifted
by the cell's bias, and the new cell state normalised (``cell_scale``, ``cell_shift``)
before its tanh; three more variables, on the layer itself. It runs only in this loop
(native, or JAX's autodiff of a scan), never Keras's.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
from keras import ops


def _recur_product(recurrent, rec_mask):
    """``h -> h @ recurrent``. With recurrent dropout, Keras's LSTM draws one mask per
    gate: gate g sees ... + (h * rec_mask[g]) @ recurrent_g. rec_mask is a (4, batch, units)
    array or None; its cotangent is zero. The four products are separate ones on column
    blocks sliced once, outside the loops (a batched einsum over the gates ran slower)."""
    import jax.numpy as jnp

    if rec_mask is None:
        return lambda h: h @ recurrent
    blocks = jnp.split(recurrent, 4, axis=1)
    return lambda h: jnp.concatenate([(h * m) @ r for m, r in zip(rec_mask, blocks)], -1)


def _make_recurrence():
    import jax
    import jax.numpy as jnp

    def _sigmoid(x):
        # The same function as jax.nn.sigmoid (to float32 rounding); XLA's CPU tanh is a
        # vectorised rational approximation, faster than its exp-based logistic.
        return 0.5 * jnp.tanh(0.5 * x) + 0.5

    def forward(zs, h0, c0, recurrent, bias, rec_mask):
        recurrent_product = _recur_product(recurrent, rec_mask)

        def step(carry, z_t):
            h, c = carry
            i, f, g, o = jnp.split(z_t + bias + recurrent_product(h), 4, axis=-1)
            i, f, g, o = _sigmoid(i), _sigmoid(f), jnp.tanh(g), _sigmoid(o)
            c = f * c + i * g
            h = o * jnp.tanh(c)
            return (h, c), (h, c, jnp.concatenate([i, f, g, o], axis=-1))

        (h, c), (hs, cs, acts) = jax.lax.scan(step, (h0, c0), zs)
        return hs, cs, acts, h, c

    # The time loop over the projected inputs zs (time-major); the input projection is
    # plain code around it, so autodiff forms its gradients as single large products.
    @jax.custom_vjp
    def recurrence(zs, h0, c0, recurrent, bias, rec_mask):
        hs, _, _, h, c = forward(zs, h0, c0, recurrent, bias, rec_mask)
        return hs, h, c

    def recurrence_fwd(zs, h0, c0, recurrent, bias, rec_mask):
        hs, cs, acts, h, c = forward(zs, h0, c0, recurrent, bias, rec_mask)
        return (hs, h, c), (h0, c0, recurrent, hs, cs, acts, rec_mask)

    def recurrence_bwd(saved, grads):
        h0, c0, recurrent, hs, cs, acts, rec_mask = saved
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
        # The recurrent kernel's gradient is one large product over all timesteps, not a
        # small one per step accumulated in the loop.
        h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
        if rec_mask is None:
            d_recurrent = jnp.einsum("tbh,tbg->hg", h_prev, dz)
        else:  # per gate, with its mask
            d_recurrent = jnp.concatenate(
                [jnp.einsum("tbh,tbg->hg", h_prev * m, d)
                 for m, d in zip(rec_mask, jnp.split(dz, 4, axis=-1))], axis=1)
        zero_mask = None if rec_mask is None else jnp.zeros_like(rec_mask)
        return (dz, dh0, dc0, d_recurrent, dz.sum(axis=(0, 1)), zero_mask)

    recurrence.defvjp(recurrence_fwd, recurrence_bwd)
    return recurrence


def _project(xs, kernel, in_mask):
    """All timesteps' input projections as one product on the time-major input, so the
    4x wider result is never transposed; with input dropout (one mask per gate, as Keras
    draws them: ``in_mask`` is (4, batch, features)) one product per gate."""
    import jax.numpy as jnp

    steps, batch, features = xs.shape
    if in_mask is None:
        z = xs.reshape(steps * batch, features) @ kernel
    else:
        z = jnp.concatenate([(xs * m).reshape(steps * batch, features) @ k
                             for m, k in zip(in_mask, jnp.split(kernel, 4, axis=1))], -1)
    return z.reshape(steps, batch, -1)


def _project_tokens(token_ids, embeddings, kernel):
    """The input projections of embedded tokens as rows of ``embeddings @ kernel``: a lookup
    instead of a product per token, and the gradient a scatter-add into vocabulary rows
    (``token_ids`` time-major)."""
    import jax.numpy as jnp

    return jnp.take(embeddings @ kernel, token_ids, axis=0)


def folds_embedding(tokens: int, vocab_size: int) -> bool:
    """Whether to project the first layer's inputs by lookup: it replaces three products of
    ``tokens`` rows (forward, two gradients) by three of ``vocab_size`` rows plus a gather
    and a scatter-add of the 4x wider rows, a win only when the batch holds many tokens per
    vocabulary entry. ``bench/bench_training.py --lookup-ablation``: 1.04-1.16x per training
    step with 126 tokens per entry (embedding 128), 0.99x with 31 (embedding 64); the
    threshold is where the layer alone broke even (8 per entry) with a margin.

    Example:
        >>> folds_embedding(tokens=64 * 128, vocab_size=65), folds_embedding(2048, 30000)
        (True, False)
    """
    return tokens >= 16 * vocab_size


_RECURRENCE = None


def _on_gpu() -> bool:
    import jax

    return jax.default_backend() == "gpu"


def _native_recurrence(zs, recurrent, rec_mask, layer_norm: bool = False):
    """The native kernel's recurrence (:mod:`lstmgen.native`; ``layer_norm``: the
    layer-normalised cell's) where it applies: no recurrent dropout, float32,
    ``LSTMGEN_NATIVE`` not "0", and the library loads (if it does not, one line on stderr,
    once, and the JAX loop)."""
    import os

    if rec_mask is not None or os.environ.get("LSTMGEN_NATIVE", "1") == "0" or _on_gpu():
        return None  # (the kernel is a CPU one: a GPU runs the JAX loop)
    if zs.dtype != "float32" or recurrent.dtype != "float32":
        return None
    from lstmgen import native

    return native.ln_recurrence_or_none() if layer_norm else native.recurrence_or_none()


def _recurrence(zs, h0, c0, recurrent, bias, rec_mask=None):
    native = _native_recurrence(zs, recurrent, rec_mask)
    if native is not None:
        return native(zs, h0, c0, recurrent, bias)
    global _RECURRENCE
    if _RECURRENCE is None:
        _RECURRENCE = _make_recurrence()
    return _RECURRENCE(zs, h0, c0, recurrent, bias, rec_mask)


def _ln_recurrence_jax(zs, h0, c0, recurrent, bias, rec_mask, gate_scale, cell_scale,
                       cell_shift):
    """The layer-normalised LSTM's time loop in JAX (autodiff of a scan): each gate's
    pre-activation normalised over its units, then scaled and shifted by the bias; the cell
    state normalised before its tanh (the carried cell state is not)."""
    import jax
    import jax.numpy as jnp

    from lstmgen.normalisation import normalise

    product = _recur_product(recurrent, rec_mask)

    def step(carry, z_t):
        h, c = carry
        a = normalise(z_t + product(h), 4) * gate_scale + bias
        i, f, g, o = jnp.split(a, 4, axis=-1)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        c = f * c + i * g
        h = o * jnp.tanh(normalise(c) * cell_scale + cell_shift)
        return (h, c), h

    (h, c), hs = jax.lax.scan(step, (h0, c0), zs)
    return hs, h, c


def _ln_recurrence(zs, h0, c0, recurrent, bias, rec_mask, gate_scale, cell_scale,
                   cell_shift):
    scales = (gate_scale, cell_scale, cell_shift)
    native = _native_recurrence(zs, recurrent, rec_mask, layer_norm=True)
    if native is not None:
        return native(zs, h0, c0, recurrent, bias, *scales)
    return _ln_recurrence_jax(zs, h0, c0, recurrent, bias, rec_mask, *scales)


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

    _embedding = None  # a weakref.ref to the Embedding layer whose outputs this one reads
    _token_ids = None  # that layer's input, during a call

    def __init__(self, units, weight_drop: float = 0.0, layer_norm: bool = False, **kwargs):
        super().__init__(units, **kwargs)
        self.weight_drop = float(weight_drop)
        self.layer_norm = bool(layer_norm)

    def get_config(self):
        return {**super().get_config(), "weight_drop": self.weight_drop,
                "layer_norm": self.layer_norm}

    def build(self, sequences_shape, initial_state_shape=None):
        super().build(sequences_shape, initial_state_shape)
        if self.layer_norm:
            # The gates' shift is the cell's bias, added after the normalisation.
            self.gate_scale = self.add_weight(
                shape=(4 * self.units,), initializer="ones", name="gate_scale")
            self.cell_scale = self.add_weight(
                shape=(self.units,), initializer="ones", name="cell_scale")
            self.cell_shift = self.add_weight(
                shape=(self.units,), initializer="zeros", name="cell_shift")

    def _drops_weights(self, training) -> bool:
        return bool(training) and 0.0 < self.weight_drop < 1.0

    def fold_embedding(self, embedding: keras.layers.Embedding) -> None:
        """Read ``embedding``'s outputs through its table: called with ``token_ids=`` (the
        embedding layer's input), the layer projects its inputs as rows of
        ``embeddings @ kernel`` where :func:`folds_embedding` finds that faster. The same
        maths; the embedding layer keeps its variable (a weak reference, not a sublayer,
        so the checkpoint layout does not change).

        Example:
            >>> import numpy as np
            >>> tokens = np.arange(128 * 4).reshape(4, 128) % 8
            >>> embedding, lstm = keras.layers.Embedding(8, 3), FusedLSTM(4)
            >>> lstm.fold_embedding(embedding)
            >>> x = embedding(tokens)
            >>> bool(np.allclose(lstm(x, token_ids=tokens), lstm(x), atol=1e-5))
            True
        """
        self._embedding = weakref.ref(embedding)

    def call(self, sequences, initial_state=None, mask=None, training=False,
             token_ids=None):
        # inner_loop, where the projection happens, takes no other arguments.
        self._token_ids = token_ids
        try:
            return super().call(sequences, initial_state=initial_state, mask=mask,
                                training=training)
        finally:
            self._token_ids = None

    def compute_output_shape(self, sequences_shape, initial_state_shape=None,
                             token_ids_shape=None):
        return super().compute_output_shape(sequences_shape, initial_state_shape)

    def _fusable(self, mask, training=False) -> bool:
        cell = self.cell
        return (
            keras.backend.backend() == "jax"
            # Keras's own path uses cuDNN on a GPU, but cannot drop weights.
            and (not _on_gpu() or self._drops_weights(training) or self.layer_norm)
            and mask is None
            and not self.go_backwards
            and cell.use_bias
            and cell.activation is keras.activations.tanh
            and cell.recurrent_activation is keras.activations.sigmoid
        )

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not self._fusable(mask, training):
            if self._drops_weights(training) or self.layer_norm:
                from lstmgen.errors import LstmgenError

                option = "--layer-norm" if self.layer_norm else "--weight-drop"
                raise LstmgenError(
                    f"{option} runs in lstmgen's own LSTM loop, which needs the JAX "
                    "backend, no masking and go_backwards=False",
                    hint=f"set KERAS_BACKEND=jax, or train without {option}")
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
        kernel = ops.convert_to_tensor(cell.kernel)
        embedding = self._embedding() if self._embedding else None
        token_ids = self._token_ids
        dropped = training and 0.0 < cell.dropout < 1.0  # the table holds undropped inputs
        if (embedding is not None and token_ids is not None and not dropped
                and None not in token_ids.shape
                and folds_embedding(int(np.prod(token_ids.shape)), embedding.input_dim)):
            zs = _project_tokens(ops.transpose(token_ids), ops.convert_to_tensor(
                embedding.embeddings), kernel)
        else:
            # Time-major before the product: transposing the (batch, time, features)
            # input is cheaper than transposing the 4x wider projection.
            zs = _project(ops.transpose(sequences, (1, 0, 2)), kernel, in_mask)
        recurrent = ops.convert_to_tensor(cell.recurrent_kernel)
        if self._drops_weights(training):
            # DropConnect on the recurrent weights (AWD-LSTM): one mask per batch, shared
            # by every timestep and lane, so the native kernel runs it unchanged.
            recurrent = keras.random.dropout(recurrent, self.weight_drop,
                                             seed=cell.seed_generator)
        bias = ops.convert_to_tensor(cell.bias)
        if self.layer_norm:
            hs, h, c = _ln_recurrence(zs, h0, c0, recurrent, bias, rec_mask, *(
                ops.convert_to_tensor(w)
                for w in (self.gate_scale, self.cell_scale, self.cell_shift)))
        else:
            hs, h, c = _recurrence(zs, h0, c0, recurrent, bias, rec_mask)
        outputs = ops.transpose(hs, (1, 0, 2)) if self.return_sequences else h
        return h, outputs, [h, c]
