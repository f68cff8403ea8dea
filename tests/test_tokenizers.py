"""Tokenizers on real text: exact round trips over every shared corpus, vocabulary caps and
<unk>, the char mapping policy, save/load, streaming decode of multi-byte text, and a tiny
end-to-end train / generate / evaluate with the word and BPE tokenizers."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from lstmgen.corpus import iter_corpus_text
from lstmgen.errors import LstmgenError
from lstmgen.tokenizers import (
    TOKENIZERS,
    UNK,
    BPETokenizer,
    CharTokenizer,
    UnknownTokensWarning,
    WordTokenizer,
    tokenizer_from_dict,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PATTERNS = ("tiny_shakespeare/input.txt", "war_and_peace/*.txt", "wikitext2/wiki.valid.tokens",
            "wikitext2/wiki.test.tokens", "gutenberg/*.txt", "unicode/*.txt")
FILES = sorted(p for pattern in PATTERNS for p in DATA.glob(pattern))
BPE_CHARS = 1_000_000  # BPE encodes ~1 MB/s on a busy core: the first 1M characters of each
MULTIBYTE = "紅樓夢 第一回 甄士隱夢幻識通靈 😀🎉 naïve café — “quoted” ½ ﬁ\n"


def file_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def read(path: Path) -> str:
    return "".join(iter_corpus_text(path))


@pytest.fixture(scope="module")
def data_dir() -> Path:
    if not FILES:
        pytest.skip(f"shared corpora not found under {DATA}")
    return DATA


@pytest.fixture(scope="module")
def bpe(data_dir) -> BPETokenizer:
    """BPE trained on 40 KB of every shared file (~450 KB in all), so training stays quick."""
    sample = [read(p)[:40_000] for p in FILES]
    return BPETokenizer.fit(iter(sample), vocab_size=2000)


# -- round trips over every shared file ---------------------------------------------------
@pytest.mark.parametrize("path", FILES, ids=file_id)
def test_char_round_trip_after_reader_normalisation(path):
    text = read(path)
    raw = path.read_bytes().decode("utf-8")
    assert not text.startswith("\ufeff") and "\r" not in text
    normalised = raw.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    assert text == normalised + ("" if normalised.endswith("\n") else "\n")  # files end a line
    tok = CharTokenizer.fit(iter_corpus_text(path))
    ids = tok.encode(text, unknown="error")
    assert tok.decode(ids) == text and tok.count_chars(ids) == len(text)


@pytest.mark.parametrize("path", FILES, ids=file_id)
def test_word_round_trip_when_vocabulary_covers_text(path):
    text = read(path)
    tok = WordTokenizer.fit(iter_corpus_text(path), vocab_size=10**7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = tok.encode(text, unknown="error")
    assert tok.decode(ids) == text
    assert tok.count_chars(ids) == len(text)
    assert tok.count_unknown(text) == 0


@pytest.mark.parametrize("path", FILES, ids=file_id)
def test_bpe_round_trip_is_exact_for_any_text(bpe, path):
    text = read(path)[:BPE_CHARS]
    ids = bpe.encode(text)
    assert ids.dtype == np.int32 and ids.max() < bpe.vocab_size
    assert len(ids) < len(text.encode("utf-8"))  # merges compress every language
    assert bpe.decode(ids) == text
    assert bpe.count_chars(ids) == len(text)
    assert bpe.count_unknown(text) == 0


def test_bpe_ids_do_not_depend_on_where_the_text_is_cut(bpe, data_dir):
    text = read(data_dir / "tiny_shakespeare" / "input.txt")[:200_000]
    whole = bpe.encode(text)
    bpe.batch_piece_chars = 1000  # force many batch pieces
    try:
        pieces = bpe.encode(text)
    finally:
        bpe.batch_piece_chars = BPETokenizer.batch_piece_chars
    cut = text.index("\n\n", 100_000) + 1  # between two newlines
    halves = np.concatenate([bpe.encode(text[:cut]), bpe.encode(text[cut:])])
    assert np.array_equal(whole, pieces) and np.array_equal(whole, halves)


def test_bpe_counts_characters_across_any_split_of_the_ids(bpe):
    ids = bpe.encode(MULTIBYTE * 3)
    assert sum(bpe.count_chars(ids[i : i + 3]) for i in range(0, len(ids), 3)) == len(
        MULTIBYTE * 3
    )


# -- word vocabulary cap and <unk> ----------------------------------------------------------
def test_word_vocabulary_cap_maps_rare_words_to_unk(data_dir):
    text = read(data_dir / "tiny_shakespeare" / "input.txt")[:100_000]
    tok = WordTokenizer.fit(iter([text]), vocab_size=300)
    assert tok.vocab_size == 300 and tok.tokens[:2] == [UNK, " " + UNK]
    assert {" ", "\n", " the", ",", "."} <= set(tok.tokens)
    with pytest.warns(UnknownTokensWarning, match=r"word\(s\) outside the vocabulary") as caught:
        ids = tok.encode(text)
    unknown = tok.count_unknown(text)
    assert unknown > 0 and f"{unknown} word(s)" in str(caught[0].message)
    assert int(np.isin(ids, [0, 1]).sum()) == unknown
    # Documented normalisation: an out-of-vocabulary word or mark reads as "<unk>", with its
    # space when it had one, unless known tokens spell it (" Word" as " " + "Word").
    known = set(tok.tokens)

    def expected(t):
        if t in known or t.isspace() or (t.startswith(" ") and t[1:] in known):
            return t
        return " " + UNK if t.startswith(" ") else UNK

    assert tok.decode(ids) == "".join(expected(t) for t in tok.split(text))
    with pytest.raises(LstmgenError, match="not in the vocabulary"):
        tok.encode(text, unknown="error")


def test_word_split_policy():
    text = "Don't  stop—well-known l’homme,\tsnake_case 3.14 红楼梦 <unk>!\n\n    return x\n"
    spaced = WordTokenizer.fit(["x\n"])
    assert spaced.split(text) == [
        "Don't", " ", " stop", "—", "well-known", " l’homme", ",", "\t", "snake", "_", "case",
        " 3", ".", "14", " 红", "楼", "梦", " " + UNK, "!", "\n", "\n", "   ", " return", " x",
        "\n",
    ]
    # Runs saved before words carried their space keep their split.
    old = WordTokenizer.from_dict({"kind": "word", "tokens": [UNK, " ", "x", "\n"]})
    assert not old.spaces and old.split(text) == [
        "Don't", "  ", "stop", "—", "well-known", " ", "l’homme", ",", "\t", "snake", "_",
        "case", " ", "3", ".", "14", " ", "红", "楼", "梦", " ", UNK, "!", "\n", "\n", "    ",
        "return", " ", "x", "\n",
    ]
    for tok in (spaced, old):
        assert "".join(tok.split(text)) == text


def test_word_tokens_carry_their_space_one_step_per_word(data_dir):
    text = read(data_dir / "wikitext2" / "wiki.valid.tokens")[:200_000]
    tok = WordTokenizer.fit(iter([text]), vocab_size=10**7)
    ids = tok.encode(text, unknown="error")
    assert tok.decode(ids) == text
    # about one token per word: spaces are not tokens of their own
    assert len(ids) < 1.15 * (len(text.split()) + text.count("\n"))
    assert tok.tokens.index(" the") < 10  # frequency order, after the fixed tokens


def test_word_unseen_whitespace_keeps_layout_and_literal_unk_is_not_counted():
    tok = WordTokenizer.fit(["a b\n", "c\td\n"], vocab_size=100)
    text = "a     b\t\tc <unk> d\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = tok.encode(text)
    assert tok.decode(ids) == text  # " d" was never seen: spelled " " + "d"
    assert tok.count_unknown(text) == 0
    assert tok.encode(UNK).tolist() == [tok.unk_id]
    assert tok.encode(" " + UNK).tolist() == [tok.spaced_unk_id]
    assert tok.decode(tok.encode("a zebra\n", warn=False)) == "a <unk>\n"


def test_word_tokenizer_rejects_a_cap_too_small_for_whitespace():
    with pytest.raises(LstmgenError, match="too small"):
        WordTokenizer.fit(["a b\n"], vocab_size=2)


# -- char mapping policy --------------------------------------------------------------------
def test_char_maps_unseen_characters_by_the_documented_policy(data_dir):
    text = read(data_dir / "tiny_shakespeare" / "input.txt")
    tok = CharTokenizer.fit(iter([text]))
    assert "é" not in tok.chars and tok.fallback == " "
    with pytest.warns(UnknownTokensWarning, match="3 character"):
        ids = tok.encode("café ﬁ€")
    assert tok.decode(ids) == "cafe fi "  # é -> e, ﬁ -> fi, € -> fallback
    assert tok.count_unknown("café ﬁ€") == 3
    with pytest.raises(LstmgenError, match="not in the vocabulary"):
        tok.encode("€", unknown="error")


# -- save / load, streaming ------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_save_load_gives_the_same_ids(kind, data_dir):
    text = read(data_dir / "unicode" / "goethe_faust.txt")[:60_000]
    options = {"vocab_size": 600} if kind != "char" else {}
    tok = TOKENIZERS[kind].fit(iter([text]), **options)
    saved = json.loads(json.dumps(tok.to_dict()))
    loaded = tokenizer_from_dict(saved)
    assert type(loaded) is type(tok) and loaded.kind == kind == saved["kind"]
    assert loaded.vocab_size == tok.vocab_size
    probe = text[-5000:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownTokensWarning)
        assert np.array_equal(loaded.encode(probe), tok.encode(probe))
    if kind == "bpe":
        assert saved["tokenizer"] == tok.tokenizer.to_str()


def test_bpe_stream_decoder_never_emits_broken_characters(bpe):
    ids = bpe.encode(MULTIBYTE)
    assert any(bpe.count_chars([i]) == 0 for i in ids)  # some token ends mid-character
    decoder = bpe.stream_decoder()
    pieces = [decoder.feed(int(i)) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + decoder.flush() == bpe.decode(ids) == MULTIBYTE


def test_bpe_stream_decoder_flushes_a_cut_character_as_replacement(bpe):
    ids = bpe.encode("😀")
    assert len(ids) > 1
    decoder = bpe.stream_decoder()
    assert decoder.feed(int(ids[0])) == ""
    assert decoder.flush() == "\ufffd"


@pytest.mark.parametrize("kind", ["char", "word"])
def test_stream_decoder_matches_decode(kind, data_dir):
    text = read(data_dir / "unicode" / "hongloumeng.txt")[:5000]
    tok = TOKENIZERS[kind].fit(iter([text]))
    ids = tok.encode(text)
    decoder = tok.stream_decoder()
    assert "".join(decoder.feed(int(i)) for i in ids) + decoder.flush() == text


def test_bpe_rejects_a_vocabulary_smaller_than_the_bytes():
    with pytest.raises(LstmgenError, match="too small"):
        BPETokenizer.fit(["abc\n"], vocab_size=200)


# -- end to end -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_train_generate_evaluate(kind, tmp_path, small_text):
    import collections
    import math

    import lstmgen

    text = small_text.read_text(encoding="utf-8")[:8000]
    text = text[: text.rfind("\n") + 1]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    model = lstmgen.train(
        corpus, out=tmp_path / "run", tokenizer=kind, tokenizer_options={"vocab_size": 300},
        max_steps=300, epochs=1000, batch_size=8, seq_len=32, learning_rate=1e-2,
        val_fraction=0.0,
        model=lstmgen.ModelConfig(units=64, embedding_dim=32, dropout=0.0), sample_length=0,
        verbose=0,
    )
    loaded = lstmgen.load(tmp_path / "run", checkpoint="last")
    assert loaded.tokenizer.kind == kind and loaded.tokenizer.vocab_size <= 300
    assert loaded.tokenizer.encode("the").tolist() == model.tokenizer.encode("the").tolist()
    # Trained, the model beats what token frequencies alone give, by a margin.
    ids = loaded.tokenizer.encode(text, warn=False)
    counts = collections.Counter(ids.tolist())
    unigram = -sum(n / len(ids) * math.log(n / len(ids)) for n in counts.values())
    on_train = loaded.evaluate(corpus)
    assert on_train.loss < unigram - 0.5, (on_train.loss, unigram)
    assert on_train.word_perplexity == pytest.approx(
        math.exp(on_train.nll / (len(text.split()) + text.count("\n"))))
    samples = loaded.generate("First", length=60, seed=0, num_samples=4, temperature=0.7)
    assert len(samples) == 4 and all(isinstance(s, str) and s for s in samples)
    if kind == "word":
        # Words carry their spaces: what the model writes is made of the corpus's own
        # space-separated pieces (no glued words) and its own runs of whitespace.
        pieces = set(text.split())
        written = [w for w in " ".join(samples).split() if UNK not in w]  # 300 words: many
        assert sum(w in pieces for w in written) / len(written) > 0.9
        runs = set(re.findall(r"[^\S\n]+", text))  # of spaces and tabs
        assert set().union(*(re.findall(r"[^\S\n]+", s) for s in samples)) <= runs
    held_out = small_text.read_text(encoding="utf-8")[20_000:24_000]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownTokensWarning)
        result = loaded.evaluate(iter([held_out]))
    assert result.chars == len(held_out)
    assert result.tokens == len(loaded.tokenizer.encode(held_out, warn=False)) - 1
    assert result.words == len(held_out.split()) + held_out.count("\n")
