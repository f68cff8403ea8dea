"""Tokenizers: text <-> token ids, fitted in one streaming pass, frozen and saved with a run.

Every tokenizer has the same small interface:

- ``fit(chunks)`` (classmethod) builds the vocabulary from an iterable of text chunks;
- ``encode(text)`` returns a 1-D ``numpy`` array of ids, mapping unseen input by a documented
  policy (never an error unless ``unknown="error"``);
- ``decode(ids)`` returns text; ``stream_decoder()`` decodes one id at a time for streaming;
- ``to_dict()`` / ``tokenizer_from_dict()`` save and load it as JSON.

Unseen characters (char tokenizer): each is first reduced by Unicode compatibility
decomposition (``é`` -> ``e``, ``ﬁ`` -> ``fi``, full-width ``Ａ`` -> ``A``), keeping the parts the
vocabulary knows; a character with no known part becomes the *fallback* character, the most
frequent character of the training text (usually the space). Callers are told how many
characters were mapped, so nothing is renumbered silently.

Words (word tokenizer): text is split into tokens that concatenate back to it exactly, one
step per word, as GPT-2's tokens carry their space —

- a *word* with the single space before it, if any (``" cat"``, ``"The"``): a run of letters
  and digits (``str.isalnum``), which may hold inner apostrophes or hyphens (``" don't"``,
  ``" well-known"``, ``" l’homme"``); an underscore is punctuation;
- each Chinese/Japanese ideograph or kana on its own, also with a space before it (those
  scripts write no spaces);
- each other non-space character, with the space before it (punctuation: ``","``, ``" ("``);
- each ``\n``, and each other run of whitespace less the one space that goes with the next
  word (``"    return"`` is ``"   "``, ``" return"``);
- the marker ``<unk>`` itself (or ``" <unk>"``), read as the unknown token (text that already
  marks unknown words, like WikiText, round-trips exactly).

The vocabulary holds ``<unk>`` (id 0) and ``" <unk>"`` (id 1), every whitespace character seen,
and the most frequent tokens up to ``vocab_size`` (default 10,000), counted in one streaming
pass, in order of frequency (the adaptive softmax relies on it). An unseen word or mark
becomes ``<unk>`` (``" <unk>"`` when a space came with it) and decodes as that visible text,
unless it is spelled exactly by known tokens: an unseen whitespace run by single whitespace
characters, a word unseen after a space (``" Thou"`` where only ``"Thou"`` began lines) by
``" "`` and the word.
Callers are warned with the number of words mapped. Text whose every token is in the
vocabulary round-trips exactly. Word runs saved before spaces were carried (no ``"spaces"``
field in ``tokenizer.json``) keep their split, whitespace a token of its own.

Byte-level BPE (bpe tokenizer): Hugging Face ``tokenizers`` learns merges over the UTF-8
bytes of the text (each ``\\n`` kept apart, then GPT-2's pre-tokenizer), so every text
round-trips exactly and nothing is ever unknown. A token may end inside a multi-byte
character; ``stream_decoder()`` holds such bytes back until the character is complete.
"""

from __future__ import annotations

import codecs
import functools
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable

import numpy as np

from lstmgen.errors import LstmgenError

MAX_CODE_POINT = 0x110000


class UnknownTokensWarning(UserWarning):
    """Input held characters or words outside the frozen vocabulary; they were mapped."""


def _latin1(text: str) -> bytes | None:
    """``text`` as one byte per character when every code point is below 256, else None.
    (A plain copy for such strings, much cheaper than widening them to 4 bytes a character.)"""
    if text.isascii():
        return text.encode("ascii")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return None


def _code_points(text: str) -> np.ndarray:
    """The code points of ``text``: uint8 when they all fit a byte, else uint32."""
    raw = _latin1(text)
    if raw is not None:
        return np.frombuffer(raw, dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _code_point_counts(cps: np.ndarray) -> np.ndarray:
    """``np.bincount(cps)``, faster for uint8: byte pairs counted in 65,536 bins, in blocks
    that stay in cache, then folded back to 256 (``np.bincount`` widens every input to int64)."""
    if cps.dtype != np.uint8 or cps.size < 2:
        return np.bincount(cps)
    pairs = cps[: cps.size & ~1].view(np.uint16)
    grid = np.zeros(1 << 16, np.int64)
    for start in range(0, pairs.size, 1 << 18):
        grid += np.bincount(pairs[start : start + (1 << 18)], minlength=1 << 16)
    grid = grid.reshape(256, 256)
    counts = grid.sum(axis=0) + grid.sum(axis=1)
    if cps.size & 1:
        counts[cps[-1]] += 1
    return counts


class StreamDecoder:
    """Decode ids one at a time; ``feed`` returns the text that became complete."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def feed(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id])

    def flush(self) -> str:
        return ""


class CharTokenizer:
    """One token per Unicode code point; vocabulary sorted by code point.

    Example:
        >>> tok = CharTokenizer.fit(["hello world"])
        >>> tok.vocab_size
        8
        >>> tok.decode(tok.encode("hello"))
        'hello'
        >>> tok.decode(tok.encode("héllo!"))   # é -> e; '!' unseen -> fallback 'l'
        'hellol'
    """

    kind = "char"
    chars_per_token_is_one = True

    def __init__(self, chars: Iterable[str], fallback: str | None = None):
        self.chars = list(chars)
        if not self.chars:
            raise LstmgenError("the vocabulary is empty", hint="the corpus holds no text")
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise LstmgenError("a char vocabulary must list distinct single characters")
        self.fallback = fallback if fallback in self.chars else self.chars[0]
        self._index = {c: i for i, c in enumerate(self.chars)}
        self._lut: np.ndarray | None = None
        self._byte_lut: bytes | None = None
        self._mapping_cache: dict[str, str] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @classmethod
    def fit(cls, chunks: Iterable[str], **unused) -> CharTokenizer:
        """Count code points over ``chunks`` in one pass; memory is independent of corpus size."""
        counts = np.zeros(MAX_CODE_POINT, dtype=np.int64)
        for chunk in chunks:
            cps = _code_points(chunk)
            if cps.size:
                chunk_counts = _code_point_counts(cps)
                counts[: chunk_counts.size] += chunk_counts
        present = np.flatnonzero(counts)
        if present.size == 0:
            raise LstmgenError("the corpus is empty", hint="pass files that contain text")
        fallback = chr(int(np.argmax(counts)))
        return cls([chr(int(c)) for c in present], fallback=fallback)

    def _table(self) -> np.ndarray:
        if self._lut is None:
            top = max(ord(c) for c in self.chars) + 1
            lut = np.full(top, -1, dtype=np.int32)
            lut[[ord(c) for c in self.chars]] = np.arange(len(self.chars), dtype=np.int32)
            self._lut = lut
        return self._lut

    def _byte_table(self) -> bytes:
        """A ``bytes.translate`` table: code point (< 256) -> id, byte 255 for unknown ones;
        empty when some of those ids are 255 or more (then the general path is taken)."""
        if self._byte_lut is None:
            lut = self._table()[:256]
            if lut.max() >= 255:
                self._byte_lut = b""
            else:
                table = np.full(256, 255, dtype=np.uint8)
                table[: lut.size] = np.where(lut >= 0, lut, 255)
                self._byte_lut = table.tobytes()
        return self._byte_lut

    def map_unknown(self, char: str) -> str:
        """The in-vocabulary text that stands for an unseen ``char`` (see module docs)."""
        if char in self._index:
            return char
        mapped = self._mapping_cache.get(char)
        if mapped is None:
            parts = unicodedata.normalize("NFKD", char)
            known = "".join(p for p in parts if p in self._index)
            mapped = known or self.fallback
            self._mapping_cache[char] = mapped
        return mapped

    def count_unknown(self, text: str) -> int:
        """How many characters of ``text`` are outside the vocabulary."""
        cps = _code_points(text)
        lut = self._table()
        inside = cps < lut.size
        return int((~inside).sum() + (lut[cps[inside]] < 0).sum())

    def encode(self, text: str, unknown: str = "map", warn: bool = True) -> np.ndarray:
        """Ids of ``text`` (int32). ``unknown="map"`` maps unseen characters (and warns with a
        count when ``warn``); ``unknown="error"`` raises instead."""
        raw = _latin1(text)
        if raw is not None and self._byte_table():
            # Fast path: one byte per character, looked up by bytes.translate (C, no widening).
            ids = raw.translate(self._byte_table())
            if b"\xff" not in ids:
                return np.frombuffer(ids, dtype=np.uint8).astype(np.int32)
        cps = _code_points(text) if raw is None else np.frombuffer(raw, dtype=np.uint8)
        lut = self._table()
        in_range = cps < lut.size
        ids = np.full(cps.shape, -1, dtype=np.int32)
        ids[in_range] = lut[cps[in_range]]
        missing = ids < 0
        if not missing.any():
            return ids
        unseen = sorted({chr(int(c)) for c in np.unique(cps[missing])})
        if unknown == "error":
            shown = ", ".join(repr(c) for c in unseen[:10])
            raise LstmgenError(
                f"{int(missing.sum())} character(s) not in the vocabulary: {shown}",
                hint="remove them, or let lstmgen map them (unknown='map')",
            )
        if warn:
            warnings.warn(
                f"{int(missing.sum())} character(s) outside the vocabulary "
                f"({len(unseen)} distinct, e.g. {unseen[0]!r}) were mapped to known ones",
                UnknownTokensWarning,
                stacklevel=2,
            )
        table = str.maketrans({c: self.map_unknown(c) for c in unseen})
        return self.encode(text.translate(table), unknown="error")

    def decode(self, ids) -> str:
        chars = self.chars
        return "".join(chars[int(i)] for i in np.asarray(ids).reshape(-1))

    def count_chars(self, ids) -> int:
        return int(np.asarray(ids).size)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": "".join(self.chars), "fallback": self.fallback}

    @classmethod
    def from_dict(cls, data: dict) -> CharTokenizer:
        return cls(list(data["chars"]), fallback=data.get("fallback"))


UNK = "<unk>"
# Ideographs and kana: scripts written without spaces, so one token per character.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_ALNUM = rf"[^\W_{_CJK}]"
_WORD = rf"{_ALNUM}+(?:['’\-]{_ALNUM}+)*"
# Runs saved before words carried their space: whitespace runs are tokens of their own.
WORD_PATTERN = re.compile(rf"{UNK}|{_WORD}|[{_CJK}]|\n|[^\S\n]+|\S")
# A word, ideograph or mark takes the one space before it; the rest of a run stays a token.
SPACED_WORD_PATTERN = re.compile(
    rf" ?{UNK}| ?{_WORD}| ?[{_CJK}]| ?\S|\n|[^\S\n]+(?= \S)|[^\S\n]+"
)
SPACED_UNK = " " + UNK


class _Index(dict):
    """token -> id; a missing token reads as -1 so a whole chunk maps in one C-level pass."""

    def __missing__(self, key):
        return -1


class WordTokenizer:
    """Words (with the space before them), punctuation marks and whitespace as tokens, capped
    at ``vocab_size`` with ``<unk>`` for the rest (see the module docs for the exact split).
    ``spaces=False`` is the split of runs saved before words carried their space.

    Example:
        >>> tok = WordTokenizer.fit(["the cat sat on the mat.\\n"])
        >>> tok.split("the cat's  mat")
        ['the', " cat's", ' ', ' mat']
        >>> tok.decode(tok.encode("the mat sat on the cat.\\n"))
        'the mat sat on the cat.\\n'
        >>> tok.decode(tok.encode("the dog sat!", warn=False))  # unseen word and mark
        'the <unk> sat<unk>'
    """

    kind = "word"
    chars_per_token_is_one = False
    default_vocab_size = 10_000

    def __init__(self, tokens: Iterable[str], spaces: bool = True):
        self.tokens = list(tokens)
        if not self.tokens or self.tokens[0] != UNK or len(set(self.tokens)) != len(self.tokens):
            raise LstmgenError("a word vocabulary must list distinct tokens, <unk> first")
        if spaces and (len(self.tokens) < 2 or self.tokens[1] != SPACED_UNK):
            raise LstmgenError("a word vocabulary with spaces must list ' <unk>' second")
        self.spaces = spaces
        self.pattern = SPACED_WORD_PATTERN if spaces else WORD_PATTERN
        self.unk_id = 0
        self.spaced_unk_id = 1 if spaces else 0
        self._index = _Index((t, i) for i, t in enumerate(self.tokens))
        self._lengths = np.array([len(t) for t in self.tokens], dtype=np.int64)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def split(self, text: str) -> list[str]:
        """The tokens of ``text`` before any vocabulary lookup; they join back to ``text``."""
        return self.pattern.findall(text)

    @classmethod
    def fit(cls, chunks: Iterable[str], vocab_size: int | None = None, spaces: bool = True,
            **unused) -> WordTokenizer:
        """Count tokens over ``chunks`` in one pass (memory grows with the number of distinct
        tokens, not the corpus) and keep the most frequent, ``vocab_size`` in all."""
        cap = cls.default_vocab_size if vocab_size is None else int(vocab_size)
        pattern = SPACED_WORD_PATTERN if spaces else WORD_PATTERN
        counts: Counter[str] = Counter()
        for chunk in chunks:
            counts.update(pattern.findall(chunk))
        if not counts:
            raise LstmgenError("the corpus is empty", hint="pass files that contain text")
        unknown = [UNK, SPACED_UNK] if spaces else [UNK]
        for marker in unknown:
            counts.pop(marker, None)
        whitespace = sorted({c for token in counts for c in token if c.isspace()})
        if cap < len(unknown) + len(whitespace) + 1:
            raise LstmgenError(f"vocab_size {cap} is too small for a word vocabulary",
                               hint=f"use at least {len(unknown) + len(whitespace) + 1}, "
                               "e.g. 10000")
        tokens = [*unknown, *whitespace]
        taken = set(tokens)
        for token, _ in counts.most_common():
            if len(tokens) >= cap:
                break
            if token not in taken:
                tokens.append(token)
                taken.add(token)
        return cls(tokens, spaces=spaces)

    def _lookup(self, parts: list[str]) -> np.ndarray:
        return np.fromiter(map(self._index.__getitem__, parts), dtype=np.int32,
                           count=len(parts))

    def _spelling(self, part: str) -> list[int] | None:
        """Known ids that spell an out-of-vocabulary token exactly, if any: a whitespace run
        as single whitespace characters; a word with its space, unseen after a space, as the
        space and the bare word."""
        if part.isspace():
            return [self._index.get(c, self.unk_id) for c in part]
        if part.startswith(" ") and self.spaces:
            rest = self._index[part[1:]]
            if rest >= 0 and " " in self._index:
                return [self._index[" "], rest]
        return None

    def count_unknown(self, text: str) -> int:
        """How many words or marks of ``text`` are outside the vocabulary (become <unk>)."""
        parts = self.pattern.findall(text)
        missing = np.flatnonzero(self._lookup(parts) < 0)
        return sum(1 for k in missing.tolist() if self._spelling(parts[k]) is None)

    def encode(self, text: str, unknown: str = "map", warn: bool = True) -> np.ndarray:
        """Ids of ``text`` (int32). ``unknown="map"`` maps unseen words to ``<unk>`` (and warns
        with a count when ``warn``); ``unknown="error"`` raises instead."""
        parts = self.pattern.findall(text)
        ids = self._lookup(parts)
        missing = np.flatnonzero(ids < 0).tolist()
        if not missing:
            return ids
        spelled = {k: self._spelling(parts[k]) for k in missing}
        unseen = [parts[k] for k in missing if spelled[k] is None]
        if unseen and unknown == "error":
            shown = ", ".join(repr(w) for w in sorted(set(unseen))[:10])
            raise LstmgenError(
                f"{len(unseen)} word(s) not in the vocabulary: {shown}",
                hint="remove them, or let lstmgen map them to <unk> (unknown='map')",
            )
        if unseen and warn:
            warnings.warn(
                f"{len(unseen)} word(s) outside the vocabulary ({len(set(unseen))} distinct, "
                f"e.g. {unseen[0]!r}) were mapped to <unk>",
                UnknownTokensWarning,
                stacklevel=2,
            )
        for k in missing:
            if spelled[k] is None:
                ids[k] = self.spaced_unk_id if parts[k].startswith(" ") else self.unk_id
        if len(unseen) == len(missing):
            return ids
        pieces, start = [], 0
        for k in missing:
            if spelled[k] is not None:
                pieces += [ids[start:k], np.asarray(spelled[k], dtype=np.int32)]
                start = k + 1
        pieces.append(ids[start:])
        return np.concatenate(pieces)

    def decode(self, ids) -> str:
        tokens = self.tokens
        return "".join(tokens[int(i)] for i in np.asarray(ids).reshape(-1))

    def count_chars(self, ids) -> int:
        """Characters of the decoded text (``<unk>`` counts as its 5 visible characters)."""
        return int(self._lengths[np.asarray(ids, dtype=np.int64).reshape(-1)].sum())

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokens": self.tokens, "spaces": self.spaces}

    @classmethod
    def from_dict(cls, data: dict) -> WordTokenizer:
        return cls(data["tokens"], spaces=data.get("spaces", False))


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte value, as byte-level BPE vocabularies use."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


class _Utf8StreamDecoder:
    """Joins token bytes and emits only whole UTF-8 characters; ``flush`` ends the stream."""

    def __init__(self, token_bytes: list[bytes], skip: bytes = b""):
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._skip = len(skip)  # bytes the stream repeats of its prime (token healing)

    def feed(self, token_id: int) -> str:
        data = self._token_bytes[int(token_id)]
        if self._skip:
            cut = min(self._skip, len(data))
            data, self._skip = data[cut:], self._skip - cut
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class BPETokenizer:
    """Byte-level BPE from Hugging Face ``tokenizers``: any text round-trips exactly.

    Example:
        >>> tok = BPETokenizer.fit(["low lower lowest 低い\\n"] * 20, vocab_size=270)
        >>> tok.decode(tok.encode("slow 低\\n"))
        'slow 低\\n'
        >>> tok.count_chars(tok.encode("低い")), tok.count_unknown("anything")
        (2, 0)
    """

    kind = "bpe"
    chars_per_token_is_one = False
    default_vocab_size = 4096
    # Pieces of about this many characters go to the library's (multi-threaded) batch encoder.
    batch_piece_chars = 1 << 16

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        byte_of = {c: b for b, c in enumerate(_byte_alphabet())}
        vocab = tokenizer.get_vocab()
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise LstmgenError("the BPE vocabulary is not numbered 0..n-1")
        self.token_bytes = [b""] * len(vocab)
        for token, i in vocab.items():
            try:
                self.token_bytes[i] = bytes(byte_of[c] for c in token)
            except KeyError:
                raise LstmgenError(f"BPE token {token!r} is not byte-level",
                                   hint="retrain the tokenizer with lstmgen") from None
        # Characters of a token = its bytes that start a UTF-8 character; this adds up over
        # any split of the id stream, even one that cuts a character in two.
        self._chars = np.array([sum((b & 0xC0) != 0x80 for b in t) for t in self.token_bytes],
                               dtype=np.int64)
        # heal()'s masks by token bytes, bounded: a server sees endless different primes.
        self._extensions = functools.lru_cache(maxsize=1024)(self._tokens_starting_with)

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    @classmethod
    def fit(cls, chunks: Iterable[str], vocab_size: int | None = None,
            **unused) -> BPETokenizer:
        """Learn merges over ``chunks`` in one streaming pass; ``vocab_size`` (default 4096)
        counts the 256 byte tokens, so it must exceed 256."""
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

        size = cls.default_vocab_size if vocab_size is None else int(vocab_size)
        if size <= 256:
            raise LstmgenError(f"vocab_size {size} is too small for byte-level BPE",
                               hint="use more than 256 (the byte tokens), e.g. 4096")
        tokenizer = Tokenizer(models.BPE())
        # Each newline is a piece of its own, so encoding text cut after any newline gives
        # the same ids as encoding it whole (chunks and batch pieces end at newlines).
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=size, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        seen = False

        def texts():
            nonlocal seen
            for chunk in chunks:
                seen = seen or bool(chunk)
                yield chunk

        tokenizer.train_from_iterator(texts(), trainer)
        if not seen:
            raise LstmgenError("the corpus is empty", hint="pass files that contain text")
        return cls(tokenizer)

    def _pieces(self, text: str) -> list[str]:
        """``text`` cut after newlines into pieces of about ``batch_piece_chars``."""
        pieces, start, step = [], 0, self.batch_piece_chars
        while len(text) - start > step:
            cut = text.find("\n", start + step) + 1
            if cut == 0:
                break
            pieces.append(text[start:cut])
            start = cut
        pieces.append(text[start:])
        return pieces

    def encode(self, text: str, unknown: str = "map", warn: bool = True) -> np.ndarray:
        """Ids of ``text`` (int32); every text is representable, so nothing is mapped."""
        if not text:
            return np.zeros(0, dtype=np.int32)
        pieces = self._pieces(text)
        if len(pieces) == 1:
            return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids,
                              dtype=np.int32)
        encodings = self.tokenizer.encode_batch_fast(pieces, add_special_tokens=False)
        return np.concatenate([np.asarray(e.ids, dtype=np.int32) for e in encodings])

    def count_unknown(self, text: str) -> int:
        return 0

    def decode(self, ids) -> str:
        data = b"".join(self.token_bytes[int(i)] for i in np.asarray(ids).reshape(-1))
        return data.decode("utf-8", errors="replace")

    def count_chars(self, ids) -> int:
        """Characters of the decoded text (exact for ids of whole UTF-8 text)."""
        return int(self._chars[np.asarray(ids, dtype=np.int64).reshape(-1)].sum())

    def stream_decoder(self, skip: bytes = b"") -> _Utf8StreamDecoder:
        """Decodes ids one at a time; ``skip``: bytes the stream starts with that are not
        shown (what :meth:`heal` took from the prime)."""
        return _Utf8StreamDecoder(self.token_bytes, skip)

    def heal(self, ids: np.ndarray) -> tuple[np.ndarray, bytes, np.ndarray | None]:
        """Token healing: a prime's last token may be the start of a longer one — ``"def "``
        ends in a lone space where the text goes on with ``" name"`` — and a model that
        read the lone token has almost never seen what follows it. So the prime loses that
        token and the first generated token must start with its bytes. Returns the ids to
        read, those bytes, and the (vocab,) mask of the tokens allowed first (``None``: no
        longer token starts with it; nothing to heal).

        Example:
            >>> tok = BPETokenizer.fit(["the then them\\n"] * 20, vocab_size=270)
            >>> ids, skip, allowed = tok.heal(tok.encode("the the"))
            >>> tok.decode(ids), skip, sorted(tok.decode([i]) for i in allowed.nonzero()[0])
            ('the', b' the', [' the', ' them', ' then'])
        """
        if not len(ids):
            return ids, b"", None
        piece = self.token_bytes[int(ids[-1])]
        allowed = self._extensions(piece)
        if allowed.sum() < 2:
            return ids, b"", None
        return ids[:-1], piece, allowed

    def _tokens_starting_with(self, piece: bytes) -> np.ndarray:
        return np.array([t.startswith(piece) for t in self.token_bytes])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer": self.tokenizer.to_str()}

    @classmethod
    def from_dict(cls, data: dict) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(data["tokenizer"]))


TOKENIZERS: dict[str, type] = {"char": CharTokenizer, "word": WordTokenizer,
                               "bpe": BPETokenizer}


def tokenizer_class(kind: str) -> type:
    """The tokenizer class registered under ``kind`` ("char", "word", "bpe")."""
    try:
        return TOKENIZERS[kind]
    except KeyError:
        raise LstmgenError(
            f"unknown tokenizer {kind!r}", hint=f"use one of {', '.join(sorted(TOKENIZERS))}"
        ) from None


def tokenizer_from_dict(data: dict):
    """Rebuild a saved tokenizer from ``to_dict()`` output."""
    if not isinstance(data, dict) or "kind" not in data:
        raise LstmgenError("the tokenizer file is damaged", hint="retrain, or restore the file")
    return tokenizer_class(data["kind"]).from_dict(data)
