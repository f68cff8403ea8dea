"""Generate text token by token, carrying the recurrent state: O(1) work per new token.

The prime is fed through the step model once (a compiled scan over its tokens, padded to a
power-of-two length so a handful of shapes cover every prime); then the sampling loop runs
compiled in blocks of ``block`` tokens, so output can stream while the loop stays in XLA.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from lstmgen.distributed import local
from lstmgen.errors import LstmgenError
from lstmgen.sampling import Sampling, filter_logits

START_TEXT = "\n"


class Generator:
    """Samples continuations of prime texts from a :class:`~lstmgen.model.LanguageModel`.

    Example:
        >>> from lstmgen.model import LanguageModel, ModelConfig
        >>> from lstmgen.tokenizers import CharTokenizer
        >>> tok = CharTokenizer.fit(["abc\\n"])
        >>> gen = Generator(LanguageModel(ModelConfig(units=8, embedding_dim=4), 4), tok)
        >>> texts = gen.generate("ab", length=5, seed=1, num_samples=2)
        >>> [len(t) for t in texts]
        [5, 5]
    """

    def __init__(self, lm, tokenizer, block: int = 64):
        import jax
        from keras import ops

        self.lm = lm
        self.tokenizer = tokenizer
        self.block = block
        step_model = lm.step_model

        def step(weights, tokens, states):
            trainable, non_trainable = weights
            outputs, _ = step_model.stateless_call(
                trainable, non_trainable, [tokens[:, None], *states], training=False
            )
            return ops.cast(outputs[0][:, 0, :], "float32"), list(outputs[1:])

        def consume(weights, states, logits, tokens, mask):
            def body(carry, inputs):
                states, logits = carry
                token, keep = inputs
                new_logits, new_states = step(weights, token, states)
                keep = keep[:, None]
                states = [ops.where(keep, n, s) for n, s in zip(new_states, states)]
                return (states, ops.where(keep, new_logits, logits)), None

            (states, logits), _ = jax.lax.scan(body, (states, logits), (tokens.T, mask.T))
            return states, logits

        def sample(weights, states, logits, key, temperature, top_p, top_k, greedy, steps):
            def body(carry, _):
                states, logits, key = carry
                key, sub = jax.random.split(key)
                if greedy:
                    token = ops.argmax(logits, axis=-1).astype("int32")
                else:
                    filtered = filter_logits(logits, temperature, top_k, top_p)
                    token = jax.random.categorical(sub, filtered, axis=-1).astype("int32")
                logits, states = step(weights, token, states)
                return (states, logits, key), token

            (states, logits, key), tokens = jax.lax.scan(
                body, (states, logits, key), None, length=steps
            )
            return states, logits, key, tokens.T

        self._consume = jax.jit(consume)
        self._sample = jax.jit(sample, static_argnames=("top_k", "greedy", "steps"))

    def _weights(self):
        model = self.lm.step_model
        return (
            [local(v.value) for v in model.trainable_variables],
            [local(v.value) for v in model.non_trainable_variables],
        )

    def encode_prime(self, prime: str) -> np.ndarray:
        """Token ids of ``prime``; unseen characters are mapped (see the tokenizer's policy).
        An empty prime starts from a line break, as if at the start of a line."""
        if not isinstance(prime, str):
            raise LstmgenError(f"the prime must be text, got {type(prime).__name__}")
        ids = self.tokenizer.encode(prime) if prime else np.zeros(0, np.int32)
        if len(ids) == 0:
            ids = self.tokenizer.encode(START_TEXT, warn=False)
        if len(ids) == 0:
            ids = np.zeros(1, np.int32)
        return np.asarray(ids, np.int32)

    def prime_states(self, primes: list[np.ndarray]):
        """Run each prime through the model; returns the states and last-position logits."""
        import jax.numpy as jnp

        batch = len(primes)
        longest = max(len(p) for p in primes)
        padded = 1 << max(4, (longest - 1).bit_length())
        tokens = np.zeros((batch, padded), np.int32)
        mask = np.zeros((batch, padded), bool)
        for i, p in enumerate(primes):
            tokens[i, : len(p)] = p
            mask[i, : len(p)] = True
        units = self.lm.config.units
        states = [jnp.zeros((batch, units), jnp.float32) for _ in range(self.lm.num_states)]
        logits = jnp.zeros((batch, self.lm.vocab_size), jnp.float32)
        return self._consume(self._weights(), states, logits, tokens, mask)

    def stream(
        self,
        prime: str | list[str] = "",
        length: int = 200,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        num_samples: int = 1,
    ) -> Iterator[list[str]]:
        """Yield, block by block, the new text of each sample (a list of ``num_samples``
        strings per block). ``prime`` may be one text for all samples or one per sample."""
        import jax

        sampling = Sampling(temperature, top_k, top_p).validate(self.lm.vocab_size)
        if not isinstance(length, int) or length < 0:
            raise LstmgenError(f"length must be an integer >= 0, got {length!r}")
        if isinstance(prime, str):
            if not isinstance(num_samples, int) or num_samples < 1:
                raise LstmgenError(f"num_samples must be >= 1, got {num_samples!r}")
            primes = [prime] * num_samples
        else:
            primes = list(prime)
            if not primes:
                raise LstmgenError("give at least one prime")
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        encoded = [self.encode_prime(p) for p in primes]
        states, logits = self.prime_states(encoded)
        key = jax.random.PRNGKey(seed)
        weights = self._weights()
        decoders = [self.tokenizer.stream_decoder() for _ in primes]
        produced = 0
        while produced < length:
            states, logits, key, tokens = self._sample(
                weights, states, logits, key, float(sampling.temperature),
                float(sampling.top_p), top_k=sampling.top_k, greedy=sampling.greedy,
                steps=self.block,
            )
            take = min(self.block, length - produced)
            block = np.asarray(tokens)[:, :take]
            produced += take
            yield ["".join(d.feed(int(t)) for t in row) for d, row in zip(decoders, block)]
        tails = [d.flush() for d in decoders]
        if any(tails):
            yield tails

    def generate(self, prime: str | list[str] = "", length: int = 200, **kwargs) -> list[str]:
        """Return ``num_samples`` continuations of ``prime`` of ``length`` tokens each (the
        prime itself is not included). Same arguments as :meth:`stream`."""
        blocks = list(self.stream(prime, length, **kwargs))
        if not blocks:
            n = kwargs.get("num_samples", 1) if isinstance(prime, str) else len(prime)
            return [""] * n
        return ["".join(column) for column in zip(*blocks)]
