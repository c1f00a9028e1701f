"""Evaluate a trunk: linear probe, kNN, fine-tuning or low-shot, on an image dataset.

    python -m seer_tf.bin.evaluate --protocol=knn --data=/data/imagenet --weights=seer.keras
    python -m seer_tf.bin.evaluate --protocol=linear --data=imagenette --data_dir=~/tfds \
        --weights=regnet_y_16gf.pth --eval_split=validation
    python -m seer_tf.bin.evaluate --protocol=lowshot --lowshot_fraction=0.01 --data=... \
        --weights=WORKDIR --preset=seer_regnety_256gf        # a pretraining workdir
    python -m seer_tf.bin.evaluate --protocol=finetune --epochs=35 --strategy=mirrored ...

--data: an ImageFolder root (`root/<split>/<class>/<image>`, classes = sorted folder names of
the train split) or a TFDS dataset name (read from --data_dir, never downloaded). --weights: a
seer_tf `.keras`, `.weights.h5`, PyTorch `.pth/.torch/.npz/.safetensors` (converted on the fly),
a TF checkpoint prefix, or a pretraining workdir (needs --preset or --model_config); see
`eval.features.load_model`. Defaults are the published recipes (DESIGN.md "Evaluation"); the
flags below override single numbers. The result (top-1, top-5, per-class top-1, the settings)
is printed as JSON and written to `<output_dir>/<protocol>.json`, with TensorBoard scalars in
`<output_dir>/tensorboard`. Bad input ends in one `error:` line and exit status 2.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

from absl import app, flags, logging

import seer_tf  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TensorFlow starts)
from seer_tf import usage

PROTOCOLS = ("linear", "knn", "finetune", "lowshot")

_PROTOCOL = flags.DEFINE_enum("protocol", None, list(PROTOCOLS), "Evaluation protocol.")
_DATA = flags.DEFINE_string("data", None, "ImageFolder root, or a TFDS dataset name.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (for a TFDS --data).")
_TRAIN_SPLIT = flags.DEFINE_string("train_split", "train", "Split to train / build the index on.")
_EVAL_SPLIT = flags.DEFINE_string("eval_split", "val", "Split to report accuracy on.")
_WEIGHTS = flags.DEFINE_string("weights", None, "Model weights (see the module docstring).")
_PRESET = flags.DEFINE_string("preset", None, "RegNet preset of a TF checkpoint / workdir.")
_MODEL_CONFIG = flags.DEFINE_string("model_config", None, "JSON get_config() of the model.")
_ALLOW_PICKLE = flags.DEFINE_bool("allow_pickle", False, "Unpickle .pth files you trust.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "eval_results", "Where results and TensorBoard go.")
_ENDPOINT = flags.DEFINE_string("endpoint", "pooled", "Trunk endpoint for frozen features.")
_RESIZE = flags.DEFINE_integer("resize", 256, "Shorter side before the center crop.")
_CROP = flags.DEFINE_integer("crop", 224, "Center / random crop size.")
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
_LOWSHOT_METHOD = flags.DEFINE_enum("lowshot_method", "linear", ["linear", "finetune"],
                                    "Train a probe or fine-tune on the low-shot subset.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed (subsets, shuffling, initialization).")
_STRATEGY = flags.DEFINE_string("strategy", "default", "default | mirrored | multi_worker | tpu.")


class InputError(usage.UsageError):
    pass


# ------------------------------------------------------------------ data (thin; see data/)

class Split:
    """One split: labels (numpy), stable ids, and `images(indices)` -> (uint8 image, label).

    Unreadable images are dropped from `images()`; callers compare counts and report them.
    """

    def __init__(self, labels, ids, images_fn):
        self.labels, self.ids, self._images = labels, ids, images_fn

    def images(self, indices=None):
        return self._images(indices)


def _folder_split(root, split, class_names=None):
    import numpy as np
    import tensorflow as tf

    from seer_tf.eval.features import IMAGE_SUFFIXES, decode_image_bytes

    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise InputError(f"{root}: no '{split}' folder (expected {root}/{split}/<class>/<image>)")
    found = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    if not found:
        raise InputError(f"{split_dir}: no class folders")
    class_names = class_names or found
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise InputError(f"{split_dir}: classes not in the train split: {unknown[:5]}")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        files = glob.glob(os.path.join(glob.escape(os.path.join(split_dir, name)), "**", "*"),
                          recursive=True)
        files = sorted(f for f in files if f.lower().endswith(IMAGE_SUFFIXES))
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise InputError(f"{split_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    labels, paths = np.asarray(labels, np.int64), np.asarray(paths)

    def images(indices=None):
        idx = np.arange(len(paths)) if indices is None else np.asarray(indices)
        ds = tf.data.Dataset.from_tensor_slices((paths[idx], labels[idx]))
        ds = ds.map(lambda p, y: (decode_image_bytes(tf.io.read_file(p)), y),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.ignore_errors()

    return Split(labels, list(paths), images), class_names


def _tfds_split(name, data_dir, split):
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from seer_tf.eval.features import decode_image_bytes

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        info = builder.info
        raw = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()},
                                 shuffle_files=False)
    except Exception as e:  # tfds raises many types (DatasetNotFoundError, AssertionError, ...)
        raise InputError(f"TFDS {name!r} split {split!r} in {data_dir}: "
                         f"{str(e).splitlines()[0][:300]}") from e
    batches = raw.map(lambda x: x["label"]).batch(65536)
    labels = np.concatenate([b.numpy() for b in batches] or [np.zeros([0], np.int64)])
    class_names = list(info.features["label"].names)

    def images(indices=None):
        ds = raw.map(lambda x: (x["image"], x["label"]))
        if indices is not None:
            keep = np.zeros([len(labels)], bool)
            keep[np.asarray(indices, np.int64)] = True
            keep = tf.constant(keep)

            def kept(i, _):
                return keep[i]

            ds = ds.enumerate().filter(kept).map(lambda i, element: element)
        return ds.map(lambda img, y: (decode_image_bytes(img), y),
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return Split(labels, [f"{split}:{i}" for i in range(len(labels))], images), class_names


def load_splits(data, data_dir, train_split, eval_split):
    if os.path.isdir(data):
        train, names = _folder_split(data, train_split)
        evaluation, _ = _folder_split(data, eval_split, names)
    elif os.path.sep in data or data.startswith("."):
        raise InputError(f"--data={data}: no such directory")
    else:
        train, names = _tfds_split(data, data_dir, train_split)
        evaluation, _ = _tfds_split(data, data_dir, eval_split)
    return train, evaluation, names


# ------------------------------------------------------------------ protocols

def _features(model, split, strategy, indices=None):
    import numpy as np
    import tensorflow as tf

    from seer_tf.eval import features as F

    ds = split.images(indices).map(
        lambda img, y: (F.eval_preprocess(img, _RESIZE.value, _CROP.value), y),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(_FEATURE_BATCH.value).prefetch(2)
    feats, (labels,) = F.extract_features(model, ds, _ENDPOINT.value, strategy)
    expected = len(split.labels) if indices is None else len(indices)
    if len(labels) != expected:
        logging.warning("skipped %d unreadable images", expected - len(labels))
    return feats, np.asarray(labels)


def _config(cls, **defaults):
    import dataclasses

    overrides = {"epochs": _EPOCHS.value, "batch_size": _BATCH.value, "base_lr": _LR.value,
                 "weight_decay": _WD.value, "seed": _SEED.value,
                 "milestones": (tuple(int(m) for m in _MILESTONES.value)
                                if _MILESTONES.value else None)}
    config = cls(**defaults)
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


def _finetune(model, train, evaluation, num_classes, strategy, writer, indices=None):
    import numpy as np
    import tensorflow as tf

    from seer_tf.eval import features as F
    from seer_tf.eval import finetune as ft

    config = _config(ft.FinetuneConfig)
    n = len(train.labels) if indices is None else len(indices)
    ds = train.images(indices).shuffle(min(n, 10_000), seed=config.seed,
                                       reshuffle_each_iteration=True)
    ds = ft.augment(ds, _CROP.value, config.seed)
    eval_ds = evaluation.images().map(
        lambda img, y: (F.eval_preprocess(img, _RESIZE.value, _CROP.value), y),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(_FEATURE_BATCH.value)
    _, metrics = ft.finetune(model, ds, num_classes, config, strategy, eval_ds,
                             on_epoch=_epoch_logger(writer, "finetune"))
    metrics["num_train"] = n
    return metrics, config


def _epoch_logger(writer, prefix):
    import tensorflow as tf

    def log(epoch, stats):
        with writer.as_default(step=epoch + 1):
            for k, v in stats.items():
                tf.summary.scalar(f"{prefix}/{k}", v)

    return log


def run_protocol(protocol, model, train, evaluation, num_classes, strategy, writer):
    """-> (metrics dict, settings dict) for one protocol."""
    import dataclasses

    from seer_tf.eval import knn, linear, lowshot

    if protocol == "finetune":
        metrics, config = _finetune(model, train, evaluation, num_classes, strategy, writer)
        return metrics, dataclasses.asdict(config)
    config = _config(linear.LinearConfig)
    on_epoch = _epoch_logger(writer, protocol)
    if protocol == "lowshot":  # the subset comes from the labels: only its images are read
        indices = lowshot.balanced_subset(train.labels, _FRACTION.value, _PER_CLASS.value,
                                          _SEED.value, train.ids, num_classes)
        k = lowshot.shots_per_class(train.labels, _FRACTION.value, _PER_CLASS.value, num_classes)
        subset = {**lowshot.subset_report(train.labels, indices, num_classes, k),
                  "fraction": _FRACTION.value, "seed": _SEED.value}
        if _LOWSHOT_METHOD.value == "finetune":
            metrics, config = _finetune(model, train, evaluation, num_classes, strategy, writer,
                                        indices)
        else:
            train_x, train_y = _features(model, train, strategy, indices)
            eval_x, eval_y = _features(model, evaluation, strategy)
            metrics = linear.linear_probe(train_x, train_y, eval_x, eval_y, num_classes, config,
                                          on_epoch)
        metrics["subset"] = subset
        return metrics, {**dataclasses.asdict(config), "lowshot_method": _LOWSHOT_METHOD.value}
    train_x, train_y = _features(model, train, strategy)
    eval_x, eval_y = _features(model, evaluation, strategy)
    if protocol == "knn":
        return (knn.knn_classify(train_x, train_y, eval_x, eval_y, num_classes, _K.value, _T.value),
                {"k": _K.value, "temperature": _T.value})
    metrics = linear.linear_probe(train_x, train_y, eval_x, eval_y, num_classes, config, on_epoch)
    return metrics, dataclasses.asdict(config)


def _validate():
    if not _PROTOCOL.value:
        raise InputError(f"--protocol is required ({' | '.join(PROTOCOLS)})")
    if not _DATA.value or not _WEIGHTS.value:
        raise InputError("--data and --weights are required")
    if _PROTOCOL.value == "lowshot" and (_FRACTION.value is None) == (_PER_CLASS.value is None):
        raise InputError("lowshot needs exactly one of --lowshot_fraction and --lowshot_per_class")
    if _RESIZE.value and _RESIZE.value < _CROP.value:
        raise InputError(f"--resize ({_RESIZE.value}) must be >= --crop ({_CROP.value})")
    if not os.path.exists(_WEIGHTS.value) and not os.path.exists(_WEIGHTS.value + ".index"):
        raise InputError(f"--weights={_WEIGHTS.value}: no such file or directory")


def main(argv):
    return usage.run(lambda: _main(argv))


def _main(argv):
    usage.require_no_extra_args(argv)
    start = time.time()
    _validate()
    import tensorflow as tf  # after the flag checks, so bad flags fail fast

    from seer_tf import distribute
    from seer_tf.eval.features import load_model

    train, evaluation, class_names = load_splits(_DATA.value, _DATA_DIR.value,
                                                 _TRAIN_SPLIT.value, _EVAL_SPLIT.value)
    strategy = distribute.get_strategy(_STRATEGY.value)
    with strategy.scope():
        model = load_model(_WEIGHTS.value, _PRESET.value, _MODEL_CONFIG.value,
                           _ALLOW_PICKLE.value)
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    writer = tf.summary.create_file_writer(os.path.join(_OUTPUT_DIR.value, "tensorboard"))
    metrics, settings = run_protocol(_PROTOCOL.value, model, train, evaluation,
                                     len(class_names), strategy, writer)
    metrics["per_class_top1"] = dict(zip(class_names, metrics["per_class_top1"]))
    result = {"protocol": _PROTOCOL.value, "data": _DATA.value, "weights": _WEIGHTS.value,
              "endpoint": _ENDPOINT.value, "resize": _RESIZE.value, "crop": _CROP.value,
              **metrics, "settings": settings, "elapsed_s": round(time.time() - start, 1)}
    with writer.as_default(step=0):
        for key in ("top1", "top5", "mean_per_class_top1"):
            if result.get(key) is not None:
                tf.summary.scalar(f"eval/{_PROTOCOL.value}/{key}", result[key])
    writer.flush()
    path = os.path.join(_OUTPUT_DIR.value, f"{_PROTOCOL.value}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))
    logging.info("results written to %s", path)
    return 0


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    app.run(lambda argv: sys.exit(main(argv)))
