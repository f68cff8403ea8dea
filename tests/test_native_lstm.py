"""The native LSTM kernel (lstmgen.native) must be the JAX loop to float32 rounding: outputs,
final states and every gradient, directly, under jit, through FusedLSTM against the stock
Keras LSTM, and in a jitted Keras training step; skipped where the library is unavailable,
except in CI, which must test it."""

import os

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

import lstmgen.layers
from lstmgen import native
from lstmgen.layers import FusedLSTM
from lstmgen.model import LanguageModel, ModelConfig

pytestmark = pytest.mark.skipif(native.recurrence_or_none() is None and not os.environ.get("CI"),
                                reason="native LSTM kernel unavailable")
TOL = 1e-4


def jax_loop():
    fn = lstmgen.layers._make_recurrence()
    return lambda zs, h0, c0, r, b: fn(zs, h0, c0, r, b, None)


def inputs(steps, batch, units, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(steps, batch, 4 * units)).astype("float32"),
            rng.normal(size=(batch, units)).astype("float32"),
            rng.normal(size=(batch, units)).astype("float32"),
            (rng.normal(size=(units, 4 * units)) / np.sqrt(units)).astype("float32"),
            rng.normal(size=(4 * units,)).astype("float32") * 0.5)


def value_and_grads(recurrence):
    def loss(*args):
        hs, h, c = recurrence(*args)
        weights = jnp.linspace(-1, 1, hs.size, dtype="float32").reshape(hs.shape)
        return (hs * weights).sum() + (h ** 2).sum() + (c * 0.5).sum()

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))


# Batches of 16 rows and more are split over worker threads (at least 8 rows each).
@pytest.mark.parametrize("shape", [(7, 3, 4), (1, 1, 1), (12, 5, 33), (20, 8, 64),
                                   (6, 21, 16), (9, 64, 32)])
@pytest.mark.parametrize("jit", [False, True])
def test_outputs_states_and_gradients_equal_the_jax_loop(shape, jit):
    args = inputs(*shape)
    wrap = jax.jit if jit else (lambda f: f)
    ours, theirs = native.recurrence_or_none(), jax_loop()
    for a, b in zip(wrap(ours)(*args), wrap(theirs)(*args)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL)
    (loss_n, grads_n), (loss_j, grads_j) = (wrap(value_and_grads(f))(*args)
                                            for f in (ours, theirs))
    np.testing.assert_allclose(float(loss_n), float(loss_j), rtol=TOL)
    names = ("zs", "h0", "c0", "recurrent", "bias")
    for name, a, b in zip(names, grads_n, grads_j):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL, rtol=TOL,
                                   err_msg=name)


@pytest.mark.parametrize("threads", [1, 3, 5])
def test_any_number_of_worker_threads(threads):
    args = inputs(6, 43, 8, seed=2)
    default = native.info()["threads"]
    native.set_threads(threads)
    try:
        # Blocks before the finally: the call is dispatched asynchronously.
        got = jax.block_until_ready(jax.jit(value_and_grads(native.recurrence_or_none()))(
            *args))
    finally:
        native.set_threads(default)
    want = value_and_grads(jax_loop())(*args)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL, rtol=TOL)


def test_saturated_gates():
    """Large pre-activations: the clamped tanh/sigmoid and their derivatives agree too."""
    zs, h0, c0, r, b = inputs(9, 4, 16, seed=5)
    args = (zs * 20, h0, c0, r * 5, b)
    (_, grads_n), (_, grads_j) = (value_and_grads(f)(*args)
                                  for f in (native.recurrence_or_none(), jax_loop()))
    for a, b in zip(grads_n, grads_j):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL, rtol=TOL)


def ln_inputs(steps, batch, units, seed=0):
    """:func:`inputs` and the normalisation's gate scale, cell scale and cell shift, made
    random (ones and zeros would hide a kernel that skipped them)."""
    rng = np.random.default_rng(seed + 100)
    return (*inputs(steps, batch, units, seed),
            (1 + 0.3 * rng.normal(size=(4 * units,))).astype("float32"),
            (1 + 0.3 * rng.normal(size=(units,))).astype("float32"),
            (0.2 * rng.normal(size=(units,))).astype("float32"))


def ln_jax_loop():
    return lambda zs, h0, c0, r, b, *norm: lstmgen.layers._ln_recurrence_jax(
        zs, h0, c0, r, b, None, *norm)


def ln_value_and_grads(recurrence):
    def loss(*args):
        hs, h, c = recurrence(*args)
        weights = jnp.linspace(-1, 1, hs.size, dtype="float32").reshape(hs.shape)
        return (hs * weights).sum() + (h ** 2).sum() + (c * 0.5).sum()

    return jax.value_and_grad(loss, argnums=tuple(range(8)))


# Units of 1 normalise to zeros (a constant gate): the statistics' degenerate case.
@pytest.mark.parametrize("shape", [(7, 3, 4), (1, 1, 1), (12, 5, 33), (6, 21, 16),
                                   (9, 64, 32)])
@pytest.mark.parametrize("jit", [False, True])
def test_layer_norm_outputs_states_and_gradients_equal_the_jax_loop(shape, jit):
    args = ln_inputs(*shape)
    wrap = jax.jit if jit else (lambda f: f)
    ours, theirs = native.ln_recurrence_or_none(), ln_jax_loop()
    for a, b in zip(wrap(ours)(*args), wrap(theirs)(*args), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL)
    (loss_n, grads_n), (loss_j, grads_j) = (wrap(ln_value_and_grads(f))(*args)
                                            for f in (ours, theirs))
    np.testing.assert_allclose(float(loss_n), float(loss_j), rtol=TOL)
    names = ("zs", "h0", "c0", "recurrent", "bias", "gate_scale", "cell_scale", "cell_shift")
    for name, a, b in zip(names, grads_n, grads_j, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=10 * TOL, rtol=TOL,
                                   err_msg=name)


def test_layer_norm_on_worker_threads_and_saturated_gates():
    zs, h0, c0, r, b, *norm = ln_inputs(6, 43, 8, seed=2)
    args = (zs * 20, h0, c0, r * 5, b, *norm)
    default = native.info()["threads"]
    native.set_threads(3)
    try:
        got = jax.block_until_ready(jax.jit(ln_value_and_grads(
            native.ln_recurrence_or_none()))(*args))
    finally:
        native.set_threads(default)
    want = ln_value_and_grads(ln_jax_loop())(*args)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=10 * TOL, rtol=TOL)


def uses_native(fn, *args) -> bool:
    return native.FWD_TARGET in str(jax.make_jaxpr(fn)(*args))


def test_the_switch(monkeypatch):
    """Read when a function is traced (a fresh function each time: JAX caches traces)."""
    args = inputs(3, 2, 4)
    assert uses_native(lambda *a: lstmgen.layers._recurrence(*a), *args)
    monkeypatch.setenv("LSTMGEN_NATIVE", "0")
    assert not uses_native(lambda *a: lstmgen.layers._recurrence(*a), *args)
    monkeypatch.delenv("LSTMGEN_NATIVE")
    mask = jnp.ones((4, 2, 4), "float32")  # recurrent dropout: the JAX loop
    assert not uses_native(lambda *a: lstmgen.layers._recurrence(*a, rec_mask=mask), *args)
    ln_args = ln_inputs(3, 2, 4)
    ln = lambda zs, h0, c0, r, b, *norm: lstmgen.layers._ln_recurrence(  # noqa: E731
        zs, h0, c0, r, b, None, *norm)
    assert native.LN_FWD_TARGET in str(jax.make_jaxpr(ln)(*ln_args))
    monkeypatch.setenv("LSTMGEN_NATIVE", "0")
    assert native.LN_FWD_TARGET not in str(jax.make_jaxpr(
        lambda *a: ln(*a))(*ln_args))


X = np.random.default_rng(0).normal(size=(3, 7, 5)).astype("float32")


def layer_loss_and_grads(layer, x, h0, c0):
    trainable = [v.value for v in layer.trainable_variables]
    others = [v.value for v in layer.non_trainable_variables]

    def loss(trainable, x, h0, c0):
        (seq, h, c), _ = layer.stateless_call(trainable, others, x, initial_state=[h0, c0])
        weights = np.linspace(-1, 1, seq.size, dtype="float32").reshape(seq.shape)
        return (seq * weights).sum() + (h ** 2).sum() + (c * 0.5).sum()

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(trainable, x, h0, c0)


def test_fused_layer_on_the_native_kernel_equals_the_stock_layer():
    rng = np.random.default_rng(1)
    stock = keras.layers.LSTM(6, return_sequences=True, return_state=True)
    fused = FusedLSTM(6, return_sequences=True, return_state=True)
    stock(X), fused(X)
    fused.set_weights([w + rng.normal(size=w.shape).astype("float32") * 0.3
                       for w in stock.get_weights()])
    stock.set_weights(fused.get_weights())
    h0, c0 = (rng.normal(size=(3, 6)).astype("float32") for _ in range(2))
    assert uses_native(lambda x: fused(x, initial_state=[h0, c0])[0], X)
    for a, b in zip(stock(X, initial_state=[h0, c0]), fused(X, initial_state=[h0, c0])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=TOL)
    loss_s, grads_s = layer_loss_and_grads(stock, X, h0, c0)
    loss_f, grads_f = layer_loss_and_grads(fused, X, h0, c0)
    np.testing.assert_allclose(float(loss_f), float(loss_s), rtol=TOL)
    flat_s, flat_f = jax.tree.leaves(grads_s), jax.tree.leaves(grads_f)
    assert len(flat_s) == len(flat_f) == 6  # kernel, recurrent kernel, bias, x, h0, c0
    for a, b in zip(flat_s, flat_f):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=TOL, atol=TOL)


def test_a_jitted_keras_training_step_matches_the_jax_loop(monkeypatch):
    config = ModelConfig(units=16, embedding_dim=8, layers=2, dropout=0.0)
    x = (np.arange(60)[None] + np.arange(8)[:, None] * 7) % 30
    losses, weights, traced = [], None, []
    original = lstmgen.layers._native_recurrence

    def spy(*args, **kwargs):
        traced.append(original(*args, **kwargs) is not None)
        return original(*args, **kwargs)

    monkeypatch.setattr("lstmgen.layers._native_recurrence", spy)
    for switch in ("1", "0"):
        monkeypatch.setenv("LSTMGEN_NATIVE", switch)
        keras.utils.set_random_seed(0)
        model = LanguageModel(config, vocab_size=30).training_model
        if weights is None:
            weights = model.get_weights()
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.Adam(3e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        losses.append([float(model.train_on_batch(x, np.roll(x, -1, axis=1)))
                       for _ in range(20)])
    assert True in traced and False in traced  # both paths were traced
    np.testing.assert_allclose(losses[0], losses[1], rtol=TOL)
    assert losses[0][-1] < 0.5 * losses[0][0]


def test_a_layer_normalised_model_has_the_jax_loops_gradients(monkeypatch):
    """Every variable's gradient, through the whole model, at weights a few training steps
    from the start (not a trajectory: with layer normalisation, Adam's first steps amplify
    float32 rounding into different paths)."""
    config = ModelConfig(units=16, embedding_dim=8, layers=2, dropout=0.0, layer_norm=True)
    x = (np.arange(60)[None] + np.arange(8)[:, None] * 7) % 30
    y = np.roll(x, -1, axis=1)
    keras.utils.set_random_seed(0)
    model = LanguageModel(config, vocab_size=30).training_model
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(3e-2), loss=loss_fn)
    losses = [float(model.train_on_batch(x, y)) for _ in range(5)]
    assert losses[-1] < losses[0]
    trainable = [v.value for v in model.trainable_variables]
    others = [v.value for v in model.non_trainable_variables]

    def loss(trainable):
        out, _ = model.stateless_call(trainable, others, x, training=True)
        return loss_fn(y, out)

    grads = {}
    for switch in ("1", "0"):
        monkeypatch.setenv("LSTMGEN_NATIVE", switch)
        traced = str(jax.make_jaxpr(lambda t: jax.grad(loss)(t))(trainable))  # a fresh trace
        assert (native.LN_BWD_TARGET in traced) == (switch == "1")
        grads[switch] = jax.jit(lambda t: jax.grad(loss)(t))(trainable)
    names = [v.path for v in model.trainable_variables]
    assert sum("gate_scale" in n for n in names) == 2
    for name, a, b in zip(names, grads["1"], grads["0"], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=TOL,
                                   err_msg=name)


def test_vmap():
    args = inputs(5, 2, 4)
    batched = [np.stack([a, a * 0.5]) for a in args]
    out = jax.vmap(native.recurrence_or_none())(*batched)
    ref = jax.vmap(jax_loop())(*batched)
    for a, b in zip(out, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL)


def gemm_path(packed: bool) -> str:
    """Switches the per-step products between the packed AVX2+FMA GEMM (where the CPU has
    it) and OpenBLAS's sgemm (the path of CPUs without AVX2); returns the one now in use."""
    native.library().lstmgen_set_packed_gemm(int(packed))
    return native.info()["gemm"]


# The packed GEMM's edges: M tails (a worker's rows not a multiple of its 4-row tile: batch
# 5, 7, and 33 = 16 + 17 rows on two workers), N tails (4H forward and H backward not a
# multiple of its 24-column panels) and several k blocks (K deeper than 512: 4H backward
# for units 150 and 520, H forward for 520), each against the JAX loop, on both paths.
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "openblas"])
@pytest.mark.parametrize("batch,units", [(5, 3), (7, 20), (33, 37), (5, 100), (33, 100),
                                         (7, 150), (6, 520)])
def test_product_tails_and_k_blocks(batch, units, packed):
    args = inputs(4, batch, units, seed=units)
    default = native.info()["threads"]
    native.set_threads(2)
    try:
        path = gemm_path(packed)
        if packed and native.info()["gate_variant"] == "avx2+fma":
            assert path == "packed avx2+fma"
        elif not packed:
            assert path == "openblas"
        # Blocked on: the kernel must run before the switch is turned back (async dispatch).
        ours, (loss_n, grads_n) = jax.block_until_ready(
            (jax.jit(native.recurrence_or_none())(*args),
             jax.jit(value_and_grads(native.recurrence_or_none()))(*args)))
    finally:
        gemm_path(True)
        native.set_threads(default)
    for a, b in zip(ours, jax_loop()(*args)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL)
    loss_j, grads_j = value_and_grads(jax_loop())(*args)
    np.testing.assert_allclose(float(loss_n), float(loss_j), rtol=TOL)
    for name, a, b in zip(("zs", "h0", "c0", "recurrent", "bias"), grads_n, grads_j):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL, rtol=TOL,
                                   err_msg=name)
