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
        cell = lm.config.cell

        def step(weights, tokens, states):
            # One step of the network in plain ops (same maths as Keras' LSTM/GRU cells;
            # tests hold it to the full model within 1e-5): the embedding is already folded
            # into the first layer's input projection, so that part is a row lookup.
            new_states, x = [], None
            for i, layer in enumerate(weights["layers"]):
                if i == 0:
                    projected = ops.take(layer["table"], tokens, axis=0)
                else:
                    projected = ops.matmul(x, layer["kernel"]) + layer["bias"]
                if cell == "lstm":
                    h, c = states[2 * i], states[2 * i + 1]
                    z = projected + ops.matmul(h, layer["recurrent"])
                    gi, gf, gc, go = ops.split(z, 4, axis=-1)
                    c = ops.sigmoid(gf) * c + ops.sigmoid(gi) * ops.tanh(gc)
                    h = ops.sigmoid(go) * ops.tanh(c)
                    new_states += [h, c]
                else:
                    h = states[i]
                    x_z, x_r, x_h = ops.split(projected, 3, axis=-1)
                    inner = ops.matmul(h, layer["recurrent"]) + layer["recurrent_bias"]
                    r_z, r_r, r_h = ops.split(inner, 3, axis=-1)
                    z = ops.sigmoid(x_z + r_z)
                    candidate = ops.tanh(x_h + ops.sigmoid(x_r + r_r) * r_h)
                    h = z * h + (1 - z) * candidate
                    new_states.append(h)
                x = h
            logits = ops.matmul(x, weights["head"]) + weights["head_bias"]
            return ops.cast(logits, "float32"), new_states

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

        def sample(weights, states, logits, key, temperature, top_p, top_k, greedy, steps,
                   nucleus):
            # Gumbel noise for the whole block at once: argmax(logits + noise) is a draw
            # from softmax(logits), without a key split and RNG call inside every step.
            key, sub = jax.random.split(key)
            noise = jax.random.gumbel(sub, (steps, *logits.shape), logits.dtype)

            def body(carry, step_noise):
                states, logits = carry
                if greedy:
                    token = ops.argmax(logits, axis=-1).astype("int32")
                else:
                    filtered = filter_logits(logits, temperature, top_k,
                                             top_p if nucleus else None)
                    token = ops.argmax(filtered + step_noise, axis=-1).astype("int32")
                logits, states = step(weights, token, states)
                return (states, logits), token

            (states, logits), tokens = jax.lax.scan(body, (states, logits), noise)
            return states, logits, key, tokens.T

        self._consume = jax.jit(consume)
        self._sample = jax.jit(sample,
                               static_argnames=("top_k", "greedy", "steps", "nucleus"))

    def _weights(self) -> dict:
        """The current weights, rearranged for :meth:`step`."""
        from keras import ops

        lm = self.lm
        value = lambda variable: local(variable.value)  # noqa: E731
        layers = []
        for i, rnn in enumerate(lm.rnns):
            cell = rnn.cell
            kernel, recurrent, bias = value(cell.kernel), value(cell.recurrent_kernel), \
                value(cell.bias)
            input_bias = bias if lm.config.cell == "lstm" else bias[0]
            layer = {"recurrent": recurrent, "kernel": kernel, "bias": input_bias}
            if lm.config.cell == "gru":
                layer["recurrent_bias"] = bias[1]
            if i == 0:
                embeddings = value(lm.embedding.embeddings)
                layer["table"] = ops.matmul(embeddings, kernel) + input_bias
            layers.append(layer)
        return {"layers": layers, "head": value(lm.head.kernel),
                "head_bias": value(lm.head.bias)}

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
                steps=self.block, nucleus=sampling.top_p < 1.0,
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
