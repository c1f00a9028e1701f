"""Deterministic synthetic crops for smoke runs and exactness tests (no files, no decoding).

Every sample of the global stream is a pure function of its global index (step * global_batch
+ position), so:
  * a run resumed at step k sees exactly the batches an uninterrupted run sees;
  * N replicas see exactly the single-device global batch, split in order: replica r of step s
    holds positions [r * B/N, (r+1) * B/N).
With one input pipeline per worker, `distribute_datasets_from_function` hands consecutive
elements to consecutive replicas, which is the order produced here.
"""

from typing import Sequence

import tensorflow as tf


def crops_dataset(input_context, start_step: int, global_batch: int,
                  crop_sizes: Sequence[int], crop_counts: Sequence[int], seed: int = 0,
                  dtype=tf.float32) -> tf.data.Dataset:
    """Per-replica batches of crops (a tuple in crop order), from `start_step` on, forever."""
    replicas = input_context.num_replicas_in_sync if input_context else 1
    pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline = input_context.input_pipeline_id if input_context else 0
    if global_batch % replicas:
        raise ValueError(f"global batch {global_batch} is not divisible by {replicas} replicas")
    per_replica = global_batch // replicas
    replicas_here = replicas // pipelines
    sizes = [s for s, n in zip(crop_sizes, crop_counts) for _ in range(n)]

    def element(e):
        step, local = e // replicas_here, e % replicas_here
        replica = pipeline * replicas_here + local
        first = step * global_batch + replica * per_replica
        index = first + tf.range(per_replica, dtype=tf.int64)
        crops = []
        for c, size in enumerate(sizes):
            per_sample = tf.map_fn(
                lambda i, c=c, size=size: tf.random.stateless_normal(
                    [size, size, 3], tf.stack([tf.cast(seed, tf.int64) * 7919 + c, i])),
                index, fn_output_signature=tf.float32)
            crops.append(tf.cast(per_sample, dtype))
        return tuple(crops)

    return tf.data.Dataset.range(start_step * replicas_here, 2**62).map(element).prefetch(2)
