"""Every read and write of model weights in seer_tf (SEER/SwAV trunks and heads).

  * `workdir`: a pretraining workdir (config.json, model.json, checkpoints/ckpt-N) and the
    training checkpoint layout, defined once: train/loop.py writes it, the binaries read it.
  * `pytorch`: PyTorch-world files (.pth/.torch, .npz, .safetensors) as flat numpy dicts.
  * `files`: `load_model` for any source (workdir, .keras, .weights.h5, PyTorch file, TF
    checkpoint prefix) and `save_model` (bin/convert's outputs).
"""

from seer_tf.weights.files import built, load_keras, load_model, save_model, trunk_of
from seer_tf.weights.pytorch import read_weights
from seer_tf.weights.workdir import (CHECKPOINT_DIR, CONFIG_FILE, MODEL_FILE, checkpoint_prefix,
                                     checkpoint_steps, describe_workdir, digest, is_workdir,
                                     load_workdir_model, model_checkpoint_items, read_config,
                                     restore_model)

__all__ = [
    "CHECKPOINT_DIR", "CONFIG_FILE", "MODEL_FILE", "built",
    "checkpoint_prefix", "checkpoint_steps", "describe_workdir", "digest", "is_workdir",
    "load_keras", "load_model", "load_workdir_model", "model_checkpoint_items", "read_config", "read_weights",
    "restore_model", "save_model", "trunk_of",
]
