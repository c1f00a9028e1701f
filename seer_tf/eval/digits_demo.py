"""The first-run demo's evaluation: did SwAV pretraining on digits learn something?

The same probe is applied to three feature sets, measured in the same run:
  * the pretrained trunk's pooled features,
  * the same network at its random initialization (identical seed, before training),
  * raw pixels (the original 8x8 digits, 64 values).
Probe: standardized features, multinomial logistic regression (scikit-learn), on a 70/30
stratified split (seed 0), and on 5 labels per class drawn from the training part. Collapse
check: how many prototypes are the argmax of at least one digit.

The demo ends with the commands to try next on its own workdir (evaluation, serving export, a
request to the export, TensorBoard), each runnable as printed: the bytes request reads
`WORKDIR/examples/digits_png.npy`, a few digits PNG-encoded, which the demo writes.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import time

import numpy as np


def probe(features, labels, test_fraction=0.3, shots=5, seed=0):
    """-> (linear-probe accuracy, k-shot accuracy) on held-out digits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_tr, x_te, y_tr, y_te = train_test_split(features, labels, test_size=test_fraction,
                                              stratify=labels, random_state=seed)
    rng = np.random.default_rng(seed)
    few = np.concatenate([rng.choice(np.flatnonzero(y_tr == c), shots, replace=False)
                          for c in np.unique(labels)])

    def fit(x, y):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        return float(clf.fit(x, y).score(x_te, y_te))

    return fit(x_tr, y_tr), fit(x_tr[few], y_tr[few])


def _normalized(images_uint8):
    """The whole (uncropped) digit, normalized as the training crops are."""
    from seer_tf.data.multicrop import IMAGENET_MEAN, IMAGENET_STD

    return (images_uint8.astype(np.float32) / 255.0 - np.array(IMAGENET_MEAN, np.float32)) \
        / np.array(IMAGENET_STD, np.float32)


def trunk_features(backbone, images_uint8, batch=512):
    x = _normalized(images_uint8)
    return np.concatenate([backbone(x[i:i + batch], training=False)["pooled"].numpy()
                           for i in range(0, len(x), batch)]).astype(np.float64)


def prototypes_used(model, images_uint8, batch=512):
    x = _normalized(images_uint8)
    hits = np.concatenate([np.argmax(model([x[i:i + batch]], training=False)["scores"][0], -1)
                           for i in range(0, len(x), batch)])
    return int(len(np.unique(hits)))


def write_examples(workdir, images_uint8, count=4):
    """WORKDIR/examples/digits_png.npy: `count` digits as PNG bytes in a fixed-width bytes array
    (no pickle; a PNG ends with its IEND checksum, never with the NUL numpy strips), the input
    of the export's `serving_bytes`; digits_uint8.npy is the `serving_images` input."""
    from PIL import Image

    folder = os.path.join(workdir, "examples")
    os.makedirs(folder, exist_ok=True)
    encoded = []
    for image in images_uint8[:count]:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    paths = {"bytes": os.path.join(folder, "digits_png.npy"),
             "uint8": os.path.join(folder, "digits_uint8.npy")}
    np.save(paths["bytes"], np.array(encoded, dtype=bytes))
    np.save(paths["uint8"], np.asarray(images_uint8[:count], np.uint8))
    return paths


def next_commands(workdir):
    """The commands to try next on this run's workdir, as printed (see the module docstring)."""
    w = shlex.quote(workdir)
    serving = shlex.quote(os.path.join(workdir, "serving"))
    example = shlex.quote(os.path.join(workdir, "examples", "digits_png.npy"))
    return [
        f"python -m seer_tf.bin.evaluate --workdir={w} --protocol=knn",
        f"python -m seer_tf.bin.export --workdir={w} --output={serving}",
        f"saved_model_cli run --dir {serving} --tag_set serve --signature_def serving_bytes "
        f"--inputs images={example}",
        f"tensorboard --logdir {shlex.quote(os.path.join(workdir, 'tensorboard'))}",
    ]


def run_demo(config, workdir, run_fn, build_model):
    """Pretrain with `run_fn(config, workdir)`, then print the comparison table; exit code 0."""
    import keras
    from sklearn.datasets import load_digits

    from seer_tf.data import digits

    t0 = time.time()
    images, labels = digits.load(config.data.image_size)
    d = config.demo
    keras.utils.set_random_seed(config.train.seed)
    random_model = build_model(config)  # same seed and build order as the run: same init
    random_feats = trunk_features(random_model.backbone, images)
    model, result = run_fn(config, workdir)
    t_train = time.time() - t0
    rows = {
        "SwAV-pretrained RegNetY (ours)": probe(trunk_features(model.backbone, images), labels,
                                                d.test_fraction, d.shots, d.seed),
        "same network, random init": probe(random_feats, labels, d.test_fraction, d.shots, d.seed),
        "raw pixels (8x8)": probe(load_digits().data, labels, d.test_fraction, d.shots, d.seed),
    }
    used = prototypes_used(model, images)
    k = model.prototypes.num_prototypes[0]
    width = max(len(r) for r in rows)
    print()
    print(f"SwAV on scikit-learn digits: {result['step']} steps, batch {config.train.batch_size}, "
          f"{time.time() - t0:.0f} s (pretraining {t_train:.0f} s); workdir {workdir}")
    print(f"{'features':<{width}}  linear probe (70/30)  {d.shots} labels/class")
    for name, (lin, few) in rows.items():
        print(f"{name:<{width}}  {100 * lin:19.1f}%  {100 * few:14.1f}%")
    print(f"prototypes in use: {used} of {k}")
    summary = {"workdir": workdir, "steps": result["step"], "seconds": time.time() - t0,
               "prototypes_used": used, "num_prototypes": k,
               **{name: {"linear": lin, "few_shot": few} for name, (lin, few) in rows.items()}}
    print(json.dumps(summary))
    write_examples(workdir, images)
    print("\nNext, on this run (kNN on the digits, a serving export, a request to it, the curves):")
    print("\n".join(f"  {c}" for c in next_commands(workdir)))
    return 0
