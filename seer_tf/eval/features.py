"""Frozen-trunk features: evaluation preprocessing, batched extraction with ETA, model loading.

Every evaluation protocol (linear probe, kNN, low-shot) and the serving export read the trunk
the same way, so the preprocessing lives here once:
  * decode: JPEG with the accurate integer DCT (`INTEGER_ACCURATE`). TensorFlow's default
    (`INTEGER_FAST`) differs from PIL/libjpeg's by up to 6 levels per pixel, while the accurate
    one matches PIL exactly, and the PyTorch references (VISSL, torchvision) decode with PIL.
  * torchvision `Resize(256)` + `CenterCrop(224)` as VISSL's eval transforms: shorter side to
    `resize` (long side `int(resize * long / short)`), bilinear with antialiasing, rounded to
    uint8 levels as PIL returns them, then a centered `crop` x `crop` window (offsets rounded
    like torchvision's `round((h - crop) / 2)`).
  * ImageNet mean/std normalization (the trunk's input convention, models/regnet.py).

Features are the trunk's "pooled" endpoint (VISSL's `avgpool`, what SEER evaluates) or any other
endpoint ("stem", "stageN") average-pooled over space, as VISSL's `res5avg`-style layers.
`extract_features` runs a batched dataset (optionally over a strategy's replicas) with a
progress/ETA log; `extract_files` does the same for image files, skipping unreadable ones;
`load_model` reads every weight format the project writes or converts.
"""

from __future__ import annotations

import os
import time
import weakref
from typing import Callable, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from seer_tf.weights import load_model, trunk_of  # noqa: F401  (load_model: callers' path)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------ preprocessing (graph-safe)

def decode_image_bytes(encoded):
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes (scalar tf.string) -> uint8 [h, w, 3]; raises on bad
    data. JPEGs use the accurate DCT so pixels equal PIL's (see module docstring)."""
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image


def resize_shorter_side(images, size: int):
    """[h, w, 3] or [n, h, w, 3] (uint8 or float in 0..255) -> float32 with shorter side `size`.

    Bilinear with antialiasing (PIL's resampling filter), rounded and clipped to uint8 levels
    because torchvision's `Resize` on a PIL image returns uint8.
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    h, w = shape[-3], shape[-2]
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    new_long = long * size // short
    new_h = tf.where(h <= w, size, new_long)
    new_w = tf.where(h <= w, new_long, size)
    out = tf.image.resize(tf.cast(images, tf.float32), tf.stack([new_h, new_w]),
                          method="bilinear", antialias=True)
    return tf.clip_by_value(tf.round(out), 0.0, 255.0)


def center_crop(images, size: int):
    """Centered `size` x `size` window of [h, w, c] or [n, h, w, c] (torchvision CenterCrop
    offsets). The image must be at least `size` on both sides."""
    shape = tf.shape(images)
    h, w = shape[-3], shape[-2]
    top = tf.cast(tf.round(tf.cast(h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(w - size, tf.float32) / 2.0), tf.int32)
    out = images[..., top:top + size, left:left + size, :]
    return tf.ensure_shape(out, images.shape[:-3] + [size, size, images.shape[-1]])


def normalize(images):
    """0..255 pixels -> (x / 255 - mean) / std, float32 (the trunk's input convention)."""
    x = tf.cast(images, tf.float32) / 255.0
    return (x - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def eval_preprocess(images, resize: int = 256, crop: int = 224):
    """uint8 [h, w, 3] or [n, h, w, 3] -> normalized float32 [.., crop, crop, 3].

    VISSL/torchvision evaluation transform: Resize(resize) -> CenterCrop(crop) -> Normalize.
    `resize=0` resizes the shorter side straight to `crop`.
    """
    resize = int(resize) or int(crop)
    if resize < crop:
        raise ValueError(f"resize ({resize}) must be >= crop ({crop})")
    return normalize(center_crop(resize_shorter_side(images, resize), crop))


# ------------------------------------------------------------------ progress

class Progress:
    """Logs `name: done/total, rate, elapsed, ETA` every `every_s` seconds and at the end."""

    def __init__(self, name: str, total: Optional[int] = None, unit: str = "batches",
                 every_s: float = 30.0):
        self.name, self.total, self.unit, self.every_s = name, total, unit, every_s
        self.done, self.start, self.last = 0, time.time(), time.time()

    def update(self, n: int = 1, extra: str = ""):
        self.done += n
        now = time.time()
        if now - self.last >= self.every_s or (self.total and self.done >= self.total):
            self.last = now
            logging.info("%s", self.line(extra))

    def line(self, extra: str = "") -> str:
        elapsed = time.time() - self.start
        rate = self.done / max(elapsed, 1e-9)
        if self.total:
            eta = hms((self.total - self.done) / max(rate, 1e-9))
            where = f"{self.done}/{self.total} {self.unit}"
        else:
            eta, where = "?", f"{self.done} {self.unit}"
        return (f"{self.name}: {where}, {rate:.2f} {self.unit}/s, elapsed {hms(elapsed)}, "
                f"ETA {eta}" + (f" | {extra}" if extra else ""))


def hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ------------------------------------------------------------------ batched inference

def pooled_endpoint(outputs, endpoint: str = "pooled"):
    """The named endpoint of the trunk's output dict, average-pooled over space if 4-D."""
    if endpoint not in outputs:
        raise ValueError(f"unknown endpoint {endpoint!r}; the trunk has {sorted(outputs)}")
    x = outputs[endpoint]
    return tf.reduce_mean(x, axis=[1, 2]) if x.shape.rank == 4 else x


# Traced step functions, per user function, element spec and strategy: extracting features of
# the train and the eval split reuses one trace (tracing a large trunk takes tens of seconds).
# Keys are held weakly and the traced code reaches them through weak references, so a model or
# function that the caller drops is freed with its traces.
_TRACES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_ENDPOINT_FNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _step(fn_ref):
    def step(element):
        element = element if isinstance(element, tuple) else (element,)
        return (fn_ref()(element[0]),) + tuple(element[1:])

    return step


def run_batched(fn: Callable, dataset, strategy=None, name: str = "inference",
                num_batches: Optional[int] = None):
    """Apply `fn(images)` to every batch of `dataset`, keeping order; returns (outputs, extras).

    Elements are `images` or tuples `(images, *extras)`; extras (labels, indices: numeric, as
    tensors) are passed through. With a multi-replica single-host `strategy`, batches are split
    across replicas and concatenated back in replica order, which is dataset order. (Not
    `strategy.gather`: with MirroredStrategy over logical CPUs it returned replica 0's rows only.)
    One trace per (fn, element spec, strategy), with the batch dimension left open.
    """
    if num_batches is None:
        card = int(dataset.cardinality())
        num_batches = card if card >= 0 else None
    progress = Progress(name, num_batches)
    multi = strategy is not None and strategy.num_replicas_in_sync > 1
    if multi and len(strategy.extended.worker_devices) != strategy.num_replicas_in_sync:
        raise NotImplementedError("run_batched: one host only (its replicas' results are "
                                  "concatenated here); run other workers on their own shard")
    if multi:
        dataset = strategy.experimental_distribute_dataset(dataset)
    traces = _TRACES.setdefault(fn, {})
    key = (repr(dataset.element_spec), id(strategy) if multi else None)
    if key not in traces:
        if multi:
            step, strategy_ref = _step(weakref.ref(fn)), weakref.ref(strategy)
            traces[key] = tf.function(lambda e: strategy_ref().run(step, args=(e,)),
                                      input_signature=[dataset.element_spec])
        else:
            traces[key] = tf.function(_step(weakref.ref(fn)),
                                      input_signature=[dataset.element_spec])
    traced = traces[key]
    chunks: List[Sequence[np.ndarray]] = []
    for element in dataset:
        out = traced(element)
        if multi:  # local results are in replica order = dataset order
            out = [tf.concat(strategy.experimental_local_results(t), axis=0) for t in out]
        chunks.append([np.asarray(t) for t in out])
        progress.update(1)
    if not chunks:
        raise ValueError(f"{name}: the dataset is empty")
    columns = [np.concatenate([c[i] for c in chunks], axis=0) for i in range(len(chunks[0]))]
    return columns[0], columns[1:]


def extract_features(model, dataset, endpoint: str = "pooled", strategy=None,
                     num_batches: Optional[int] = None, name: str = "features"):
    """Features of a frozen trunk (BatchNorm in inference mode) for a batched dataset.

    `dataset` yields normalized float images [n, h, w, 3] or `(images, labels, ...)`; returns
    `(features float32 [N, d], [labels, ...])` in dataset order.
    """
    trunk = trunk_of(model)
    fns = _ENDPOINT_FNS.setdefault(trunk, {})
    if endpoint not in fns:
        trunk_ref = weakref.ref(trunk)

        def fn(images):
            return tf.cast(pooled_endpoint(trunk_ref()(images, training=False), endpoint),
                           tf.float32)

        fns[endpoint] = fn
    return run_batched(fns[endpoint], dataset, strategy=strategy, name=name,
                       num_batches=num_batches)


# ------------------------------------------------------------------ image files

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


def list_images(source: str) -> List[str]:
    """Paths from a directory (recursive, image suffixes, sorted as path strings) or a list file
    (in order; blank lines skipped, relative paths relative to the current directory)."""
    if os.path.isdir(source):
        paths = sorted(os.path.join(dirpath, f) for dirpath, _, files in os.walk(source)
                       for f in files if f.lower().endswith(IMAGE_SUFFIXES))
        if not paths:
            raise ValueError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
        return paths
    if os.path.isfile(source):
        with open(source, encoding="utf-8") as f:
            paths = [line.rstrip("\n") for line in f if line.strip()]
        if not paths:
            raise ValueError(f"{source}: the file list is empty")
        return paths
    raise ValueError(f"--input={source}: no such directory or file")


def extract_files(model, paths: Sequence[str], endpoint: str = "pooled", resize: int = 256,
                  crop: int = 224, batch_size: int = 64, strategy=None):
    """-> (features [M, d] of the readable files, their int64 indices into `paths`), in order.

    Each element carries its index through `Dataset.ignore_errors`, so a file that cannot be
    read or decoded (missing, empty, truncated, not an image) simply never arrives: the missing
    indices are the skipped files, and nothing else is lost.
    """
    def load(index, path):
        return eval_preprocess(decode_image_bytes(tf.io.read_file(path)), resize, crop), index

    encoded = tf.constant([p.encode("utf-8", "surrogateescape") for p in paths], tf.string)
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype=np.int64), encoded))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    ds = ds.batch(batch_size).prefetch(2)
    try:
        feats, (indices,) = extract_features(model, ds, endpoint, strategy,
                                             num_batches=-(-len(paths) // batch_size),
                                             name="features")
    except ValueError as e:
        if "empty" not in str(e):
            raise
        return np.zeros([0, 0], np.float32), np.zeros([0], np.int64)
    return feats, indices
