"""The SwAV/SEER training input: source -> decode -> multi-crop -> per-replica batch -> prefetch.

Use it as the dataset function of `strategy.distribute_datasets_from_function` (train/ owns the
strategy; this module only reads `num_input_pipelines`, `input_pipeline_id` and
`get_per_replica_batch_size` from the InputContext it is given):

    def dataset_fn(ctx):
        ds, stats = training_stream(DirectorySource("/data/uncurated"),
                                    global_batch_size=4096, input_context=ctx)
        return ds

Each element is a tuple of crops in spec order, each [batch, size, size, 3] (2 x 224 then
4 x 96 by default), normalized with the ImageNet mean and std. Every sample's crops come from
one image. Augmentation seeds are derived from (seed, input pipeline, element index), so a
fixed seed gives a fixed stream (with deterministic tf.data ordering, the default).
"""

import tensorflow as tf

from seer_tf.data import multicrop as multicrop_lib
from seer_tf.data import sources as sources_lib
from seer_tf.data.decode import DEFAULT_MAX_PIXELS


def element_seed(seed, pipeline_id, index):
    """Stateless seed of the index-th decoded image of one input pipeline."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.cast(pipeline_id, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


def _batch_size(per_replica_batch_size, global_batch_size, input_context):
    if (per_replica_batch_size is None) == (global_batch_size is None):
        raise ValueError("give exactly one of per_replica_batch_size, global_batch_size")
    if per_replica_batch_size is not None:
        return int(per_replica_batch_size)
    if input_context is not None and hasattr(input_context, "get_per_replica_batch_size"):
        return int(input_context.get_per_replica_batch_size(global_batch_size))
    replicas = getattr(input_context, "num_replicas_in_sync", 1) if input_context else 1
    if global_batch_size % replicas:
        raise ValueError(f"global batch {global_batch_size} not divisible by {replicas} replicas")
    return global_batch_size // replicas


def training_stream(source, per_replica_batch_size=None, *, global_batch_size=None,
                    crops=multicrop_lib.SWAV_CROPS, augment=multicrop_lib.Augment(),
                    input_context=None, num_input_pipelines=None, input_pipeline_id=None,
                    seed=0, dtype=tf.float32, shuffle_buffer=10_000, refresh_every=None,
                    num_epochs=None, stats=None, max_pixels=DEFAULT_MAX_PIXELS,
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=None,
                    drop_remainder=True, strides=1):
    """Batches of multi-crops from `source`; returns (dataset, DecodeStats).

    `dtype` may be tf.bfloat16 to halve host-to-device traffic (the crops are cast at the end).
    `refresh_every`, `num_epochs`, `shuffle_buffer`, `max_pixels`, `strides`: see
    `sources.image_stream`.

    Exact resume: the returned dataset's iterator is saveable (`tf.train.Checkpoint(
    iterator=iter(ds))`, or the distributed iterator of `distribute_datasets_from_function`);
    restored into a freshly built stream with the same arguments it continues bit for bit
    (augmentations are stateless, keyed by the element index, which `enumerate` saves). What the
    checkpoint then holds: `sources.checkpointable_options`.
    """
    batch = _batch_size(per_replica_batch_size, global_batch_size, input_context)
    n, i = sources_lib.pipeline_shard(input_context, num_input_pipelines, input_pipeline_id)
    images, stats = sources_lib.image_stream(
        source, num_input_pipelines=n, input_pipeline_id=i, seed=seed,
        shuffle_buffer=shuffle_buffer, refresh_every=refresh_every, num_epochs=num_epochs,
        stats=stats, max_pixels=max_pixels, num_parallel_calls=num_parallel_calls,
        deterministic=deterministic, prefetch=False, strides=strides)

    def crop(index, element):
        _, image = element
        out = multicrop_lib.multicrop(image, element_seed(seed, i, index), crops, augment)
        return tuple(tf.cast(c, dtype) for c in out)

    ds = images.enumerate().map(crop, num_parallel_calls=num_parallel_calls,
                                deterministic=deterministic)
    ds = ds.batch(batch, drop_remainder=drop_remainder)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(sources_lib.checkpointable_options()), stats
