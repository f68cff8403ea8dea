"""Layer normalisation's maths (Ba et al. 2016), shared by the layer-normalised LSTM's
training loop (:mod:`lstmgen.layers`) and the generation step (:mod:`lstmgen.generation`,
which must not import Keras). The native kernel (``lstmgen/native/lstm_kernel.cc``) uses
the same epsilon."""

from __future__ import annotations

EPSILON = 1e-5


def normalise(x, parts: int = 1):
    """``x`` normalised to zero mean and unit variance over each of ``parts`` equal blocks
    of its last axis (a JAX array).

    Example:
        >>> import jax.numpy as jnp
        >>> normalise(jnp.array([[1.0, 3.0, 10.0, 10.0]]), parts=2).round(3).tolist()
        [[-1.0, 1.0, 0.0, 0.0]]
    """
    import jax

    blocks = x.reshape(*x.shape[:-1], parts, x.shape[-1] // parts)
    centred = blocks - blocks.mean(-1, keepdims=True)
    var = (centred * centred).mean(-1, keepdims=True)
    return (centred * jax.lax.rsqrt(var + EPSILON)).reshape(x.shape)
