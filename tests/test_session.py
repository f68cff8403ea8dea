"""Interactive sessions: the context is exactly the transcript, carried as the state."""

import numpy as np
import pytest

from lstmgen.errors import LstmgenError
from lstmgen.session import Session


def transcript_logits(gen, text):
    _, logits = gen.prime_states([gen.encode_prime(text)])
    return np.asarray(logits)[0]


def test_first_reply_is_what_generate_gives(trained_run):
    model, _ = trained_run
    chat = model.session(seed=3, temperature=1.0)
    chat.feed("First")
    reply = "".join(chat.reply(50))
    assert reply == model.generate("First", 50, seed=3, temperature=1.0)[0]
    assert chat.finish_reason == "length"


def test_the_state_after_several_turns_is_the_transcripts(trained_run):
    model, _ = trained_run
    gen = model.generator
    chat = Session(gen, seed=3, temperature=1.0, block=16)
    chat.feed("First Citizen:")
    first = "".join(chat.reply(37))  # not a whole number of blocks
    chat.feed("\nMENENIUS:")
    second = "".join(chat.reply(20))
    assert len(first) == 37 and len(second) == 20
    transcript = "First Citizen:" + first + "\nMENENIUS:" + second
    np.testing.assert_allclose(np.asarray(chat._logits)[0], transcript_logits(gen, transcript),
                               atol=1e-4)
    # and the next turn differs from the first: the noise runs on across turns
    assert "".join(chat.reply(20)) != first[:20]


@pytest.mark.parametrize("cut", [3, 14, 30])
def test_a_stopped_reply_leaves_the_state_at_the_cut(trained_run, cut):
    model, _ = trained_run
    gen = model.generator
    probe = Session(gen, seed=8, temperature=1.0, block=16)
    probe.feed("the ")
    text = "".join(probe.reply(60))
    stop = text[cut: cut + 4]  # at 14 it spans the blocks' boundary
    chat = Session(gen, seed=8, temperature=1.0, block=16, stop=[stop])
    chat.feed("the ")
    reply = "".join(chat.reply(60))
    assert reply == text[: text.find(stop)] and chat.finish_reason == "stop"
    np.testing.assert_allclose(np.asarray(chat._logits)[0],
                               transcript_logits(gen, "the " + reply), atol=1e-4)


def test_bad_session_settings_are_errors(trained_run):
    model, _ = trained_run
    with pytest.raises(LstmgenError, match="stop sequence is empty"):
        model.session(stop=[""])
    with pytest.raises(LstmgenError, match="repetition_penalty"):
        model.session(repetition_penalty=0)
    with pytest.raises(LstmgenError, match="length"):
        list(model.session().reply(-1))
