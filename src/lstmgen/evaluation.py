"""Loss of a model on a stream of token ids: nats per token, bits per character, perplexity,
and the fresh-start loss — how well the model predicts right after a short prime.

Every generation starts from the model's start state (learned, or zeros for runs made before
it; :class:`~lstmgen.start_state.StartState`), but the loss with the state carried through the text
sees it once per stream. So each evaluation also scores windows of ``FRESH_START_TOKENS``
tokens, each read from the start state, one starting every ``FRESH_START_EVERY`` tokens of the
text (positions 0, 64, 128, ...): the mean loss of their predictions is the *fresh-start
loss* (nats/token). A model trained without ever seeing a fresh state scores worse there than
a model that knows only letter frequencies, whatever its carried loss.

Perplexity per word is ``exp(NLL / words)`` with ``words`` the whitespace-separated words of
the text plus one per line end (the ``<eos>`` the word-level literature appends to every
line; :func:`count_words`), whatever the tokens: figures compare with published ones and
across tokenizers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, astuple, dataclass

import numpy as np

from lstmgen.distributed import local

FRESH_START_TOKENS = 8
FRESH_START_EVERY = 64


@dataclass
class Evaluation:
    """Average loss over ``tokens`` predicted tokens covering ``chars`` characters, and the
    fresh-start loss: ``fresh_nll`` over ``fresh_tokens`` predictions from a fresh state.

    Example:
        >>> e = Evaluation(nll=1.5 * 1000, tokens=1000, chars=1000, fresh_nll=80, fresh_tokens=40)
        >>> round(e.loss, 3), round(e.bits_per_char, 3), round(e.perplexity, 3), e.fresh_start
        (1.5, 2.164, 4.482, 2.0)
    """

    nll: float
    tokens: int
    chars: int
    fresh_nll: float = 0.0
    fresh_tokens: int = 0
    words: int = 0

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood per token, in nats."""
        return self.nll / max(self.tokens, 1)

    @property
    def bits_per_char(self) -> float:
        return self.nll / max(self.chars, 1) / math.log(2)

    @property
    def bits_per_token(self) -> float:
        return self.loss / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def word_perplexity(self) -> float | None:
        """``exp(NLL / words)``: perplexity per word (module doc), when words were counted."""
        return math.exp(min(self.nll / self.words, 700.0)) if self.words else None

    @property
    def fresh_start(self) -> float | None:
        """Mean loss (nats/token) of the first tokens read from a fresh state (module doc)."""
        return self.fresh_nll / self.fresh_tokens if self.fresh_tokens else None

    def __add__(self, other: Evaluation) -> Evaluation:
        return Evaluation(*(a + b for a, b in zip(astuple(self), astuple(other))))

    def to_dict(self) -> dict:
        return {**asdict(self), "loss": self.loss, "bits_per_char": self.bits_per_char,
                "perplexity": self.perplexity, "word_perplexity": self.word_perplexity,
                "fresh_start": self.fresh_start,
                "fresh_start_window": FRESH_START_TOKENS}


def count_words(text: str) -> int:
    """Whitespace-separated words plus line ends (each counts as an ``<eos>``).

    Example:
        >>> count_words("the cat sat .\\n\\n = Heading = \\n")
        10
    """
    return len(text.split()) + text.count("\n")


def count_words_in_ids(tokenizer, ids, block: int = 1 << 20) -> int:
    """:func:`count_words` of the text of ``ids``, decoded ``block`` tokens at a time (a
    word cut in two by a block boundary is counted once)."""
    total, last = 0, " "
    for start in range(0, len(ids), block):
        text = tokenizer.decode(np.asarray(ids[start : start + block]))
        if not text:
            continue
        total += count_words(text) - (not last.isspace() and not text[0].isspace())
        last = text[-1]
    return total


def _summed_nll(logits, y, weight):
    from keras import ops

    logp = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    picked = ops.take_along_axis(logp, ops.expand_dims(y, -1), axis=-1)[..., 0]
    return -ops.sum(picked * weight)


class Evaluator:
    """Computes the summed loss of a model on a token sequence, compiled once.

    Every token after the first is predicted exactly once. With ``carry_state`` (the
    default) the text is cut into at most ``batch_size`` contiguous streams, read window by
    window with the recurrent state carried, as in generation: each token is predicted from
    all the text before it in its stream. Without it, the state restarts every ``seq_len``
    tokens, as in a training window -- a handicap for the first positions of every window.

    Example:
        >>> from lstmgen.model import LanguageModel, ModelConfig
        >>> lm = LanguageModel(ModelConfig(units=8, embedding_dim=4), vocab_size=5)
        >>> result = Evaluator(lm, seq_len=16)(np.arange(100) % 5)
        >>> result.tokens, bool(abs(result.loss - np.log(5)) < 0.1)
        (99, True)
    """

    def __init__(self, lm, seq_len: int = 256, batch_size: int = 32, carry_state: bool = True):
        import jax

        self.lm = lm
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.carry_state = carry_state
        self.model = model = lm.stateful_model if carry_state else lm.training_model

        def summed_nll(trainable, non_trainable, x, states, y, weight):
            inputs = [x, *states] if carry_state else x
            outputs, _ = model.stateless_call(trainable, non_trainable, inputs, training=False)
            logits, *states = outputs if carry_state else (outputs,)
            return _summed_nll(logits, y, weight), states

        def fresh_nll(trainable, non_trainable, x, y, weight):
            logits, _ = lm.training_model.stateless_call(trainable, non_trainable, x,
                                                         training=False)
            return _summed_nll(logits, y, weight)

        self._summed_nll = jax.jit(summed_nll)
        self._fresh_nll = jax.jit(fresh_nll)

    def __call__(self, tokens: np.ndarray, chars: int | None = None,
                 max_tokens: int | None = None, fresh_start: bool = True,
                 words: int = 0) -> Evaluation:
        """Evaluate ``tokens`` (first ``max_tokens`` when given); ``chars`` is the character
        count of the evaluated text, for bits per character (defaults to the token count),
        ``words`` its word count (:func:`count_words`), for perplexity per word.
        ``fresh_start`` also scores the fresh-start windows (module doc)."""
        n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens)
        predicted = max(n - 1, 0)
        ids = np.asarray(tokens[:n], dtype=np.int32)
        x, y, w = self._layout(ids, predicted)
        trainable = [local(v.value) for v in self.model.trainable_variables]
        non_trainable = [local(v.value) for v in self.model.non_trainable_variables]
        fresh = self.fresh_start(ids) if fresh_start else Evaluation(0.0, 0, 0)
        total = 0.0
        states = self.start_states(len(x)) if self.carry_state else []
        for start in range(0, x.shape[1], self.seq_len):
            part = slice(start, start + self.seq_len)
            nll, states = self._summed_nll(trainable, non_trainable, x[:, part], states,
                                           y[:, part], w[:, part])
            total += float(nll)
        if chars is None:
            chars = predicted
        elif n < len(tokens):
            chars = int(round(chars * predicted / max(len(tokens) - 1, 1)))
        return Evaluation(nll=total, tokens=predicted, chars=chars, words=words) + fresh

    def start_states(self, batch: int) -> list[np.ndarray]:
        """The states every stream starts from (the model's learned start, or zeros)."""
        from lstmgen.model import start_batch

        lm = self.lm
        starts = None if lm.start is None else [local(s.value) for s in lm.start.starts]
        return start_batch(starts, batch, lm.config.units, lm.num_states)

    def fresh_start(self, tokens: np.ndarray, offset: int = 0, rows: int = 512) -> Evaluation:
        """The fresh-start windows of ``tokens`` (module doc): windows of
        ``FRESH_START_TOKENS + 1`` tokens from the start state, starting at the positions that
        are multiples of ``FRESH_START_EVERY`` (``offset`` is the position of ``tokens[0]``
        in the whole text); the rest of the result is zero."""
        k, every = FRESH_START_TOKENS, FRESH_START_EVERY
        first = -offset % every
        starts = np.arange(first, len(tokens) - k, every)
        if not len(starts):
            return Evaluation(0.0, 0, 0)
        windows = np.asarray(tokens, np.int32)[starts[:, None] + np.arange(k + 1)]
        weights = [local(v.value) for v in self.lm.training_model.trainable_variables]
        frozen = [local(v.value) for v in self.lm.training_model.non_trainable_variables]
        total = 0.0
        for i in range(0, len(windows), rows):  # fixed shapes: one compiled program
            part = windows[i : i + rows]
            x = np.zeros((rows, k + 1), np.int32)
            x[: len(part)] = part
            w = (np.arange(rows) < len(part)).astype(np.float32)[:, None]
            total += float(self._fresh_nll(weights, frozen, x[:, :-1], x[:, 1:], w))
        return Evaluation(0.0, 0, 0, fresh_nll=total, fresh_tokens=len(windows) * k)

    def _layout(self, ids: np.ndarray, predicted: int):
        """Inputs, targets and weights of shape (rows, windows x seq_len): contiguous streams
        (carried state) or independent windows (reset state), zero-padded and weighted 0."""
        T = self.seq_len
        if self.carry_state:
            # Streams of at least 16 windows, so cold starts are a small share of the text.
            rows = min(self.batch_size, max(1, predicted // (16 * T)))
            length = -(-predicted // rows) if predicted else 0
        else:
            rows, length = max(1, -(-predicted // T)), T
        width = max(1, -(-length // T)) * T
        x = np.zeros((rows, width), np.int32)
        y = np.zeros((rows, width), np.int32)
        w = np.zeros((rows, width), np.float32)
        for row in range(rows):
            piece = ids[row * length : min(row * length + length + 1, predicted + 1)]
            m = max(len(piece) - 1, 0)
            x[row, :m], y[row, :m], w[row, :m] = piece[:-1], piece[1:], 1.0
        if not self.carry_state:  # windows as rows, evaluated batch_size rows at a time
            pad = -rows % self.batch_size
            x, y, w = (np.concatenate([a, np.zeros((pad, width), a.dtype)]) for a in (x, y, w))
            x, y, w = (a.reshape(-1, self.batch_size, width).transpose(1, 0, 2)
                       .reshape(self.batch_size, -1) for a in (x, y, w))
        return x, y, w


def evaluate_corpus(trained, source, *, encoding_errors: str = "strict", max_tokens=None,
                    seq_len: int | None = None, carry_state: bool = True) -> Evaluation:
    """Evaluate a trained model (a :class:`~lstmgen.run.TrainedModel`) on a corpus, streamed.

    Every token after the first is predicted once. The text is read in chunks of about
    4 MiB (memory stays flat); within a chunk the state is carried through each of its
    streams (see :class:`Evaluator`: up to 32 contiguous streams of at least 16 windows),
    and each chunk's streams start from a fresh state, the first one from the last token of
    the previous chunk; ``carry_state=False`` restarts it every ``seq_len`` tokens (the
    training window by default). The fresh-start windows (module doc) are laid over the whole
    text, across chunk boundaries. Unseen characters are mapped by the tokenizer's policy and
    counted in a warning.
    """
    import warnings

    from lstmgen.corpus import iter_corpus_text
    from lstmgen.tokenizers import UnknownTokensWarning

    train = trained.run.config.get("train", {})
    evaluator = Evaluator(trained.lm, seq_len=seq_len or train.get("seq_len", 256),
                          carry_state=carry_state)
    total = Evaluation(0.0, 0, 0)
    previous = np.zeros(0, np.int32)  # the token before the chunk: it predicts the first one
    tail = np.zeros(0, np.int32)  # the last tokens so far: fresh-start windows across chunks
    seen = 0  # tokens read so far
    mapped = 0
    for chunk in iter_corpus_text(source, encoding_errors=encoding_errors):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UnknownTokensWarning)
            ids = np.asarray(trained.tokenizer.encode(chunk), np.int32)
        mapped += len(caught)
        truncated = max_tokens is not None and total.tokens + len(ids) > max_tokens
        if truncated:
            ids = ids[: max(0, max_tokens - total.tokens)]
        window = np.concatenate([previous, ids])
        if getattr(trained.tokenizer, "chars_per_token_is_one", False):
            chars = None
        else:
            chars = trained.tokenizer.count_chars(ids) if truncated else len(chunk)
        fresh_text = np.concatenate([tail, ids])
        words = count_words_in_ids(trained.tokenizer, ids) if truncated else count_words(chunk)
        total = (total + evaluator(window, chars=chars, fresh_start=False)
                 + evaluator.fresh_start(fresh_text, offset=seen - len(tail))
                 + Evaluation(0.0, 0, 0, words=words))
        seen += len(ids)
        previous, tail = window[-1:], fresh_text[-FRESH_START_TOKENS:]
        if max_tokens is not None and total.tokens >= max_tokens:
            break
    if total.tokens == 0:
        from lstmgen.errors import LstmgenError

        raise LstmgenError("the evaluation text is too short",
                           hint="give at least two tokens of text")
    if mapped:
        warnings.warn(f"evaluation text held characters outside the vocabulary in {mapped} "
                      "chunk(s); they were mapped to known ones", UnknownTokensWarning,
                      stacklevel=2)
    return total
