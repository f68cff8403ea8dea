"""The output layer: the last recurrent layer's state -> a distribution over the vocabulary.

- ``full``: ``Dense(vocab)`` logits, every token one row of the output matrix.
- ``adaptive``: the adaptive softmax of Grave et al. (2017, "Efficient softmax approximation
  for GPUs"; PyTorch's ``nn.AdaptiveLogSoftmaxWithLoss``). The vocabulary, numbered by
  frequency (lstmgen's word and BPE vocabularies are), is cut at ``cutoffs``: the *head*
  scores the frequent tokens plus one entry per tail cluster; tail cluster ``i`` scores its
  rarer tokens from a projection of the state to ``units / 4**(i + 1)`` dimensions, and
  ``log p(w) = log p_head(cluster) + log p_cluster(w)``. With WikiText-2's 33k words and 200
  units it needs about a sixth of the full softmax's multiply-adds. Its output is the exact
  normalised log-probability of every token, so losses, perplexities and sampling are exact.

In training the adaptive layer passes its input through and :func:`training_loss` scores
each position's target only (:func:`adaptive_nll`): the head everywhere, a tail cluster only
at the positions whose target falls in it. The log-probabilities of the whole vocabulary at
every position cost ~3x the rest of a word model's training step (``bench/bench_wikitext2.py``).

With ``tie_embeddings`` the output matrix of the full softmax, or the head's rows of the
frequent tokens with the adaptive one, *is* the input embedding matrix (Press & Wolf 2017):
fewer parameters and, on word vocabularies, better perplexity. It needs ``embedding_dim ==
units``.

The maths lives in :func:`output_log_probs`, written against a small array namespace so that
the Keras layers (``keras.ops``) and the Keras-free generation (``jax.numpy``) share it.
"""

from __future__ import annotations

import weakref
from types import SimpleNamespace

import numpy as np

from lstmgen.errors import LstmgenError

SOFTMAXES = ("auto", "full", "adaptive")
# "auto" picks the adaptive softmax from this vocabulary size on (word vocabularies; a BPE
# vocabulary of the default 4096 keeps the full one).
ADAPTIVE_FROM = 8192
DIV_VALUE = 4


def resolve_softmax(softmax: str, vocab_size: int) -> str:
    """``"full"`` or ``"adaptive"`` for a model of ``vocab_size`` tokens.

    Example:
        >>> resolve_softmax("auto", 65), resolve_softmax("auto", 33278)
        ('full', 'adaptive')
    """
    if softmax not in SOFTMAXES:
        raise LstmgenError(f"unknown softmax {softmax!r}", hint="use full, adaptive or auto")
    if softmax == "auto":
        return "adaptive" if vocab_size >= ADAPTIVE_FROM else "full"
    return softmax


def default_cutoffs(vocab_size: int) -> list[int]:
    """Where the adaptive softmax cuts a frequency-ordered vocabulary: a head of the 2,000
    likeliest tokens, then clusters up to 10k, 50k and 200k tokens (WikiText-2: [2000, 10000],
    as in the literature).

    Example:
        >>> default_cutoffs(33278), default_cutoffs(10000), default_cutoffs(300_000)
        ([2000, 10000], [2000], [2000, 10000, 50000, 200000])
    """
    cuts = [c for c in (2000, 10_000, 50_000, 200_000) if c < vocab_size]
    if not cuts:
        raise LstmgenError(f"the adaptive softmax needs more than 2000 tokens, got {vocab_size}",
                           hint="use --softmax full for a small vocabulary")
    return cuts


def check_cutoffs(cutoffs, vocab_size: int) -> list[int]:
    cutoffs = list(cutoffs)
    if (not cutoffs or any(not isinstance(c, int) for c in cutoffs)
            or cutoffs != sorted(set(cutoffs)) or cutoffs[0] <= 0 or cutoffs[-1] >= vocab_size):
        raise LstmgenError(
            f"adaptive softmax cutoffs must be increasing integers between 0 and the "
            f"vocabulary size {vocab_size}, got {cutoffs}",
            hint="e.g. --cutoffs 2000 10000, or leave them out for the default")
    return cutoffs


def tail_dims(units: int, clusters: int) -> list[int]:
    """The projection size of each tail cluster: ``units / 4**(i + 1)``, at least 1."""
    return [max(1, units // DIV_VALUE ** (i + 1)) for i in range(clusters)]


def output_log_probs(xp, h, arrays: list, softmax: str, cutoffs: list[int] | None,
                     tied=None):
    """Logits (``full``) or exact log-probabilities (``adaptive``) of the next token, from
    the last layer's outputs ``h`` (``(..., units)``). ``arrays`` are the output layer's
    variables in order; ``tied`` the embedding matrix when the embeddings are tied. ``xp``
    provides ``matmul``, ``transpose``, ``concatenate`` and ``log_softmax``: ``keras.ops``
    or :data:`JAX_OPS`."""
    if softmax == "full":
        if tied is None:
            kernel, bias = arrays
            return xp.matmul(h, kernel) + bias
        (bias,) = arrays
        return xp.matmul(h, xp.transpose(tied)) + bias
    n_tails = len(cutoffs)
    head, tails = _head_log_probs(xp, h, arrays, cutoffs[0], tied)
    c0 = cutoffs[0]
    parts = [head[..., :c0]]
    for i in range(n_tails):
        projection, kernel, bias = tails[3 * i : 3 * i + 3]
        scores = xp.matmul(xp.matmul(h, projection), kernel) + bias
        parts.append(xp.log_softmax(scores, axis=-1) + head[..., c0 + i : c0 + i + 1])
    return xp.concatenate(parts, axis=-1)


def _head_log_probs(xp, h, arrays: list, c0: int, tied):
    """The head's log-probabilities (the ``c0`` frequent tokens, then one entry per tail
    cluster) and the tails' variables."""
    if tied is None:
        head_kernel, head_bias, *tails = arrays
        head = xp.matmul(h, head_kernel) + head_bias
    else:
        cluster_kernel, head_bias, *tails = arrays
        words = xp.matmul(h, xp.transpose(tied[:c0]))
        head = xp.concatenate([words, xp.matmul(h, cluster_kernel)], axis=-1) + head_bias
    return xp.log_softmax(head, axis=-1), tails


def jax_ops() -> SimpleNamespace:
    """The namespace :func:`output_log_probs` needs, in ``jax.numpy`` (no Keras)."""
    import jax
    import jax.numpy as jnp

    return SimpleNamespace(matmul=jnp.matmul, transpose=jnp.transpose,
                           concatenate=jnp.concatenate, log_softmax=jax.nn.log_softmax)


def output_shapes(softmax: str, cutoffs, units: int, vocab_size: int, tied: bool) -> list:
    """The shapes of the output layer's variables, in order (checkpoint checks)."""
    if softmax == "full":
        return [(vocab_size,)] if tied else [(units, vocab_size), (vocab_size,)]
    bounds = [*cutoffs, vocab_size]
    n = len(cutoffs)
    shapes = [(units, n) if tied else (units, cutoffs[0] + n), (cutoffs[0] + n,)]
    for i, d in enumerate(tail_dims(units, n)):
        size = bounds[i + 1] - bounds[i]
        shapes += [(units, d), (d, size), (size,)]
    return shapes


def tail_capacities(positions: int, tail_fractions) -> list[int]:
    """How many positions of a batch each tail cluster is scored at: its share of the
    training tokens with room for bursts of rare words (a batch that has more falls back to
    scoring the cluster everywhere: exact, only slower), a multiple of 8.

    Example:
        >>> tail_capacities(2048, [0.16, 0.07]), tail_capacities(64, [0.9])
        ([560, 280], [64])
    """
    return [min(positions, -(-int(1.5 * f * positions + 64) // 8) * 8) for f in tail_fractions]


def adaptive_nll(h, targets, arrays: list, cutoffs: list[int], vocab_size: int, tied=None,
                 tail_fractions=None):
    """The negative log-likelihood of ``targets`` (any shape) from the last layer's outputs
    ``h`` (``targets.shape + (units,)``), in ``keras.ops``: equal to reading it off
    :func:`output_log_probs` but without the whole vocabulary's log-probabilities. Tail
    cluster ``i`` is scored only at the (at most :func:`tail_capacities`) positions whose
    target falls in it; without ``tail_fractions`` it is scored everywhere and masked."""
    from keras import ops

    shape = ops.shape(targets)
    units = h.shape[-1]
    h = ops.reshape(h, (-1, units))
    y = ops.reshape(ops.cast(targets, "int32"), (-1,))
    n = h.shape[0]
    c0 = cutoffs[0]
    head, tails = _head_log_probs(ops, h, arrays, c0, tied)
    cluster = sum(ops.cast(y >= c, "int32") for c in cutoffs)  # 0: the head's own tokens
    in_head = ops.where(cluster == 0, y, c0 + cluster - 1)
    nll = -ops.take_along_axis(head, in_head[:, None], axis=-1)[:, 0]
    bounds = [*cutoffs, vocab_size]
    capacities = tail_capacities(n, tail_fractions) if tail_fractions else [n] * len(cutoffs)
    for i, capacity in enumerate(capacities):
        tail = _Tail(*tails[3 * i : 3 * i + 3], low=bounds[i], high=bounds[i + 1])
        inside = cluster == i + 1
        if capacity >= n:
            nll -= tail.everywhere(h, y, inside)
        else:
            nll -= ops.cond(ops.sum(ops.cast(inside, "int32")) <= capacity,
                            lambda t=tail, m=inside, k=capacity: t.gathered(h, y, m, k),
                            lambda t=tail, m=inside: t.everywhere(h, y, m))
    return ops.reshape(nll, shape)


class _Tail:
    """One tail cluster's log-probability of the targets inside it (:func:`adaptive_nll`)."""

    def __init__(self, projection, kernel, bias, low: int, high: int):
        self.projection, self.kernel, self.bias = projection, kernel, bias
        self.low, self.high = low, high

    def log_prob(self, h, y):
        from keras import ops

        scores = ops.matmul(ops.matmul(h, self.projection), self.kernel) + self.bias
        local = ops.clip(y - self.low, 0, self.high - self.low - 1)
        own = ops.take_along_axis(scores, local[:, None], axis=-1)[:, 0]
        return own - ops.logsumexp(scores, axis=-1)

    def everywhere(self, h, y, inside):
        from keras import ops

        return ops.where(inside, self.log_prob(h, y), 0.0)

    def gathered(self, h, y, inside, capacity: int):
        from keras import ops

        n = h.shape[0]
        # The first `capacity` positions inside the cluster (all of them: the caller checked).
        rank, rows = ops.top_k(ops.where(inside, n - ops.arange(n), 0), capacity)
        log_prob = self.log_prob(ops.take(h, rows, axis=0), ops.take(y, rows, axis=0))
        return ops.scatter(rows[:, None], ops.where(rank > 0, log_prob, 0.0), (n,))


def token_fractions(tokens, cutoffs: list[int], samples: int = 256, span: int = 4096) -> list:
    """The share of ``tokens`` (an array, e.g. the training split's memory map) in each tail
    cluster, from ``samples`` evenly spread spans (the whole array when it is small).

    Example:
        >>> token_fractions(np.array([0, 5, 9, 9]), [4, 8])
        [0.25, 0.5]
    """
    n = len(tokens)
    if n <= samples * span:
        sample = np.asarray(tokens)
    else:
        starts = np.linspace(0, n - span, samples).astype(np.int64)
        sample = np.concatenate([np.asarray(tokens[s : s + span]) for s in starts])
    bounds = [*cutoffs, np.iinfo(np.int64).max]
    return [float(np.mean((sample >= lo) & (sample < hi))) if len(sample) else 0.0
            for lo, hi in zip(bounds, bounds[1:])]


def training_loss(softmax: str, head=None, tail_fractions=None):
    """The Keras loss for a model's training output: cross-entropy from logits (``full``),
    or, for the adaptive softmax, the negative log-likelihood that ``head`` (the model's
    output layer, which passes its input through in training) computes for the targets alone
    (:func:`adaptive_nll`; ``tail_fractions`` from :func:`token_fractions`)."""
    import keras
    from keras import ops

    if softmax == "full":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    class AdaptiveLoss(keras.losses.Loss):
        def call(self, y_true, y_pred):
            if y_pred.shape[-1] == head.units:  # training: the layer's input
                return head.target_nll(y_pred, y_true, tail_fractions)
            # log-probabilities (Keras builds the loss once on the inference output's shape)
            y_true = ops.expand_dims(ops.cast(y_true, "int32"), -1)
            return -ops.take_along_axis(ops.cast(y_pred, "float32"), y_true, axis=-1)[..., 0]

    return AdaptiveLoss(name="nll")


def _host_zeros(shape, dtype=None):
    # Weights about to be loaded: host zeros (a JAX initializer compiles a program per shape).
    return np.zeros(shape, dtype or "float32")


def make_output_layer(softmax: str, cutoffs, vocab_size: int, embedding=None,
                      initialize: bool = True, name: str = "logits"):
    """The Keras output layer: ``keras.layers.Dense`` for an untied full softmax (the layout
    of every run before the other kinds existed), else an ``OutputLayer`` (module doc)."""
    import keras

    if softmax == "full" and embedding is None:
        zeros = {} if initialize else {"kernel_initializer": _host_zeros,
                                       "bias_initializer": _host_zeros}
        return keras.layers.Dense(vocab_size, name=name, **zeros)
    return _output_layer_class()(softmax, cutoffs, vocab_size, embedding=embedding,
                                 initialize=initialize, name=name)


_OUTPUT_LAYER = None


def _output_layer_class():
    global _OUTPUT_LAYER
    if _OUTPUT_LAYER is not None:
        return _OUTPUT_LAYER
    import keras
    from keras import ops

    class OutputLayer(keras.layers.Layer):
        """The adaptive softmax and/or tied embeddings (module doc) as a Keras layer."""

        def __init__(self, softmax, cutoffs, vocab_size, embedding=None, initialize=True,
                     **kwargs):
            super().__init__(**kwargs)
            self.softmax, self.cutoffs, self.vocab_size = softmax, cutoffs, vocab_size
            self.initialize = initialize
            # A weak reference, not a sublayer: the embedding's variable stays its own.
            self._embedding = weakref.ref(embedding) if embedding is not None else None

        def build(self, input_shape):
            self.units = units = input_shape[-1]
            shapes = output_shapes(self.softmax, self.cutoffs, units, self.vocab_size,
                                   self._embedding is not None)
            self.arrays = [
                self.add_weight(shape=shape, name=f"w{i}",
                                initializer=(_host_zeros if not self.initialize else
                                             "zeros" if len(shape) == 1 else "glorot_uniform"))
                for i, shape in enumerate(shapes)
            ]

        def _tensors(self):
            tied = (ops.convert_to_tensor(self._embedding().embeddings)
                    if self._embedding is not None else None)
            return [ops.convert_to_tensor(a) for a in self.arrays], tied

        def call(self, h, training=None):
            if training and self.softmax == "adaptive":
                return h  # the training loss scores the targets alone (target_nll)
            arrays, tied = self._tensors()
            return output_log_probs(ops, h, arrays, self.softmax, self.cutoffs, tied)

        def target_nll(self, h, targets, tail_fractions=None):
            """The adaptive softmax's loss of ``targets`` from this layer's input ``h``."""
            arrays, tied = self._tensors()
            return adaptive_nll(h, targets, arrays, self.cutoffs, self.vocab_size, tied,
                                tail_fractions)

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-1], self.vocab_size)

    _OUTPUT_LAYER = OutputLayer
    return OutputLayer
