"""An interactive session: text you give and text the model writes form one context, held as
the recurrent state and never re-run.

Each :meth:`Session.feed` runs the new text through the network from the state where the
last turn ended; each :meth:`Session.reply` samples from there. When a stop sequence ends a
reply, the state is taken back to the end of the text kept (from the snapshot at the start of
that block, through the kept tokens only), so the context is exactly the transcript.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from lstmgen.errors import LstmgenError
from lstmgen.generation import START_TEXT, Generator, check_block, draw_seed, prng_key
from lstmgen.sampling import Sampling
from lstmgen.stopping import StopFilter, stop_list


class Session:
    """A conversation with one model.

    Example:
        >>> chat = lstmgen.load("runs/shakespeare").session(seed=1, stop="\\n\\n")  # doctest: +SKIP
        >>> chat.feed("ROMEO:")                                                    # doctest: +SKIP
        >>> print("".join(chat.reply(200)))                                        # doctest: +SKIP
    """

    def __init__(self, generator: Generator, *, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 stop: str | list[str] | None = None, seed: int | None = None,
                 block: int | None = None):
        self.generator = generator
        self.sampling = Sampling(temperature, top_k, top_p, min_p,
                                 repetition_penalty).validate(generator.tokenizer.vocab_size)
        self.stops = stop_list(stop)
        self.seed = draw_seed(seed)
        self._key = prng_key(self.seed)
        self.block = check_block(generator.block if block is None else block)
        self._weights = generator._weights()
        self._states, self._logits = generator.start_states(1, self._weights)
        self._seen = (generator.seen_tokens([np.zeros(0, np.int32)])
                      if self.sampling.penalizes else None)
        self._offset = 0  # tokens sampled so far: each draws its own noise
        self._started = False
        self.finish_reason: str | None = None

    def feed(self, text: str) -> None:
        """Add ``text`` to the context (unseen characters mapped as for a prime)."""
        if not isinstance(text, str):
            raise LstmgenError(f"the text must be a string, got {type(text).__name__}")
        ids = self.generator.tokenizer.encode(text) if text else np.zeros(0, np.int32)
        self._feed_ids(np.asarray(ids, np.int32))

    def reply(self, length: int = 200) -> Iterator[str]:
        """Yield the continuation, block by block, for at most ``length`` tokens or up to
        the first stop sequence (not returned); ``finish_reason`` says which."""
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise LstmgenError(f"length must be an integer >= 0, got {length!r}")
        if not self._started:
            self.feed(START_TEXT)
        g, decoder, stop = self.generator, self.generator.tokenizer.stream_decoder(), \
            StopFilter(self.stops)
        self.finish_reason = None
        snapshots, texts, ends = [], [], []  # per block: its start; per token: its text
        decoded = shown = 0
        while len(ends) < length and not stop.stopped:
            steps = min(self.block, length - len(ends))
            start = (self._states, self._logits, self._seen, len(ends))
            self._states, self._logits, self._seen, new = g.dispatch(
                self._weights, self._states, self._logits, self._seen, self._key,
                self._offset, self.sampling, self.block)
            self._offset += self.block
            new = np.asarray(new)[0, :steps]
            snapshots.append((*start, new))
            piece = ""
            for t in new:
                text = decoder.feed(int(t))
                decoded += len(text)
                piece += text
                texts.append(text)
                ends.append(decoded)
            out = stop.feed(piece)
            shown += len(out)
            if out:
                yield out
        if stop.stopped:
            self.finish_reason = "stop"
            self._rewind(snapshots, texts, ends, shown)
        else:
            self.finish_reason = "length"
            tail = stop.feed(decoder.flush()) + stop.flush()
            if tail:
                yield tail
            if len(ends) % self.block:  # the last block ran past the length: take it back
                self._rewind(snapshots, texts, ends, decoded + len(tail))

    def _rewind(self, snapshots, texts, ends, kept_chars: int) -> None:
        """Make the state the one after the first ``kept_chars`` characters of this reply:
        back to the snapshot before the token at the cut, then forward through the kept
        tokens (and the kept part of the token at the cut, as text)."""
        whole = next((i for i, end in enumerate(ends) if end > kept_chars), len(ends))
        states, logits, seen, first, tokens = next(s for s in reversed(snapshots)
                                                   if s[3] <= whole)
        self._states, self._logits, self._seen = states, logits, seen
        self._feed_ids(np.asarray(tokens[: whole - first], np.int32))
        if whole < len(ends):
            start = ends[whole - 1] if whole else 0
            partial = texts[whole][: kept_chars - start]
            if partial:
                self.feed(partial)

    def _feed_ids(self, ids: np.ndarray) -> None:
        if not len(ids):
            return
        self._started = True
        self._states, self._logits = self.generator.prime_states(
            [ids], self._weights, (self._states, self._logits))
        if self._seen is not None:
            self._seen = np.array(self._seen)
            self._seen[0, ids] = True
