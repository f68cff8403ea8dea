import numpy as np
import pytest

from lstmgen.errors import LstmgenError
from lstmgen.sampling import Sampling, filter_logits


def kept(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=None):
    out = np.asarray(filter_logits(np.asarray([logits], np.float32), temperature, top_k, top_p,
                                   min_p))
    return [i for i, v in enumerate(out[0]) if v > -1e29]


def test_top_k_keeps_the_k_largest():
    assert kept([0.1, 3.0, 2.0, -1.0], top_k=2) == [1, 2]


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    assert kept(logits, top_p=0.5) == [0]
    assert kept(logits, top_p=0.7) == [0, 1]
    assert kept(logits, top_p=0.81) == [0, 1, 2]
    assert kept(logits, top_p=1.0) == [0, 1, 2, 3]


def test_min_p_keeps_tokens_at_least_min_p_times_the_likeliest():
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    assert kept(logits, min_p=0.5) == [0, 1]  # 0.3 >= 0.25, 0.15 < 0.25
    assert kept(logits, min_p=0.3) == [0, 1, 2]  # 0.15 >= 0.15
    assert kept(logits, min_p=1.0) == [0]
    assert kept(logits, min_p=0.0) == [0, 1, 2, 3]
    # after the temperature: at 0.5 the probabilities are squared (0.25 : 0.09 : ...)
    assert kept(logits, temperature=0.5, min_p=0.3) == [0, 1]
    assert kept(logits, top_k=2, min_p=0.05) == [0, 1]  # composes with top-k
    assert kept(logits, top_p=0.81, min_p=0.05) == [0, 1, 2]  # and with top-p


def test_min_p_outside_zero_one_is_refused():
    from lstmgen.errors import LstmgenError

    for bad in (-0.1, 1.5, True, "0.1"):
        with pytest.raises(LstmgenError, match="min_p must be in \\[0, 1\\]"):
            Sampling(min_p=bad).validate()


def test_temperature_scales_logits():
    out = np.asarray(filter_logits(np.asarray([[1.0, 2.0]], np.float32), 0.5, 0, 1.0))
    np.testing.assert_allclose(out, [[2.0, 4.0]])


def test_sampling_settings():
    assert Sampling(temperature=0).greedy
    assert Sampling(top_k=500).validate(vocab_size=65).top_k == 65


# -- end to end: what the compiled generation draws, against the distribution it promises ----
def expected_distribution(logits, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """softmax(logits / temperature) restricted to the top-k tokens, then to the smallest set
    of those whose probability reaches top_p, then to those at least min_p times as likely as
    the likeliest (the README's order), renormalised (float64)."""
    z = np.asarray(logits, np.float64) / temperature
    order = np.argsort(-z)
    keep = order[:top_k] if top_k else order
    p = np.exp(z[keep] - z[keep].max())
    p /= p.sum()
    if top_p < 1.0:
        reached = np.cumsum(p) - p < top_p  # the tokens before which the mass is below p
        keep, p = keep[reached], p[reached]
        p /= p.sum()
    if min_p:
        above = p >= min_p * p.max()
        keep, p = keep[above], p[above] / p[above].sum()
    out = np.zeros(len(z))
    out[keep] = p
    return out


def draws(generator, prime, n, **sampling):
    """The first token of ``n`` samples of one batch: ``n`` independent draws at one step."""
    texts = generator.generate(prime, length=1, num_samples=n, seed=11, **sampling)
    ids = generator.tokenizer.encode("".join(texts), warn=False)
    assert len(ids) == n
    return np.bincount(ids, minlength=generator.tokenizer.vocab_size) / n


def step_logits(generator, prime):
    _, logits = generator.prime_states([generator.encode_prime(prime)])
    return np.asarray(logits)[0]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.5])
def test_sampled_frequencies_follow_softmax_over_temperature(trained_run, temperature):
    model, _ = trained_run
    gen = model.generator
    logits = step_logits(gen, "First Cit")
    expected = expected_distribution(logits, temperature)
    assert expected.max() < 0.9  # a real distribution to sample, not a sure thing
    seen = draws(gen, "First Cit", 6000, temperature=temperature)
    # total variation of 6,000 draws from the right distribution stays well below 0.05
    assert 0.5 * np.abs(seen - expected).sum() < 0.05
    flat = expected_distribution(logits, temperature * 3)
    assert 0.5 * np.abs(seen - flat).sum() > 0.05  # and the test can tell a wrong one


def test_top_k_and_top_p_draw_only_from_their_sets_as_documented(trained_run):
    model, _ = trained_run
    gen = model.generator
    logits = step_logits(gen, "the ")
    ranked = np.argsort(-logits)
    seen = draws(gen, "the ", 6000, temperature=1.0, top_k=5)
    assert set(np.flatnonzero(seen)) <= set(ranked[:5]) and len(np.flatnonzero(seen)) == 5
    assert 0.5 * np.abs(seen - expected_distribution(logits, 1.0, top_k=5)).sum() < 0.04
    probs = expected_distribution(logits, 1.0)
    smallest = int(np.searchsorted(np.cumsum(probs[ranked]), 0.6) + 1)  # mass >= 0.6
    seen = draws(gen, "the ", 6000, temperature=1.0, top_p=0.6)
    assert set(np.flatnonzero(seen)) == set(ranked[:smallest])
    both = expected_distribution(logits, 0.7, top_k=3, top_p=0.8)
    seen = draws(gen, "the ", 6000, temperature=0.7, top_k=3, top_p=0.8)
    assert set(np.flatnonzero(seen)) == set(np.flatnonzero(both))
    assert 0.5 * np.abs(seen - both).sum() < 0.04


def test_min_p_draws_from_its_set_in_proportion(trained_run):
    model, _ = trained_run
    gen = model.generator
    logits = step_logits(gen, "the ")
    probs = expected_distribution(logits, 0.8)
    expected = expected_distribution(logits, 0.8, min_p=0.6)
    kept_ids = set(np.flatnonzero(probs >= 0.6 * probs.max()))
    assert 1 < len(kept_ids) < (probs > 1e-4).sum()  # the filter has work to do here
    seen = draws(gen, "the ", 6000, temperature=0.8, min_p=0.6)
    assert set(np.flatnonzero(seen)) == kept_ids == set(np.flatnonzero(expected))
    assert 0.5 * np.abs(seen - expected).sum() < 0.04
    nucleus = np.sort(expected_distribution(logits, 1.0, top_k=12, top_p=0.9))[::-1]
    assert nucleus[3] > 0  # at least four tokens: a min-p between the 3rd and 4th keeps 3
    min_p = float((nucleus[2] + nucleus[3]) / 2 / nucleus[0])
    both = expected_distribution(logits, 1.0, top_k=12, top_p=0.9, min_p=min_p)
    assert (both > 0).sum() == 3
    seen = draws(gen, "the ", 6000, temperature=1.0, top_k=12, top_p=0.9, min_p=min_p)
    assert set(np.flatnonzero(seen)) == set(np.flatnonzero(both))
    assert 0.5 * np.abs(seen - both).sum() < 0.04


def penalized(logits, prime_ids, penalty):
    """The model's log-probabilities with those of the prime's tokens multiplied by
    ``penalty`` (so p becomes p ** penalty), as logits for expected_distribution."""
    z = np.asarray(logits, np.float64)
    z = z - z.max() - np.log(np.exp(z - z.max()).sum())
    z[np.unique(prime_ids)] *= penalty
    return z


@pytest.mark.parametrize("penalty", [0.5, 2.5])
def test_repetition_penalty_draws_follow_the_penalized_distribution(trained_run, penalty):
    model, _ = trained_run
    gen = model.generator
    prime = "the sense of the"
    ids = gen.encode_prime(prime)
    logits = step_logits(gen, prime)
    expected = expected_distribution(penalized(logits, ids, penalty), 0.9)
    plain = expected_distribution(logits, 0.9)
    assert 0.5 * np.abs(expected - plain).sum() > 0.1  # the penalty has work to do here
    seen = draws(gen, prime, 6000, temperature=0.9, repetition_penalty=penalty)
    assert 0.5 * np.abs(seen - expected).sum() < 0.04
    both = expected_distribution(penalized(logits, ids, penalty), 1.0, top_k=6, min_p=0.05)
    seen = draws(gen, prime, 6000, temperature=1.0, top_k=6, min_p=0.05,
                 repetition_penalty=penalty)
    assert set(np.flatnonzero(seen)) == set(np.flatnonzero(both))
    assert 0.5 * np.abs(seen - both).sum() < 0.04


def test_repetition_penalty_counts_the_tokens_generated_so_far(trained_run):
    model, _ = trained_run
    gen = model.generator
    ids = gen.tokenizer.encode("the ", warn=False)
    text = gen.generate("the ", 24, temperature=0, repetition_penalty=1e9, block=8)[0]
    out = gen.tokenizer.encode(text, warn=False)
    assert len(out) == 24 and len(set(out)) == 24  # across blocks, no token twice
    assert not set(out) & set(ids)  # nor one of the prime's
    plain = gen.generate("the ", 24, temperature=0, block=8)[0]
    assert len(set(gen.tokenizer.encode(plain, warn=False))) < 24


def test_repetition_penalty_must_be_positive():
    for bad in (0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(LstmgenError, match="repetition_penalty must be > 0"):
            Sampling(repetition_penalty=bad).validate()
