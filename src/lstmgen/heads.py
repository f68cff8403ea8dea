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
    if tied is None:
        head_kernel, head_bias, *tails = arrays
        head = xp.matmul(h, head_kernel) + head_bias
    else:
        cluster_kernel, head_bias, *tails = arrays
        words = xp.matmul(h, xp.transpose(tied[: cutoffs[0]]))
        head = xp.concatenate([words, xp.matmul(h, cluster_kernel)], axis=-1) + head_bias
    head = xp.log_softmax(head, axis=-1)
    c0 = cutoffs[0]
    parts = [head[..., :c0]]
    for i in range(n_tails):
        projection, kernel, bias = tails[3 * i : 3 * i + 3]
        scores = xp.matmul(xp.matmul(h, projection), kernel) + bias
        parts.append(xp.log_softmax(scores, axis=-1) + head[..., c0 + i : c0 + i + 1])
    return xp.concatenate(parts, axis=-1)


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


def training_loss(softmax: str):
    """The Keras loss for a model's output: cross-entropy from logits (``full``), or the
    negative log-likelihood of log-probabilities that are already normalised (``adaptive``:
    normalising them again would cost a pass over every position's whole vocabulary)."""
    import keras
    from keras import ops

    if softmax == "full":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    class NegativeLogLikelihood(keras.losses.Loss):
        def call(self, y_true, log_probs):
            y_true = ops.expand_dims(ops.cast(y_true, "int32"), -1)
            return -ops.take_along_axis(ops.cast(log_probs, "float32"), y_true, axis=-1)[..., 0]

    return NegativeLogLikelihood(name="nll")


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
            units = input_shape[-1]
            shapes = output_shapes(self.softmax, self.cutoffs, units, self.vocab_size,
                                   self._embedding is not None)
            self.arrays = [
                self.add_weight(shape=shape, name=f"w{i}",
                                initializer=(_host_zeros if not self.initialize else
                                             "zeros" if len(shape) == 1 else "glorot_uniform"))
                for i, shape in enumerate(shapes)
            ]

        def call(self, h):
            tied = (ops.convert_to_tensor(self._embedding().embeddings)
                    if self._embedding is not None else None)
            return output_log_probs(ops, h, [ops.convert_to_tensor(a) for a in self.arrays],
                                    self.softmax, self.cutoffs, tied)

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-1], self.vocab_size)

    _OUTPUT_LAYER = OutputLayer
    return OutputLayer
