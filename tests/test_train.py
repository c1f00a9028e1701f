"""Training step and loop: replica equivalence, frozen prototypes, loss-scale agreement. The
device loop (XLA, K steps per call, non-finite stops) is in tests/test_loop.py; the subprocess
tests (resume after SIGKILL, SIGTERM, multi-worker, the real binary) are in
tests/test_pretrain_binary.py and tests/test_demo.py."""

import numpy as np
import keras
import pytest
import tensorflow as tf

from seer_tf import distribute
from seer_tf.data import synthetic
from seer_tf.models.regnet import RegNet
from seer_tf.models.swav import SwAVModel
from seer_tf.optim.lars import LARC
from seer_tf.train.loop import Trainer
from seer_tf.train.step import SwAVStep

GLOBAL_BATCH = 8
SIZES, COUNTS = [32, 16], [2, 2]


def _build(strategy, init=None, lr=0.5, freeze=1, loss_scale=False):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        backbone = RegNet.from_preset("regnety_tiny", sync_bn=True)
        model = SwAVModel(backbone, [64, 32, 16], [24], use_bn=True, sync_bn=True)
        model.build_all()
        if init is not None:
            model.set_weights(init)
        opt = LARC(lr, weight_decay=1e-4)
        if loss_scale:
            opt = keras.optimizers.LossScaleOptimizer(opt)
        step = SwAVStep(model, opt, num_replicas=strategy.num_replicas_in_sync,
                        freeze_prototypes_steps=freeze, replica_sum=distribute.replica_sum_fn(),
                        replica_max=distribute.replica_max_fn(),
                        all_gather=distribute.replica_all_gather_fn(),
                        replica_index=distribute.replica_index)
    return model, step


def _data(ctx, start):
    return synthetic.crops_dataset(ctx, start, GLOBAL_BATCH, SIZES, COUNTS, seed=3)


def _train(strategy, workdir, steps, init=None, **kw):
    model, step = _build(strategy, init, **kw)
    trainer = Trainer(strategy, step, _data, workdir=str(workdir), total_steps=steps,
                      global_batch_size=GLOBAL_BATCH, log_every=1, checkpoint_every=0,
                      histogram_every=0)
    return model, trainer.run()


def test_synthetic_stream_splits_the_global_batch_in_replica_order():
    class Ctx:
        num_replicas_in_sync, num_input_pipelines, input_pipeline_id = 2, 1, 0

    one = next(iter(synthetic.crops_dataset(None, 1, GLOBAL_BATCH, SIZES, COUNTS)))
    two = iter(synthetic.crops_dataset(Ctx(), 1, GLOBAL_BATCH, SIZES, COUNTS))
    a, b = next(two), next(two)
    for c in range(4):
        np.testing.assert_array_equal(np.concatenate([a[c], b[c]]), one[c])


def _nonzero_init(model):
    """Reference init, but BN offsets (zero at init) made non-zero. apex LARC gives zero-norm
    tensors their RAW gradient (lr * g, no trust ratio): a BN offset's gradient is a sum over the
    batch with heavy cancellation, so its float32 summation order (1 device vs 2) differs by
    ~1e-5 relative, which lr * g would carry into the weights. With non-zero offsets every
    tensor takes the trust-ratio step, as it does after the first iteration of a real run."""
    rng = np.random.default_rng(0)
    return [w + 0.01 * rng.standard_normal(w.shape).astype(w.dtype)
            if v.path.endswith("beta") else w for v, w in zip(model.weights, model.get_weights())]


def test_two_replicas_end_with_the_weights_of_one_device(mirrored_strategy, tmp_path):
    """2 steps (one with frozen prototypes), SyncBN, LARC: same global batch, same weights."""
    single = tf.distribute.get_strategy()
    init = _nonzero_init(_build(single)[0])
    ref_model, ref = _train(single, tmp_path / "one", steps=2, init=init)
    model, res = _train(mirrored_strategy, tmp_path / "two", steps=2, init=init)
    np.testing.assert_allclose(res["losses"], ref["losses"], rtol=1e-5)
    moved = 0.0
    for a, b, w0 in zip(model.weights, ref_model.weights, init):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5, err_msg=a.path)
        moved = max(moved, float(np.abs(b.numpy() - w0).max()))
    assert moved > 1e-4  # training changed the weights, so equality is not trivial


def test_prototypes_frozen_then_trained(tmp_path):
    strategy = tf.distribute.get_strategy()
    model, step = _build(strategy, freeze=2, lr=2.0)
    trainer = Trainer(strategy, step, _data, workdir=str(tmp_path), total_steps=3,
                      global_batch_size=GLOBAL_BATCH, log_every=1, checkpoint_every=0,
                      histogram_every=0)
    it = iter(_data(None, 0))
    model.prototypes.normalize()
    p0 = model.prototypes.kernels[0].numpy().copy()
    trunk0 = model.backbone.stem.conv.kernel.numpy().copy()
    for frozen in (True, True):
        trainer._loop_fn(frozen)(it, tf.constant(1))
    model.prototypes.normalize()
    np.testing.assert_allclose(model.prototypes.kernels[0].numpy(), p0, atol=1e-7)
    assert np.abs(model.backbone.stem.conv.kernel.numpy() - trunk0).max() > 1e-5
    trainer._loop_fn(False)(it, tf.constant(1))
    assert np.abs(model.prototypes.kernels[0].numpy() - p0).max() > 1e-5
    # one trace per phase: a retrace per step would cost seconds each
    assert [trainer._fns[f].experimental_get_tracing_count() for f in (True, False)] == [1, 1]
    # prototypes are unit vectors after the cross-replica normalization of the next step
    model.prototypes.normalize()
    np.testing.assert_allclose(np.linalg.norm(model.prototypes.kernels[0].numpy(), axis=0), 1, atol=1e-6)


def test_loss_scale_skip_is_agreed_across_replicas(mirrored_strategy):
    """An overflow on ONE replica must make every replica skip (no NaN reaches the weights)."""
    _, step = _build(mirrored_strategy, freeze=0, loss_scale=True)
    grads_in = [tf.ones([3]), tf.ones([2])]

    def replica_fn():
        rid, _ = distribute.replica_index()
        g0 = tf.where(tf.equal(rid, 1), tf.constant([np.inf, 1.0, 1.0]), grads_in[0])
        return step._skip_together([g0, grads_in[1]])

    out = mirrored_strategy.run(tf.function(replica_fn))
    for per_replica in out:
        for value in mirrored_strategy.experimental_local_results(per_replica):
            assert np.isnan(value.numpy()).all()
