"""Evaluation protocols on small generated problems with known answers.

Images: 32x32 "color classes" (red, green, blue dominant, with pixel noise), linearly separable
by construction; a random-init tiny RegNetY maps them to features the probes must separate.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import seer_tf  # noqa: F401
from seer_tf import weights
from seer_tf.eval import features as F
from seer_tf.eval import inputs
from seer_tf.eval import finetune as ft
from seer_tf.eval import knn, linear, lowshot
from seer_tf.models.regnet import RegNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLORS = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], np.float32)


def color_images(per_class, seed, size=32):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(COLORS)), per_class)
    noise = rng.normal(0, 25, (len(labels), size, size, 3))
    images = np.clip(COLORS[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels


@pytest.fixture(scope="module")
def trunk():
    tf.keras.utils.set_random_seed(0)
    model = RegNet.from_preset("regnety_tiny")
    model.build((None, None, None, 3))
    return model


@pytest.fixture(scope="module")
def color_features(trunk):
    out = {}
    for split, (n, seed) in {"train": (20, 1), "test": (10, 2)}.items():
        images, labels = color_images(n, seed)
        ds = tf.data.Dataset.from_tensor_slices((inputs.normalize(images), labels)).batch(16)
        feats, (got_labels,) = F.extract_features(trunk, ds)
        np.testing.assert_array_equal(got_labels, labels)  # order and pass-through kept
        out[split] = (feats, labels)
    return out


# ------------------------------------------------------------------ preprocessing / features

def test_resize_and_center_crop_follow_torchvision():
    image = np.arange(50 * 80 * 3, dtype=np.uint8).reshape(50, 80, 3)
    assert inputs.resize_shorter_side(image, 32).shape == (32, 51, 3)  # int(32 * 80 / 50) = 51
    assert inputs.resize_shorter_side(image[None].transpose(0, 2, 1, 3), 32).shape == (1, 51, 32, 3)
    crop = inputs.center_crop(tf.constant(image), 24).numpy()
    top, left = int(round((50 - 24) / 2)), int(round((80 - 24) / 2))
    np.testing.assert_array_equal(crop, image[top:top + 24, left:left + 24])
    solid = np.full((40, 60, 3), [255, 0, 128], np.uint8)
    x = inputs.eval_preprocess(solid, resize=36, crop=32).numpy()
    assert x.shape == (32, 32, 3)
    want = (np.array([255, 0, 128]) / 255 - inputs.IMAGENET_MEAN) / inputs.IMAGENET_STD
    np.testing.assert_allclose(x, np.broadcast_to(want, x.shape), atol=1e-6)
    with pytest.raises(ValueError, match="resize"):
        inputs.eval_preprocess(solid, resize=16, crop=32)


def test_features_of_solid_colors_stage_endpoint_and_two_replicas(trunk, mirrored_strategy):
    colors = np.array([[255, 0, 0], [0, 255, 0], [255, 0, 0], [0, 0, 255], [0, 255, 0]], np.uint8)
    images = np.broadcast_to(colors[:, None, None, :], (5, 32, 32, 3))
    ds = tf.data.Dataset.from_tensor_slices((inputs.normalize(images), np.arange(5))).batch(3)
    feats, (idx,) = F.extract_features(trunk, ds)
    assert feats.shape == (5, 64) and feats.dtype == np.float32
    np.testing.assert_array_equal(idx, np.arange(5))
    np.testing.assert_allclose(feats[0], feats[2], atol=1e-6)  # same color, same feature
    assert np.abs(feats[0] - feats[1]).max() > 1e-3 and np.abs(feats[1] - feats[3]).max() > 1e-3
    want = trunk(inputs.normalize(images), training=False)["pooled"].numpy()
    np.testing.assert_allclose(feats, want, atol=1e-5)
    stage2, _ = F.extract_features(trunk, ds, endpoint="stage2")
    want2 = tf.reduce_mean(trunk(inputs.normalize(images), training=False)["stage2"], [1, 2]).numpy()
    np.testing.assert_allclose(stage2, want2, atol=1e-5)
    # Two replicas, uneven last batch (5 = 3 + 2 split over 2 replicas): same rows, same order.
    feats2, (idx2,) = F.extract_features(trunk, ds, strategy=mirrored_strategy)
    np.testing.assert_array_equal(idx2, np.arange(5))
    np.testing.assert_allclose(feats2, feats, atol=1e-5)
    with pytest.raises(ValueError, match="unknown endpoint"):
        F.extract_features(trunk, ds, endpoint="stage9")


def test_load_model_weight_files(tmp_path, trunk):
    trunk.save_weights(tmp_path / "t.weights.h5")
    (tmp_path / "t.weights.h5.config.json").write_text(
        json.dumps({"class_name": "RegNet", "config": trunk.get_config()}))
    loaded = weights.load_model(str(tmp_path / "t.weights.h5"))
    for a, b in zip(loaded.weights, trunk.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    prefix = tf.train.Checkpoint(model=trunk).write(str(tmp_path / "ckpt"))
    with pytest.raises(ValueError, match="--preset or --model_config"):
        weights.load_model(prefix)
    # A checkpoint without the trunk's blocks must be refused, not half-restored.
    tf.train.Checkpoint(model=tf.train.Checkpoint(stem=trunk.stem)).write(str(tmp_path / "stem"))
    with pytest.raises(ValueError, match="not a checkpoint of this architecture"):
        weights.load_model(str(tmp_path / "stem"), preset="regnety_tiny")
    with pytest.raises(FileNotFoundError):
        weights.load_model(str(tmp_path / "missing.keras"))


def test_load_model_from_a_tf_checkpoint_restores_the_whole_trunk(tmp_path, trunk):
    # The pretraining loop's format: the model as a flat {variable path: variable} dict.
    tf.train.Checkpoint(model={v.path: v for v in trunk.weights}).write(str(tmp_path / "ckpt"))
    loaded = weights.load_model(str(tmp_path / "ckpt"), preset="regnety_tiny")
    for a, b in zip(loaded.weights, trunk.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# ------------------------------------------------------------------ metrics, kNN, linear

def test_classification_metrics_known_values():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    labels = np.array([0, 2, 2, 1])
    m = linear.classification_metrics(scores, labels, 4)
    assert m["top1"] == pytest.approx(50.0) and m["top5"] == pytest.approx(100.0)
    assert m["per_class_top1"] == [100.0, 0.0, 50.0, None]  # class 3 absent
    assert m["mean_per_class_top1"] == pytest.approx(50.0) and m["num_examples"] == 4


def test_knn_weighted_vote_by_hand_and_chunking():
    # Query at angle 0. Class 1: one neighbour at cos 0.99; class 0: two at cos 0.90.
    angles = np.arccos([0.99, 0.90, 0.90, -1.0])
    train = np.stack([np.cos(angles), np.sin(angles)], 1) * [[1.0], [3.0], [0.5], [2.0]]
    train_labels = np.array([1, 0, 0, 2])
    query = np.array([[5.0, 0.0]])
    for t, winner in ((0.01, 1), (1.0, 0)):  # sharp T: nearest wins; flat T: majority wins
        s = knn.knn_scores(train, train_labels, query, 3, k=3, temperature=t)
        want = np.zeros(3)
        for cos, y in ((0.99, 1), (0.90, 0), (0.90, 0)):
            want[y] += np.exp((cos - 0.99) / t)
        np.testing.assert_allclose(s[0], want, rtol=1e-5)
        assert s[0].argmax() == winner
    rng = np.random.default_rng(0)
    tr, te, y = rng.normal(size=(50, 8)), rng.normal(size=(7, 8)), rng.integers(0, 4, 50)
    full = knn.knn_scores(tr, y, te, 4, k=5, temperature=0.1)
    chunked = knn.knn_scores(tr, y, te, 4, k=5, temperature=0.1, query_batch=2, train_chunk=3)
    np.testing.assert_allclose(chunked, full, rtol=1e-5)


def test_knn_and_linear_probe_separate_color_classes(color_features):
    (xtr, ytr), (xte, yte) = color_features["train"], color_features["test"]
    for preset in (knn.DINO, knn.VISSL):
        m = knn.knn_classify(xtr, ytr, xte, yte, 3, **preset)
        assert m["top1"] == 100.0 and m["per_class_top1"] == [100.0] * 3
        assert m["k"] == min(preset["k"], 60)
    config = linear.LinearConfig(epochs=12, batch_size=16, base_lr=2.0, milestones=(8,))
    epochs = []
    m = linear.linear_probe(xtr, ytr, xte, yte, 3, config, lambda e, s: epochs.append(s))
    assert m["top1"] == 100.0 and m["top5"] == 100.0 and m["num_train"] == 60
    assert len(epochs) == 12 and epochs[-1]["loss"] < epochs[0]["loss"]
    assert epochs[7]["lr"] == pytest.approx(0.125) and epochs[8]["lr"] == pytest.approx(0.0125)


def test_linear_probe_recipe_defaults_and_weight_decay_rule():
    c = linear.LinearConfig()
    assert (c.epochs, c.base_lr, tuple(c.milestones), c.weight_decay, c.nesterov) == \
        (28, 0.01, (8, 16, 24), 5e-4, True)
    assert linear.step_lr(c, 0) == pytest.approx(0.01)
    assert linear.step_lr(c, 24) == pytest.approx(1e-5)
    clf = linear.LinearClassifier(3, name="probe")
    clf.build((None, 4))
    mask = dict(zip((v.path for v in clf.trainable_variables), linear.decay_mask(clf, False)))
    assert mask == {"probe/bn/gamma": False, "probe/bn/beta": False,
                    "probe/fc/kernel": True, "probe/fc/bias": True}
    assert all(linear.decay_mask(clf, True))


# ------------------------------------------------------------------ low-shot

def test_balanced_subsets_are_balanced_stable_and_nested():
    labels = np.repeat(np.arange(4), [100, 100, 100, 7])
    one = inputs.balanced_subset(labels, fraction=0.04, seed=3)
    assert np.bincount(labels[one]).tolist() == [3, 3, 3, 3]  # round(0.04 * 307 / 4) = 3
    np.testing.assert_array_equal(one, inputs.balanced_subset(labels, fraction=0.04, seed=3))
    assert not np.array_equal(one, inputs.balanced_subset(labels, fraction=0.04, seed=4))
    ten = inputs.balanced_subset(labels, per_class=10, seed=3)
    assert np.bincount(labels[ten]).tolist() == [10, 10, 10, 7]  # class 3 has only 7
    assert set(one) <= set(ten)
    report = inputs.subset_report(labels, ten, 4, 10)
    assert report["short_classes"] == [3] and report["size"] == 37
    # With file names as ids the subset follows the files, not their position.
    ids = [f"img{i}.jpg" for i in range(len(labels))]
    perm = np.random.default_rng(0).permutation(len(labels))
    a = inputs.balanced_subset(labels, per_class=5, seed=1, ids=ids)
    b = inputs.balanced_subset(labels[perm], per_class=5, seed=1, ids=[ids[i] for i in perm])
    assert sorted(ids[i] for i in a) == sorted(ids[perm[i]] for i in b)
    with pytest.raises(ValueError):
        inputs.balanced_subset(labels, fraction=0.1, per_class=3)


def test_lowshot_linear_on_color_features(color_features):
    (xtr, ytr), (xte, yte) = color_features["train"], color_features["test"]
    config = linear.LinearConfig(epochs=30, batch_size=12, base_lr=1.0, milestones=())
    m = lowshot.lowshot_linear(xtr, ytr, xte, yte, 3, per_class=4, seed=0, config=config)
    assert m["subset"]["size"] == 12 and m["num_train"] == 12
    assert m["top1"] == 100.0


# ------------------------------------------------------------------ fine-tuning

@pytest.fixture(scope="module")
def micro_trunk():
    """Three one-block stages: the fine-tuning recipe does not need depth, and a small graph
    traces (the dominant cost of these tests) several times faster than regnety_tiny."""
    tf.keras.utils.set_random_seed(0)
    model = RegNet(depths=[1, 1, 1], widths=[16, 32, 48], group_widths=[8, 8, 8], stem_width=16)
    model.build((None, None, None, 3))
    return model


def _copy(trunk):
    clone = RegNet.from_config(trunk.get_config())
    clone.build((None, None, None, 3))
    clone.set_weights(trunk.get_weights())
    return clone


def test_finetune_improves_accuracy(micro_trunk):
    images, labels = color_images(16, seed=5)
    test_images, test_labels = color_images(8, seed=6)
    train_ds = inputs.augment(tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(48, seed=0),
                          crop=32, scale=(0.6, 1.0))
    eval_ds = tf.data.Dataset.from_tensor_slices((inputs.normalize(test_images), test_labels)).batch(12)
    model = _copy(micro_trunk)
    _, before = ft.finetune(model, train_ds, 3, ft.FinetuneConfig(epochs=0), eval_dataset=eval_ds)
    # Many small low-LR steps: BatchNorm's moving statistics (momentum 0.9) must catch up with
    # the trained weights for inference-mode accuracy to show what train-mode loss says.
    config = ft.FinetuneConfig(epochs=12, batch_size=12, base_lr=0.4, milestones=(8,))
    losses = []
    clf, after = ft.finetune(model, train_ds, 3, config, eval_dataset=eval_ds,
                             on_epoch=lambda e, s: losses.append(s["loss"]))
    assert before["top1"] < 50.0 and after["top1"] == 100.0, (before["top1"], after["top1"])
    assert losses[-1] < 0.1 * losses[0]
    assert clf.trunk is model  # no strategy given: the trunk is fine-tuned in place
    np.testing.assert_allclose(ft.evaluate_classifier(clf, eval_ds, 3)["top1"], 100.0)


def test_finetune_step_on_two_replicas_is_one_sgd_step(micro_trunk, mirrored_strategy):
    trunk = micro_trunk
    # A batch made of the same 4 images twice: each replica's BatchNorm statistics equal the
    # global ones, so one step on 2 replicas must be the single-device SGD step, computed here
    # eagerly: w - lr * (g + wd * w) (no decay on BatchNorm), g the gradient of the batch-mean
    # cross-entropy, same classifier init (seeded).
    images, labels = color_images(2, seed=9)
    x = inputs.normalize(np.concatenate([images[:4]] * 2))
    y = np.concatenate([labels[:4]] * 2)
    config = ft.FinetuneConfig(epochs=1, batch_size=8, base_lr=3.2, weight_decay=0.05)
    lr = 3.2 * 8 / 256
    ref = ft.Classifier(_copy(trunk), 3, seed=config.seed)
    ref.build()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
            y, ref(x, training=True), from_logits=True))
    grads = tape.gradient(loss, ref.trainable_variables)
    mask = linear.decay_mask(ref, regularize_bn=False)
    want = {v.path: v.numpy() - lr * (g.numpy() + (0.05 * v.numpy() if m else 0.0))
            for v, g, m in zip(ref.trainable_variables, grads, mask)}
    before = [w.copy() for w in trunk.get_weights()]
    clf, _ = ft.finetune(trunk, tf.data.Dataset.from_tensor_slices((x, y)), 3, config,
                         mirrored_strategy)
    assert clf.trunk is not trunk  # copied into the strategy's scope
    for b, w in zip(before, trunk.get_weights()):
        np.testing.assert_array_equal(b, w)  # the caller's trunk is untouched
    got = {v.path: v.numpy() for v in clf.trainable_variables}
    assert got.keys() == want.keys() and not all(mask)
    for path, w in want.items():
        np.testing.assert_allclose(got[path], w, rtol=1e-4, atol=2e-5, err_msg=path)


# ------------------------------------------------------------------ the binary, end to end

def test_evaluate_binary_knn_on_image_folder(tmp_path, trunk):
    from PIL import Image

    for split, (n, seed) in {"train": (6, 7), "val": (3, 8)}.items():
        images, labels = color_images(n, seed)
        for i, (img, y) in enumerate(zip(images, labels)):
            d = tmp_path / "data" / split / ["red", "green", "blue"][y]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i}.png")
    (tmp_path / "data" / "train" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xffnot a jpeg")
    trunk.save(tmp_path / "trunk.keras")
    out = tmp_path / "out"
    base = [sys.executable, "-m", "seer_tf.bin.evaluate", f"--data={tmp_path / 'data'}",
            f"--weights={tmp_path / 'trunk.keras'}", f"--output_dir={out}"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    bad = subprocess.run(base + ["--protocol=lowshot"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr  # TF start-up lines may come first
    assert bad.stderr.strip().splitlines()[-1].startswith("error: lowshot needs exactly one")
    r = subprocess.run(base + ["--protocol=knn", "--resize=32", "--crop=32", "--k=5"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["top1"] == 100.0 and result["num_examples"] == 9 and result["num_train"] == 18
    assert result["per_class_top1"] == {"blue": 100.0, "green": 100.0, "red": 100.0}
    assert json.load(open(out / "knn.json"))["top1"] == 100.0
    assert "skipped 1 unreadable" in r.stderr
    assert os.listdir(out / "tensorboard")
