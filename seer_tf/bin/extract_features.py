"""Features of a frozen trunk for a folder or a list of images, in order, as .npy.

    python -m seer_tf.bin.extract_features --input=/photos --workdir=WORKDIR --output=out/feats
    python -m seer_tf.bin.extract_features --input=/photos --weights=seer.keras --output=out/feats
    python -m seer_tf.bin.extract_features --input=files.txt --weights=WORKDIR \
        --preset=seer_regnety_256gf --endpoint=stage3 --output=out/feats

--input: a directory (every .jpg/.jpeg/.png/.gif/.bmp/.webp under it, recursively, sorted) or a
text file with one path per line (relative paths are relative to the current directory; the
order is kept). Writes `<output>.npy` (float32 [N, d]) and `<output>.paths.txt` (the N paths, row
i of the array = line i). Files that cannot be read or decoded are skipped, never fatal: they are
listed in `<output>.skipped.txt` and counted in the JSON report printed at the end.
Preprocessing is the evaluation/export one (`eval.inputs.eval_preprocess`; sizes default to the
workdir's run, else 256/224), so these features equal what the exported SavedModel returns.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

import seer_tf  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TensorFlow starts)
import numpy as np  # noqa: E402

from seer_tf import usage, weights  # noqa: E402
from seer_tf.eval import inputs  # noqa: E402
from seer_tf.eval.features import extract_files  # noqa: E402

_INPUT = flags.DEFINE_string("input", None, "A directory of images or a text file of paths.")
_OUTPUT = flags.DEFINE_string("output", None, "Output prefix: <output>.npy, <output>.paths.txt.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Pretraining workdir (model.json + checkpoints).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: the latest).")
_WEIGHTS = flags.DEFINE_string("weights", None, "Model weights (instead of --workdir).")
_PRESET = flags.DEFINE_string("preset", None, "RegNet preset of a bare TF checkpoint.")
_MODEL_CONFIG = flags.DEFINE_string("model_config", None, "JSON architecture of --weights.")
_ALLOW_PICKLE = flags.DEFINE_bool("allow_pickle", False, "Unpickle .pth files you trust.")
_ENDPOINT = flags.DEFINE_string("endpoint", "pooled", "Trunk endpoint, average-pooled.")
_RESIZE = flags.DEFINE_integer("resize", None, "Shorter side before the center crop (256).")
_CROP = flags.DEFINE_integer("crop", None, "Center crop size (224).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per batch.")


def _validate(argv):
    usage.require_no_extra_args(argv)
    if not _INPUT.value or not _OUTPUT.value or not (_WEIGHTS.value or _WORKDIR.value):
        raise usage.UsageError("--input, --output and one of --workdir / --weights are required")
    if not os.path.exists(_INPUT.value):  # before importing TensorFlow: fail fast
        raise usage.UsageError(f"--input={_INPUT.value}: no such directory or file")


def main(argv):
    return usage.run(lambda: _main(argv))


def _main(argv):
    _validate(argv)


    config = weights.read_config(_WORKDIR.value) if _WORKDIR.value else None
    _, _, resize, crop = inputs.resolve(config, None, _RESIZE.value, _CROP.value)
    paths = inputs.list_images(_INPUT.value)
    model = weights.load_model(_WEIGHTS.value, workdir=_WORKDIR.value, step=_STEP.value,
                               preset=_PRESET.value, model_config=_MODEL_CONFIG.value,
                               allow_pickle=_ALLOW_PICKLE.value)
    feats, kept = extract_files(model, paths, _ENDPOINT.value, resize, crop, _BATCH.value)
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
