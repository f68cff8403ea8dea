import numpy as np
import pytest

import lstmgen
from lstmgen.model import LanguageModel, ModelConfig


def test_flops_and_shapes_follow_the_config():
    lm = LanguageModel(ModelConfig(units=16, embedding_dim=8, layers=2), vocab_size=30)
    assert lm.training_model.output_shape == (None, None, 30)
    assert lm.num_states == 4
    assert lm.flops_per_token() == 6 * (4 * 16 * (8 + 16) + 4 * 16 * (16 + 16) + 16 * 30)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_dropout_is_random_in_training_and_off_at_inference(cell):
    x = np.random.default_rng(0).integers(0, 30, size=(4, 20)).astype("int32")
    noisy = LanguageModel(ModelConfig(units=16, embedding_dim=8, dropout=0.0,
                                      recurrent_dropout=0.5, cell=cell), vocab_size=30)
    plain = LanguageModel(ModelConfig(units=16, embedding_dim=8, dropout=0.0, cell=cell),
                          vocab_size=30)
    plain.training_model.set_weights(noisy.training_model.get_weights())
    a, b = (np.asarray(noisy.training_model(x, training=True)) for _ in range(2))
    assert not np.allclose(a, b)  # a fresh mask per call
    assert not np.allclose(a, np.asarray(plain.training_model(x, training=True)))
    np.testing.assert_allclose(np.asarray(noisy.training_model(x)),
                               np.asarray(plain.training_model(x)), atol=1e-6)


def test_input_dropout_is_random_in_training_and_off_at_inference():
    # 200 tokens of 9: enough per vocabulary entry that the first layer would read its
    # inputs from the folded table, which holds undropped embeddings.
    x = np.random.default_rng(0).integers(0, 9, size=(4, 50)).astype("int32")
    noisy = LanguageModel(ModelConfig(units=16, embedding_dim=8, dropout=0.0,
                                      input_dropout=0.5), vocab_size=9)
    plain = LanguageModel(ModelConfig(units=16, embedding_dim=8, dropout=0.0), vocab_size=9)
    plain.training_model.set_weights(noisy.training_model.get_weights())
    a, b = (np.asarray(noisy.training_model(x, training=True)) for _ in range(2))
    assert not np.allclose(a, b)  # a fresh mask per call
    np.testing.assert_allclose(np.asarray(plain.training_model(x, training=True)),
                               np.asarray(plain.training_model(x)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(noisy.training_model(x)),
                               np.asarray(plain.training_model(x)), atol=1e-6)


@pytest.mark.parametrize("field, value", [("dropout", 1.0), ("input_dropout", 1.0),
                                          ("recurrent_dropout", -0.1),
                                          ("recurrent_dropout", "0.2"), ("units", 0),
                                          ("learned_start", "yes")])
def test_bad_sizes_are_clear_errors(field, value):
    with pytest.raises(lstmgen.LstmgenError, match=field.replace("_", "-")):
        ModelConfig(**{field: value}).validate()


def test_every_stream_starts_from_the_learned_start_state(trained_run):
    model, _ = trained_run
    lm = model.lm
    # Training moved it off its zero initialisation: the gradient reaches it.
    starts = [np.asarray(v.value) for v in lm.start.starts]
    assert len(starts) == lm.num_states == 2 and all(np.abs(s).mean() > 1e-3 for s in starts)
    x = np.asarray(model.tokenizer.encode("First Citizen:\nBefore we"), "int32")[None, :]
    plain = np.asarray(lm.training_model(x))
    from_start, *_ = lm.stateful_model.predict_on_batch([x, *(s[None, :] for s in starts)])
    from_zeros, *_ = lm.stateful_model.predict_on_batch(
        [x, *(np.zeros_like(s)[None, :] for s in starts)])
    np.testing.assert_allclose(plain, from_start, atol=1e-5)
    assert not np.allclose(plain[0, 0], from_zeros[0, 0], atol=1e-3)


def test_runs_saved_before_the_learned_start_start_from_zeros():
    old = ModelConfig.from_dict({"units": 16, "embedding_dim": 8})
    assert old.learned_start is False and ModelConfig().learned_start is True
    assert ModelConfig.from_dict(ModelConfig().to_dict()).learned_start is True
    lm = LanguageModel(old, vocab_size=30)
    assert lm.start is None
    assert not any("start" in v.path for v in lm.training_model.weights)
