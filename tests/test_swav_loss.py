"""seer_tf.losses.swav_loss against a NumPy port of main_swav.py, on one and two replicas."""

import numpy as np
import pytest
import tensorflow as tf

import reference_swav
from seer_tf import distribute
from seer_tf.losses.swav import FeatureQueue, swav_loss

NUM_CROPS = 4  # 2 large + 2 small crops: enough to exercise the multi-crop averaging


def make_batch(batch, prototypes=20, dim=8, num_crops=NUM_CROPS, seed=0):
    """Raw embeddings [num_crops * batch, dim] (crop-major) and unit prototypes [dim, K]."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_crops * batch, dim)).astype(np.float32)
    w = rng.normal(size=(dim, prototypes)).astype(np.float32)
    return x, w / np.linalg.norm(w, axis=0, keepdims=True)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("crops_for_assign", [(0, 1), (0,), (1, 0)])
def test_loss_matches_reference(crops_for_assign):
    x, w = make_batch(16, prototypes=30)
    z = unit(x)
    scores = z @ w
    ref = reference_swav.ReferenceSwav(NUM_CROPS, crops_for_assign, iterations=3)
    expected = ref.step(z, w.T)
    loss, diag, codes = swav_loss(
        np.split(scores, NUM_CROPS), crops_for_assign, return_codes=True
    )
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)
    # One crop-major tensor is the same thing as a list of crops.
    loss_t, _ = swav_loss(scores, crops_for_assign, num_crops=NUM_CROPS)
    np.testing.assert_allclose(loss_t.numpy(), expected, rtol=1e-6)
    for q, q_ref in zip(codes, ref.last_codes):
        np.testing.assert_allclose(q.numpy(), q_ref, atol=1e-6)
    entropy = np.mean([-np.sum(q * np.log(q), axis=1).mean() for q in ref.last_codes])
    np.testing.assert_allclose(diag["code_entropy"].numpy(), entropy, rtol=1e-5)
    used = np.mean([len(np.unique(q.argmax(axis=1))) for q in ref.last_codes])
    assert diag["prototypes_used"].numpy() == used
    max_code = np.mean([q.max(axis=1).mean() for q in ref.last_codes])
    np.testing.assert_allclose(diag["max_code"].numpy(), max_code, rtol=1e-5)


def test_gradient_treats_codes_as_constants():
    """d loss / d scores_v = sum over assigned crops i != v of (softmax(s_v/T) - q_i) / (T B ...)."""
    batch, temperature, assign = 8, 0.1, (0, 1)
    x, w = make_batch(batch, seed=1)
    crops = [tf.constant(s) for s in np.split(unit(x) @ w, NUM_CROPS)]
    with tf.GradientTape() as tape:
        tape.watch(crops)
        loss, _, codes = swav_loss(crops, assign, temperature=temperature, return_codes=True)
    grads = tape.gradient(loss, crops)
    for v, grad in enumerate(grads):
        p = tf.nn.softmax(crops[v] / temperature).numpy()
        expected = sum(
            (p - codes[i].numpy()) for i, crop_id in enumerate(assign) if crop_id != v
        ) / (temperature * batch * (NUM_CROPS - 1) * len(assign))
        np.testing.assert_allclose(grad.numpy(), expected, atol=1e-6)


def swav_step(queue, step, x, w, num_replicas, replica_id):
    """A miniature per-replica SwAV step: normalise, score, loss, gradients, queue update."""
    replica_sum = distribute.replica_sum_fn() if num_replicas > 1 else None
    replica_max = distribute.replica_max_fn() if num_replicas > 1 else None
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        z = tf.math.l2_normalize(x, axis=1)
        crops = tf.split(tf.matmul(z, w), NUM_CROPS)
        queue_scores, in_use = None, False
        if queue is not None:
            queue_scores = queue.scores(lambda e: tf.matmul(e, w), replica_id, num_replicas)
            in_use = queue.in_use(step)
        loss, diag, codes = swav_loss(
            crops,
            sinkhorn_iterations=5,
            replica_sum=replica_sum,
            replica_max=replica_max,
            queue_scores=queue_scores,
            queue_in_use=in_use,
            return_codes=True,
        )
        scaled = loss / num_replicas  # gradients are summed over replicas
    grad_x, grad_w = tape.gradient(scaled, [x, w])
    if queue is not None:
        queue.push(
            tf.stack(tf.split(z, NUM_CROPS)[:2]),
            step,
            distribute.replica_all_gather_fn() if num_replicas > 1 else None,
        )
    return loss, diag["prototypes_used"], tf.stack(codes), grad_x, grad_w


@pytest.mark.parametrize("use_queue", [False, True])
def test_two_replicas_equal_one_device(mirrored_strategy, use_queue):
    global_batch, steps, replicas = 8, 5, 2
    local = global_batch // replicas

    def new_queue():
        return FeatureQueue(2 * global_batch, 8, start_step=1) if use_queue else None

    single_queue = new_queue()
    with mirrored_strategy.scope():
        mirrored_queue = new_queue()

    @tf.function
    def mirrored_step(step, x, w):
        def replica_fn(x_local):
            replica_id, n = distribute.replica_index()
            return swav_step(mirrored_queue, step, x_local, w, n, replica_id)

        return mirrored_strategy.run(replica_fn, args=(x,))

    def split_for_replicas(x):  # replica r takes rows r*local.. of every crop
        crops = np.split(x, NUM_CROPS)
        return [np.concatenate([c[r * local:(r + 1) * local] for c in crops]) for r in range(2)]

    def join_replicas(parts, axis=0):  # inverse of split_for_replicas on [crops * local, ...]
        per_replica = [np.split(p, NUM_CROPS, axis=axis) for p in parts]
        return np.concatenate(
            [np.concatenate([pr[c] for pr in per_replica], axis=axis) for c in range(NUM_CROPS)],
            axis=axis,
        )

    for step in range(steps):
        x, w = make_batch(global_batch, seed=10 + step)
        loss, used, codes, grad_x, grad_w = swav_step(
            single_queue, step, tf.constant(x), tf.constant(w), 1, 0
        )
        parts = split_for_replicas(x)
        x_dist = mirrored_strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(parts[ctx.replica_id_in_sync_group])
        )
        out = mirrored_step(tf.constant(step, tf.int64), x_dist, tf.constant(w))
        m_loss, m_used, m_codes, m_grad_x, m_grad_w = [
            [t.numpy() for t in mirrored_strategy.experimental_local_results(o)] for o in out
        ]
        np.testing.assert_allclose(np.mean(m_loss), loss.numpy(), atol=1e-5)
        np.testing.assert_array_equal(m_used, [used.numpy()] * replicas)  # global count
        np.testing.assert_allclose(np.concatenate(m_codes, axis=1), codes.numpy(), atol=1e-5)
        np.testing.assert_allclose(join_replicas(m_grad_x), grad_x.numpy(), atol=1e-5)
        np.testing.assert_allclose(np.sum(m_grad_w, axis=0), grad_w.numpy(), atol=1e-5)
        if use_queue:
            np.testing.assert_array_equal(
                mirrored_queue.embeddings.numpy(), single_queue.embeddings.numpy()
            )
    if use_queue:  # the comparison must have covered steps with the queue in use
        assert bool(single_queue.in_use(steps))
