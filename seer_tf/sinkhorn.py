"""Sinkhorn-Knopp codes for SwAV, as `distributed_sinkhorn` in facebookresearch/swav main_swav.py.

SwAV turns prototype scores into soft cluster assignments ("codes") Q by solving an entropic
optimal-transport problem: every sample gives away mass 1, every prototype receives the same
mass B/K. Three (SwAV) or ten (SEER) alternating row/column normalisations of exp(scores/eps)
approximate the solution well enough (SwAV paper, section 3.1 and appendix A.1).

Why the function looks the way it does:
- The transport problem is over the GLOBAL batch. Across replicas only the K per-prototype row
  sums and the scalar total are summed; per-sample column sums stay local. The replica
  reductions are injected (`replica_sum`, `replica_max`) so this module never imports
  tf.distribute; `seer_tf.distribute` builds them.
- scores/eps reaches 1/0.03 ~ 33 for unit vectors, and exp(33) ~ 2e14 overflows float16 and
  comes close in float32 when summed over B*K entries. The global max is subtracted before exp
  (a common factor that the first normalisation cancels exactly) and everything runs in float32
  whatever the Keras mixed-precision policy is.
- Codes are targets, not predictions: no gradient flows through them (tf.stop_gradient).
"""

import functools

import tensorflow as tf


def _identity(x):
    return x


def sinkhorn(
    scores,
    epsilon=0.05,
    iterations=3,
    replica_sum=None,
    replica_max=None,
    mask=None,
):
    """Returns the SwAV codes Q [B, K] (float32, no gradient) for `scores` [B, K].

    Follows main_swav.py `distributed_sinkhorn`: Q = exp(scores/eps), divided by its global
    total; then `iterations` times: divide each prototype's row by its global sum and by K,
    divide each sample's column by its (local) sum and by the global sample count B. Finally
    Q *= B so that every sample's codes sum to 1 (and each prototype gets ~B/K of the mass).

    Args:
      scores: [B, K] local scores (embedding . prototype), any float dtype.
      epsilon: entropic regularisation (0.05 SwAV/SEER; 0.03 when training stalls at ln K).
      iterations: Sinkhorn-Knopp iterations (3 in SwAV, 10 in SEER).
      replica_sum: callable summing a tensor over replicas (all-reduce SUM). None: one replica.
      replica_max: callable taking the max of a tensor over replicas. Required whenever
        `replica_sum` is given, because every replica must subtract the SAME shift before exp,
        or the cross-replica row sums would mix differently scaled columns.
      mask: optional [B] bool: False columns (e.g. feature-queue slots that are not in use yet)
        take no part: they get zero codes and do not count in B. This keeps shapes static, so
        a queue can be switched on inside a tf.function without tf.cond around collectives
        (MirroredStrategy rejects cross-replica ops inside control flow).
    """
    _check_reductions(replica_sum, replica_max)
    replica_sum = replica_sum or _identity
    replica_max = replica_max or _identity

    scores = tf.stop_gradient(tf.cast(scores, tf.float32))
    logits = scores / epsilon
    num_prototypes = tf.cast(tf.shape(logits)[1], tf.float32)
    if mask is None:
        local_max = tf.reduce_max(logits)
        num_samples = replica_sum(tf.cast(tf.shape(logits)[0], tf.float32))
    else:
        mask = tf.convert_to_tensor(mask, tf.bool)
        mask = tf.broadcast_to(mask, tf.shape(logits)[:1])[:, None]
        logits = tf.where(mask, logits, -float("inf"))  # exp(-inf) = 0: masked columns vanish
        local_max = tf.reduce_max(logits)
        num_samples = replica_sum(tf.reduce_sum(tf.cast(mask, tf.float32)))

    # Q is kept as [B, K] (the transpose of the paper's K x B): "rows" below are prototypes,
    # i.e. reductions over axis 0; "columns" are samples, reductions over axis 1.
    q = tf.exp(logits - replica_max(local_max))
    q = q / replica_sum(tf.reduce_sum(q))
    for _ in range(iterations):
        # Each prototype receives total mass 1/K across the global batch.
        q = q / replica_sum(tf.reduce_sum(q, axis=0, keepdims=True))
        q = q / num_prototypes
        # Each sample gives away mass 1/B; masked columns are all zero, hence divide_no_nan.
        q = tf.math.divide_no_nan(q, tf.reduce_sum(q, axis=1, keepdims=True))
        q = q / num_samples
    return tf.stop_gradient(q * num_samples)


def _check_reductions(replica_sum, replica_max):
    if replica_sum is not None and replica_max is None:
        raise ValueError(
            "sinkhorn: replica_sum was given without replica_max; every replica must subtract "
            "the same global max before exp. Pass seer_tf.distribute.replica_max_fn()."
        )


def make_sinkhorn_fn(
    epsilon=0.05, iterations=3, replica_sum=None, replica_max=None, jit_compile=False
):
    """Returns `fn(scores, mask=None) -> codes` with the recipe numbers bound.

    jit_compile=True wraps it in tf.function(jit_compile=True): on GPU/TPU the ten iterations
    then fuse into a few kernels. Do NOT jit when running several replicas on CPU: XLA plus a
    cross-replica collective fails there (docs/design.md section 4), and MirroredStrategy also
    refuses a nested tf.function that contains collectives unless XLA-on-GPU removes its
    merge_call. Ask `seer_tf.distribute.should_jit(strategy)`. Without jit the plain Python
    function is returned so that it inlines into the caller's traced step.
    """
    fn = functools.partial(
        sinkhorn,
        epsilon=epsilon,
        iterations=iterations,
        replica_sum=replica_sum,
        replica_max=replica_max,
    )
    if jit_compile:
        return tf.function(fn, jit_compile=True)
    return fn
