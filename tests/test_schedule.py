import numpy as np
import pytest

from lstmgen.schedule import TIME_SAFETY, WarmupCosine, steps_in_time


@pytest.mark.parametrize("warmup", [0, 7])
def test_without_a_hold_it_is_keras_warmup_cosine(warmup):
    import keras

    ours = WarmupCosine(4e-3, warmup=warmup, hold=warmup, total=200)
    theirs = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else 4e-3, decay_steps=200 - warmup, alpha=0.1,
        warmup_target=4e-3 if warmup else None, warmup_steps=warmup)
    for step in (0, 1, 3, warmup, 50, 150, 199, 200, 260):
        np.testing.assert_allclose(float(ours(step)), float(theirs(step)), rtol=1e-5,
                                   atol=1e-9, err_msg=f"step {step}")


def test_hold_keeps_the_peak_then_decays_to_the_floor():
    s = WarmupCosine(1.0, warmup=10, hold=40, total=140, alpha=0.1)
    lrs = [float(s(step)) for step in range(0, 200)]
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5)
    assert all(lr == pytest.approx(1.0) for lr in lrs[10:41])
    assert all(a >= b for a, b in zip(lrs[40:141], lrs[41:141]))  # decays monotonically
    assert lrs[90] == pytest.approx(0.55)
    assert all(lr == pytest.approx(0.1) for lr in lrs[140:])


def test_steps_in_time_fills_the_budget_with_steps_and_validations():
    last = steps_in_time(200, seconds_left=300, seconds_per_step=0.05, eval_seconds=3.0,
                         evals_per_step=1 / 500)
    steps = last - 200
    planned = steps * 0.05 + 3.0 * steps / 500
    assert planned == pytest.approx(TIME_SAFETY * 300, rel=1e-3)
    assert steps_in_time(10, seconds_left=-5, seconds_per_step=0.1, eval_seconds=0,
                         evals_per_step=0) == 11  # out of time: the schedule ends now
