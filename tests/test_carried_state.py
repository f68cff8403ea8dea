"""Training with the state carried between batches: the state really flows, and only
forward (no gradient through the window boundary)."""

import numpy as np

import lstmgen  # noqa: F401  (selects the JAX backend)
from lstmgen.carried_state import carried_training_model
from lstmgen.model import LanguageModel, ModelConfig


def _fixed_weights_model(layers=2, cell="lstm"):
    import keras

    lm = LanguageModel(ModelConfig(units=16, embedding_dim=8, layers=layers, dropout=0.0,
                                   cell=cell), vocab_size=30)
    model = carried_training_model(lm, batch_size=3)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return lm, model


def _nll(logits, y):
    logits = np.asarray(logits, np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, y[..., None], -1)[..., 0]
    return float(np.mean(logz - picked))


def test_each_batch_starts_from_the_previous_batch_final_state():
    for layers, cell in ((2, "lstm"), (1, "gru")):
        lm, model = _fixed_weights_model(layers, cell)
        rng = np.random.default_rng(0)
        text = rng.integers(0, 30, size=(3, 3 * 12 + 1)).astype("int32")
        zeros = [np.zeros((3, 16), "float32")] * lm.num_states
        states = zeros
        for b in range(3):
            x, y = text[:, b * 12 : (b + 1) * 12], text[:, b * 12 + 1 : (b + 1) * 12 + 1]
            loss = float(model.train_on_batch([x, np.ones((3, 1), "float32")], y))
            logits, *after = lm.stateful_model.predict_on_batch([x, *states])
            fresh, *_ = lm.stateful_model.predict_on_batch([x, *zeros])
            np.testing.assert_allclose(loss, _nll(logits, y), rtol=1e-5)
            if b:  # from the second batch on, the carried state changes the loss
                assert not np.allclose(logits, fresh, rtol=1e-2, atol=0)
            for stored, expected in zip(model.state_store.states, after, strict=True):
                np.testing.assert_allclose(np.asarray(stored.value), expected, atol=1e-5)
            states = after
        model.state_store.reset()
        assert all(not np.asarray(v.value).any() for v in model.state_store.states)


def test_a_zero_keep_row_starts_its_window_from_zeros():
    lm, model = _fixed_weights_model()
    rng = np.random.default_rng(1)
    text = rng.integers(0, 30, size=(3, 25)).astype("int32")
    zeros = [np.zeros((3, 16), "float32")] * lm.num_states
    model.train_on_batch([text[:, :12], np.ones((3, 1), "float32")], text[:, 1:13])
    carried = [np.asarray(v.value) for v in model.state_store.states]
    keep = np.array([[1.0], [0.0], [1.0]], "float32")  # row 1 restarts
    x, y = text[:, 12:24], text[:, 13:25]
    loss = float(model.train_on_batch([x, keep], y))
    expected = [s * keep for s in carried]
    logits, *_ = lm.stateful_model.predict_on_batch([x, *expected])
    np.testing.assert_allclose(loss, _nll(logits, y), rtol=1e-5)
    fresh, *_ = lm.stateful_model.predict_on_batch([x, *zeros])
    np.testing.assert_allclose(logits[1], fresh[1], atol=1e-5)
    assert not np.allclose(logits[0], fresh[0], atol=1e-3)


def test_same_trainable_variables_as_the_plain_model():
    lm, model = _fixed_weights_model()
    assert [v.path for v in model.trainable_variables] == \
        [v.path for v in lm.training_model.trainable_variables]
