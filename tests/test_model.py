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


@pytest.mark.parametrize("field, value", [("dropout", 1.0), ("recurrent_dropout", -0.1),
                                          ("recurrent_dropout", "0.2"), ("units", 0)])
def test_bad_sizes_are_clear_errors(field, value):
    with pytest.raises(lstmgen.LstmgenError, match=field.replace("_", "-")):
        ModelConfig(**{field: value}).validate()
