"""Weight averaging (Polyak averaging as an exponential moving average of the weights).

With ``--average-weights M`` the optimizer keeps, beside the weights it trains, their moving
average (Keras's ``use_ema``: updated inside the compiled training step, saved with the
optimizer's state, so a resumed run goes on with the same average). Training goes on from
the raw weights; validation, the best checkpoint and the samples use the average
(:func:`averaged_weights`). Early on the average forgets faster — momentum
``min(M, (1 + t) / (10 + t))`` at step ``t`` — so the first validations do not read an
average of the random initialisation.
"""

from __future__ import annotations

import contextlib


def warmed_momentum(momentum: float, step: int) -> float:
    """The averaging momentum at ``step``: ``momentum``, lowered while the run is young.

    Example:
        >>> [round(warmed_momentum(0.999, t), 3) for t in (0, 90, 990, 100_000)]
        [0.1, 0.91, 0.991, 0.999]
    """
    return min(momentum, (1.0 + step) / (10.0 + step))


def averaging_adam(learning_rate, clipnorm: float, momentum: float):
    """An Adam optimizer that also keeps the weights' moving average (``momentum`` > 0), or
    plain Adam (``momentum`` = 0)."""
    import keras
    from keras import ops

    if not momentum:
        return keras.optimizers.Adam(learning_rate=learning_rate, clipnorm=clipnorm)

    class AveragingAdam(keras.optimizers.Adam):
        def _update_model_variables_moving_average(self, trainable_variables):
            t = ops.cast(self.iterations, "float32")
            m = ops.minimum(self.ema_momentum, (1.0 + t) / (10.0 + t))
            for var, average in zip(trainable_variables, self._model_variables_moving_average):
                if average is not None:
                    m_var = ops.cast(m, var.dtype)
                    average.assign(m_var * average + (1.0 - m_var) * var)

        def finalize_variable_values(self, var_list):
            # Keras would copy the average into the weights at the end of every fit() call,
            # and lstmgen calls fit() once per epoch: training must go on from the raw weights.
            pass

    return AveragingAdam(learning_rate=learning_rate, clipnorm=clipnorm, use_ema=True,
                         ema_momentum=momentum)


def averages(optimizer) -> list | None:
    """The optimizer's moving averages, one per trainable variable (None: it keeps none)."""
    if not getattr(optimizer, "use_ema", False):
        return None
    return list(optimizer._model_variables_moving_average)


@contextlib.contextmanager
def averaged_weights(model):
    """Inside the block, ``model``'s trainable weights are their moving average (when its
    optimizer keeps one); the trained weights are put back afterwards."""
    optimizer = getattr(model, "optimizer", None)
    moving = averages(optimizer) if optimizer is not None else None
    if moving is None:
        yield
        return
    variables = optimizer._trainable_variables
    raw = [v.value for v in variables]
    try:
        for v, average in zip(variables, moving):
            v.assign(average.value)
        yield
    finally:
        for v, value in zip(variables, raw):
            v.assign(value)
