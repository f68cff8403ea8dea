"""The learning-rate schedule, and how long it runs when a time budget sets it.

A run with ``--max-time`` and no ``--schedule-steps`` cannot know its number of steps when it
starts: that depends on the machine. So it warms up, measures its step rate and the cost of
one validation, and fixes the schedule's length then (:func:`steps_in_time`), holding the
peak rate until that moment. The learning rate is a pure function of the optimizer's step
and of numbers kept in the checkpoint's training state, so a resumed run trains at exactly
the learning rates an uninterrupted one would have.
"""

from __future__ import annotations

import math

# Measure at least this many steps after the first (which compiles) before sizing the
# schedule to a time budget.
MEASURED_STEPS = 30


def measure_seconds(budget: float) -> float:
    """How long to measure the step rate before sizing the schedule to a time budget.

    Example:
        >>> measure_seconds(20), measure_seconds(600)
        (1.0, 10.0)
    """
    return min(10.0, 0.05 * budget)


# Measure the step rate again once this share of the budget is spent and, if the first plan
# was off by more than REPLAN_TOLERANCE of the steps left, plan the rest again: a run's first
# seconds can be slower than the rest (measured with the native kernel: 7.5 steps/s at the
# first plan, 8.9 over the run, a fifth of the budget at the floor).
REPLAN_AT = 0.3
REPLAN_TOLERANCE = 0.03

# Use this share of the time left: the rest absorbs the machine's jitter, the samples and the
# checkpoints. Training past the schedule's end goes on at its floor until the budget is spent.
TIME_SAFETY = 0.96


def _keras_schedule_base():
    import keras

    return keras.optimizers.schedules.LearningRateSchedule


class WarmupCosine(_keras_schedule_base()):
    """Linear warm-up from 0, the peak held until ``hold``, then cosine decay to
    ``alpha × peak`` at ``total`` and that floor afterwards.

    ``hold == warmup`` is the usual warm-up + cosine schedule (Keras's ``CosineDecay`` with
    ``warmup_steps``). ``hold`` and ``total`` are plain attributes: a time-budgeted run sets
    them once it has measured itself (a traced training step reads them as constants, so the
    trainer rebuilds its step function then).

    Example:
        >>> s = WarmupCosine(peak=1.0, warmup=10, hold=20, total=120, alpha=0.1)
        >>> [round(float(s(step)), 3) for step in (0, 5, 10, 19, 70, 120, 500)]
        [0.0, 0.5, 1.0, 1.0, 0.55, 0.1, 0.1]
    """

    def __init__(self, peak: float, warmup: int, hold: int, total: int, alpha: float = 0.1):
        self.peak, self.warmup, self.alpha = float(peak), int(warmup), float(alpha)
        self.hold, self.total = int(hold), int(total)

    def __call__(self, step):
        from keras import ops

        step = ops.cast(step, "float32")
        warm = self.peak * step / max(1, self.warmup)
        progress = ops.clip((step - self.hold) / max(1, self.total - self.hold), 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        decayed = self.peak * ((1.0 - self.alpha) * cosine + self.alpha)
        return ops.where(step < self.warmup, warm, ops.where(step < self.hold, self.peak,
                                                              decayed))

    def get_config(self) -> dict:
        return {"peak": self.peak, "warmup": self.warmup, "hold": self.hold,
                "total": self.total, "alpha": self.alpha}


def steps_in_time(step: int, seconds_left: float, seconds_per_step: float,
                  eval_seconds: float, evals_per_step: float) -> int:
    """The last step of a schedule that ends inside a time budget.

    From ``step``, with ``seconds_left`` of the budget, each further step costs
    ``seconds_per_step`` plus its share of the validations (``eval_seconds`` each,
    ``evals_per_step`` of them per step); :data:`TIME_SAFETY` of the time is planned.

    Example:
        >>> steps_in_time(100, seconds_left=500, seconds_per_step=0.1, eval_seconds=5,
        ...               evals_per_step=1 / 1000)
        4671
    """
    per_step = seconds_per_step + eval_seconds * evals_per_step
    return step + max(1, int(TIME_SAFETY * max(0.0, seconds_left) / per_step))


def continue_cosine(step: int, hold: int, total: int, new_total: int) -> int:
    """The hold of a cosine that ends at ``new_total`` and is, at ``step``, as far through its
    decay as the one from ``hold`` to ``total``: a new plan goes on from the same learning
    rate instead of jumping.

    Example:
        >>> continue_cosine(step=300, hold=100, total=500, new_total=600)
        0
        >>> s, t = WarmupCosine(1.0, 10, 100, 500), WarmupCosine(1.0, 10, 0, 600)
        >>> round(float(s(300)), 6) == round(float(t(300)), 6)
        True
    """
    progress = min(max((step - hold) / max(1, total - hold), 0.0), 0.99)
    return round(step - progress * (new_total - step) / (1.0 - progress))
