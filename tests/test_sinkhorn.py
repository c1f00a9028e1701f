"""seer_tf.sinkhorn against a float64 NumPy port of main_swav.py `distributed_sinkhorn`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference_swav
from seer_tf import distribute
from seer_tf.sinkhorn import make_sinkhorn_fn, sinkhorn


def unit_scores(batch, prototypes, dim=16, seed=0):
    """Cosine scores in [-1, 1], as SwAV computes them (normalised embeddings and prototypes)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(batch, dim))
    w = rng.normal(size=(prototypes, dim))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    return (z @ w.T).astype(np.float32)


@pytest.mark.parametrize("iterations", [3, 10])
@pytest.mark.parametrize("epsilon", [0.05, 0.03])
def test_matches_reference_and_samples_sum_to_one(iterations, epsilon):
    scores = unit_scores(64, 50)
    codes = sinkhorn(scores, epsilon=epsilon, iterations=iterations).numpy()
    assert codes.dtype == np.float32 and codes.shape == (64, 50)
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, atol=1e-5)
    expected = reference_swav.distributed_sinkhorn([scores], epsilon, iterations)[0]
    np.testing.assert_allclose(codes, expected, atol=1e-6, rtol=0)


def test_prototype_marginal_after_convergence():
    # A finite number of iterations ends on the sample normalisation, so only the per-sample
    # marginal is exact; the per-prototype marginal B/K is reached as the iteration converges.
    scores = unit_scores(64, 50, seed=1)
    codes = sinkhorn(scores, epsilon=0.05, iterations=100).numpy()
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(codes.sum(axis=0), 64 / 50, rtol=1e-5)


def test_codes_carry_no_gradient():
    scores = tf.constant(unit_scores(8, 5))
    with tf.GradientTape() as tape:
        tape.watch(scores)
        total = tf.reduce_sum(sinkhorn(scores) * scores)
    assert tape.gradient(total, scores) is not None  # the tape is live ...
    with tf.GradientTape() as tape:
        tape.watch(scores)
        total = tf.reduce_sum(sinkhorn(scores))
    assert tape.gradient(total, scores) is None  # ... but nothing flows through the codes


def test_float16_scores_do_not_overflow():
    """SwAV's eps=0.03 gives exp(33) > float16 max: the max subtraction and float32 must hold."""
    rng = np.random.default_rng(2)
    z = rng.normal(size=(32, 16)).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    w = rng.normal(size=(16, 40)).astype(np.float32)
    w /= np.linalg.norm(w, axis=0, keepdims=True)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        prototypes = keras.layers.Dense(40, use_bias=False)
        prototypes.build((None, 16))
        prototypes.kernel.assign(w)
        scores = prototypes(z)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert scores.dtype == tf.float16
    assert np.isinf(tf.exp(scores / 0.03).numpy()).any()  # the naive formula overflows
    codes = sinkhorn(scores, epsilon=0.03, iterations=10).numpy()
    assert codes.dtype == np.float32 and np.isfinite(codes).all()
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, atol=1e-5)
    expected = reference_swav.distributed_sinkhorn([scores.numpy()], 0.03, 10)[0]
    np.testing.assert_allclose(codes, expected, atol=1e-5)


def test_large_scores_do_not_overflow_float32():
    """Scores near 5 overflow float32 exp(s / 0.05) = exp(100) unless the max is subtracted."""
    scores = unit_scores(16, 12, seed=7) + 4.5  # in [3.5, 5.5]
    with np.errstate(over="ignore"):
        assert np.isinf(np.exp(scores / 0.05)).any()  # the naive formula overflows
    codes = sinkhorn(scores, epsilon=0.05, iterations=3).numpy()
    assert np.isfinite(codes).all()
    expected = reference_swav.distributed_sinkhorn([scores], 0.05, 3)[0]  # float64: no overflow
    np.testing.assert_allclose(codes, expected, atol=1e-5)


def test_masked_columns_take_no_part():
    scores = unit_scores(24, 10, seed=3)
    extra = unit_scores(16, 10, seed=4)
    plain = sinkhorn(scores, iterations=5).numpy()
    for use in (False, tf.constant(False)):
        mask = tf.concat([tf.fill([16], use), tf.ones([24], tf.bool)], axis=0)
        codes = sinkhorn(np.concatenate([extra, scores]), iterations=5, mask=mask).numpy()
        np.testing.assert_array_equal(codes[:16], 0.0)
        np.testing.assert_allclose(codes[16:], plain, atol=1e-6)
    joint = sinkhorn(np.concatenate([extra, scores]), iterations=5, mask=tf.ones([40], tf.bool))
    expected = reference_swav.distributed_sinkhorn([np.concatenate([extra, scores])], 0.05, 5)[0]
    np.testing.assert_allclose(joint.numpy(), expected, atol=1e-6)


def test_jit_matches_eager():
    scores = unit_scores(32, 20, seed=5)
    jitted = make_sinkhorn_fn(epsilon=0.05, iterations=10, jit_compile=True)
    np.testing.assert_allclose(
        jitted(tf.constant(scores)).numpy(), sinkhorn(scores, iterations=10).numpy(), atol=1e-6
    )


def test_replica_sum_requires_replica_max():
    with pytest.raises(ValueError, match="replica_max"):
        sinkhorn(unit_scores(4, 3), replica_sum=lambda x: x)


def test_two_replicas_equal_one_device(mirrored_strategy):
    """Only row sums and totals are reduced, so splitting the batch must not change the codes."""
    scores = unit_scores(32, 20, seed=6)
    # Shift one replica's scores up so that a per-replica (instead of global) max would show.
    scores[16:] += 0.5
    single = sinkhorn(scores, iterations=10).numpy()

    def replica_fn(local):
        return sinkhorn(
            local,
            iterations=10,
            replica_sum=distribute.replica_sum_fn(),
            replica_max=distribute.replica_max_fn(),
        )

    local = mirrored_strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(scores[16 * ctx.replica_id_in_sync_group:][:16])
    )
    codes = tf.function(lambda x: mirrored_strategy.run(replica_fn, args=(x,)))(local)
    codes = np.concatenate([c.numpy() for c in mirrored_strategy.experimental_local_results(codes)])
    np.testing.assert_allclose(codes, single, atol=1e-5)
    expected = reference_swav.distributed_sinkhorn([scores[:16], scores[16:]], 0.05, 10)
    np.testing.assert_allclose(codes, np.concatenate(expected), atol=1e-6)


def test_should_jit(mirrored_strategy):
    assert distribute.should_jit(tf.distribute.get_strategy())
    assert not distribute.should_jit(mirrored_strategy)  # two CPU replicas: XLA + collectives
