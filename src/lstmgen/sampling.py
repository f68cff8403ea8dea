"""How the next token is chosen from the model's logits: repetition penalty, temperature,
top-k, top-p, min-p, greedy.

Written in ``jax.numpy`` so it traces into the compiled generation loop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from lstmgen.errors import LstmgenError

MASKED = -1e30  # the logit of a token that may not come next


@dataclass(frozen=True)
class Sampling:
    """Sampling settings. ``temperature=0`` is greedy; ``top_k=0``, ``top_p=1`` and
    ``min_p=0`` are off. ``min_p`` keeps the tokens whose probability is at least ``min_p``
    times the likeliest token's (after the temperature, as in Hugging Face ``generate``).
    ``repetition_penalty`` (1 = off) is Hugging Face's rule applied to the log-probabilities
    (all <= 0): each token already in the text (prime or sample) has its log-probability
    multiplied by it, so its probability ``p`` becomes ``p ** penalty`` before the others are
    renormalised; it comes first, then the temperature and the filters.

    Example:
        >>> Sampling(temperature=0.8, top_k=40).validate().greedy
        False
        >>> Sampling(temperature=0).greedy
        True
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalizes(self) -> bool:
        return self.repetition_penalty != 1.0

    def validate(self, vocab_size: int | None = None) -> Sampling:
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise LstmgenError(
                f"temperature must be >= 0, got {self.temperature}",
                hint="0 is greedy, 1 samples the model as trained, e.g. 0.8",
            )
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise LstmgenError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise LstmgenError(
                f"top_p must be in (0, 1], got {self.top_p}", hint="1 is off, e.g. 0.9"
            )
        if (isinstance(self.min_p, bool) or not isinstance(self.min_p, (int, float))
                or not 0 <= self.min_p <= 1):
            raise LstmgenError(f"min_p must be in [0, 1], got {self.min_p}",
                               hint="0 is off, e.g. 0.05")
        penalty = self.repetition_penalty
        if (isinstance(penalty, bool) or not isinstance(penalty, (int, float))
                or not 0 < penalty < float("inf")):
            raise LstmgenError(f"repetition_penalty must be > 0, got {penalty}",
                               hint="1 is off; above 1 repeats less, e.g. 1.2")
        if vocab_size is not None and self.top_k > vocab_size:
            return replace(self, top_k=vocab_size)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_fields(cls, obj, vocab_size: int | None = None) -> Sampling:
        """The settings ``obj`` (e.g. an HTTP request) holds under this class's field names,
        validated."""
        return cls(**{f.name: getattr(obj, f.name) for f in fields(cls)}).validate(vocab_size)


def filter_logits(logits, temperature, top_k: int, top_p, min_p=None):
    """Scale ``logits`` (batch, vocab) by the temperature and mask all but the top-k tokens,
    of those the smallest set whose probability reaches ``top_p``, and of those the tokens at
    least ``min_p`` times as likely as the likeliest. ``top_k`` is static; a ``top_p`` or
    ``min_p`` of ``None`` skips that filter (top-p sorts; min-p costs one max)."""
    import jax
    import jax.numpy as jnp

    neg_inf = jnp.full_like(logits, MASKED)
    logits = logits / jnp.maximum(temperature, 1e-6)
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, neg_inf, logits)
    if top_p is not None:
        logits = _nucleus(logits, top_p, neg_inf)
    if min_p is not None:
        # p_i >= min_p * p_max  <=>  logit_i >= max logit + log(min_p)
        floor = jnp.max(logits, axis=-1, keepdims=True) + jnp.log(jnp.maximum(min_p, 1e-30))
        logits = jnp.where(logits < floor, neg_inf, logits)
    return logits


def _nucleus(logits, top_p, neg_inf):
    import jax
    import jax.numpy as jnp

    ordered = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.sum((before < top_p).astype(jnp.int32), axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(ordered, jnp.maximum(kept - 1, 0), axis=-1)
    return jnp.where(logits < threshold, neg_inf, logits)
