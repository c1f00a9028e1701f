"""Every weight format seer_tf reads or writes, behind one `load_model` and one `save_model`.

Read:
  * a pretraining workdir (`--workdir`, or a directory given as weights): `workdir.py`;
  * `X.keras`: a saved seer_tf model (architecture + weights);
  * `X.weights.h5`: weights, the architecture from `X.weights.h5.config.json` or `model_config`;
  * `.npz`, `.safetensors`, `.pth`/`.torch`/...: PyTorch RegNetY weights (torchvision,
    VISSL/SEER, ClassyVision, timm), read by `pytorch.py`, renamed by `seer_tf.convert`;
  * a TF checkpoint prefix or a directory of them without model.json: the trunk, in a RegNet
    built from `preset` or `model_config`.
Write (bin/convert): `.keras`, `.weights.h5` + its config, or a TF checkpoint prefix.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Optional

import keras
import tensorflow as tf

from seer_tf import convert
from seer_tf.models.regnet import RegNet
from seer_tf.usage import UsageError
from seer_tf.weights import pytorch, workdir as workdir_lib

PYTORCH_SUFFIXES = (".npz", ".safetensors") + pytorch.TORCH_SUFFIXES


def built(model):
    """Create every variable of a RegNet / SwAVModel / classifier (no-op if built)."""
    if hasattr(model, "build_all"):
        model.build_all()
    elif not model.built:
        model.build((None, None, None, 3))
    return model


def trunk_of(model):
    """The RegNet trunk of a RegNet, a SwAVModel (its `backbone`) or a fine-tuned classifier."""
    for attr in ("backbone", "trunk"):
        if getattr(model, attr, None) is not None:
            return getattr(model, attr)
    return model


def load_keras(path: str):
    """A `.keras` archive (`keras.saving.load_model` reads it too, after `import seer_tf`).
    Here every variable is created first (`built`), then the weights load, so a model whose
    build Keras did not record still gets all of them."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"{path}: not a Keras 3 .keras archive ({e})") from e
    model = built(keras.saving.deserialize_keras_object(config))
    model.load_weights(path)
    return model


def model_from_config_file(path: str, weights: str):
    """A built model from a JSON architecture: a Keras serialization or a bare RegNet
    `get_config()`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{weights}: architecture file {path} not found (--model_config)")
    with open(path) as f:
        config = json.load(f)
    if "class_name" not in config:  # a bare RegNet get_config()
        config = {"class_name": "RegNet", "config": config}
    if "registered_name" not in config:
        config["registered_name"] = f"seer_tf>{config['class_name']}"
        config.setdefault("module", None)
    return built(keras.saving.deserialize_keras_object(workdir_lib.float32_config(config)))


def _trunk_checkpoint(path: str, preset: Optional[str], model_config: Optional[str]):
    """The RegNet trunk of a TF checkpoint prefix (or a folder of them) with no model.json."""
    prefix = _checkpoint_prefix(path)
    if model_config:
        trunk = trunk_of(model_from_config_file(model_config, path))
    elif preset:
        trunk = built(RegNet.from_preset(preset))
    else:
        raise UsageError(f"{path} is a TF checkpoint without a model.json beside it: pass "
                         "--preset or --model_config to say which architecture it holds")
    try:
        workdir_lib.restore_model(trunk, prefix)
    except ValueError as e:
        raise ValueError(f"{e} (the {preset or 'configured'} trunk, or not a seer_tf "
                         "checkpoint)") from e
    return trunk


def _checkpoint_prefix(path: str) -> str:
    if os.path.isdir(path):
        for d in (os.path.join(path, workdir_lib.CHECKPOINT_DIR), path):
            latest = tf.train.latest_checkpoint(d)
            if latest:
                return latest
        raise FileNotFoundError(f"{path}: no TF checkpoint in it or in its checkpoints/")
    if os.path.exists(path + ".index"):
        return path
    raise FileNotFoundError(f"{path}: not a .keras/.weights.h5/.npz/.safetensors/.pth file, "
                            "checkpoint prefix or workdir")


def load_model(weights: Optional[str] = None, *, workdir: Optional[str] = None,
               step: Optional[int] = None, preset: Optional[str] = None,
               model_config: Optional[str] = None, allow_pickle: bool = False):
    """A built RegNet, SwAVModel or classifier from `workdir` (+ `step`) or any `weights` file
    listed in the module docstring. One-line UsageError/ValueError/OSError on bad input."""
    if (workdir is None) == (weights is None):
        raise UsageError("give exactly one of --workdir and --weights")
    if step is not None and workdir is None and not workdir_lib.is_workdir(weights):
        raise UsageError("--step needs --workdir")
    if workdir is not None or workdir_lib.is_workdir(weights):
        return workdir_lib.load_workdir_model(workdir or weights, step)
    if weights.endswith(".keras"):
        return load_keras(weights)
    if weights.endswith(".weights.h5"):
        model = model_from_config_file(model_config or weights + ".config.json", weights)
        model.load_weights(weights)
        return model
    if weights.lower().endswith(PYTORCH_SUFFIXES):
        arrays, _ = pytorch.read_weights(weights, allow_pickle=allow_pickle)
        model, _ = convert.convert_state(arrays, preset=preset)
        return model
    return _trunk_checkpoint(weights, preset, model_config)


def save_model(model, output: str) -> None:
    """`.keras` (architecture + weights), `.weights.h5` (+ `<output>.config.json`, the Keras
    serialization), anything else: a tf.train.Checkpoint prefix of the flat variable dict."""
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    if output.endswith(".keras"):
        model.save(output)
    elif output.endswith(".weights.h5"):
        model.save_weights(output)
        with open(output + ".config.json", "w") as f:
            json.dump(keras.saving.serialize_keras_object(model), f, indent=1)
    else:
        tf.train.Checkpoint(model=workdir_lib.model_checkpoint_items(model)).write(output)
