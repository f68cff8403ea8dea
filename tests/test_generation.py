import subprocess
import sys

import numpy as np
import pytest
from conftest import set_random_start

from lstmgen.checkpoint import save_checkpoint
from lstmgen.errors import LstmgenError
from lstmgen.generation import Generator, checkpoint_weights, model_weights
from lstmgen.model import LanguageModel, ModelConfig
from lstmgen.tokenizers import BPETokenizer, CharTokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


def make_generator(cell="lstm", layers=2):
    """``cell`` "lstm+ln": the layer-normalised LSTM, its scales and shifts made random (they
    start at ones and zeros, which would hide a step that skipped them)."""
    import keras

    keras.utils.set_random_seed(0)
    tok = CharTokenizer.fit([TEXT])
    layer_norm = cell == "lstm+ln"
    lm = LanguageModel(ModelConfig(units=24, embedding_dim=8, layers=layers,
                                   cell=cell.removesuffix("+ln"), layer_norm=layer_norm),
                       tok.vocab_size)
    set_random_start(lm)
    rng = np.random.default_rng(1)
    for rnn in lm.rnns if layer_norm else ():
        for v in (rnn.gate_scale, rnn.cell_scale, rnn.cell_shift):
            v.assign(np.asarray(v) + rng.normal(0, 0.3, v.shape).astype("float32"))
    return Generator.from_model(lm, tok, block=16), tok, lm


@pytest.mark.parametrize("cell", ["lstm", "gru", "lstm+ln"])
def test_carried_state_matches_running_the_whole_prefix(cell):
    gen, tok, lm = make_generator(cell)
    primes = [TEXT[:1], TEXT[:7], TEXT[:40], TEXT * 3]  # shorter and longer than training
    _, logits = gen.prime_states([tok.encode(p) for p in primes])
    for prime, got in zip(primes, np.asarray(logits)):
        full = lm.training_model.predict(tok.encode(prime)[None, :], verbose=0)[0, -1]
        np.testing.assert_allclose(got, full, atol=1e-5, rtol=1e-5)


def test_greedy_continuation_agrees_with_full_model_step_by_step():
    gen, tok, lm = make_generator()
    prime = "Before we"
    text = gen.generate(prime, length=12, temperature=0)[0]
    for i in range(len(text)):
        ids = tok.encode(prime + text[:i])[None, :]
        logits = lm.training_model.predict(ids, verbose=0)[0, -1]
        assert tok.chars[int(np.argmax(logits))] == text[i]


def test_seed_reproduces_and_samples_differ():
    gen, _, _ = make_generator()
    a = gen.generate("Fir", length=50, seed=7, num_samples=3)
    b = gen.generate("Fir", length=50, seed=7, num_samples=3)
    c = gen.generate("Fir", length=50, seed=8, num_samples=3)
    assert a == b
    assert a != c
    assert len(set(a)) > 1  # the samples of one batch are independent draws
    assert all(len(s) == 50 for s in a)


def test_stream_blocks_join_to_generate():
    gen, _, _ = make_generator()
    blocks = list(gen.stream("hear", length=40, seed=3))
    assert len(blocks) == 3  # 16 + 16 + 8
    assert "".join(b[0] for b in blocks) == gen.generate("hear", length=40, seed=3)[0]
    # The seed alone decides the text, whatever the block size (the server streams in 64s).
    texts = [gen.generate("hear", length=40, seed=3, temperature=1.5, num_samples=2,
                          block=b) for b in (1, 7, 16, 64)]
    assert all(t == texts[0] for t in texts)
    assert len(list(gen.stream("hear", length=40, seed=3, block=7))) == 6


def test_prime_edge_cases():
    gen, tok, _ = make_generator()
    most_frequent = max(set(TEXT), key=TEXT.count)
    assert "é" not in tok.chars and tok.fallback == most_frequent == "e"
    # Unseen prime characters map as the README says: é -> e, ﬁ -> fi, else the most
    # frequent character; the continuation is that of the mapped prime, token for token.
    for prime, mapped in (("Béfore", "Before"), ("ﬁrst", "first"), ("a☃r", "aer")):
        with pytest.warns(UserWarning, match="outside the vocabulary"):
            assert tok.decode(gen.encode_prime(prime)) == mapped
            out = gen.generate(prime, length=12, seed=4)[0]
        assert out == gen.generate(mapped, length=12, seed=4)[0]
    # An empty prime starts as if at the start of a line.
    assert gen.generate("", length=10, seed=0) == gen.generate("\n", length=10, seed=0)
    assert gen.generate("abc", length=0) == [""]
    assert len(gen.generate(["F", "Before we proceed"], length=4, seed=0)) == 2


def test_a_prime_that_ends_inside_a_token_is_healed():
    """BPE: "Before we " ends in a lone space, a token the text has only before line
    breaks, so a model reading it went on as after a line's end (the demo printed
    "class  raw"). Healed, the prime loses that token, the first new token must start with
    it, and the text shows only what follows it."""
    import keras

    keras.utils.set_random_seed(0)
    tok = BPETokenizer.fit([TEXT * 20], vocab_size=300)
    assert [tok.decode([i]) for i in tok.encode("Before we ")][-1] == " "
    lm = LanguageModel(ModelConfig(units=24, embedding_dim=8), tok.vocab_size)
    set_random_start(lm)
    gen = Generator.from_model(lm, tok, block=16)
    pieces = {tok.decode([i]) for i in range(tok.vocab_size)}
    firsts = gen.generate("Before we ", length=1, num_samples=64, temperature=3.0, seed=0)
    assert all(" " + t in pieces for t in firsts), firsts
    assert len(set(firsts)) > 3  # sampled among the tokens that start with the space
    greedy = gen.generate("Before we ", length=1, temperature=0)[0]
    assert " " + greedy in pieces
    both = gen.generate(["Before we ", "hear me"], length=1, temperature=0)  # a row apiece
    assert both[0] == greedy and " " + both[0] in pieces


def test_top_k_one_is_greedy():
    gen, _, _ = make_generator()
    greedy = gen.generate("we ", length=30, temperature=0)[0]
    assert gen.generate("we ", length=30, top_k=1, seed=5)[0] == greedy
    assert gen.generate("we ", length=30, top_p=1e-6, seed=9)[0] == greedy


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"num_samples": 0}, "num_samples"),
    ({"block": -3}, "block"),
])
def test_bad_settings_are_errors(kwargs, message):
    gen, _, _ = make_generator(layers=1)
    with pytest.raises(LstmgenError, match=message):
        gen.generate("a", length=5, **kwargs)
    with pytest.raises(LstmgenError, match="length"):
        gen.generate("a", length=-1)
    with pytest.raises(LstmgenError, match="seed"):
        gen.generate("a", length=5, seed=1.5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "lstm+ln"])
def test_weights_read_from_the_checkpoint_file_are_the_models(cell, tmp_path):
    gen, tok, lm = make_generator(cell)
    path = tmp_path / "best.weights.h5"
    save_checkpoint(lm.training_model, path, {"step": 0})
    from_model, from_file = model_weights(lm), checkpoint_weights(path, lm.config)
    assert len(from_file["layers"]) == lm.config.layers == 2
    np.testing.assert_array_equal(from_file["embedding"], from_model["embedding"])
    assert len(from_file["head"]) == len(from_model["head"]) == 2  # Dense: kernel, bias
    for a, b in zip(from_file["head"], from_model["head"]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(from_file["layers"], from_model["layers"]):
        for name in ("kernel", "recurrent", "bias"):
            np.testing.assert_array_equal(a[name], b[name])
        assert ("norm" in a) == ("norm" in b) == (cell == "lstm+ln")
        for x, y in zip(a.get("norm", ()), b.get("norm", ()), strict=True):
            np.testing.assert_array_equal(x, y)
    assert len(from_file["start"]) == lm.num_states
    for a, b in zip(from_file["start"], from_model["start"], strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.any()
    loaded = Generator.from_checkpoint(path, lm.config, tok, block=16)
    assert loaded.generate("Fir", length=40, seed=3, num_samples=2) == \
        gen.generate("Fir", length=40, seed=3, num_samples=2)


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    _, tok, lm = make_generator(layers=1)
    path = tmp_path / "best.weights.h5"
    save_checkpoint(lm.training_model, path, {"step": 0})
    bigger = ModelConfig(units=32, embedding_dim=8, layers=1)
    with pytest.raises(LstmgenError, match="needs"):
        Generator.from_checkpoint(path, bigger, tok)
    with pytest.raises(LstmgenError, match="does not fit"):
        Generator.from_checkpoint(path, ModelConfig(units=24, embedding_dim=8, layers=2), tok)
    path.write_bytes(b"not an hdf5 file")
    with pytest.raises(LstmgenError, match="does not fit"):
        Generator.from_checkpoint(path, lm.config, tok)


def test_generating_from_a_run_never_imports_keras(trained_run):
    # Most of `lstmgen generate`'s start-up was importing Keras and building the model.
    _, out = trained_run
    code = ("import sys, lstmgen\n"
            f"text = lstmgen.load({str(out)!r}).generate('ROMEO:', 30, seed=1)[0]\n"
            "assert len(text) == 30, text\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
