"""Generate text token by token, carrying the recurrent state: O(1) work per new token.

The prime is fed through the step model once (a compiled scan over its tokens, padded to a
power-of-two length so a handful of shapes cover every prime); then the sampling loop runs
compiled in blocks of ``block`` tokens, so output can stream while the loop stays in XLA. The
next block is dispatched before the current one is decoded, so the Python side (decoding,
printing) overlaps the compiled loop. Each call of a block has a fixed cost (about 2 ms at
LSTM 512 on 2 CPU cores, ``bench/RESULTS.md``), hence 256 tokens per block by default; the
server streams in blocks of 64 for finer-grained output and turn-taking.

Generation is a JAX program (``jit``, ``lax.scan``), and the network's step is written in
``jax.numpy`` on the trained weights -- the maths of Keras' LSTM/GRU cells, held to the Keras
model within 1e-5 by the tests. A generator built from a checkpoint file
(:meth:`Generator.from_checkpoint`) reads the weights with h5py and never imports Keras: that
is most of the start-up time of ``lstmgen generate``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from lstmgen.errors import LstmgenError
from lstmgen.heads import jax_ops, output_log_probs, output_shapes
from lstmgen.model import ModelConfig, start_batch
from lstmgen.sampling import MASKED, Sampling, filter_logits
from lstmgen.stopping import StopFilter, stop_list

START_TEXT = "\n"
BLOCK = 256  # tokens per compiled sampling call


def prng_key(seed: int) -> np.ndarray:
    """The raw (threefry) JAX key of ``seed``, made on the host: ``jax.random.PRNGKey`` is
    an XLA program compiled in every new process, on the way to the first character.

    Example:
        >>> prng_key(7).tolist(), prng_key(2**32 + 7).tolist()
        ([0, 7], [1, 7])
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise LstmgenError(f"the seed must be an integer, got {seed!r}")
    seed = int(seed) % 2**64
    return np.array([seed >> 32, seed & 0xFFFFFFFF], np.uint32)


def draw_seed(seed: int | None) -> int:
    """``seed``, or a random one when it is ``None`` (recorded, so the text can be remade)."""
    return int.from_bytes(os.urandom(4), "little") if seed is None else seed


def check_block(block) -> int:
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise LstmgenError(f"block must be a positive integer, got {block!r}")
    return block


def model_weights(lm) -> dict:
    """The current weights of a :class:`~lstmgen.model.LanguageModel` as host arrays:
    ``{"embedding", "layers": [{"kernel", "recurrent", "bias"}], "head": [arrays], "start"}``,
    the output layer's variables in order (see :mod:`lstmgen.heads`), ``start`` the learned
    start states (:class:`~lstmgen.start_state.StartState`; ``None``: zeros). A
    layer-normalised LSTM's layers also hold ``"norm"``: its gate scale, cell scale and
    cell shift."""
    from lstmgen.distributed import local

    value = lambda variable: np.asarray(local(variable.value))  # noqa: E731

    def layer(rnn) -> dict:
        arrays = {"kernel": value(rnn.cell.kernel), "recurrent": value(rnn.cell.recurrent_kernel),
                  "bias": value(rnn.cell.bias)}
        if getattr(rnn, "layer_norm", False):
            arrays["norm"] = [value(v) for v in (rnn.gate_scale, rnn.cell_scale,
                                                 rnn.cell_shift)]
        return arrays

    return {
        "embedding": value(lm.embedding.embeddings),
        "layers": [layer(rnn) for rnn in lm.rnns],
        "head": [value(v) for v in lm.head.weights],
        "start": None if lm.start is None else [value(v) for v in lm.start.starts],
    }


def checkpoint_weights(path, config: ModelConfig) -> dict:
    """The same weights as :func:`model_weights`, read from a checkpoint file with h5py only.

    Keras stores each layer's variables in a group whose ``vars`` subgroup is named after
    the layer (an RNN layer's are in its ``cell``). Raises ``KeyError`` when the file is not
    laid out that way, ``OSError`` when it cannot be read.
    """
    import h5py

    with h5py.File(path, "r") as f:
        groups = {}

        def visit(name, obj):
            if isinstance(obj, h5py.Group) and name.endswith("vars") and "name" in obj.attrs:
                groups[obj.attrs["name"]] = obj.parent

        f["layers"].visititems(visit)

        def arrays(layer: str, sub: str = "vars") -> list[np.ndarray]:
            group = groups[layer][sub]
            return [np.asarray(group[str(i)]) for i in range(len(group))]

        layers = []
        for i in range(config.layers):
            kernel, recurrent, bias = arrays(f"{config.cell}_{i}", "cell/vars")
            layers.append({"kernel": kernel, "recurrent": recurrent, "bias": bias})
            if config.layer_norm:  # the layer's own variables: the normalisation's
                layers[-1]["norm"] = arrays(f"{config.cell}_{i}")
        return {"embedding": arrays("embedding")[0], "layers": layers,
                "head": arrays("logits"),
                "start": arrays("start_state") if config.learned_start else None}


def step_weights(weights: dict, config: ModelConfig) -> dict:
    """Rearrange :func:`model_weights` for the step: the embedding folded into the first
    layer's input projection (a row lookup per token instead of a matmul), GRU biases split,
    the embedding kept as the output matrix when tied."""
    cell = config.cell
    layers = []
    for i, w in enumerate(weights["layers"]):
        kernel, bias = w["kernel"], w["bias"]
        input_bias = bias if cell == "lstm" else bias[0]
        layer = {"recurrent": w["recurrent"], "kernel": kernel, "bias": input_bias}
        if cell == "gru":
            layer["recurrent_bias"] = bias[1]
        if "norm" in w:
            layer["norm"] = list(w["norm"])
        if i == 0:
            table = weights["embedding"] @ kernel
            # With the normalisation the bias is added after it, not in the projection.
            layer["table"] = table if "norm" in w else table + input_bias
        layers.append(layer)
    tied = weights["embedding"] if config.tie_embeddings else None
    return {"layers": layers, "head": list(weights["head"]), "tied": tied,
            "start": weights.get("start")}


class Generator:
    """Samples continuations of prime texts from a trained network.

    ``weights`` is a dict as returned by :func:`model_weights`, or a function returning one
    (called for every request: a model still training). Most callers use
    :meth:`from_model` or :meth:`from_checkpoint`.

    Example:
        >>> from lstmgen.model import LanguageModel, ModelConfig
        >>> from lstmgen.tokenizers import CharTokenizer
        >>> tok = CharTokenizer.fit(["abc\\n"])
        >>> lm = LanguageModel(ModelConfig(units=8, embedding_dim=4), 4)
        >>> gen = Generator.from_model(lm, tok)
        >>> texts = gen.generate("ab", length=5, seed=1, num_samples=2)
        >>> [len(t) for t in texts]
        [5, 5]
    """

    def __init__(self, config: ModelConfig, tokenizer, weights, block: int = BLOCK):
        import jax
        import jax.numpy as jnp
        from jax.nn import sigmoid

        from lstmgen.normalisation import normalise

        self.config = config = config.for_vocabulary(tokenizer.vocab_size)
        self.tokenizer = tokenizer
        self.block = block
        self._source = weights
        # Fixed weights go to the device once, not at every call.
        self._fixed = (None if callable(weights) else
                       jax.device_put(step_weights(weights, config)))
        cell = config.cell
        xp = jax_ops()

        def step(weights, tokens, states):
            # One step of the network (the maths of Keras' LSTM/GRU cells).
            new_states, x = [], None
            for i, layer in enumerate(weights["layers"]):
                norm = layer.get("norm")
                if i == 0:
                    projected = jnp.take(layer["table"], tokens, axis=0)
                elif norm is None:
                    projected = x @ layer["kernel"] + layer["bias"]
                else:
                    projected = x @ layer["kernel"]
                if cell == "lstm":
                    h, c = states[2 * i], states[2 * i + 1]
                    z = projected + h @ layer["recurrent"]
                    if norm is not None:  # lstmgen.layers._ln_recurrence_jax's maths
                        z = normalise(z, 4) * norm[0] + layer["bias"]
                    gi, gf, gc, go = jnp.split(z, 4, axis=-1)
                    c = sigmoid(gf) * c + sigmoid(gi) * jnp.tanh(gc)
                    out = c if norm is None else normalise(c) * norm[1] + norm[2]
                    h = sigmoid(go) * jnp.tanh(out)
                    new_states += [h, c]
                else:
                    h = states[i]
                    x_z, x_r, x_h = jnp.split(projected, 3, axis=-1)
                    inner = h @ layer["recurrent"] + layer["recurrent_bias"]
                    r_z, r_r, r_h = jnp.split(inner, 3, axis=-1)
                    z = sigmoid(x_z + r_z)
                    candidate = jnp.tanh(x_h + sigmoid(x_r + r_r) * r_h)
                    h = z * h + (1 - z) * candidate
                    new_states.append(h)
                x = h
            logits = output_log_probs(xp, x, weights["head"], config.softmax, config.cutoffs,
                                      weights["tied"])
            return logits.astype(jnp.float32), new_states

        def consume(weights, states, logits, tokens, mask):
            def body(carry, inputs):
                states, logits = carry
                token, keep = inputs
                new_logits, new_states = step(weights, token, states)
                keep = keep[:, None]
                states = [jnp.where(keep, n, s) for n, s in zip(new_states, states)]
                return (states, jnp.where(keep, new_logits, logits)), None

            (states, logits), _ = jax.lax.scan(body, (states, logits), (tokens.T, mask.T))
            return states, logits

        def sample(weights, states, logits, seen, key, offset, temperature, top_p, min_p,
                   penalty, top_k, greedy, steps, nucleus, floor, penalize):
            # Gumbel noise for the whole block at once: argmax(logits + noise) is a draw
            # from softmax(logits), without an RNG call inside every step. The noise of token
            # number p comes from fold_in(key, p): the same text for a seed whatever the block.
            positions = offset + jnp.arange(steps, dtype=jnp.uint32)
            noise = jax.vmap(lambda p: jax.random.gumbel(
                jax.random.fold_in(key, p), logits.shape, logits.dtype))(positions)
            rows = jnp.arange(logits.shape[0])

            def body(carry, step_noise):
                states, logits, seen = carry
                if penalize:  # on log-probabilities (<= 0): a seen token's p becomes p**penalty
                    logits = jax.nn.log_softmax(logits, axis=-1)
                    logits = jnp.where(seen, logits * penalty, logits)
                if greedy:
                    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
                else:
                    filtered = filter_logits(logits, temperature, top_k,
                                             top_p if nucleus else None,
                                             min_p if floor else None)
                    token = jnp.argmax(filtered + step_noise, axis=-1).astype(jnp.int32)
                if penalize:
                    seen = seen.at[rows, token].set(True)
                logits, states = step(weights, token, states)
                return (states, logits, seen), token

            (states, logits, seen), tokens = jax.lax.scan(body, (states, logits, seen), noise)
            return states, logits, seen, tokens.T

        self._consume = jax.jit(consume)
        self._sample = jax.jit(sample,
                               static_argnames=("top_k", "greedy", "steps", "nucleus", "floor",
                                                "penalize"))

    @classmethod
    def from_model(cls, lm, tokenizer, block: int = BLOCK) -> Generator:
        """A generator that always uses ``lm``'s current weights (e.g. while training)."""
        return cls(lm.config, tokenizer, lambda: model_weights(lm), block)

    @classmethod
    def from_checkpoint(cls, path, config: ModelConfig, tokenizer, block: int = BLOCK
                        ) -> Generator:
        """A generator for the weights in a checkpoint file, read without Keras."""
        try:
            weights = checkpoint_weights(path, config)
        except (KeyError, OSError, ValueError) as e:
            raise LstmgenError(
                f"checkpoint {path} does not fit this model ({e})",
                hint="the file is damaged or from another run; retrain or restore it",
            ) from None
        generator = cls(config, tokenizer, weights, block)
        generator._check_shapes()
        return generator

    def _weights(self) -> dict:
        """The weights, rearranged for the step."""
        if self._fixed is not None:
            return self._fixed
        return step_weights(self._source(), self.config)

    def _check_shapes(self) -> None:
        c, w = self.config, self._weights()
        gates = 4 if c.cell == "lstm" else 3
        expected = [((self.tokenizer.vocab_size, gates * c.units), w["layers"][0]["table"])]
        for i, layer in enumerate(w["layers"]):
            inputs = c.embedding_dim if i == 0 else c.units
            expected += [((inputs, gates * c.units), layer["kernel"]),
                         ((c.units, gates * c.units), layer["recurrent"])]
            if c.layer_norm:
                if len(layer.get("norm", ())) != 3:
                    raise LstmgenError(
                        f"the checkpoint's layer {i} lacks the layer normalisation's "
                        "3 arrays its config names",
                        hint="the file is damaged or from another run; retrain or restore it")
                expected += list(zip([(gates * c.units,), (c.units,), (c.units,)],
                                     layer["norm"]))
        shapes = output_shapes(c.softmax, c.cutoffs, c.units, self.tokenizer.vocab_size,
                               c.tie_embeddings)
        if len(shapes) != len(w["head"]):
            raise LstmgenError(
                f"the checkpoint's output layer has {len(w['head'])} arrays where the model "
                f"needs {len(shapes)}",
                hint="the file is damaged or from another run; retrain or restore it")
        expected += list(zip(shapes, w["head"]))
        if w["start"] is not None:
            if len(w["start"]) != c.layers * c.states_per_layer:
                raise LstmgenError(
                    f"the checkpoint has {len(w['start'])} start states where the model needs "
                    f"{c.layers * c.states_per_layer}",
                    hint="the file is damaged or from another run; retrain or restore it")
            expected += [((c.units,), s) for s in w["start"]]
        for shape, array in expected:
            if tuple(array.shape) != shape:
                raise LstmgenError(
                    f"checkpoint weights of shape {tuple(array.shape)} where the model "
                    f"needs {shape}",
                    hint="the file is damaged or from another run; retrain or restore it")

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

    def start_states(self, batch: int, weights: dict | None = None):
        """The starting point of every stream: the model's start states (learned, or zeros
        for a model without), and zero logits before any token."""
        c = self.config
        states = start_batch((weights or self._weights())["start"], batch, c.units,
                             c.layers * c.states_per_layer)
        return states, np.zeros((batch, self.tokenizer.vocab_size), np.float32)

    def heal_prime(self, ids: np.ndarray) -> tuple[np.ndarray, bytes, np.ndarray | None]:
        """The prime's ids to read, the bytes the first token must start with and not show,
        and the mask of the tokens allowed first: token healing, for tokenizers whose
        tokens can extend one another (BPE: ``"def "`` ends in a lone space; the model
        goes on from ``"def"`` with a token such as ``" name"``). Others: as they are."""
        if not hasattr(self.tokenizer, "heal"):
            return ids, b"", None
        kept, skip, allowed = self.tokenizer.heal(ids)
        if allowed is not None and not len(kept):
            kept = self.tokenizer.encode(START_TEXT, warn=False)
        return kept, skip, allowed

    def prime_states(self, primes: list[np.ndarray], weights: dict | None = None,
                     start=None):
        """Run each prime's tokens through the model from ``start`` (``(states, logits)``;
        default the start states); returns the states and the last position's logits."""
        weights = weights or self._weights()
        batch = len(primes)
        longest = max(len(p) for p in primes)
        padded = 1 << max(4, (longest - 1).bit_length())
        tokens = np.zeros((batch, padded), np.int32)
        mask = np.zeros((batch, padded), bool)
        for i, p in enumerate(primes):
            tokens[i, : len(p)] = p
            mask[i, : len(p)] = True
        states, logits = start if start is not None else self.start_states(batch, weights)
        return self._consume(weights, states, logits, tokens, mask)

    def seen_tokens(self, primes: list[np.ndarray]) -> np.ndarray:
        """(batch, vocab) booleans: which tokens each prime holds (for the repetition
        penalty)."""
        seen = np.zeros((len(primes), self.tokenizer.vocab_size), bool)
        for row, ids in zip(seen, primes):
            row[ids] = True
        return seen

    def dispatch(self, weights, states, logits, seen, key, offset: int, sampling: Sampling,
                 steps: int):
        """Sample the next ``steps`` tokens of every stream from ``(states, logits)``; returns
        at once (JAX runs it meanwhile) with ``(states, logits, seen, tokens)``. ``seen`` is
        the (batch, vocab) mask of tokens so far, or ``None`` when no penalty applies."""
        return self._sample(
            weights, states, logits, seen, key, np.uint32(offset), float(sampling.temperature),
            float(sampling.top_p), float(sampling.min_p), float(sampling.repetition_penalty),
            top_k=sampling.top_k, greedy=sampling.greedy, steps=steps,
            nucleus=sampling.top_p < 1.0, floor=sampling.min_p > 0.0,
            penalize=sampling.penalizes,
        )

    def stream(
        self,
        prime: str | list[str] = "",
        length: int = 200,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        num_samples: int = 1,
        block: int | None = None,
    ) -> TextStream:
        """Yield, block by block, the new text of each sample (a list of ``num_samples``
        strings per block, or one per prime). ``prime`` may be one text for all samples or a
        list of primes, one sample each. A sample ends at ``length`` tokens or at the first
        of the ``stop`` sequences, which is not returned; the returned :class:`TextStream`
        tells which (``finish_reasons``) and the seed used. ``block`` tokens are sampled
        per compiled call (default: the generator's).

        Example:
            >>> text = model.stream("ROMEO:", 100, stop="\\n\\n", seed=1)   # doctest: +SKIP
            >>> "".join(b[0] for b in text), text.finish_reasons           # doctest: +SKIP
            ('\\nWhat, ho! ...', ['stop'])
        """
        sampling = Sampling(temperature, top_k, top_p, min_p, repetition_penalty).validate(
            self.tokenizer.vocab_size)
        stops = stop_list(stop)
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise LstmgenError(f"length must be an integer >= 0, got {length!r}")
        if isinstance(prime, str):
            if isinstance(num_samples, bool) or not isinstance(num_samples, int) \
                    or num_samples < 1:
                raise LstmgenError(f"num_samples must be >= 1, got {num_samples!r}")
            primes = [prime] * num_samples
        else:
            primes = list(prime)
            if not primes:
                raise LstmgenError("give at least one prime")
        block = check_block(self.block if block is None else block)
        seed = draw_seed(seed)
        key = prng_key(seed)
        encoded = [self.encode_prime(p) for p in primes]
        text = TextStream(seed, len(primes))
        text._blocks = self._blocks(text, encoded, length, sampling, stops, key, block)
        return text

    def _blocks(self, text: TextStream, encoded, length, sampling, stops, key, block):
        weights = self._weights()
        read, skips, firsts = zip(*(self.heal_prime(ids) for ids in encoded))
        states, logits = self.prime_states(list(read), weights)
        if any(allowed is not None for allowed in firsts):
            logits = np.array(logits)
            for row, allowed in zip(logits, firsts):
                if allowed is not None:
                    row[~allowed] = MASKED
        seen = self.seen_tokens(encoded) if sampling.penalizes else None
        # Only tokenizers that heal take a skip (it is b"" for the others).
        decoders = [self.tokenizer.stream_decoder(skip) if skip else
                    self.tokenizer.stream_decoder() for skip in skips]
        filters = [StopFilter(stops) for _ in encoded]
        reasons = text.finish_reasons
        produced = 0
        pending = (self.dispatch(weights, states, logits, seen, key, 0, sampling, block)
                   if length else None)
        while produced < length:
            states, logits, seen, tokens = pending
            take = min(block, length - produced)
            produced += take
            if produced < length:
                pending = self.dispatch(weights, states, logits, seen, key, produced,
                                        sampling, block)
            rows = np.asarray(tokens)[:, :take]
            pieces = ["".join(d.feed(int(t)) for t in row) for d, row in zip(decoders, rows)]
            pieces = [f.feed(piece) for f, piece in zip(filters, pieces)]  # no stops: as is
            for i, f in enumerate(filters):
                if f.stopped:
                    reasons[i] = "stop"
            yield pieces
            if all(f.stopped for f in filters):
                return
        tails = [f.feed(d.flush()) + f.flush() for d, f in zip(decoders, filters)]
        for i, f in enumerate(filters):
            reasons[i] = "stop" if f.stopped else "length"
        if any(tails):
            yield tails

    def generate(self, prime: str | list[str] = "", length: int = 200, **kwargs) -> list[str]:
        """Return ``num_samples`` continuations of ``prime`` (or one per prime in a list) of
        at most ``length`` tokens each (the prime itself is not included). Same arguments as
        :meth:`stream`."""
        stream = self.stream(prime, length, **kwargs)
        texts = [""] * len(stream.finish_reasons)
        for blocks in stream:
            texts = [t + b for t, b in zip(texts, blocks)]
        return texts


class TextStream:
    """The blocks of new text :meth:`Generator.stream` yields, one string per sample.

    ``seed`` is the seed used (drawn at random when none was given); ``finish_reasons`` holds
    per sample ``"stop"`` once a stop sequence ended it, ``"length"`` once it reached its
    length, ``None`` while it runs. ``close()`` abandons the rest.
    """

    def __init__(self, seed: int, samples: int):
        self.seed = seed
        self.finish_reasons: list[str | None] = [None] * samples
        self._blocks: Iterator[list[str]] = iter(())

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> list[str]:
        return next(self._blocks)

    def close(self) -> None:
        self._blocks.close()
