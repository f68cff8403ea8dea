import numpy as np

from lstmgen.sampling import Sampling, filter_logits


def kept(logits, temperature=1.0, top_k=0, top_p=1.0):
    out = np.asarray(filter_logits(np.asarray([logits], np.float32), temperature, top_k, top_p))
    return [i for i, v in enumerate(out[0]) if v > -1e29]


def test_top_k_keeps_the_k_largest():
    assert kept([0.1, 3.0, 2.0, -1.0], top_k=2) == [1, 2]


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    assert kept(logits, top_p=0.5) == [0]
    assert kept(logits, top_p=0.7) == [0, 1]
    assert kept(logits, top_p=0.81) == [0, 1, 2]
    assert kept(logits, top_p=1.0) == [0, 1, 2, 3]


def test_temperature_scales_logits():
    out = np.asarray(filter_logits(np.asarray([[1.0, 2.0]], np.float32), 0.5, 0, 1.0))
    np.testing.assert_allclose(out, [[2.0, 4.0]])


def test_sampling_settings():
    assert Sampling(temperature=0).greedy
    assert Sampling(top_k=500).validate(vocab_size=65).top_k == 65
