"""FusedLSTM must be the stock Keras LSTM to float32 rounding: outputs, states, every
gradient, the dropout masks; and fall back to the stock loop where it does not apply."""

import jax
import keras
import numpy as np
import pytest

import lstmgen.layers
from lstmgen.errors import LstmgenError
from lstmgen.layers import FusedLSTM
from lstmgen.model import LanguageModel, ModelConfig

RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, 7, 5)).astype("float32")
H0 = RNG.normal(size=(3, 4)).astype("float32")
C0 = RNG.normal(size=(3, 4)).astype("float32")


def pair(weights_seed=1, **kwargs):
    """A stock LSTM and a FusedLSTM built alike, with the same (random) weights."""
    rng = np.random.default_rng(weights_seed)
    stock = keras.layers.LSTM(4, return_sequences=True, return_state=True, **kwargs)
    fused = FusedLSTM(4, return_sequences=True, return_state=True, **kwargs)
    stock(X), fused(X)
    # Random biases too (the stock initialiser sets only the forget gate's).
    fused.set_weights([w + rng.normal(size=w.shape).astype("float32") * 0.3
                       for w in stock.get_weights()])
    stock.set_weights(fused.get_weights())
    return stock, fused


def loss_and_grads(layer, x, h0, c0, training=False):
    """A scalar of every output, and its gradient w.r.t. the weights, inputs and states."""
    trainable = [v.value for v in layer.trainable_variables]
    others = [v.value for v in layer.non_trainable_variables]

    def loss(trainable, x, h0, c0):
        (seq, h, c), _ = layer.stateless_call(trainable, others, x, initial_state=[h0, c0],
                                              training=training)
        weights = np.linspace(-1, 1, seq.size, dtype="float32").reshape(seq.shape)
        return (seq * weights).sum() + (h**2).sum() + (c * 0.5).sum()

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(trainable, x, h0, c0)


def test_outputs_and_states_equal_the_stock_layer():
    stock, fused = pair()
    for a, b in zip(stock(X, initial_state=[H0, C0]), fused(X, initial_state=[H0, C0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    last = FusedLSTM(4)
    last(X)
    last.set_weights(fused.get_weights())
    np.testing.assert_allclose(np.asarray(last(X)), np.asarray(fused(X)[1]), atol=1e-6)


@pytest.mark.parametrize("dropouts", [{}, {"dropout": 0.5}, {"recurrent_dropout": 0.4},
                                      {"dropout": 0.3, "recurrent_dropout": 0.4}])
def test_gradients_equal_the_stock_layer(dropouts):
    stock, fused = pair(seed=11, **dropouts)
    assert fused._fusable(None)
    training = bool(dropouts)  # with the same seed, the same masks
    loss_s, grads_s = loss_and_grads(stock, X, H0, C0, training)
    loss_f, grads_f = loss_and_grads(fused, X, H0, C0, training)
    # atol: the loss is a weighted sum of the outputs with weights of both signs, so its
    # float32 rounding is not relative to its (small) value.
    np.testing.assert_allclose(float(loss_f), float(loss_s), rtol=1e-5, atol=2e-6)
    if training:
        plain, _ = loss_and_grads(fused, X, H0, C0)
        assert not np.isclose(float(loss_f), float(plain), rtol=1e-3)  # the masks did work
    flat_s, flat_f = jax.tree.leaves(grads_s), jax.tree.leaves(grads_f)
    assert len(flat_s) == len(flat_f) == 6  # kernel, recurrent kernel, bias, x, h0, c0
    for a, b in zip(flat_s, flat_f):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dropouts", [{"dropout": 0.5}, {"recurrent_dropout": 0.5},
                                      {"dropout": 0.5, "recurrent_dropout": 0.5}])
def test_dropout_uses_the_stock_layers_masks(dropouts):
    stock, fused = pair(seed=3, **dropouts)
    a, b = (np.asarray(layer(X, training=True)[0]) for layer in (stock, fused))
    np.testing.assert_allclose(b, a, atol=1e-5)
    again = np.asarray(fused(X, training=True)[0])
    assert not np.allclose(again, b, atol=1e-3)  # a fresh mask per call
    assert not np.allclose(b, np.asarray(fused(X)[0]), atol=1e-3)  # none at inference


def test_falls_back_to_the_stock_loop_where_it_does_not_apply():
    mask = np.ones((3, 7), bool)
    mask[0, 5:] = False
    stock, fused = pair()
    assert not fused._fusable(mask)
    np.testing.assert_allclose(np.asarray(fused(X, mask=mask)[0]),
                               np.asarray(stock(X, mask=mask)[0]), atol=1e-5)
    stock, fused = pair(go_backwards=True)
    assert not fused._fusable(None)
    np.testing.assert_allclose(np.asarray(fused(X)[0]), np.asarray(stock(X)[0]), atol=1e-5)


def count_lookups(monkeypatch):
    """Counts the traces that projected the first layer's inputs by table lookup."""
    calls = []
    original = lstmgen.layers._project_tokens

    def spy(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr("lstmgen.layers._project_tokens", spy)
    return calls


def model_grads(lm, x):
    """The training model's next-token loss on ``x`` and its gradient w.r.t. every weight."""
    model = lm.training_model
    trainable = [v.value for v in model.trainable_variables]
    others = [v.value for v in model.non_trainable_variables]

    def loss(trainable):
        logits, _ = model.stateless_call(trainable, others, x)
        return keras.losses.sparse_categorical_crossentropy(
            np.roll(x, -1, axis=1), logits, from_logits=True).mean()

    return jax.value_and_grad(loss)(trainable)


def test_the_folded_embedding_is_the_same_maths(monkeypatch):
    lookups = count_lookups(monkeypatch)
    lm = LanguageModel(ModelConfig(units=12, embedding_dim=6, layers=2), vocab_size=9)
    x = RNG.integers(0, 9, size=(3, 50))  # 150 tokens, 16 per vocabulary entry: folded
    loss_f, grads_f = model_grads(lm, x)
    assert len(lookups) == 1
    monkeypatch.setattr("lstmgen.layers.folds_embedding", lambda tokens, vocab: False)
    loss_u, grads_u = model_grads(lm, x)
    assert len(lookups) == 1  # this time the product
    np.testing.assert_allclose(float(loss_f), float(loss_u), rtol=1e-6)
    # embedding, 2 x (kernel, recurrent, bias), the output's 2, the 4 start states (h, c x 2)
    assert len(grads_f) == len(lm.training_model.trainable_variables) == 1 + 2 * 3 + 2 + 4
    for a, b in zip(grads_u, grads_f):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    assert np.abs(np.asarray(grads_f[0])).sum() > 0  # the embedding learns through the table
    # Too few tokens per vocabulary entry (60 for 9): the product.
    monkeypatch.undo()
    lookups = count_lookups(monkeypatch)
    model_grads(lm, x[:, :20])
    assert not lookups


def test_the_language_model_trains_as_with_the_stock_layer(monkeypatch):
    lookups = count_lookups(monkeypatch)
    config = ModelConfig(units=16, embedding_dim=8, layers=2, dropout=0.0)
    fused = LanguageModel(config, vocab_size=30)
    assert all(type(rnn) is FusedLSTM for rnn in fused.rnns)
    gru = LanguageModel(ModelConfig(units=16, embedding_dim=8, cell="gru"), vocab_size=30)
    assert type(gru.rnns[0]) is keras.layers.GRU
    monkeypatch.setattr("lstmgen.layers.FusedLSTM", keras.layers.LSTM)
    stock = LanguageModel(config, vocab_size=30)
    assert type(stock.rnns[0]) is keras.layers.LSTM
    # The lookup keeps the embedding's variable where it was: the same checkpoint layout.
    assert ([v.path for v in fused.training_model.weights]
            == [v.path for v in stock.training_model.weights])
    stock.training_model.set_weights(fused.training_model.get_weights())
    x = (np.arange(60)[None] + np.arange(8)[:, None] * 7) % 30  # next token: +1
    losses = []
    for lm in (stock, fused):
        model = lm.training_model
        model.compile(optimizer=keras.optimizers.Adam(3e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        losses.append([float(model.train_on_batch(x, np.roll(x, -1, axis=1)))
                       for _ in range(25)])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    assert losses[1][-1] < 0.5 * losses[1][0]
    assert lookups  # 480 tokens, 16 per vocabulary entry: the fused model read the table


@pytest.mark.parametrize("units", [1, 33])
def test_odd_sizes(units):
    stock = keras.layers.LSTM(units, return_sequences=True)
    fused = FusedLSTM(units, return_sequences=True)
    stock(X), fused(X)
    fused.set_weights(stock.get_weights())
    np.testing.assert_allclose(np.asarray(fused(X)), np.asarray(stock(X)), atol=1e-5)


@pytest.mark.parametrize("why", ["no compiler", "LSTMGEN_NATIVE=0"])
def test_trains_on_the_jax_loop_where_the_native_kernel_cannot_build_or_is_off(tmp_path,
                                                                               small_text, why):
    """A machine without a C++ compiler (or told LSTMGEN_NATIVE=0) trains all the same: one
    informational line (none when switched off), nothing built."""
    import os
    import subprocess
    import sys

    cache = tmp_path / "cache"
    env = {**os.environ, "LSTMGEN_NATIVE_CACHE": str(cache), "CXX": str(tmp_path / "no-cxx")}
    env.pop("LSTMGEN_NATIVE", None)  # CI runs this file with it too
    if why == "LSTMGEN_NATIVE=0":
        env["LSTMGEN_NATIVE"] = "0"
    done = subprocess.run(
        [sys.executable, "-m", "lstmgen.cli", "train", str(small_text), "--out",
         str(tmp_path / "run"), "--units", "16", "--embedding-dim", "8", "--batch-size", "8",
         "--seq-len", "16", "--max-steps", "3", "--sample-length", "0", "-q"],
        capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "native LSTM kernel" in line]
    if why == "no compiler":
        assert len(notes) == 1 and "cannot run the C++ compiler" in notes[0], done.stderr
        assert "using the JAX loop" in notes[0]
    else:
        assert notes == [] and not cache.exists()
    assert "Traceback" not in done.stderr
    assert not any(cache.glob("*.so"))


@pytest.mark.parametrize("native", ["1", "0"])
def test_weight_drop_drops_recurrent_weights_once_per_batch_in_training(monkeypatch, native):
    monkeypatch.setenv("LSTMGEN_NATIVE", native)
    _, fused = pair(seed=5)
    fused.weight_drop = 0.5
    generator = fused.cell.seed_generator
    before = np.asarray(generator.state.value)
    trainable = [v.value for v in fused.trainable_variables]
    others = [v.value for v in fused.non_trainable_variables]

    def loss(trainable):
        (seq, _, _), _ = fused.stateless_call(trainable, others, X, training=True)
        return (seq * np.linspace(-1, 1, seq.size).reshape(seq.shape)).sum()

    value, grads = jax.value_and_grad(loss)(trainable)
    # The mask the call drew: the same seed state draws it again.
    generator.state.assign(before)
    kernel, recurrent, bias = fused.get_weights()
    dropped = np.asarray(keras.random.dropout(recurrent, 0.5, seed=generator))
    assert 0.3 < (dropped == 0).mean() < 0.7
    stock = keras.layers.LSTM(4, return_sequences=True, return_state=True)
    stock(X)
    stock.set_weights([kernel, dropped, bias])
    seq = np.asarray(stock(X)[0])
    np.testing.assert_allclose(float(value), (seq * np.linspace(-1, 1, seq.size).reshape(
        seq.shape)).sum(), rtol=1e-5, atol=2e-5)
    # A dropped weight gets no gradient; the kept ones get the dropped kernel's, scaled.
    d_recurrent = np.asarray(grads[1])
    assert np.all(d_recurrent[dropped == 0] == 0)
    assert np.count_nonzero(d_recurrent[dropped != 0]) > 0.9 * np.count_nonzero(dropped)
    # Nothing is dropped at inference.
    plain = np.asarray(fused(X)[0])
    stock.set_weights([kernel, recurrent, bias])
    np.testing.assert_allclose(plain, np.asarray(stock(X)[0]), atol=1e-5)


def test_weight_drop_is_a_model_setting_with_a_clear_error_when_absurd():
    lm = LanguageModel(ModelConfig(units=8, embedding_dim=4, weight_drop=0.25), 10)
    assert lm.rnns[0].weight_drop == 0.25
    assert ModelConfig.from_dict(lm.config.to_dict()).weight_drop == 0.25
    assert ModelConfig.from_dict({"units": 8}).weight_drop == 0.0  # runs saved before it
    with pytest.raises(LstmgenError, match="weight-drop must be in"):
        ModelConfig(weight_drop=1.0).validate()
    with pytest.raises(LstmgenError, match="needs the LSTM cell"):
        ModelConfig(weight_drop=0.2, cell="gru").validate()


def test_weight_drop_needs_the_fused_loop_and_says_so():
    mask = np.ones((3, 7), bool)
    _, fused = pair()
    fused.weight_drop = 0.3
    fused(X, mask=mask)  # inference: nothing to drop, the stock loop runs
    with pytest.raises(LstmgenError, match="weight-drop runs in lstmgen's own LSTM loop"):
        fused(X, mask=mask, training=True)


def ln_layer(units=4, seed=3):
    """A layer-normalised FusedLSTM with random weights, scales and shifts, all drawn from
    `seed` alone (not from Keras's initialisers, whose draws depend on the tests run before)."""
    rng = np.random.default_rng(seed)
    layer = FusedLSTM(units, return_sequences=True, return_state=True, layer_norm=True)
    layer(X)
    layer.set_weights([(w.path.endswith("scale") + rng.normal(size=w.shape) * 0.5)
                       .astype("float32") for w in layer.weights])
    return layer


def ln_reference(layer, x, h, c):
    """The layer-normalised cell written out in NumPy, one step at a time (float64)."""
    weights = {v.path.split("/")[-1]: np.asarray(v.value, np.float64) for v in layer.weights}

    def normalise(v):
        return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)

    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    units, outputs = layer.units, []
    for t in range(x.shape[1]):
        p = x[:, t] @ weights["kernel"] + h @ weights["recurrent_kernel"]
        a = np.concatenate([normalise(p[:, k * units:(k + 1) * units]) for k in range(4)], -1)
        i, f, g, o = np.split(a * weights["gate_scale"] + weights["bias"], 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(normalise(c) * weights["cell_scale"] + weights["cell_shift"])
        outputs.append(h)
    return np.stack(outputs, 1), h, c


@pytest.mark.parametrize("native", ["1", "0"])
def test_layer_norm_is_the_normalised_cell(monkeypatch, native):
    monkeypatch.setenv("LSTMGEN_NATIVE", native)
    layer = ln_layer()
    got = layer(X, initial_state=[H0, C0])
    for a, b in zip(got, ln_reference(layer, X, H0, C0), strict=True):
        np.testing.assert_allclose(np.asarray(a), b, atol=2e-5)


def test_layer_norm_makes_the_cell_blind_to_the_weights_scale():
    """Scaling both kernels scales every pre-activation: the normalised cell's outputs do
    not change (the plain cell's do), while its own scales and shifts do change them."""
    layer = ln_layer()
    before = np.asarray(layer(X, initial_state=[H0, C0])[0])
    kernel, recurrent = layer.cell.kernel, layer.cell.recurrent_kernel
    kernel.assign(np.asarray(kernel) * 3), recurrent.assign(np.asarray(recurrent) * 3)
    # Not exact: the variance's epsilon (1e-5) does not scale (2e-5 apart at these weights).
    np.testing.assert_allclose(np.asarray(layer(X, initial_state=[H0, C0])[0]), before,
                               atol=1e-4)
    layer.cell_shift.assign(np.asarray(layer.cell_shift) + 0.5)
    assert np.abs(np.asarray(layer(X, initial_state=[H0, C0])[0]) - before).max() > 0.1
    _, plain = pair()
    plain_before = np.asarray(plain(X)[0])
    plain.cell.kernel.assign(np.asarray(plain.cell.kernel) * 3)
    assert np.abs(np.asarray(plain(X)[0]) - plain_before).max() > 0.1


def test_layer_norm_is_a_model_setting_saved_with_the_run():
    lm = LanguageModel(ModelConfig(units=8, embedding_dim=4, layers=2, layer_norm=True), 10)
    assert [rnn.layer_norm for rnn in lm.rnns] == [True, True]
    assert [v.path for v in lm.rnns[1].weights][:3] == [
        "lstm_1/gate_scale", "lstm_1/cell_scale", "lstm_1/cell_shift"]
    assert ModelConfig.from_dict(lm.config.to_dict()).layer_norm is True
    assert ModelConfig.from_dict({"units": 8}).layer_norm is False  # runs saved before it
    assert FusedLSTM.from_config(lm.rnns[0].get_config()).layer_norm is True
    assert not LanguageModel(ModelConfig(units=8, embedding_dim=4), 10).rnns[0].weights[0] \
        .path.endswith("gate_scale")
    with pytest.raises(LstmgenError, match="needs the LSTM cell"):
        ModelConfig(layer_norm=True, cell="gru").validate()
    with pytest.raises(LstmgenError, match="layer-norm must be true or false"):
        ModelConfig(layer_norm="yes").validate()


def test_layer_norm_needs_the_fused_loop_and_says_so():
    layer = ln_layer()
    with pytest.raises(LstmgenError, match="--layer-norm runs in lstmgen's own LSTM loop"):
        layer(X, mask=np.ones((3, 7), bool))  # even at inference: the stock loop lacks it
