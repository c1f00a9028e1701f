"""Evaluate a trunk: linear probe, kNN, fine-tuning or low-shot, on an image dataset.

    python -m seer_tf.bin.evaluate --workdir=WORKDIR --protocol=knn     # a pretraining run
    python -m seer_tf.bin.evaluate --protocol=knn --data=/data/imagenet --weights=seer.keras
    python -m seer_tf.bin.evaluate --protocol=linear --data=imagenette --data_dir=~/tfds \
        --weights=regnet_y_16gf.pth --eval_split=validation
    python -m seer_tf.bin.evaluate --protocol=lowshot --lowshot_subset=1percent.txt \
        --data=/data/imagenet --workdir=WORKDIR --step=300000
    python -m seer_tf.bin.evaluate --protocol=finetune --epochs=35 --strategy=mirrored ...

The model: `--workdir` (its model.json and latest checkpoint, or `--step`) or `--weights` (any
format of `seer_tf.weights.load_model`). --data (see `eval.inputs.splits`): an ImageFolder root,
a root with `<split>.txt` list files, a TFDS dataset name (read from --data_dir, never
downloaded), or `digits`; with --workdir of the digits demo it defaults to the digits at the
run's image size (resize = crop = that size). Defaults are the published recipes (docs/design.md
"Evaluation"); the flags below override single numbers. The result (top-1, top-5, per-class
top-1, the settings) is printed as JSON and written to `<output_dir>/<protocol>.json`
(default output_dir: WORKDIR/eval, else eval_results), with TensorBoard scalars in
`<output_dir>/tensorboard`. Bad input ends in one `error:` line and exit status 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from absl import app, flags, logging

import seer_tf  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TensorFlow starts)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from seer_tf import distribute, usage, weights  # noqa: E402
from seer_tf.eval import features, inputs, knn, linear  # noqa: E402
from seer_tf.eval import finetune as ft  # noqa: E402

PROTOCOLS = ("linear", "knn", "finetune", "lowshot")

_PROTOCOL = flags.DEFINE_enum("protocol", None, list(PROTOCOLS), "Evaluation protocol.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Pretraining workdir (model.json + checkpoints).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: the latest).")
_DATA = flags.DEFINE_string("data", None, "ImageFolder/list root, TFDS name, or 'digits'.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (for a TFDS --data).")
_TRAIN_SPLIT = flags.DEFINE_string("train_split", "train", "Split to train / build the index on.")
_EVAL_SPLIT = flags.DEFINE_string("eval_split", "val", "Split to report accuracy on.")
_WEIGHTS = flags.DEFINE_string("weights", None, "Model weights (instead of --workdir).")
_PRESET = flags.DEFINE_string("preset", None, "RegNet preset of a bare TF checkpoint.")
_MODEL_CONFIG = flags.DEFINE_string("model_config", None, "JSON architecture of --weights.")
_ALLOW_PICKLE = flags.DEFINE_bool("allow_pickle", False, "Unpickle .pth files you trust.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None,
                                  "Results and TensorBoard (default WORKDIR/eval or eval_results).")
_ENDPOINT = flags.DEFINE_string("endpoint", "pooled", "Trunk endpoint for frozen features.")
_RESIZE = flags.DEFINE_integer("resize", None, "Shorter side before the center crop (256).")
_CROP = flags.DEFINE_integer("crop", None, "Center / random crop size (224).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Training batch (default: the recipe's).")
_FEATURE_BATCH = flags.DEFINE_integer("feature_batch_size", 64, "Batch for feature extraction.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Training epochs (default: the recipe's).")
_LR = flags.DEFINE_float("lr", None, "Base LR per 256 images (default: the recipe's).")
_WD = flags.DEFINE_float("weight_decay", None, "Weight decay (default: the recipe's).")
_MILESTONES = flags.DEFINE_list("milestones", None, "Epochs where the LR drops x0.1.")
_K = flags.DEFINE_integer("k", 20, "kNN neighbours (DINO 20, VISSL 200).")
_T = flags.DEFINE_float("temperature", 0.07, "kNN temperature (DINO 0.07, VISSL sigma 0.1).")
_FRACTION = flags.DEFINE_float("lowshot_fraction", None, "Low-shot label fraction (0.01, 0.1).")
_PER_CLASS = flags.DEFINE_integer("lowshot_per_class", None, "Low-shot images per class.")
_SUBSET = flags.DEFINE_string("lowshot_subset", None,
                              "Published subset list (SimCLR's 1percent.txt / 10percent.txt).")
_LOWSHOT_METHOD = flags.DEFINE_enum("lowshot_method", "linear", ["linear", "finetune"],
                                    "Train a probe or fine-tune on the low-shot subset.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed (subsets, shuffling, initialization).")
_STRATEGY = flags.DEFINE_string("strategy", "default", "default | mirrored | multi_worker | tpu.")


@dataclasses.dataclass
class Inputs:
    """What to read and how: the splits' source and the preprocessing sizes."""
    data: str
    image_size: int
    resize: int
    crop: int


def resolve_inputs() -> Inputs:
    """--data / --resize / --crop, defaulting to the workdir's digits at their own size."""
    config = weights.read_config(_WORKDIR.value) if _WORKDIR.value else None
    data, image_size, resize, crop = inputs.resolve(config, _DATA.value, _RESIZE.value,
                                                    _CROP.value)
    if data is None:
        raise usage.UsageError("--data is required (an ImageFolder/list root, a TFDS name or "
                               "'digits')")
    return Inputs(data, image_size, resize, crop)


# ------------------------------------------------------------------ protocols

def _features(model, split, strategy, sizes: Inputs, indices=None):
    ds = inputs.eval_batches(split.images(indices), sizes.resize, sizes.crop,
                             _FEATURE_BATCH.value)
    feats, (labels,) = features.extract_features(model, ds, _ENDPOINT.value, strategy)
    expected = len(split.labels) if indices is None else len(indices)
    if len(labels) != expected:
        logging.warning("skipped %d unreadable images", expected - len(labels))
    return feats, np.asarray(labels)


def _config(cls):
    overrides = {"epochs": _EPOCHS.value, "batch_size": _BATCH.value, "base_lr": _LR.value,
                 "weight_decay": _WD.value, "seed": _SEED.value,
                 "milestones": (tuple(int(m) for m in _MILESTONES.value)
                                if _MILESTONES.value else None)}
    return dataclasses.replace(cls(), **{k: v for k, v in overrides.items() if v is not None})


def _finetune(model, train, evaluation, strategy, writer, sizes: Inputs, indices=None):
    config = _config(ft.FinetuneConfig)
    n = len(train.labels) if indices is None else len(indices)
    ds = train.images(indices).shuffle(min(n, 10_000), seed=config.seed,
                                       reshuffle_each_iteration=True)
    eval_ds = inputs.eval_batches(evaluation.images(), sizes.resize, sizes.crop,
                                  _FEATURE_BATCH.value)
    _, metrics = ft.finetune(model, inputs.augment(ds, sizes.crop, config.seed),
                             len(train.class_names), config, strategy, eval_ds,
                             on_epoch=_epoch_logger(writer, "finetune"))
    metrics["num_train"] = n
    return metrics, config


def _epoch_logger(writer, prefix):
    def log(epoch, stats):
        with writer.as_default(step=epoch + 1):
            for k, v in stats.items():
                tf.summary.scalar(f"{prefix}/{k}", v)

    return log


def lowshot_indices(train, num_classes):
    """-> (indices of the train split, subset report)."""
    if _SUBSET.value:
        indices = inputs.indices_from_file(_SUBSET.value, train.ids)
        return indices, {**inputs.subset_report(train.labels, indices, num_classes, None),
                         "file": _SUBSET.value}
    indices = inputs.balanced_subset(train.labels, _FRACTION.value, _PER_CLASS.value,
                                     _SEED.value, train.ids, num_classes)
    k = inputs.shots_per_class(train.labels, _FRACTION.value, _PER_CLASS.value, num_classes)
    return indices, {**inputs.subset_report(train.labels, indices, num_classes, k),
                     "fraction": _FRACTION.value, "seed": _SEED.value}


def run_protocol(protocol, model, train, evaluation, strategy, writer, sizes: Inputs):
    """-> (metrics dict, settings dict) for one protocol."""
    num_classes = len(train.class_names)
    if protocol == "finetune":
        metrics, config = _finetune(model, train, evaluation, strategy, writer, sizes)
        return metrics, dataclasses.asdict(config)
    config = _config(linear.LinearConfig)
    indices, subset = (lowshot_indices(train, num_classes) if protocol == "lowshot"
                       else (None, None))
    if protocol == "lowshot" and _LOWSHOT_METHOD.value == "finetune":
        metrics, config = _finetune(model, train, evaluation, strategy, writer, sizes, indices)
    else:  # the subset comes from the labels: only its images are read
        train_x, train_y = _features(model, train, strategy, sizes, indices)
        eval_x, eval_y = _features(model, evaluation, strategy, sizes)
        if protocol == "knn":
            return (knn.knn_classify(train_x, train_y, eval_x, eval_y, num_classes, _K.value,
                                     _T.value), {"k": _K.value, "temperature": _T.value})
        metrics = linear.linear_probe(train_x, train_y, eval_x, eval_y, num_classes, config,
                                      _epoch_logger(writer, protocol))
    settings = dataclasses.asdict(config)
    if protocol == "lowshot":
        metrics["subset"] = subset
        settings["lowshot_method"] = _LOWSHOT_METHOD.value
    return metrics, settings


def _validate():
    if not _PROTOCOL.value:
        raise usage.UsageError(f"--protocol is required ({' | '.join(PROTOCOLS)})")
    if bool(_WORKDIR.value) == bool(_WEIGHTS.value):
        raise usage.UsageError("give exactly one of --workdir and --weights")
    chosen = [f for f in (_FRACTION.value, _PER_CLASS.value, _SUBSET.value) if f is not None]
    if _PROTOCOL.value == "lowshot" and len(chosen) != 1:
        raise usage.UsageError("lowshot needs exactly one of --lowshot_fraction, "
                               "--lowshot_per_class and --lowshot_subset")
    if _WEIGHTS.value and not os.path.exists(_WEIGHTS.value) \
            and not os.path.exists(_WEIGHTS.value + ".index"):
        raise usage.UsageError(f"--weights={_WEIGHTS.value}: no such file or directory")
    if _WORKDIR.value and not os.path.isdir(_WORKDIR.value):
        raise usage.UsageError(f"--workdir={_WORKDIR.value}: no such directory")


def main(argv):
    return usage.run(lambda: _main(argv))


def _main(argv):
    usage.require_no_extra_args(argv)
    start = time.time()
    _validate()
    sizes = resolve_inputs()


    train, evaluation = inputs.load_splits(sizes.data, _DATA_DIR.value, _TRAIN_SPLIT.value,
                                           _EVAL_SPLIT.value, sizes.image_size)
    strategy = distribute.get_strategy(_STRATEGY.value)
    with strategy.scope():
        model = weights.load_model(_WEIGHTS.value, workdir=_WORKDIR.value, step=_STEP.value,
                                   preset=_PRESET.value, model_config=_MODEL_CONFIG.value,
                                   allow_pickle=_ALLOW_PICKLE.value)
    output_dir = _OUTPUT_DIR.value or (os.path.join(_WORKDIR.value, "eval") if _WORKDIR.value
                                       else "eval_results")
    os.makedirs(output_dir, exist_ok=True)
    writer = tf.summary.create_file_writer(os.path.join(output_dir, "tensorboard"))
    metrics, settings = run_protocol(_PROTOCOL.value, model, train, evaluation, strategy,
                                     writer, sizes)
    metrics["per_class_top1"] = dict(zip(train.class_names, metrics["per_class_top1"]))
    step = (int(weights.checkpoint_prefix(_WORKDIR.value, _STEP.value).rsplit("-", 1)[1])
            if _WORKDIR.value else None)
    result = {"protocol": _PROTOCOL.value, "data": sizes.data, "workdir": _WORKDIR.value,
              "weights": _WEIGHTS.value, "step": step,
              "endpoint": _ENDPOINT.value, "resize": sizes.resize, "crop": sizes.crop,
              **metrics, "settings": settings, "elapsed_s": round(time.time() - start, 1)}
    _write(result, output_dir, writer)
    return 0


def _write(result, output_dir, writer):
    with writer.as_default(step=result["step"] or 0):
        for key in ("top1", "top5", "mean_per_class_top1"):
            if result.get(key) is not None:
                tf.summary.scalar(f"eval/{result['protocol']}/{key}", result[key])
    writer.flush()
    path = os.path.join(output_dir, f"{result['protocol']}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))
    logging.info("results written to %s", path)


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    app.run(lambda argv: sys.exit(main(argv)))
