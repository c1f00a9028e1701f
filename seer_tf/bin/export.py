"""Write a serving SavedModel: encoded images or uint8 arrays in, trunk features out.

    python -m seer_tf.bin.export --weights=seer.keras --output=serving/seer
    python -m seer_tf.bin.export --weights=WORKDIR --preset=seer_regnety_256gf --output=DIR \
        --resize=256 --crop=224

Signatures (see seer_tf/export.py): `serving_bytes` (tf.string [N], also `serving_default`) and
`serving_images` (uint8 [N, H, W, 3]); outputs "pooled", plus "embedding", "prototype",
"prototype_score" when the weights hold a SwAV head (a pretraining checkpoint restored through
--model_config of a SwAVModel, a `.keras` SwAVModel, or a VISSL file with its head).
Try it: saved_model_cli run --dir DIR --tag_set serve --signature_def serving_images \
        --inputs images=batch.npy
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

import seer_tf  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TensorFlow starts)
from seer_tf import usage

_WEIGHTS = flags.DEFINE_string("weights", None, "Model weights (see eval.features.load_model).")
_OUTPUT = flags.DEFINE_string("output", None, "SavedModel directory to write.")
_PRESET = flags.DEFINE_string("preset", None, "RegNet preset of a TF checkpoint / workdir.")
_MODEL_CONFIG = flags.DEFINE_string("model_config", None, "JSON get_config() of the model.")
_ALLOW_PICKLE = flags.DEFINE_bool("allow_pickle", False, "Unpickle .pth files you trust.")
_RESIZE = flags.DEFINE_integer("resize", 256, "Shorter side before the center crop.")
_CROP = flags.DEFINE_integer("crop", 224, "Center crop size.")
_ENDPOINT = flags.DEFINE_string("endpoint", "pooled", "Trunk endpoint, average-pooled.")
_SWAV = flags.DEFINE_enum("swav_outputs", "auto", ["auto", "yes", "no"],
                          "Add embedding/prototype outputs (auto: when the model has a head).")


def main(argv):
    return usage.run(lambda: _main(argv))


def _main(argv):
    usage.require_no_extra_args(argv)
    if not _WEIGHTS.value or not _OUTPUT.value:
        raise usage.UsageError("--weights and --output are required")
    if _RESIZE.value and _RESIZE.value < _CROP.value:
        raise usage.UsageError(f"--resize ({_RESIZE.value}) must be >= --crop ({_CROP.value})")
    from seer_tf import export
    from seer_tf.eval.features import load_model

    include = {"auto": None, "yes": True, "no": False}[_SWAV.value]
    model = load_model(_WEIGHTS.value, _PRESET.value, _MODEL_CONFIG.value, _ALLOW_PICKLE.value)
    if include is None and _ENDPOINT.value != "pooled":
        include = False
    module = export.export(model, _OUTPUT.value, _RESIZE.value, _CROP.value, _ENDPOINT.value,
                           include)
    outputs = sorted(module.serving_images.get_concrete_function().structured_outputs)
    print(json.dumps({"saved_model": os.path.abspath(_OUTPUT.value),
                      "signatures": ["serving_bytes", "serving_images", "serving_default"],
                      "outputs": outputs, "resize": module.resize, "crop": module.crop,
                      "endpoint": module.endpoint}))
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
