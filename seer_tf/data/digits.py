"""scikit-learn's handwritten digits as a built-in dataset for the first-run demo.

1,797 real 8x8 grayscale digits ship inside scikit-learn, so the demo needs no download. They
are upscaled (bilinear) to `image_size` and stored as uint8 RGB, so they go through exactly the
multi-crop code that real photographs go through.
"""

import numpy as np
import tensorflow as tf


def load(image_size: int = 32):
    """-> (uint8 images [1797, image_size, image_size, 3], int64 labels [1797])."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    x = tf.image.resize(x, [image_size, image_size], method="bilinear").numpy()
    x = np.repeat(np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8), 3, axis=-1)
    return x, d.target.astype(np.int64)


def pretrain_dataset(input_context, start_step, global_batch, crops, augment, image_size=32,
                     seed=0):
    """Infinite per-replica batches of multi-crops; sample i of the stream is image
    perm_epoch(i) with augmentation seed (seed, i), so the stream is a pure function of the
    step and a resumed run continues it exactly."""
    from seer_tf.data import multicrop

    images, _ = load(image_size)
    n = len(images)
    replicas = input_context.num_replicas_in_sync if input_context else 1
    pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline = input_context.input_pipeline_id if input_context else 0
    per_replica, here = global_batch // replicas, replicas // pipelines
    images = tf.constant(images)

    def sample(i):
        epoch, pos = i // n, i % n
        perm = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64),
                                                        tf.stack([tf.constant(seed, tf.int64), epoch]))
        image = tf.gather(images, perm[pos])
        return multicrop.multicrop(image, tf.stack([tf.constant(seed, tf.int64) + 1, i]), crops, augment)

    def element(e):
        step, local = e // here, e % here
        first = step * global_batch + (pipeline * here + local) * per_replica
        return tf.data.Dataset.range(first, first + per_replica)

    ds = tf.data.Dataset.range(start_step * here, 2**62).flat_map(element)
    ds = ds.map(sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
