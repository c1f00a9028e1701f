"""A pretraining workdir: what it holds and how its checkpoints are laid out, defined once.

    WORKDIR/config.json            the resolved experiment config (ml_collections -> JSON)
    WORKDIR/model.json             the SwAV model's architecture (Keras serialization)
    WORKDIR/checkpoints/ckpt-<N>   tf.train.Checkpoint(model=..., optimizer=..., global_step=...,
                                   [queue=...], [schedule=...], [input=...]) at step N
    WORKDIR/tensorboard/           training curves

train/loop.py writes the checkpoints with `model_checkpoint_items`; bin/pretrain describes the
workdir with `describe_workdir`; evaluation, export and feature extraction read it back with
`load_workdir_model`, so `--workdir=DIR` is all a user passes. Keras 3 layers kept in Python
lists (RegNet stages, head linears, prototype kernels) are invisible to tf.train.Checkpoint's
object graph, so the model is checkpointed as a flat {variable path: variable} dict under the
item name "model": every weight and BatchNorm statistic, by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from seer_tf.usage import UsageError

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.json"


def model_checkpoint_items(model) -> dict:
    """{variable path: variable} of every weight of `model`: the training checkpoint's "model"."""
    items = {v.path: v for v in model.weights}
    if len(items) != len(model.weights):
        seen, dups = set(), set()
        for v in model.weights:
            (dups if v.path in seen else seen).add(v.path)
        raise ValueError(f"model variables must have unique paths to be checkpointed; repeated: "
                         f"{sorted(dups)[:5]}")
    return items


def _write_json(path: str, value) -> None:
    """Write via a temporary name + rename, so a reader never sees half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(value, indent=1, sort_keys=True, default=_jsonable))
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _jsonable(value):
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def describe_workdir(workdir: str, config_dict: dict, model) -> None:
    """Write WORKDIR/config.json (the config as passed) and WORKDIR/model.json (the model's
    `keras.saving.serialize_keras_object`). Which process calls it (the chief) is the caller's
    business."""
    tf.io.gfile.makedirs(workdir)
    _write_json(os.path.join(workdir, CONFIG_FILE), config_dict)
    _write_json(os.path.join(workdir, MODEL_FILE), keras.saving.serialize_keras_object(model))


def _read_json(path: str):
    with tf.io.gfile.GFile(path, "r") as f:
        return json.loads(f.read())


def read_config(workdir: str) -> Optional[dict]:
    """The workdir's config.json as a dict, or None when it has none."""
    path = os.path.join(workdir, CONFIG_FILE)
    return _read_json(path) if tf.io.gfile.exists(path) else None


def is_workdir(path: str) -> bool:
    return tf.io.gfile.isdir(path) and tf.io.gfile.exists(os.path.join(path, MODEL_FILE))


def checkpoint_prefix(workdir: str, step: Optional[int] = None) -> str:
    """checkpoints/ckpt-<step>, or the latest one; UsageError when there is none."""
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    if step is not None:
        prefix = os.path.join(directory, f"ckpt-{int(step)}")
        if not tf.io.gfile.exists(prefix + ".index"):
            raise UsageError(f"{workdir}: no checkpoint at step {step} (have steps "
                             f"{checkpoint_steps(workdir) or 'none'})")
        return prefix
    latest = tf.train.latest_checkpoint(directory) if tf.io.gfile.isdir(directory) else None
    if not latest:
        raise UsageError(f"{workdir}: no checkpoint in {CHECKPOINT_DIR}/ (has the run saved one?)")
    return latest


def checkpoint_steps(workdir: str) -> list:
    """Steps of the checkpoints present in WORKDIR/checkpoints, ascending."""
    pattern = os.path.join(workdir, CHECKPOINT_DIR, "ckpt-*.index")
    names = [os.path.basename(p) for p in tf.io.gfile.glob(pattern)]
    return sorted(int(m.group(1)) for n in names for m in [re.match(r"ckpt-(\d+)\.index$", n)] if m)


def float32_config(config):
    """The same serialized config with every mixed-precision dtype policy set to float32:
    evaluation and serving compute in float32 (the checkpoint's variables are float32 in every
    training precision)."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and isinstance(config.get("config"), dict):
            name = config["config"].get("name", "")
            if str(name).startswith("mixed_"):
                return {**config, "config": {**config["config"], "name": "float32"}}
        return {k: float32_config(v) for k, v in config.items()}
    if isinstance(config, list):
        return [float32_config(v) for v in config]
    return config


def model_from_json(path: str):
    """A built model (every variable created) from a Keras serialization file (`import seer_tf`
    has registered the classes it names)."""
    model = keras.saving.deserialize_keras_object(float32_config(_read_json(path)))
    if hasattr(model, "build_all"):
        model.build_all()
    elif not model.built:
        model.build((None, None, None, 3))
    return model


def restore_model(model, prefix: str) -> None:
    """Read the "model/<path>" tensors of a training checkpoint into `model`'s variables;
    ValueError when any variable of the model is not in it."""
    items = model_checkpoint_items(model)
    try:
        status = tf.train.Checkpoint(model=items).read(prefix).expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
        stored = sum(1 for n, _ in tf.train.list_variables(prefix) if n.startswith("model/"))
        raise ValueError(f"{prefix}: holds {stored} model tensors, the model has {len(items)} "
                         f"variables: not a checkpoint of this architecture "
                         f"({' '.join(str(e).split())[:200]})") from e


def load_workdir_model(workdir: str, step: Optional[int] = None):
    """The SwAV model of a pretraining workdir: architecture from model.json, weights from
    checkpoints/ckpt-<step> (default: the latest). UsageError when either is missing."""
    if not tf.io.gfile.isdir(workdir):
        raise UsageError(f"--workdir={workdir}: no such directory")
    model_file = os.path.join(workdir, MODEL_FILE)
    if not tf.io.gfile.exists(model_file):
        raise UsageError(f"{workdir}: no {MODEL_FILE} (written by bin/pretrain when a run "
                         "starts); for an older workdir pass --weights=DIR with --preset or "
                         "--model_config")
    prefix = checkpoint_prefix(workdir, step)
    model = model_from_json(model_file)
    restore_model(model, prefix)
    return model


def digest(model) -> str:
    """SHA-256 of every weight's bytes in path order: equal digests, equal weights (the workers
    of one run must end with the same ones)."""
    h = hashlib.sha256()
    for v in sorted(model.weights, key=lambda v: v.path):
        h.update(v.path.encode())
        h.update(np.asarray(v.numpy()).tobytes())
    return h.hexdigest()
