"""Labeled splits for evaluation: ImageFolder trees, list files, prepared TFDS, the digits.

A `Split` is its labels (numpy, known before any image is decoded, so a low-shot subset reads
only its own images), stable example ids (file paths, TFDS file names, or `split:index`), the
class names, and `images(indices)` -> tf.data of (uint8 [h, w, 3], int64 label) in split order.
Unreadable files are dropped, never fatal; callers compare counts and report them.

  * ImageFolder: `root/<split>/<class>/**/<image>`; classes are the sorted folder names of the
    train split (torchvision's ImageFolder order), files sorted within a class.
  * list file: `<split>` names a text file (absolute, or relative to `--data`) of
    `<path> <label>` lines; labels are integers or class names (sorted names of the train list);
    relative image paths are relative to the list file's folder.
  * TFDS: a prepared dataset name read from `data_dir`, never downloaded.
  * `digits`: scikit-learn's 1,797 digits (the first-run demo's data), upscaled to `image_size`;
    "train" / "val" are the demo probe's stratified 70/30 split (seed 0).
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

from seer_tf.data import digits
from seer_tf.eval.inputs.preprocess import decode_image_bytes
from seer_tf.usage import UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
DIGITS = "digits"


class Split:
    """labels, ids, class_names, and `images(indices=None)` (see the module docstring)."""

    def __init__(self, labels, ids, class_names, images_fn):
        self.labels = np.asarray(labels, np.int64)
        self.ids, self.class_names, self._images = list(ids), list(class_names), images_fn

    def images(self, indices=None):
        return self._images(indices)


def _file_split(paths: Sequence[str], labels, class_names) -> Split:
    paths, labels = np.asarray(paths), np.asarray(labels, np.int64)

    def images(indices=None):
        idx = np.arange(len(paths)) if indices is None else np.asarray(indices, np.int64)
        ds = tf.data.Dataset.from_tensor_slices((paths[idx], labels[idx]))
        ds = ds.map(lambda p, y: (decode_image_bytes(tf.io.read_file(p)), y),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.ignore_errors()

    return Split(labels, list(paths), class_names, images)


def folder_split(root: str, split: str, class_names: Optional[List[str]] = None) -> Split:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise UsageError(f"{root}: no '{split}' folder (expected {root}/{split}/<class>/<image>)")
    found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not found:
        raise UsageError(f"{split_dir}: no class folders")
    class_names = class_names or found
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise UsageError(f"{split_dir}: classes not in the train split: {unknown[:5]}")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        files = [os.path.join(d, f) for d, _, names in os.walk(os.path.join(split_dir, name))
                 for f in names if f.lower().endswith(IMAGE_SUFFIXES)]
        paths += sorted(files)
        labels += [label] * len(files)
    if not paths:
        raise UsageError(f"{split_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return _file_split(paths, labels, class_names)


def list_split(path: str, class_names: Optional[List[str]] = None) -> Split:
    """`<path> <label>` lines (see the module docstring)."""
    with open(path, encoding="utf-8") as f:
        rows = [line.rsplit(None, 1) for line in f if line.strip()]
    if not rows or any(len(r) != 2 for r in rows):
        raise UsageError(f"{path}: expected '<image path> <label>' lines")
    base = os.path.dirname(os.path.abspath(path))
    paths = [p if os.path.isabs(p) else os.path.join(base, p) for p, _ in rows]
    tokens = [t for _, t in rows]
    if class_names is None:
        numeric = all(t.isdigit() for t in tokens)
        class_names = ([str(i) for i in range(max(int(t) for t in tokens) + 1)] if numeric
                       else sorted(set(tokens)))
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(tokens) - set(index))
    if unknown:
        raise UsageError(f"{path}: labels not in the train split: {unknown[:5]}")
    return _file_split(paths, [index[t] for t in tokens], class_names)


def tfds_split(name: str, data_dir: Optional[str], split: str) -> Split:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        raw = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()},
                                 shuffle_files=False)
    except Exception as e:  # tfds raises many types (DatasetNotFoundError, AssertionError, ...)
        raise UsageError(f"TFDS {name!r} split {split!r} in {data_dir}: "
                         f"{str(e).splitlines()[0][:300]}") from e
    named = "file_name" in builder.info.features  # ImageNet: the published subsets' names
    columns = raw.map(lambda x: (x["label"], x["file_name"] if named else x["label"]))
    labels, names = [np.zeros([0], np.int64)], []
    for y, n in columns.batch(65536).as_numpy_iterator():
        labels.append(y)
        names += [v.decode("utf-8", "surrogateescape") for v in n] if named else []
    labels = np.concatenate(labels)
    ids = names or [f"{split}:{i}" for i in range(len(labels))]

    def images(indices=None):
        ds = raw.map(lambda x: (x["image"], x["label"]))
        if indices is not None:
            keep = np.zeros([len(labels)], bool)
            keep[np.asarray(indices, np.int64)] = True
            keep = tf.constant(keep)
            ds = ds.enumerate().filter(lambda i, _: keep[i]).map(lambda i, element: element)
        return ds.map(lambda img, y: (decode_image_bytes(img), y),
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return Split(labels, ids, builder.info.features["label"].names, images)


def digits_split(split: str, image_size: int = 32) -> Split:
    from sklearn.model_selection import train_test_split

    if split not in ("train", "val", "test"):
        raise UsageError(f"digits has splits train and val (or test), not {split!r}")
    images, labels = digits.load(image_size)
    train, held_out = train_test_split(np.arange(len(labels)), test_size=0.3, stratify=labels,
                                       random_state=0)
    keep = np.sort(train if split == "train" else held_out)
    images, labels = images[keep], labels[keep]

    def dataset(indices=None):
        idx = np.arange(len(labels)) if indices is None else np.asarray(indices, np.int64)
        return tf.data.Dataset.from_tensor_slices((images[idx], labels[idx]))

    return Split(labels, [f"digit{i}" for i in keep], [str(c) for c in range(10)], dataset)


def _split(data, data_dir, split, class_names=None, image_size=32):
    if data == DIGITS:
        return digits_split(split, image_size)
    listed = split if os.path.isabs(split) else os.path.join(data or "", split)
    if os.path.isfile(listed):
        return list_split(listed, class_names)
    if data and os.path.isdir(data):
        return folder_split(data, split, class_names)
    if not data or os.path.sep in data or data.startswith("."):
        raise UsageError(f"--data={data}: no such directory (and {split!r} is no list file)")
    return tfds_split(data, data_dir, split)


def load_splits(data: Optional[str], data_dir: Optional[str], train_split: str,
                eval_split: str, image_size: int = 32):
    """-> (train Split, eval Split); the eval split uses the train split's class names."""
    train = _split(data, data_dir, train_split, image_size=image_size)
    evaluation = _split(data, data_dir, eval_split, train.class_names, image_size)
    return train, evaluation


def resolve(config: Optional[dict], data: Optional[str] = None, resize: Optional[int] = None,
            crop: Optional[int] = None):
    """-> (data, image_size, resize, crop). Flags win; a workdir whose run pretrained on the
    digits (its config.json) defaults to the digits at the run's image size, resize = crop =
    that size; anything else to ImageNet's Resize(256) + CenterCrop(224)."""
    data_config = (config or {}).get("data", {})
    image_size = int(data_config.get("image_size", 32))
    if data is None and data_config.get("source") == DIGITS:
        data = DIGITS
    small = data == DIGITS or (data is None and data_config.get("source") == DIGITS)
    crop = crop or (image_size if small else 224)
    resize = resize if resize is not None else (crop if small else 256)
    if resize and resize < crop:
        raise UsageError(f"--resize ({resize}) must be >= --crop ({crop})")
    return data, image_size, resize, crop


def list_images(source: str) -> List[str]:
    """Unlabeled paths from a directory (recursive, image suffixes, sorted as path strings) or
    a list file (in order; blank lines skipped, relative paths relative to the current
    directory): bin/extract_features' input."""
    if os.path.isdir(source):
        paths = sorted(os.path.join(dirpath, f) for dirpath, _, files in os.walk(source)
                       for f in files if f.lower().endswith(IMAGE_SUFFIXES))
        if not paths:
            raise UsageError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
        return paths
    if os.path.isfile(source):
        with open(source, encoding="utf-8") as f:
            paths = [line.rstrip("\n") for line in f if line.strip()]
        if not paths:
            raise UsageError(f"{source}: the file list is empty")
        return paths
    raise UsageError(f"--input={source}: no such directory or file")
