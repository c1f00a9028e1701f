"""The first-run demo's evaluation: did SwAV pretraining on digits learn something?

The same probe is applied to three feature sets, measured in the same run:
  * the pretrained trunk's pooled features,
  * the same network at its random initialization (identical seed, before training),
  * raw pixels (the original 8x8 digits, 64 values).
Probe: standardized features, multinomial logistic regression (scikit-learn), on a 70/30
stratified split (seed 0), and on 5 labels per class drawn from the training part. Collapse
check: how many prototypes are the argmax of at least one digit.
"""

from __future__ import annotations

import json
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
    return 0
