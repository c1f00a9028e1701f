"""SwAV swapped-prediction loss and feature queue, as `train` in facebookresearch/swav main_swav.py.

For each assignment crop (crops 0 and 1, the 224px views) Sinkhorn turns that crop's scores
into codes q; every OTHER crop v must predict q through softmax(scores_v / temperature). The
loss is the cross-entropy, averaged over the other crops and then over the assignment crops
(SwAV paper eq. 1-3 with multi-crop, section 3.2).

With small batches (SwAV's 256-image recipe) B is too small for an equipartition over K=3000
prototypes, so embeddings of the last few batches are kept in a queue, scored with the CURRENT
prototypes, and prepended to the batch before Sinkhorn; only the batch's own codes enter the
loss. SEER does not use the queue.

Everything here is float32 and per replica: the loss is a mean over the LOCAL batch (the caller
scales it for gradient summation), the Sinkhorn reductions are injected as callables.
"""

import tensorflow as tf

from seer_tf import sinkhorn as sinkhorn_lib


def _as_crop_list(scores, num_crops):
    if isinstance(scores, (list, tuple)):
        return [tf.cast(s, tf.float32) for s in scores]
    if num_crops is None:
        raise ValueError("swav_loss: pass a list of per-crop scores, or num_crops with a tensor")
    return tf.split(tf.cast(scores, tf.float32), num_crops, axis=0)


# What swav_loss reports besides the loss: mean code entropy (ln K when the codes are uniform,
# the collapse SEER's low epsilon avoids), distinct argmax prototypes, mean largest code.
DIAGNOSTICS = ("code_entropy", "prototypes_used", "max_code")


def swav_loss(scores, crops_for_assign=(0, 1), temperature=0.1, epsilon=0.05,
              sinkhorn_iterations=3, replica_sum=None, replica_max=None, queue_scores=None,
              queue_in_use=True, num_crops=None, jit_compile=False, return_codes=False):
    """Returns (loss, diagnostics) for one replica's batch.

    Args:
      scores: list of per-crop scores [B, K] (crop order as in the data: 2 large crops first),
        or one [num_crops * B, K] tensor (crop-major, like main_swav.py `output`) plus num_crops.
      crops_for_assign: crop ids whose codes are the targets (main_swav `crops_for_assign`).
      temperature: softmax temperature of the predictions (0.1).
      epsilon, sinkhorn_iterations, replica_sum, replica_max: see `seer_tf.sinkhorn.sinkhorn`.
      queue_scores: optional [len(crops_for_assign), Q, K] (or a list of [Q, K]): this
        replica's stored embeddings scored with the current prototypes (`FeatureQueue.scores`).
      queue_in_use: Python bool or scalar bool tensor (`FeatureQueue.in_use(step)`); a tensor
        masks the queue columns out of Sinkhorn instead of branching, so it is safe in a
        tf.function under a distribution strategy.
      jit_compile: XLA-compile Sinkhorn (see `seer_tf.distribute.should_jit`).
      return_codes: also return the list of codes [B, K], one per assignment crop.

    Returns:
      loss: scalar float32, mean over the local batch (not divided by the replica count).
      diagnostics: dict of float32 scalars, all without gradient:
        code_entropy: mean over samples of -sum_k q log q (ln K = uniform, 0 = one-hot);
        prototypes_used: distinct argmax prototypes over the global batch (needs replica_sum
          to be global), averaged over assignment crops; collapse shows up as a small number;
        max_code: mean over samples of max_k q.
      codes: only with return_codes.
    """
    crops = _as_crop_list(scores, num_crops)
    n_crops = _check_crops(len(crops), crops_for_assign)
    sinkhorn = sinkhorn_lib.make_sinkhorn_fn(
        epsilon, sinkhorn_iterations, replica_sum, replica_max, jit_compile=jit_compile
    )
    # log_softmax once per crop; every crop except the assigned one predicts its codes.
    log_probs = [tf.nn.log_softmax(s / temperature, axis=-1) for s in crops]

    loss = tf.constant(0.0)
    all_codes = []
    for i, crop_id in enumerate(crops_for_assign):
        codes = _codes(sinkhorn, crops[crop_id], queue_scores, i, queue_in_use)
        all_codes.append(codes)
        subloss = tf.constant(0.0)
        for v in range(n_crops):
            if v != crop_id:
                subloss -= tf.reduce_mean(tf.reduce_sum(codes * log_probs[v], axis=-1))
        loss += subloss / (n_crops - 1)
    loss /= len(crops_for_assign)
    diagnostics = _diagnostics(all_codes, replica_sum)
    if return_codes:
        return loss, diagnostics, all_codes
    return loss, diagnostics


def _check_crops(n_crops, crops_for_assign) -> int:
    if n_crops < 2:
        raise ValueError(f"swav_loss needs at least 2 crops, got {n_crops}")
    for crop_id in crops_for_assign:
        if not 0 <= crop_id < n_crops:
            raise ValueError(f"crops_for_assign has {crop_id}, but there are {n_crops} crops")
    return n_crops


def _diagnostics(all_codes, replica_sum):
    """DIAGNOSTICS averaged over the assignment crops' codes (see swav_loss)."""
    entropy = [-tf.reduce_mean(tf.reduce_sum(tf.math.xlogy(q, q), axis=-1)) for q in all_codes]
    used = [_prototypes_used(q, replica_sum) for q in all_codes]
    max_code = [tf.reduce_mean(tf.reduce_max(q, axis=-1)) for q in all_codes]
    return {name: tf.add_n(values) / len(values)
            for name, values in zip(DIAGNOSTICS, (entropy, used, max_code))}


def _codes(sinkhorn, batch_scores, queue_scores, i, queue_in_use):
    """Sinkhorn codes of one assignment crop, with the queue prepended when there is one."""
    if queue_scores is None or queue_in_use is False:
        return sinkhorn(batch_scores)
    stored = tf.cast(queue_scores[i], tf.float32)
    batch_size = tf.shape(batch_scores)[0]
    joint = tf.concat([stored, batch_scores], axis=0)
    mask = None
    if queue_in_use is not True:
        mask = tf.concat(
            [tf.fill(tf.shape(stored)[:1], tf.convert_to_tensor(queue_in_use, tf.bool)),
             tf.ones([batch_size], tf.bool)],
            axis=0,
        )
    return sinkhorn(joint, mask=mask)[-batch_size:]


def _prototypes_used(codes, replica_sum):
    hits = tf.reduce_sum(tf.one_hot(tf.argmax(codes, axis=-1), tf.shape(codes)[1]), axis=0)
    if replica_sum is not None:
        hits = replica_sum(hits)
    return tf.reduce_sum(tf.cast(hits > 0, tf.float32))


class FeatureQueue(tf.Module):
    """The SwAV feature queue: recent embeddings of the assignment crops, newest first.

    main_swav.py keeps one queue per GPU of `queue_length // world_size` rows and fills it with
    that GPU's embeddings. Here the variable holds the GLOBAL queue [C, length, dim], identical
    on every replica: `push` all-gathers the batch (replica order = global batch order) and
    every replica writes the same value. Replica r scores its own contiguous slice of
    length / num_replicas rows. Sinkhorn only sees the union of the slices, which is the same
    set of embeddings the per-GPU queues hold, so the codes match main_swav.py; in exchange the
    checkpoint is exact and independent of the replica count, and a one-device run holds the
    very same queue as an N-replica run (tests compare them). Create it inside
    `strategy.scope()`; the ONLY_FIRST_REPLICA aggregation makes the replicas' identical writes
    legal on a mirrored variable.

    Timing (main_swav.py): the queue starts filling at `start_step` (epoch_queue_starts *
    iterations_per_epoch) and is used once it has been filled once, i.e. once its last row is
    non-zero (`not torch.all(queue[i, -1, :] == 0)`); official code also keeps a
    `use_the_queue` flag, which is implied here because a filled last row never empties again.
    """

    def __init__(self, length, dim, num_crops=2, start_step=0, global_batch_size=None,
                 name="feature_queue"):
        super().__init__(name=name)
        if length <= 0:
            raise ValueError(f"FeatureQueue length must be positive, got {length}")
        self.length = int(length)
        self.start_step = int(start_step)
        if global_batch_size is not None:
            self._check_batch(global_batch_size)
        self.embeddings = tf.Variable(
            tf.zeros([num_crops, self.length, dim], tf.float32),
            trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            name="embeddings",
        )

    def _check_batch(self, global_batch_size):
        if self.length % int(global_batch_size):
            raise ValueError(
                f"FeatureQueue length {self.length} is not a multiple of the global batch size "
                f"{global_batch_size} (main_swav.py rounds it down; choose e.g. "
                f"{self.length - self.length % int(global_batch_size)})"
            )

    def in_use(self, step):
        """Scalar bool: started and filled once (read it BEFORE `push` in the same step)."""
        started = tf.cast(step, tf.int64) >= self.start_step
        filled = tf.reduce_any(tf.not_equal(self.embeddings[:, -1], 0.0))
        return tf.logical_and(started, filled)

    def scores(self, prototypes, replica_id=0, num_replicas=1):
        """[C, length / num_replicas, K] float32: this replica's slice under the CURRENT prototypes.

        `prototypes` maps [N, dim] embeddings to [N, K] scores (the prototype layer, or
        `lambda e: e @ w`). Read before `push` so the current batch is not scored twice.
        """
        if self.length % num_replicas:
            raise ValueError(
                f"FeatureQueue length {self.length} is not divisible by {num_replicas} replicas"
            )
        num_crops, _, dim = self.embeddings.shape
        per_replica = self.length // num_replicas
        local = tf.reshape(self.embeddings, [num_crops, num_replicas, per_replica, dim])
        local = tf.gather(local, replica_id, axis=1)
        flat = prototypes(tf.reshape(local, [num_crops * per_replica, dim]))
        return tf.reshape(tf.cast(flat, tf.float32), [num_crops, per_replica, -1])

    def push(self, embeddings, step, all_gather=None):
        """Adds the assignment crops' embeddings [C, B_local, dim] (or a list of C [B, dim]).

        Shifts the queue down by the global batch and writes the new batch on top, as
        main_swav.py (`queue[i, bs:] = queue[i, :-bs]; queue[i, :bs] = embedding`). Before
        `start_step` the queue is left untouched. `all_gather` concatenates over replicas
        (`seer_tf.distribute.replica_all_gather_fn()`); None means one replica.
        """
        if isinstance(embeddings, (list, tuple)):
            embeddings = tf.stack(embeddings)
        new = tf.stop_gradient(tf.cast(embeddings, tf.float32))
        if all_gather is not None:
            new = tf.transpose(all_gather(tf.transpose(new, [1, 0, 2])), [1, 0, 2])
        global_batch = new.shape[1]
        if global_batch is not None:
            self._check_batch(global_batch)
        else:  # all_gather under MirroredStrategy loses the static batch size
            global_batch = tf.shape(new)[1]
            tf.debugging.assert_equal(
                self.length % global_batch, 0,
                message=f"FeatureQueue length {self.length} is not a multiple of the global "
                "batch size",
            )
        shifted = tf.concat([new, self.embeddings[:, : self.length - global_batch]], axis=1)
        shifted = tf.ensure_shape(shifted, self.embeddings.shape)
        started = tf.cast(step, tf.int64) >= self.start_step
        return self.embeddings.assign(tf.where(started, shifted, self.embeddings))
