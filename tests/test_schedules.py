"""Schedules against NumPy transcriptions of the reference code (swav main_swav.py, MultiStepLR)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from seer_tf.optim.lars import LARC
from seer_tf.optim.schedules import HalveOnPlateau, StepDecay, WarmupCosine, scaled_lr


def swav_lr_schedule(start_warmup, base_lr, final_lr, warmup_iters, total_iters):
    """facebookresearch/swav main_swav.py, with len(train_loader) * epochs folded into iters."""
    warmup_lr_schedule = np.linspace(start_warmup, base_lr, warmup_iters)
    iters = np.arange(total_iters - warmup_iters)
    cosine_lr_schedule = np.array([final_lr + 0.5 * (base_lr - final_lr) * (
        1 + math.cos(math.pi * t / (total_iters - warmup_iters))) for t in iters])
    return np.concatenate((warmup_lr_schedule, cosine_lr_schedule))


def _values(schedule, steps):
    return schedule(tf.constant(steps, tf.int64)).numpy().astype(np.float64)


@pytest.mark.parametrize("start,peak,final,warmup,total", [
    (0.1, 1.0, 0.001, 5, 23),
    (0.0, 4.8, 0.0, 10, 40),      # SwAV defaults: start 0, final 0 (relative accuracy to the end)
    (0.3, 2.0, 0.5, 1, 9),        # np.linspace(start, peak, 1) == [start]
    (0.3, 2.0, 0.5, 0, 9),        # no warmup: cosine from the first step
])
def test_warmup_cosine_equals_swav_schedule_at_every_step(start, peak, final, warmup, total):
    schedule = WarmupCosine(peak, total, warmup, start, final)
    reference = swav_lr_schedule(start, peak, final, warmup, total)
    assert len(reference) == total
    got = _values(schedule, np.arange(total))
    np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-30)
    # Past the end the formula reaches t = T: final LR exactly, and stays there.
    np.testing.assert_allclose(_values(schedule, [total, total + 1, 10 * total]), final,
                               rtol=1e-6, atol=1e-30)


def test_seer_recipe_numbers():
    """0.3 per 256 at batch 8192, warmup from 0.3 over 8k steps, cosine to 0.0096 at 1B images."""
    peak = scaled_lr(0.3, 8192)
    assert peak == pytest.approx(9.6)
    total = 1_000_000_000 // 8192
    schedule = WarmupCosine(peak, total, warmup_steps=8000, start_lr=0.3, final_lr=0.0096)
    reference = swav_lr_schedule(0.3, peak, 0.0096, 8000, total)
    got = _values(schedule, np.arange(total))
    np.testing.assert_allclose(got, reference, rtol=1e-6)
    assert got[0] == pytest.approx(0.3, rel=1e-7)
    assert got[7999] == pytest.approx(9.6, rel=1e-7) and got[8000] == pytest.approx(9.6, rel=1e-7)
    assert np.all(np.diff(got[:8000]) > 0) and np.all(np.diff(got[8000:]) <= 0)
    assert got[-1] > 0.0096  # SwAV's last scheduled step is one cosine tick above final ...
    assert _values(schedule, [total])[0] == pytest.approx(0.0096, rel=1e-6)  # ... then final


def test_warmup_cosine_rejects_bad_lengths():
    with pytest.raises(ValueError):
        WarmupCosine(1.0, total_steps=10, warmup_steps=10)


def test_step_decay_boundaries_like_multistep_lr():
    """VISSL linear probe: 0.01 per 256, x0.1 at epochs 8, 16, 24 (decayed AT the boundary)."""
    base = scaled_lr(0.01, 256)
    schedule = StepDecay.from_epochs(base, (8, 16, 24), steps_per_epoch=10)
    assert schedule.boundaries == [80, 160, 240]
    steps = np.arange(300)
    reference = base * 0.1 ** np.searchsorted([80, 160, 240], steps, side="right")
    np.testing.assert_allclose(_values(schedule, steps), reference, rtol=1e-6)
    lrs = _values(schedule, [0, 79, 80, 159, 160, 239, 240, 10_000])
    np.testing.assert_allclose(lrs, base * np.array([1, 1, .1, .1, .01, .01, .001, .001]),
                               rtol=1e-6)
    assert float(StepDecay(0.5, [])(7)) == 0.5


@pytest.mark.parametrize("schedule", [
    WarmupCosine(9.6, 122070, 8000, 0.3, 0.0096),
    StepDecay(0.01, [80, 160, 240], gamma=0.1),
])
def test_serialization_round_trip(schedule):
    config = keras.optimizers.schedules.serialize(schedule)
    restored = keras.optimizers.schedules.deserialize(config)
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    steps = [0, 79, 80, 7999, 8000, 60000, 122069, 122070]
    np.testing.assert_array_equal(_values(restored, steps), _values(schedule, steps))
    # And inside an optimizer config.
    opt = keras.optimizers.deserialize(keras.optimizers.serialize(LARC(learning_rate=schedule)))
    expected = LARC(learning_rate=schedule).get_config()["learning_rate"]
    assert opt.get_config()["learning_rate"] == expected


def test_halve_on_plateau_behaviour():
    plateau = HalveOnPlateau(1.0, patience=2, min_delta=0.01, min_lr=0.2)
    trace = [plateau.update(loss) for loss in
             [5.0,      # improves (best 5.0)
              4.995,    # not below best - min_delta: bad 1
              4.999,    # bad 2 -> halve, count restarts
              4.0,      # improves
              np.nan,   # NaN never improves: bad 1
              4.0,      # equal is not an improvement: bad 2 -> halve
              3.0, 3.0, 3.0,  # improve, bad 1, bad 2 -> halve, clamped at min_lr
              3.0, 3.0]]      # already at the floor
    assert trace == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2])
    assert int(plateau.num_cuts.numpy()) == 4
    assert float(plateau.best.numpy()) == 3.0
    with pytest.raises(ValueError):
        HalveOnPlateau(1.0, patience=0)


def test_halve_on_plateau_checkpoint_round_trip(tmp_path):
    plateau = HalveOnPlateau(0.8, patience=1)
    for loss in [2.0, 1.5, 1.6]:
        plateau.update(loss)
    path = tf.train.Checkpoint(plateau=plateau).save(str(tmp_path / "ckpt"))
    restored = HalveOnPlateau(**plateau.get_config())
    tf.train.Checkpoint(plateau=restored).restore(path).assert_consumed()
    assert float(restored.lr.numpy()) == pytest.approx(0.4)
    assert float(restored.best.numpy()) == 1.5
    losses = [1.4, 1.45, 1.3, 1.35]
    assert [restored.update(x) for x in losses] == [plateau.update(x) for x in losses]


def test_halve_on_plateau_drives_the_optimizer_without_retracing():
    """Passed as the optimizer's learning_rate, the LR variable is read at every step."""
    plateau = HalveOnPlateau(0.5, patience=1)
    w = keras.Variable(np.zeros(3, np.float32))
    # momentum 0, no adaptation, no decay: plain SGD, so each step moves w by exactly -lr.
    opt = LARC(learning_rate=plateau, momentum=0.0, weight_decay=0.0,
               exclude_from_adaptation=".*")
    step = tf.function(lambda: opt.apply([tf.ones(3)], [w]))
    step()
    np.testing.assert_allclose(w.numpy(), -0.5)
    plateau.update(1.0)
    plateau.update(1.0)  # plateau -> 0.25
    step()
    np.testing.assert_allclose(w.numpy(), -0.75)
    assert step.experimental_get_tracing_count() == 1
    assert float(opt.learning_rate.numpy()) == 0.25
