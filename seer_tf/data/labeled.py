"""Labeled images for evaluation: ImageFolder trees, TFDS on disk, low-shot subsets.

The evaluations of SEER (Goyal et al. 2021) and SwAV (Caron et al. 2020) use ImageNet with all
labels (linear probe, fine-tuning) and class-balanced 1% / 10% subsets (low-shot). SimCLR's
published 1% / 10% ImageNet lists have ~13 / ~128 images per class; `low_shot_indices` draws a
subset of that shape for any labeled set: per class, the first k of a seeded permutation of
that class's examples (sorted by key first, so the subset does not depend on listing order).
The 1% subset of a seed is contained in its 10% subset.

Images go through the same guarded decoder as pretraining (bad files are skipped and counted);
`eval_preprocess` is the standard resize-256 / center-crop-224, `train_preprocess` a random
resized crop (scale 0.08-1, torchvision's default) with a flip, for linear probes.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from seer_tf.data import decode as decode_lib
from seer_tf.data import multicrop
from seer_tf.data.sources import IMAGE_EXTENSIONS


@dataclasses.dataclass
class LabeledFiles:
    """Parallel lists: paths[i] has label labels[i]; class_names[label] is the folder name."""
    paths: list
    labels: np.ndarray
    class_names: list

    def subset(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        return LabeledFiles([self.paths[i] for i in indices], self.labels[indices],
                            self.class_names)


def image_folder(root, split=None, extensions=IMAGE_EXTENSIONS):
    """`root/[split/]class/**/image` -> LabeledFiles; classes sorted by name (torchvision's
    ImageFolder order), files sorted within a class; files are not opened here."""
    base = os.path.join(root, split) if split else root
    class_names = sorted(e.name for e in os.scandir(base) if e.is_dir())
    if not class_names:
        raise FileNotFoundError(f"no class folders under {base}")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        found = []
        for directory, _, files in os.walk(os.path.join(base, name)):
            found += [os.path.join(directory, f) for f in files
                      if f.lower().endswith(tuple(extensions))]
        paths += sorted(found)
        labels += [label] * len(found)
    return LabeledFiles(paths, np.asarray(labels, dtype=np.int64), class_names)


def low_shot_indices(labels, *, fraction=None, per_class=None, seed=0, keys=None):
    """Sorted indices of a class-balanced subset: `per_class` examples of every class, or
    `fraction` of the whole set spread evenly (round(fraction * N / classes), at least 1).

    Classes with fewer examples give all they have. `keys` (e.g. paths) fix the order inside a
    class before the seeded permutation; by default the index order is used.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if (fraction is None) == (per_class is None):
        raise ValueError("give exactly one of fraction, per_class")
    if per_class is None:
        per_class = max(1, int(round(fraction * len(labels) / len(classes))))
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if keys is not None:
            members = members[np.argsort([keys[m] for m in members], kind="stable")]
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(c) & 0xFFFFFFFF])
        chosen.append(members[rng.permutation(len(members))[:per_class]])
    return np.sort(np.concatenate(chosen))


def eval_preprocess(image, size=224, resize_size=256, mean=multicrop.IMAGENET_MEAN,
                    std=multicrop.IMAGENET_STD):
    """Resize the short side to `resize_size` (bilinear, antialiased), center-crop `size`."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize_size / tf.reduce_min(shape)
    new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
    x = tf.image.resize(image, new, "bilinear", antialias=True)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    x = tf.slice(x, [top, left, 0], [size, size, 3])
    x = tf.clip_by_value(x / 255.0, 0.0, 1.0)
    return (x - tf.constant(mean)) / tf.constant(std)


def train_preprocess(image, seed, size=224, scale=(0.08, 1.0), mean=multicrop.IMAGENET_MEAN,
                     std=multicrop.IMAGENET_STD):
    """Random resized crop + horizontal flip (the linear-probe training transform)."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    shape = tf.shape(image)
    box, _ = multicrop.sample_box(seeds[0], shape[0], shape[1], scale)
    x = multicrop.resized_crop(image, box, size)
    flip = tf.random.stateless_uniform([], seeds[1]) < 0.5
    x = tf.cond(flip, lambda: tf.reverse(x, [1]), lambda: x)
    return (x - tf.constant(mean)) / tf.constant(std)


def _finish(ds, training, size, resize_size, batch_size, seed, stats):
    """(name, status, image, label) -> counted, filtered, preprocessed, batched."""
    if stats is not None:
        ds = ds.map(lambda n, s, i, y: (n, stats.record(n, s), i, y))
    ds = ds.filter(lambda n, s, i, y: tf.equal(s, decode_lib.OK))
    if training:
        ds = ds.enumerate().map(
            lambda k, e: (train_preprocess(e[2], tf.stack([tf.cast(seed, tf.int64), k]), size),
                          e[3]), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda n, s, i, y: (eval_preprocess(i, size, resize_size), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    if batch_size:
        ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(tf.data.AUTOTUNE)


def folder_dataset(files, *, training=False, size=224, resize_size=256, batch_size=None,
                   seed=0, shuffle_buffer=10_000, stats=None,
                   max_pixels=decode_lib.DEFAULT_MAX_PIXELS):
    """LabeledFiles -> dataset of (float32 [size, size, 3], int64 label), one pass.

    Training: shuffled with `seed`, random crops; evaluation: file order, center crops.
    """
    ds = tf.data.Dataset.from_tensor_slices((list(files.paths), files.labels))
    if training:
        ds = ds.shuffle(min(shuffle_buffer, max(len(files.paths), 1)), seed=seed)
    ds = ds.map(lambda p, y: (p, *decode_lib.read_and_decode(p, max_pixels), y),
                num_parallel_calls=tf.data.AUTOTUNE)
    return _finish(ds, training, size, resize_size, batch_size, seed, stats)


def tfds_labels(name, split, data_dir=None, label_key="label"):
    """All labels of a prepared TFDS split in its file order (images are not decoded)."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    image_keys = [k for k, f in builder.info.features.items()
                  if isinstance(f, tfds.features.Image)]
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={k: tfds.decode.SkipDecoding() for k in image_keys})
    ds = ds.map(lambda ex: ex[label_key]).batch(65536)
    return np.concatenate([b.numpy() for b in ds] or [np.zeros([0], np.int64)])


def tfds_dataset(name, split, data_dir=None, *, indices=None, training=False, size=224,
                 resize_size=256, batch_size=None, seed=0, shuffle_buffer=10_000, stats=None,
                 image_key="image", label_key="label",
                 max_pixels=decode_lib.DEFAULT_MAX_PIXELS):
    """A prepared TFDS split (never downloaded) as (image, label); `indices` (e.g. from
    `low_shot_indices(tfds_labels(...))`) keeps only those examples of the file order."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={image_key: tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(add_tfds_id=True))
    ds = ds.map(lambda ex: (ex["tfds_id"], ex[image_key], ex[label_key]))
    if indices is not None:
        keep = np.zeros([int(np.max(indices, initial=-1)) + 1], bool)
        keep[np.asarray(indices, dtype=np.int64)] = True
        ds = ds.take(len(keep)).enumerate()  # nothing after the last kept index
        ds = ds.filter(lambda k, e: tf.gather(tf.constant(keep), k)).map(lambda k, e: e)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    ds = ds.map(lambda n, b, y: (n, *decode_lib.decode(b, max_pixels), y),
                num_parallel_calls=tf.data.AUTOTUNE)
    return _finish(ds, training, size, resize_size, batch_size, seed, stats)
