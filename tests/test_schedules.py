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


# optim.schedule = "plateau": warmup 2, patience 3, min_delta 0.1, raw losses (smoothing 0).
# Observations 1-2 are warmup; 3 improves; 4-6 do not (2.95 is not below 3.0 - 0.1) -> cut
# after 6; 7 improves; 8 is NaN (ignored); 9-11 -> cut; 12-14 -> cut; 15-17 -> cut to min_lr.
_PLATEAU_LOSSES = [5.0, 4.0, 3.0, 2.95, 2.95, 2.95, 2.0, float("nan")] + [1.95] * 12
_PLATEAU_CUTS = [6, 11, 14, 17, 20]
_PLATEAU_ARGS = dict(peak_lr=1.0, warmup_steps=2, start_lr=0.1, patience=3, min_delta=0.1,
                     min_lr=0.1)


def _lr_trace(schedule, losses, first=1):
    observe = tf.function(schedule.observe_loss)
    trace = []
    for k, loss in enumerate(losses, start=first):
        observe(tf.constant(loss))
        trace.append((k, float(schedule.lr.numpy())))
    return trace


def _cuts(trace, start_lr=1.0):
    cuts, previous = [], start_lr
    for k, lr in trace:
        if lr != previous:
            cuts.append(k)
        previous = lr
    return cuts


def test_warmup_plateau_halves_at_the_golden_steps():
    from seer_tf.optim.schedules import WarmupPlateau

    schedule = WarmupPlateau(**_PLATEAU_ARGS)
    trace = _lr_trace(schedule, _PLATEAU_LOSSES)
    assert _cuts(trace) == _PLATEAU_CUTS[:4]  # the fifth would go below min_lr: clamped
    assert [lr for _, lr in trace][-1] == pytest.approx(0.1)
    assert [lr for k, lr in trace if k in (5, 6, 10, 11, 14, 17)] == pytest.approx(
        [1.0, 0.5, 0.5, 0.25, 0.125, 0.1])
    assert int(schedule.num_cuts.numpy()) == 5 and float(schedule.best.numpy()) == 2.0
    # __call__: the warmup ramp (np.linspace(0.1, 1.0, 2)), then the current LR variable.
    assert float(schedule(0)) == pytest.approx(0.1) and float(schedule(1)) == pytest.approx(1.0)
    assert float(schedule(100)) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        WarmupPlateau(1.0, patience=0)


def test_warmup_plateau_smooths_with_a_bias_corrected_ema():
    from seer_tf.optim.schedules import WarmupPlateau

    schedule = WarmupPlateau(1.0, smoothing=0.5)
    for loss in (4.0, 2.0):
        schedule.observe_loss(tf.constant(loss))
    # weights 0.5 and 1 (EMA 0.5), normalized: (0.5 * 4 + 2) / 1.5
    assert float(schedule.smoothed_loss()) == pytest.approx(4.0 / 1.5)


def test_warmup_plateau_resumed_between_two_cuts_cuts_at_the_same_steps(tmp_path):
    from seer_tf.optim.schedules import WarmupPlateau

    full = _lr_trace(WarmupPlateau(**_PLATEAU_ARGS), _PLATEAU_LOSSES)
    first = WarmupPlateau(**_PLATEAU_ARGS)
    head = _lr_trace(first, _PLATEAU_LOSSES[:9])  # after the cut at 6, before the one at 11
    path = tf.train.Checkpoint(schedule=first).save(str(tmp_path / "ckpt"))
    resumed = WarmupPlateau(**_PLATEAU_ARGS)
    tf.train.Checkpoint(schedule=resumed).restore(path).assert_consumed()
    tail = _lr_trace(resumed, _PLATEAU_LOSSES[9:], first=10)
    assert head + tail == full and _cuts(head + tail) == _PLATEAU_CUTS[:4]


def test_warmup_plateau_drives_larc_and_is_found_under_loss_scaling():
    from seer_tf.optim.schedules import WarmupPlateau, observing_schedule

    schedule = WarmupPlateau(0.5, patience=1)
    w = keras.Variable(np.zeros(3, np.float32))
    opt = LARC(learning_rate=schedule, momentum=0.0, weight_decay=0.0,
               exclude_from_adaptation=".*")
    step = tf.function(lambda: opt.apply([tf.ones(3)], [w]))
    step()
    np.testing.assert_allclose(w.numpy(), -0.5)
    schedule.observe_loss(1.0)
    schedule.observe_loss(1.0)  # no improvement for 1 step -> 0.25
    step()
    np.testing.assert_allclose(w.numpy(), -0.75)
    assert step.experimental_get_tracing_count() == 1
    assert observing_schedule(opt) is schedule
    assert observing_schedule(keras.optimizers.LossScaleOptimizer(opt)) is schedule
    assert observing_schedule(LARC(learning_rate=0.1)) is None


def test_warmup_plateau_under_a_strategy_observes_the_reduced_loss(mirrored_strategy, tmp_path):
    """The loop's contract: built in strategy.scope(), observe_loss(global loss) once per step
    in cross-replica context inside a tf.function; checkpointed as item "schedule"."""
    from seer_tf.optim.schedules import WarmupPlateau

    with mirrored_strategy.scope():
        schedule = WarmupPlateau(**_PLATEAU_ARGS)

    @tf.function
    def step(losses):
        per_replica = mirrored_strategy.run(
            lambda: losses[tf.distribute.get_replica_context().replica_id_in_sync_group])
        loss = mirrored_strategy.reduce("MEAN", per_replica, axis=None)
        schedule.observe_loss(loss)
        return loss

    trace = []
    for k, loss in enumerate(_PLATEAU_LOSSES, start=1):
        step(tf.constant([loss - 0.5, loss + 0.5]))  # replica mean = the scripted loss
        trace.append((k, float(schedule.lr.numpy())))
    assert _cuts(trace) == _PLATEAU_CUTS[:4]
    path = tf.train.Checkpoint(schedule=schedule).save(str(tmp_path / "ckpt"))
    restored = WarmupPlateau(**_PLATEAU_ARGS)
    tf.train.Checkpoint(schedule=restored).restore(path).assert_consumed()
    assert float(restored.lr.numpy()) == pytest.approx(0.1)
