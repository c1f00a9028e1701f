"""The trainer's device loop: XLA step equals the graph step, K steps per call equal one,
non-finite steps stop the run before anything non-finite is saved."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from seer_tf import distribute
from seer_tf.data import synthetic
from seer_tf.models.regnet import RegNet
from seer_tf.models.swav import SwAVModel
from seer_tf.optim.lars import LARC
from seer_tf.train.loop import NonFiniteLossError, Trainer
from seer_tf.train.step import SwAVStep

BATCH = 8
SIZES, COUNTS = [32, 16], [2, 2]  # multi-crop: two resolutions through the trunk


@pytest.fixture
def precision():
    """Sets a Keras mixed-precision policy for one test, restored afterwards."""
    before = keras.mixed_precision.global_policy().name

    def set_policy(name):
        keras.mixed_precision.set_global_policy(name)
        return name

    yield set_policy
    keras.mixed_precision.set_global_policy(before)


class PoisonedStep(SwAVStep):
    """A SwAV step whose loss turns non-finite from step `from_step` (1-based) on."""

    def __init__(self, *args, from_step, **kwargs):
        super().__init__(*args, **kwargs)
        self.from_step = from_step

    def loss_and_metrics(self, crops, step, training=True):
        loss, metrics, emb = super().loss_and_metrics(crops, step, training)
        poison = tf.where(step + 1 >= self.from_step, np.float32("inf"), np.float32(1.0))
        return loss * poison, metrics, emb


def _trainer(tmp_path, name, *, total_steps, precision="float32", jit=False, k=1, log_every=1,
             checkpoint_every=0, freeze=0, lr=0.05, poison_from=None, max_nonfinite=20,
             tiny=False):
    keras.utils.set_random_seed(0)
    if tiny:
        trunk = RegNet.from_preset("regnety_tiny")
    else:  # the smallest RegNetY with every block type: one Y block per stage, SE, groups
        trunk = RegNet(depths=[1, 1, 1, 1], widths=[16, 16, 32, 32], group_widths=[8, 8, 8, 8],
                       stem_width=16)
    model = SwAVModel(trunk, [trunk.widths[-1], 32, 16], [24], use_bn=True)
    model.build_all()
    opt = LARC(lr, weight_decay=1e-4)
    if precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    kwargs = dict(freeze_prototypes_steps=freeze, replica_sum=distribute.replica_sum_fn(),
                  replica_max=distribute.replica_max_fn(),
                  all_gather=distribute.replica_all_gather_fn(),
                  replica_index=distribute.replica_index)
    step = (PoisonedStep(model, opt, from_step=poison_from, **kwargs) if poison_from
            else SwAVStep(model, opt, **kwargs))
    dtype = tf.bfloat16 if precision == "mixed_bfloat16" else tf.float32

    def data(ctx, start):
        return synthetic.crops_dataset(ctx, start, BATCH, SIZES, COUNTS, seed=3, dtype=dtype)

    logged = {}
    trainer = Trainer(tf.distribute.get_strategy(), step, data, workdir=str(tmp_path / name),
                      total_steps=total_steps, global_batch_size=BATCH, steps_per_loop=k,
                      log_every=log_every, checkpoint_every=checkpoint_every, histogram_every=0,
                      jit_step=jit, max_nonfinite_steps=max_nonfinite,
                      on_log=logged.__setitem__)
    return trainer, logged


def _checkpoints(trainer):
    return sorted(int(p.rsplit("-", 1)[1]) for p in trainer.manager.checkpoints)


def test_xla_step_equals_the_graph_step_in_float32(tmp_path):
    losses = {}
    for jit in (False, True):
        trainer, _ = _trainer(tmp_path, f"jit{jit}", total_steps=5, jit=jit)
        losses[jit] = trainer.run()["losses"]
        assert trainer.jit_step is jit
    assert len(losses[True]) == 5
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)
    assert len(set(np.round(losses[False], 4))) > 1  # the weights moved: a real comparison


def test_xla_step_equals_the_graph_step_in_bfloat16(tmp_path, precision):
    precision("mixed_bfloat16")
    losses = {}
    for jit in (False, True):
        trainer, _ = _trainer(tmp_path, f"jit{jit}", total_steps=5, precision="mixed_bfloat16",
                              jit=jit)
        losses[jit] = trainer.run()["losses"]
    # XLA fuses and rounds bfloat16 differently from the graph's kernels.
    np.testing.assert_allclose(losses[True], losses[False], rtol=2e-2)
    assert all(np.isfinite(losses[True]))


def test_k_steps_per_call_equal_one_step_per_call(tmp_path):
    runs = {}
    for k in (1, 4):
        trainer, logged = _trainer(tmp_path, f"k{k}", total_steps=8, k=k, log_every=4,
                                   freeze=2, lr=0.5, tiny=True)
        result = trainer.run()
        runs[k] = (result, logged, [v.numpy() for v in trainer.step.model.weights])
    (r1, log1, w1), (r4, log4, w4) = runs[1], runs[4]
    assert sorted(log1) == sorted(log4) == [4, 8]
    for s in log1:  # the same logged losses at the same steps
        assert log4[s]["loss"] == pytest.approx(log1[s]["loss"], rel=1e-6)
    np.testing.assert_allclose(r4["losses"], r1["losses"], rtol=1e-6)
    assert len(r4["losses"]) == 8
    for a, b in zip(w4, w1):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # one trace per prototype phase, whatever the number of steps per call
    assert {f: fn.experimental_get_tracing_count() for f, fn in trainer._fns.items()} == \
        {True: 1, False: 1}


@pytest.mark.parametrize("k", [1, 3])
def test_float32_stops_at_the_first_non_finite_step(tmp_path, k):
    trainer, _ = _trainer(tmp_path, "f32", total_steps=9, k=k, log_every=k, checkpoint_every=k,
                          poison_from=4 if k == 1 else 5)
    with pytest.raises(NonFiniteLossError, match=f"at step {4 if k == 1 else 5}"):
        trainer.run()
    # the last checkpoint is the last finite state: step 3 (k=1), step 3 (k=3, a boundary)
    assert _checkpoints(trainer) == ([1, 2, 3] if k == 1 else [3])
    assert int(trainer.global_step.numpy()) == (4 if k == 1 else 5)  # the loop broke there


def test_float16_stops_after_n_skipped_steps_in_a_row(tmp_path, precision):
    precision("mixed_float16")
    trainer, logged = _trainer(tmp_path, "f16", total_steps=12, precision="mixed_float16",
                               jit=True, checkpoint_every=1, poison_from=5, max_nonfinite=4)
    with pytest.raises(NonFiniteLossError, match="at step 8 .4 skipped float16 steps"):
        trainer.run()
    # steps 5..8 were skipped: the scale halved 4 times and the weights stayed finite. (The
    # first steps may overflow at the initial scale of 2^15 and be skipped too: that is the
    # scale finding its level, not a reason to stop.)
    assert float(trainer.step.optimizer.dynamic_scale.numpy()) == logged[4]["loss_scale"] / 16
    assert bool(trainer._weights_finite())
    # saved only at finite steps before the poison, never while steps were being skipped
    assert 4 in _checkpoints(trainer) and max(_checkpoints(trainer)) == 4


def test_log_every_must_be_a_multiple_of_steps_per_loop(tmp_path):
    with pytest.raises(ValueError, match="log_every .6. must be a positive multiple of "
                                         "steps_per_loop .4."):
        _trainer(tmp_path, "bad", total_steps=8, k=4, log_every=6)
    assert not os.path.exists(tmp_path / "bad" / "checkpoints")


_FAILING_INPUT = """
import sys, time
import tests.conftest  # noqa: F401
import numpy as np
import tensorflow as tf
sys.path.insert(0, "tests")
import test_loop

def boom(x):
    raise ValueError("this input pipeline is broken")

def data(ctx, start):
    return test_loop.synthetic.crops_dataset(ctx, start, 8, [32, 16], [2, 2]).map(
        lambda *c: tuple(tf.ensure_shape(tf.py_function(boom, [x], tf.float32), x.shape)
                         for x in c))

trainer, _ = test_loop._trainer(__import__("pathlib").Path(sys.argv[1]), "w", total_steps=3)
trainer.dataset_fn = data
trainer.run()
"""


def test_an_input_pipeline_error_ends_the_process(tmp_path):
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    t = time.time()
    r = subprocess.run([sys.executable, "-c", _FAILING_INPUT, str(tmp_path)], cwd=root,
                       env={**os.environ, "PYTHONPATH": root}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0
    assert "this input pipeline is broken" in r.stderr
    assert time.time() - t < 240
