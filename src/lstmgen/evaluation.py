"""Loss of a model on a stream of token ids: nats per token, bits per character, perplexity."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from lstmgen.distributed import local


@dataclass
class Evaluation:
    """Average loss over ``tokens`` predicted tokens covering ``chars`` characters.

    Example:
        >>> e = Evaluation(nll=1.5 * 1000, tokens=1000, chars=1000)
        >>> round(e.loss, 3), round(e.bits_per_char, 3), round(e.perplexity, 3)
        (1.5, 2.164, 4.482)
    """

    nll: float
    tokens: int
    chars: int

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

    def to_dict(self) -> dict:
        return {**asdict(self), "loss": self.loss, "bits_per_char": self.bits_per_char,
                "perplexity": self.perplexity}


class Evaluator:
    """Computes the summed loss of the training model on token windows, compiled once.

    Windows of ``seq_len + 1`` tokens overlap by one, so every token after the first is
    predicted exactly once (with the state reset at each window start, as in training).
    """

    def __init__(self, lm, seq_len: int = 256, batch_size: int = 32):
        import jax
        from keras import ops

        self.lm = lm
        self.seq_len = seq_len
        self.batch_size = batch_size
        model = lm.training_model

        def summed_nll(trainable, non_trainable, x, y, weight):
            logits, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            logp = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
            picked = ops.take_along_axis(logp, ops.expand_dims(y, -1), axis=-1)[..., 0]
            return -ops.sum(picked * weight)

        self._summed_nll = jax.jit(summed_nll)

    def __call__(self, tokens: np.ndarray, chars: int | None = None,
                 max_tokens: int | None = None) -> Evaluation:
        """Evaluate ``tokens`` (first ``max_tokens`` when given); ``chars`` is the character
        count of the evaluated text, for bits per character (defaults to the token count)."""
        model = self.lm.training_model
        trainable = [local(v.value) for v in model.trainable_variables]
        non_trainable = [local(v.value) for v in model.non_trainable_variables]
        n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens)
        T, B = self.seq_len, self.batch_size
        n_windows = max(0, math.ceil((n - 1) / T))
        total = 0.0
        for first in range(0, n_windows, B):
            x = np.zeros((B, T), np.int32)
            y = np.zeros((B, T), np.int32)
            w = np.zeros((B, T), np.float32)
            for row, k in enumerate(range(first, min(first + B, n_windows))):
                piece = np.asarray(tokens[k * T : min(k * T + T + 1, n)], dtype=np.int32)
                m = len(piece) - 1
                x[row, :m], y[row, :m], w[row, :m] = piece[:-1], piece[1:], 1.0
            total += float(self._summed_nll(trainable, non_trainable, x, y, w))
        predicted = max(n - 1, 0)
        if chars is None:
            chars = predicted
        elif n < len(tokens):
            chars = int(round(chars * predicted / max(len(tokens) - 1, 1)))
        return Evaluation(nll=total, tokens=predicted, chars=chars)


def evaluate_corpus(trained, source, *, encoding_errors: str = "strict", max_tokens=None,
                    seq_len: int | None = None) -> Evaluation:
    """Evaluate a trained model (a :class:`~lstmgen.run.TrainedModel`) on a corpus, streamed.

    Every token after the first is predicted once; the state restarts every ``seq_len``
    tokens (the training window, by default), as during training. Unseen characters are
    mapped by the tokenizer's policy and counted in a warning.
    """
    import warnings

    from lstmgen.corpus import iter_corpus_text
    from lstmgen.tokenizers import UnknownTokensWarning

    train = trained.run.config.get("train", {})
    evaluator = Evaluator(trained.lm, seq_len=seq_len or train.get("seq_len", 256))
    total = Evaluation(0.0, 0, 0)
    previous = np.zeros(0, np.int32)
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
        part = evaluator(window, chars=chars)
        total = Evaluation(total.nll + part.nll, total.tokens + part.tokens,
                           total.chars + part.chars)
        previous = window[-1:]
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
