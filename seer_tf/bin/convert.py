"""Convert PyTorch RegNetY weights (torchvision, VISSL/SEER, ClassyVision, timm) to seer_tf.

    python -m seer_tf.bin.convert --input=regnet_y_16gf.pth --output=regnet_y_16gf.keras
    python -m seer_tf.bin.convert --input=seer_regnet256gf.torch --output=seer256.weights.h5 \
        --preset=seer_regnety_256gf --allow_pickle
    python -m seer_tf.bin.convert --input=model.safetensors --output=ckpt/regnet  # tf.train.Checkpoint

The architecture is read from the tensor shapes (pass --preset to also check it against a
preset). A VISSL checkpoint's SwAV head and prototypes come along (--trunk_only drops them).
Output by suffix (seer_tf.weights.save_model): `.keras` (architecture + weights; loads with
`import seer_tf; keras.saving.load_model(path)`), `.weights.h5` (weights; the architecture
goes to `<output>.config.json`), anything else: a TF checkpoint prefix. `.pth`-style inputs need
torch; `.npz` and `.safetensors` do not. Bad input ends in one `error:` line, exit status 2.
"""

import json
import sys

from absl import app, flags

import seer_tf  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TensorFlow starts)
from seer_tf import convert, usage, weights  # noqa: E402
from seer_tf.models.family import get_preset  # noqa: E402

_INPUT = flags.DEFINE_string("input", None, "PyTorch weights: .pth/.pt/.torch/.bin, .npz, .safetensors.")
_OUTPUT = flags.DEFINE_string("output", None, "Output: X.keras, X.weights.h5, or a checkpoint prefix.")
_FORMAT = flags.DEFINE_enum("format", "auto", ["auto", "torchvision", "vissl", "classy", "timm"],
                            "Source naming; auto detects it from the keys.")
_PRESET = flags.DEFINE_string("preset", None, "Check the checkpoint against this preset.")
_TRUNK_ONLY = flags.DEFINE_bool("trunk_only", False, "Drop a VISSL SwAV head if present.")
_PICKLE = flags.DEFINE_bool("allow_pickle", False,
                            "Unpickle arbitrary objects in .pth files (only for files you trust).")


def main(argv):
    return usage.run(lambda: _main(argv))


def _main(argv):
    usage.require_no_extra_args(argv)
    if not _INPUT.value or not _OUTPUT.value:
        raise usage.UsageError("--input and --output are required")

    if _PRESET.value:
        get_preset(_PRESET.value)
    arrays, others = weights.read_weights(_INPUT.value, allow_pickle=_PICKLE.value)
    model, report = convert.convert_state(arrays, _FORMAT.value, _PRESET.value,
                                          include_head=not _TRUNK_ONLY.value)
    weights.save_model(model, _OUTPUT.value)
    report["non_tensor_entries"] = sorted(others)
    report["output"] = _OUTPUT.value
    print(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
