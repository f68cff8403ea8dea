"""Output layers: the adaptive softmax gives exact, normalised log-probabilities with the loss
and gradients of a reference computation; tied embeddings share the embedding matrix; every
kind generates from a checkpoint file exactly as the Keras model predicts."""

import numpy as np
import pytest

import lstmgen
from lstmgen.checkpoint import save_checkpoint
from lstmgen.errors import LstmgenError
from lstmgen.generation import Generator, checkpoint_weights
from lstmgen.heads import default_cutoffs, jax_ops, output_log_probs, resolve_softmax
from lstmgen.model import LanguageModel, ModelConfig
from lstmgen.tokenizers import WordTokenizer

KINDS = {
    "adaptive": dict(softmax="adaptive", cutoffs=[300, 900]),
    "adaptive-tied": dict(softmax="adaptive", cutoffs=[300, 900], tie_embeddings=True),
    "full-tied": dict(softmax="full", tie_embeddings=True),
}


@pytest.fixture(scope="module")
def words(shakespeare):
    text = shakespeare.read_text(encoding="utf-8")[:150_000]
    tok = WordTokenizer.fit([text], vocab_size=1500)
    return tok, tok.encode(text, warn=False)


def make_model(tok, **kinds):
    import keras

    keras.utils.set_random_seed(0)
    return LanguageModel(ModelConfig(units=24, embedding_dim=24, dropout=0.0, **kinds),
                         tok.vocab_size)


@pytest.mark.parametrize("kind", ["adaptive", "adaptive-tied"])
def test_adaptive_log_probabilities_sum_to_one(words, kind):
    tok, ids = words
    lm = make_model(tok, **KINDS[kind])
    logp = np.asarray(lm.training_model.predict(ids[None, :200], verbose=0), np.float64)
    assert logp.shape == (1, 200, tok.vocab_size) and (logp <= 1e-6).all()
    np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, atol=1e-5)


def _reference_nll(h, arrays, cutoffs, targets):
    """Adaptive softmax the way the paper states it, one target at a time (float64 numpy):
    log p(w) = log p_head(w) for head words, else log p_head(cluster) + log p_cluster(w)."""
    h = np.asarray(h, np.float64)
    head_kernel, head_bias, *tails = (np.asarray(a, np.float64) for a in arrays)
    bounds = [*cutoffs, None]

    def logsoftmax(z):
        z = z - z.max()
        return z - np.log(np.exp(z).sum())

    total = 0.0
    for x, w in zip(h, targets):
        head = logsoftmax(x @ head_kernel + head_bias)
        if w < cutoffs[0]:
            total -= head[w]
            continue
        i = max(k for k, c in enumerate(cutoffs) if w >= c)
        projection, kernel, bias = tails[3 * i : 3 * i + 3]
        tail = logsoftmax((x @ projection) @ kernel + bias)
        total -= head[cutoffs[0] + i] + tail[w - bounds[i]]
    return total


def test_adaptive_loss_and_gradients_match_a_reference(words):
    import jax
    import jax.numpy as jnp

    tok, ids = words
    cutoffs = KINDS["adaptive"]["cutoffs"]
    lm = make_model(tok, **KINDS["adaptive"])
    rng = np.random.default_rng(0)
    arrays = [np.asarray(v.value) + rng.normal(0, 0.1, v.shape).astype(np.float32)
              for v in lm.head.weights]
    h = rng.normal(size=(64, 24)).astype(np.float32)
    targets = ids[:64].astype(np.int32)
    assert {int((targets >= c).sum()) > 0 for c in cutoffs} == {True}  # every cluster used

    def loss(arrays, h):
        logp = output_log_probs(jax_ops(), h, arrays, "adaptive", cutoffs)
        return -jnp.take_along_axis(logp, targets[:, None], axis=1).sum()

    assert float(loss(arrays, h)) == pytest.approx(_reference_nll(h, arrays, cutoffs, targets),
                                                   rel=1e-5)
    # gradients against central differences of the float64 reference, on random directions
    grads = jax.grad(loss, argnums=(0, 1))(arrays, h)
    for _ in range(3):
        direction = [rng.normal(size=a.shape) for a in arrays]
        dh = rng.normal(size=h.shape)
        eps = 1e-4

        def moved(sign, eps=eps, dh=dh, direction=direction):
            return _reference_nll(h + sign * eps * dh,
                                  [a + sign * eps * d for a, d in zip(arrays, direction)],
                                  cutoffs, targets)

        numeric = (moved(1) - moved(-1)) / (2 * eps)
        analytic = sum(float(np.sum(np.asarray(g) * d)) for g, d in zip(grads[0], direction))
        analytic += float(np.sum(np.asarray(grads[1]) * dh))
        assert analytic == pytest.approx(numeric, rel=1e-3, abs=1e-3)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_generation_from_the_checkpoint_matches_the_keras_model(words, kind, tmp_path):
    tok, ids = words
    lm = make_model(tok, **KINDS[kind])
    path = tmp_path / "best.weights.h5"
    save_checkpoint(lm.training_model, path, {"step": 0})
    gen = Generator.from_checkpoint(path, lm.config, tok, block=16)
    primes = [ids[:1], ids[:9], ids[:40]]
    _, logits = gen.prime_states(primes)
    for prime, got in zip(primes, np.asarray(logits)):
        expected = lm.training_model.predict(prime[None, :], verbose=0)[0, -1]
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert len(checkpoint_weights(path, lm.config)["head"]) == len(lm.head.weights)
    text = gen.generate(" The king", length=30, seed=2, num_samples=2)
    assert text == Generator.from_model(lm, tok).generate(" The king", length=30, seed=2,
                                                          num_samples=2)


def test_tied_embeddings_share_the_embedding_matrix(words):
    tok, _ = words
    untied = make_model(tok, softmax="full")
    tied = make_model(tok, **KINDS["full-tied"])
    assert untied.count_params() - tied.count_params() == 24 * tok.vocab_size
    assert [tuple(v.shape) for v in tied.head.weights] == [(tok.vocab_size,)]
    with pytest.raises(LstmgenError, match="--embedding-dim equal to --units"):
        ModelConfig(units=32, embedding_dim=16, tie_embeddings=True).validate()


def test_softmax_is_resolved_once_and_old_runs_keep_the_full_one(words, tmp_path):
    tok, _ = words
    assert resolve_softmax("auto", 33278) == "adaptive" and default_cutoffs(33278) == [
        2000, 10000]
    assert ModelConfig.from_dict({"units": 8}).softmax == "full"  # saved before the setting
    with pytest.raises(LstmgenError, match="cutoffs"):
        ModelConfig(softmax="adaptive", cutoffs=[900, 300]).for_vocabulary(tok.vocab_size)
    corpus = tmp_path / "c.txt"
    corpus.write_text(tok.decode(words[1][:6000]), encoding="utf-8")
    run = lstmgen.train(corpus, out=tmp_path / "run", tokenizer="word",
                        tokenizer_options={"vocab_size": 1200},
                        model=ModelConfig(units=16, embedding_dim=16, softmax="adaptive",
                                          cutoffs=[400]),
                        max_steps=3, batch_size=4, seq_len=16, sample_length=0, verbose=0).run
    saved = run.config["model"]
    assert saved["softmax"] == "adaptive" and saved["cutoffs"] == [400]


@pytest.mark.parametrize("kind", ["adaptive", "adaptive-tied"])
def test_adaptive_training_loss_matches_the_log_probabilities_value_and_gradients(words, kind):
    """The training loss scores tail clusters only where targets fall (or, when a batch has
    more of them than the capacity, everywhere): the same NLL and gradients as reading the
    targets off the whole vocabulary's log-probabilities."""
    import jax
    import jax.numpy as jnp

    from lstmgen.heads import adaptive_nll, tail_capacities, token_fractions

    tok, ids = words
    lm = make_model(tok, **KINDS[kind])
    cutoffs, vocab = lm.config.cutoffs, tok.vocab_size
    rng = np.random.default_rng(1)
    arrays = [np.asarray(v.value) + rng.normal(0, 0.1, v.shape).astype(np.float32)
              for v in lm.head.weights]
    tied = np.asarray(lm.embedding.embeddings.value) if "tied" in kind else None
    h = rng.normal(size=(16, 64, 24)).astype(np.float32)
    targets = ids[5000 : 5000 + 1024].reshape(16, 64).astype(np.int32)

    def reference(arrays, h):
        logp = output_log_probs(jax_ops(), h, arrays, "adaptive", cutoffs, tied)
        return -jnp.take_along_axis(logp, targets[..., None], axis=-1).sum()

    want, want_grads = jax.value_and_grad(reference, argnums=(0, 1))(arrays, h)
    fractions = token_fractions(ids, cutoffs)
    counts = [int(((targets >= lo) & (targets < hi)).sum())
              for lo, hi in zip(cutoffs, [*cutoffs[1:], vocab])]
    # each path taken: every tail scored where its targets fall (they fit the capacity), and
    # the first tail overflowing a capacity sized for none of them (scored everywhere)
    assert all(0 < k <= c < 1024 for k, c in zip(counts, tail_capacities(1024, fractions)))
    assert counts[0] > tail_capacities(1024, [0.0])[0]
    for tail_fractions in (fractions, [0.0] * len(cutoffs), None):
        def loss(arrays, h, tail_fractions=tail_fractions):
            return adaptive_nll(h, targets, arrays, cutoffs, vocab, tied, tail_fractions).sum()

        got, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(arrays, h)
        assert float(got) == pytest.approx(float(want), rel=1e-5)
        for g, w in zip([*grads[0], grads[1]], [*want_grads[0], want_grads[1]]):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)


def test_adaptive_training_loss_is_the_cross_entropy_of_its_log_probabilities(words):
    """In training the adaptive layer hands its input to the loss; the loss equals the
    cross-entropy of the log-probabilities the model gives in inference."""
    import keras

    from lstmgen.heads import token_fractions, training_loss

    tok, ids = words
    lm = make_model(tok, **KINDS["adaptive"])
    x, y = ids[None, :64], ids[None, 1:65]
    logp = lm.training_model.predict(x, verbose=0)
    hidden = lm.training_model(x, training=True)
    assert hidden.shape == (1, 64, 24)
    reference = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logp)
    loss = training_loss("adaptive", lm.head, token_fractions(ids, lm.config.cutoffs))
    assert float(loss(y, hidden)) == pytest.approx(float(reference), rel=1e-5)
    assert float(reference) > 1.0  # an untrained model: a real loss to compare
