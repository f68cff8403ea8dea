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
"""

from __future__ import annotations

import unicodedata
import warnings
from collections.abc import Iterable

import numpy as np

from lstmgen.errors import LstmgenError

MAX_CODE_POINT = 0x110000


class UnknownTokensWarning(UserWarning):
    """Input held characters or words outside the frozen vocabulary; they were mapped."""


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


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
                top = int(cps.max()) + 1
                counts[:top] += np.bincount(cps, minlength=top)
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

    def encode(self, text: str, unknown: str = "map", warn: bool = True) -> np.ndarray:
        """Ids of ``text`` (int32). ``unknown="map"`` maps unseen characters (and warns with a
        count when ``warn``); ``unknown="error"`` raises instead."""
        cps = _code_points(text)
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


TOKENIZERS: dict[str, type] = {"char": CharTokenizer}


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
