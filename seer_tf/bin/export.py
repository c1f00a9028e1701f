"""Write a serving SavedModel: encoded images or uint8 arrays in, trunk features out.

    python -m seer_tf.bin.export --workdir=WORKDIR --output=WORKDIR/serving   # a pretraining run
    python -m seer_tf.bin.export --workdir=WORKDIR --step=20000 --output=DIR --swav_outputs=no
    python -m seer_tf.bin.export --weights=seer.keras --output=serving/seer --resize=256 --crop=224

Signatures (see seer_tf/export.py): `serving_bytes` (tf.string [N], also `serving_default`) and
`serving_images` (uint8 [N, H, W, 3]); outputs "pooled", plus "embedding", "prototype",
"prototype_score" and "prototype_scores" when the model has a SwAV head: a workdir's model
always has one (--swav_outputs=no leaves them out), a `.keras` SwAVModel or a VISSL file with
its head too. Sizes default to the workdir's run (the digits demo: its image size), else
Resize(256) + CenterCrop(224). Try it:
    saved_model_cli run --dir DIR --tag_set serve --signature_def serving_images \
        --input_exprs 'images=np.zeros((1,64,64,3),np.uint8)'
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

import seer_tf  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TensorFlow starts)
from seer_tf import export, usage, weights  # noqa: E402
from seer_tf.eval import inputs  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Pretraining workdir (model.json + checkpoints).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: the latest).")
_WEIGHTS = flags.DEFINE_string("weights", None, "Model weights (instead of --workdir).")
_OUTPUT = flags.DEFINE_string("output", None, "SavedModel directory to write.")
_PRESET = flags.DEFINE_string("preset", None, "RegNet preset of a bare TF checkpoint.")
_MODEL_CONFIG = flags.DEFINE_string("model_config", None, "JSON architecture of --weights.")
_ALLOW_PICKLE = flags.DEFINE_bool("allow_pickle", False, "Unpickle .pth files you trust.")
_RESIZE = flags.DEFINE_integer("resize", None, "Shorter side before the center crop (256).")
_CROP = flags.DEFINE_integer("crop", None, "Center crop size (224).")
_ENDPOINT = flags.DEFINE_string("endpoint", "pooled", "Trunk endpoint, average-pooled.")
_SWAV = flags.DEFINE_enum("swav_outputs", "auto", ["auto", "yes", "no"],
                          "Add embedding/prototype outputs (auto: when the model has a head).")


def main(argv):
    return usage.run(lambda: _main(argv))


def _main(argv):
    usage.require_no_extra_args(argv)
    if not (_WEIGHTS.value or _WORKDIR.value) or not _OUTPUT.value:
        raise usage.UsageError("--output and one of --workdir / --weights are required")

    config = weights.read_config(_WORKDIR.value) if _WORKDIR.value else None
    _, _, resize, crop = inputs.resolve(config, None, _RESIZE.value, _CROP.value)
    model = weights.load_model(_WEIGHTS.value, workdir=_WORKDIR.value, step=_STEP.value,
                               preset=_PRESET.value, model_config=_MODEL_CONFIG.value,
                               allow_pickle=_ALLOW_PICKLE.value)
    include = {"auto": None, "yes": True, "no": False}[_SWAV.value]
    if include is None and _ENDPOINT.value != "pooled":
        include = False
    module = export.export(model, _OUTPUT.value, resize, crop, _ENDPOINT.value, include)
    outputs = sorted(module.serving_images.get_concrete_function().structured_outputs)
    print(json.dumps({"saved_model": os.path.abspath(_OUTPUT.value),
                      "signatures": ["serving_bytes", "serving_images", "serving_default"],
                      "outputs": outputs, "resize": module.resize, "crop": module.crop,
                      "endpoint": module.endpoint}))
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
