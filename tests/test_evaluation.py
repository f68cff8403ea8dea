"""Evaluation: every token predicted once, from all the text before it (carried state) or
from its training window (reset state), checked against the Keras model run directly."""

import math

import numpy as np
import pytest
from conftest import set_random_start

from lstmgen.evaluation import Evaluation, Evaluator
from lstmgen.model import LanguageModel, ModelConfig
from lstmgen.tokenizers import CharTokenizer


@pytest.fixture(scope="module")
def model_and_ids(shakespeare):
    import keras

    keras.utils.set_random_seed(1)
    text = shakespeare.read_text(encoding="utf-8")[:3000]
    tok = CharTokenizer.fit([text])
    lm = LanguageModel(ModelConfig(units=16, embedding_dim=8, layers=2), tok.vocab_size)
    set_random_start(lm)  # every stream starts from it: the checks below cover that
    return lm, np.asarray(tok.encode(text), np.int32)


def direct_nll(lm, ids: np.ndarray) -> float:
    """Summed NLL of ids[1:] with the whole of ids as one sequence (one cold start)."""
    logits = lm.training_model.predict(ids[None, :-1], verbose=0)[0].astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -float(logp[np.arange(len(ids) - 1), ids[1:]].sum())


def test_carried_state_equals_reading_each_stream_whole(model_and_ids):
    lm, ids = model_and_ids
    ids = ids[:1201]
    evaluator = Evaluator(lm, seq_len=32, batch_size=4, carry_state=True)
    rows, length = evaluator._layout(ids, len(ids) - 1)[0].shape[0], 600
    assert rows == 2  # 1,200 predictions, streams of >= 16 windows of 32
    expected = sum(direct_nll(lm, ids[r * length : r * length + length + 1])
                   for r in range(rows))
    result = evaluator(ids)
    assert result.tokens == 1200
    assert result.nll == pytest.approx(expected, rel=1e-4)
    # A short text: its first predictions, from the start state, are most of the loss.
    assert evaluator(ids[:6]).nll == pytest.approx(direct_nll(lm, ids[:6]), rel=1e-5)


def test_reset_state_restarts_every_window(model_and_ids):
    lm, ids = model_and_ids
    ids = ids[:101]
    result = Evaluator(lm, seq_len=32, batch_size=2, carry_state=False)(ids)
    windows = [ids[k : k + 33] for k in range(0, 100, 32)]
    assert [len(w) for w in windows] == [33, 33, 33, 5]
    assert result.tokens == 100
    assert result.nll == pytest.approx(sum(direct_nll(lm, w) for w in windows), rel=1e-4)


def test_carrying_the_state_scores_a_trained_model_better(trained_run, shakespeare):
    model, _ = trained_run
    text = shakespeare.read_text(encoding="utf-8")[-20_000:]
    ids = np.asarray(model.tokenizer.encode(text, warn=False), np.int32)
    carried = Evaluator(model.lm, seq_len=32, carry_state=True)(ids)
    reset = Evaluator(model.lm, seq_len=32, carry_state=False)(ids)
    assert carried.tokens == reset.tokens == len(ids) - 1
    assert carried.loss < reset.loss


def test_max_tokens_and_short_input(model_and_ids):
    lm, ids = model_and_ids
    evaluator = Evaluator(lm, seq_len=16)
    part = evaluator(ids, chars=2 * len(ids), max_tokens=200)
    assert part.tokens == 199 and part.chars == round(2 * len(ids) * 199 / (len(ids) - 1))
    assert evaluator(ids[:1]) == Evaluation(0.0, 0, 0)
    assert math.isfinite(evaluator(ids[:2]).loss)


def test_fresh_start_windows_are_the_same_however_the_text_is_chunked(trained_run,
                                                                      shakespeare,
                                                                      monkeypatch):
    import lstmgen.corpus
    from lstmgen.evaluation import FRESH_START_EVERY, FRESH_START_TOKENS, evaluate_corpus

    model, _ = trained_run
    text = shakespeare.read_text(encoding="utf-8")[:30_000]
    whole = evaluate_corpus(model, iter([text]))
    reading = lstmgen.corpus.iter_corpus_text
    monkeypatch.setattr(lstmgen.corpus, "iter_corpus_text",
                        lambda source, **kw: reading(source, chunk_bytes=3000, **kw))
    chunked = evaluate_corpus(model, iter([text]))
    n = len(text)
    assert whole.fresh_tokens == chunked.fresh_tokens == FRESH_START_TOKENS * len(
        range(0, n - FRESH_START_TOKENS, FRESH_START_EVERY))
    assert chunked.fresh_nll == pytest.approx(whole.fresh_nll, rel=1e-5)
    assert chunked.words == whole.words == len(text.split()) + text.count("\n")
    assert chunked.tokens == whole.tokens == n - 1
    # windows from a zero state: the first tokens are harder than with all the text before
    assert whole.fresh_start > whole.loss


def test_fresh_start_is_the_mean_loss_of_windows_read_from_the_start_state(model_and_ids):
    lm, ids = model_and_ids
    from lstmgen.evaluation import FRESH_START_EVERY, FRESH_START_TOKENS

    result = Evaluator(lm, seq_len=32).fresh_start(ids)
    starts = range(0, len(ids) - FRESH_START_TOKENS, FRESH_START_EVERY)
    expected = sum(direct_nll(lm, ids[s : s + FRESH_START_TOKENS + 1]) for s in starts)
    assert result.fresh_tokens == FRESH_START_TOKENS * len(starts)
    assert result.fresh_nll == pytest.approx(expected, rel=1e-4)
