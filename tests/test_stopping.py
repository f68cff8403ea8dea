"""Stop sequences: the filter on its own, then end to end through the compiled generation with
char, word and BPE tokenizers fitted on real text (a stop may end inside a BPE token)."""

import random

import numpy as np
import pytest

from lstmgen.errors import LstmgenError
from lstmgen.generation import Generator
from lstmgen.model import LanguageModel, ModelConfig
from lstmgen.stopping import StopFilter, stop_list, unescape
from lstmgen.tokenizers import BPETokenizer, CharTokenizer, WordTokenizer


def cut_at_first(text: str, stops) -> str:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(found)] if found else text


@pytest.mark.parametrize("seed", range(20))
def test_filter_cuts_at_the_first_stop_wherever_the_pieces_are_cut(seed):
    rng = random.Random(seed)
    text = "".join(rng.choice("ab\n") for _ in range(200))
    stops = ["".join(rng.choice("ab\n") for _ in range(rng.randint(1, 5)))
             for _ in range(rng.randint(1, 3))]
    f, shown, i = StopFilter(stops), [], 0
    while i < len(text):
        j = i + rng.randint(0, 7)
        shown.append(f.feed(text[i:j]))
        # never anything past a stop, even before the stop is complete
        assert not any(s in "".join(shown) for s in stops)
        i = j
    shown.append(f.flush())
    assert "".join(shown) == cut_at_first(text, stops)
    assert f.stopped == any(s in text for s in stops)


def test_filter_holds_back_only_what_could_begin_a_stop():
    f = StopFilter(["\n\nTHE END"])
    assert f.feed("so long\n") == "so long"  # "\n" could begin the stop
    assert f.feed("\nTHE") == ""
    assert f.feed(" BEGINNING") == "\n\nTHE BEGINNING"
    assert f.flush() == "" and not f.stopped


def test_stop_lists_and_escapes():
    assert stop_list(None) == () and stop_list("x") == ("x",)
    with pytest.raises(LstmgenError, match="stop sequence is empty"):
        stop_list(["ok", ""])
    with pytest.raises(LstmgenError, match="must be text"):
        stop_list([3])
    assert unescape(r"\n\n") == "\n\n" and unescape(r"a\tb\\n") == "a\tb\\n"
    assert unescape("süß 中文\\n") == "süß 中文\n"


# -- end to end ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(small_text) -> str:
    return small_text.read_text(encoding="utf-8")


def generator_for(tokenizer) -> Generator:
    import keras

    keras.utils.set_random_seed(3)
    lm = LanguageModel(ModelConfig(units=32, embedding_dim=16), tokenizer.vocab_size)
    return Generator.from_model(lm, tokenizer, block=7)


def tokenizers(corpus):
    return {
        "char": CharTokenizer.fit([corpus]),
        "word": WordTokenizer.fit([corpus], vocab_size=2000),
        "bpe": BPETokenizer.fit([corpus], vocab_size=500),
    }


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_samples_end_at_their_first_stop_and_stream_nothing_past_it(corpus, kind):
    gen = generator_for(tokenizers(corpus)[kind])
    settings = dict(seed=5, temperature=1.0, num_samples=4)
    full = gen.generate("The ", 120, **settings)
    # a stop taken from the middle of sample 0: it spans blocks of 7 tokens, and for BPE
    # it starts and ends inside tokens
    stop = full[0][len(full[0]) // 2: len(full[0]) // 2 + 5]
    assert len(stop) == 5
    if kind == "bpe":
        ids = gen.tokenizer.encode(full[0])
        bounds = set(np.cumsum([len(gen.tokenizer.decode([i])) for i in ids]))
        start = full[0].find(stop)
        assert start not in bounds or start + len(stop) not in bounds
    stops = [stop, "zzzq"]
    stream = gen.stream("The ", 120, stop=stops, **settings)
    blocks = list(stream)
    texts = ["".join(column) for column in zip(*blocks)]
    expected = [cut_at_first(t, stops) for t in full]
    assert texts == expected
    assert len(texts[0]) < len(full[0])
    assert stream.finish_reasons == ["stop" if e != t else "length"
                                     for e, t in zip(expected, full)]
    for i in range(4):  # no block shows text past the cut
        shown = ""
        for block in blocks:
            shown += block[i]
            assert expected[i].startswith(shown)


def test_generation_ends_once_every_sample_has_stopped(trained_run):
    model, _ = trained_run
    gen = model.generator
    stream = gen.stream("the ", 5000, stop=["e", "t", "a", " "], num_samples=2, seed=1,
                        block=16)
    blocks = list(stream)
    assert stream.finish_reasons == ["stop", "stop"]
    assert len(blocks) <= 3  # not 5000 / 16 blocks


def test_one_prime_per_sample_in_one_batch(trained_run):
    model, _ = trained_run
    gen = model.generator
    primes = ["First Citizen:", "the ", "MENENIUS:"]
    together = gen.generate(primes, 40, temperature=1.0, seed=4)
    # sample i draws the noise of row i whatever the other rows hold
    alone = [gen.generate(p, 40, temperature=1.0, seed=4, num_samples=3)[i]
             for i, p in enumerate(primes)]
    assert together == alone and len(set(together)) == 3
    greedy = gen.generate(primes, 40, temperature=0)
    assert greedy == [gen.generate(p, 40, temperature=0)[0] for p in primes]
