"""Features of a frozen trunk for a folder or a list of images, in order, as .npy.

    python -m seer_tf.bin.extract_features --input=/photos --weights=seer.keras --output=out/feats
    python -m seer_tf.bin.extract_features --input=files.txt --weights=WORKDIR \
        --preset=seer_regnety_256gf --endpoint=stage3 --output=out/feats

--input: a directory (every .jpg/.jpeg/.png/.gif/.bmp/.webp under it, recursively, sorted) or a
text file with one path per line (relative paths are relative to the current directory; the
order is kept). Writes `<output>.npy` (float32 [N, d]) and `<output>.paths.txt` (the N paths, row
i of the array = line i). Files that cannot be read or decoded are skipped, never fatal: they are
listed in `<output>.skipped.txt` and counted in the JSON report printed at the end.
Preprocessing is the evaluation/export one (`eval.features.eval_preprocess`), so these features
equal what the exported SavedModel returns.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

import seer_tf  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TensorFlow starts)
from seer_tf import usage

_INPUT = flags.DEFINE_string("input", None, "A directory of images or a text file of paths.")
_OUTPUT = flags.DEFINE_string("output", None, "Output prefix: <output>.npy, <output>.paths.txt.")
_WEIGHTS = flags.DEFINE_string("weights", None, "Model weights (see eval.features.load_model).")
_PRESET = flags.DEFINE_string("preset", None, "RegNet preset of a TF checkpoint / workdir.")
_MODEL_CONFIG = flags.DEFINE_string("model_config", None, "JSON get_config() of the model.")
_ALLOW_PICKLE = flags.DEFINE_bool("allow_pickle", False, "Unpickle .pth files you trust.")
_ENDPOINT = flags.DEFINE_string("endpoint", "pooled", "Trunk endpoint, average-pooled.")
_RESIZE = flags.DEFINE_integer("resize", 256, "Shorter side before the center crop.")
_CROP = flags.DEFINE_integer("crop", 224, "Center crop size.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per batch.")


def _validate(argv):
    usage.require_no_extra_args(argv)
    if not _INPUT.value or not _OUTPUT.value or not _WEIGHTS.value:
        raise usage.UsageError("--input, --output and --weights are required")
    if not os.path.exists(_INPUT.value):  # before importing TensorFlow: fail fast
        raise usage.UsageError(f"--input={_INPUT.value}: no such directory or file")
    if _RESIZE.value and _RESIZE.value < _CROP.value:
        raise usage.UsageError(f"--resize ({_RESIZE.value}) must be >= --crop ({_CROP.value})")


def main(argv):
    return usage.run(lambda: _main(argv))


def _main(argv):
    _validate(argv)
    import numpy as np

    from seer_tf.eval.features import extract_files, list_images, load_model

    paths = list_images(_INPUT.value)
    model = load_model(_WEIGHTS.value, _PRESET.value, _MODEL_CONFIG.value, _ALLOW_PICKLE.value)
    feats, kept = extract_files(model, paths, _ENDPOINT.value, _RESIZE.value, _CROP.value,
                                _BATCH.value)
    prefix = _OUTPUT.value[:-4] if _OUTPUT.value.endswith(".npy") else _OUTPUT.value
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    np.save(prefix + ".npy", feats.astype(np.float32))
    kept_set = set(int(i) for i in kept)
    skipped = [p for i, p in enumerate(paths) if i not in kept_set]
    with open(prefix + ".paths.txt", "w", encoding="utf-8") as f:
        f.writelines(paths[int(i)] + "\n" for i in kept)
    if skipped:
        with open(prefix + ".skipped.txt", "w", encoding="utf-8") as f:
            f.writelines(p + "\n" for p in skipped)
        logging.warning("skipped %d unreadable files: %s%s", len(skipped), ", ".join(skipped[:10]),
                        " ..." if len(skipped) > 10 else "")
    report = {"features": prefix + ".npy", "paths": prefix + ".paths.txt",
              "count": int(len(kept)), "dim": int(feats.shape[1]) if len(kept) else 0,
              "skipped": {"count": len(skipped), "files": skipped[:100]}}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    app.run(lambda argv: sys.exit(main(argv)))
