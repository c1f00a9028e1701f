"""Frozen-trunk features: batched inference over a dataset or image files, in order.

Every evaluation protocol (linear probe, kNN, low-shot), bin/extract_features and the serving
export read the trunk the same way. Features are the trunk's "pooled" endpoint (VISSL's
`avgpool`, what SEER evaluates) or any other endpoint ("stem", "stageN") average-pooled over
space, as VISSL's `res5avg`-style layers. `extract_features` runs a batched dataset (optionally
over a strategy's replicas) with a progress/ETA log; `extract_files` does the same for image
files, skipping unreadable ones. Images are prepared by `eval.inputs` (one preprocessing).
"""

from __future__ import annotations

import weakref
from typing import Callable, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from seer_tf.eval.inputs import decode_image_bytes, eval_preprocess
from seer_tf.eval.progress import Progress
from seer_tf.weights import trunk_of


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
