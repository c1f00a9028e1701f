"""seer_tf.losses.FeatureQueue: main_swav.py's queue timing, order, scoring and checkpointing."""

import numpy as np
import pytest
import tensorflow as tf

import reference_swav
from seer_tf.losses.swav import FeatureQueue, swav_loss


def batch_rows(value, batch=4, dim=3):
    """[2, batch, dim] embeddings of the two assignment crops, filled with recognisable values."""
    return tf.stack([tf.fill([batch, dim], float(value)), tf.fill([batch, dim], -float(value))])


def test_fill_order_newest_first_and_start_step():
    queue = FeatureQueue(length=12, dim=3, start_step=2)
    for step in range(2):  # before start_step nothing is stored ...
        queue.push(batch_rows(step + 1), step)
        assert not bool(queue.in_use(step))
    np.testing.assert_array_equal(queue.embeddings.numpy(), 0.0)
    for step, value in zip(range(2, 5), (10, 20, 30)):  # ... then it fills, newest on top
        assert not bool(queue.in_use(step))  # used only once filled (last row non-zero)
        queue.push(batch_rows(value), step)
    assert bool(queue.in_use(5))
    rows = queue.embeddings.numpy()[:, :, 0]
    np.testing.assert_array_equal(rows[0], [30] * 4 + [20] * 4 + [10] * 4)
    np.testing.assert_array_equal(rows[1], [-30] * 4 + [-20] * 4 + [-10] * 4)
    queue.push(batch_rows(40), 5)  # the oldest batch falls off the end
    np.testing.assert_array_equal(queue.embeddings.numpy()[0, :, 0], [40] * 4 + [30] * 4 + [20] * 4)


def test_scored_with_current_prototypes():
    rng = np.random.default_rng(0)
    queue = FeatureQueue(length=8, dim=3)
    queue.push(tf.constant(rng.normal(size=(2, 8, 3)), tf.float32), step=0)
    stored = queue.embeddings.numpy()
    for seed in (1, 2):  # the queue keeps embeddings, not scores: new prototypes, new scores
        w = np.random.default_rng(seed).normal(size=(3, 5)).astype(np.float32)
        scores = queue.scores(lambda e, w=w: tf.matmul(e, w)).numpy()
        np.testing.assert_allclose(scores, stored @ w, atol=1e-6)
    # Replica r scores its own contiguous slice; the slices cover the queue once.
    halves = [queue.scores(lambda e: e * 1.0, r, 2).numpy() for r in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves, axis=1), stored)


@pytest.mark.parametrize("tensor_flag", [True, False])
def test_loss_with_queue_matches_reference(tensor_flag):
    """Several steps of main_swav.py `train` with a queue: timing, order, current prototypes."""
    num_crops, batch, dim, k, start = 3, 4, 6, 10, 2
    rng = np.random.default_rng(3)
    ref = reference_swav.ReferenceSwav(num_crops, (0, 1), queue_length=12, dim=dim)
    queue = FeatureQueue(length=12, dim=dim, start_step=start)
    used = []
    for step in range(8):
        if step == start:
            ref.start_queue()
        z = rng.normal(size=(num_crops * batch, dim))
        z = (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)
        w = rng.normal(size=(dim, k)).astype(np.float32)  # new prototypes every step
        w /= np.linalg.norm(w, axis=0, keepdims=True)
        in_use = queue.in_use(step)
        used.append(bool(in_use))
        loss, _, codes = swav_loss(
            np.split(z @ w, num_crops),
            queue_scores=queue.scores(lambda e, w=w: tf.matmul(e, w)),
            queue_in_use=in_use if tensor_flag else bool(in_use),
            return_codes=True,
        )
        queue.push(np.stack(np.split(z, num_crops)[:2]), step)
        expected = ref.step(z, w.T)
        np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)
        for q, q_ref in zip(codes, ref.last_codes):
            np.testing.assert_allclose(q.numpy(), q_ref, atol=1e-6)
        stored = ref.queue if ref.queue is not None else 0.0  # None before the queue starts
        np.testing.assert_array_equal(queue.embeddings.numpy(), stored)
    # Filled after 12 / 4 = 3 pushes from start_step 2: used from step 5 on, as main_swav.py.
    assert used == [False] * 5 + [True] * 3


def test_checkpoint_round_trip(tmp_path):
    queue = FeatureQueue(length=8, dim=3, start_step=0)
    queue.push(batch_rows(1), 0)
    queue.push(batch_rows(2), 1)
    path = tf.train.Checkpoint(queue=queue).save(str(tmp_path / "ckpt"))
    restored = FeatureQueue(length=8, dim=3, start_step=0)
    assert not bool(restored.in_use(2))
    tf.train.Checkpoint(queue=restored).restore(path).assert_consumed()
    np.testing.assert_array_equal(restored.embeddings.numpy(), queue.embeddings.numpy())
    assert bool(restored.in_use(2))


def test_length_must_divide_by_global_batch():
    with pytest.raises(ValueError, match="not a multiple of the global batch size 256"):
        FeatureQueue(length=3000, dim=128, global_batch_size=256)
    queue = FeatureQueue(length=10, dim=3)
    with pytest.raises(ValueError, match="not a multiple of the global batch size 4"):
        queue.push(batch_rows(1), 0)
    with pytest.raises(ValueError, match="not divisible by 4 replicas"):
        queue.scores(lambda e: e, 0, 4)
