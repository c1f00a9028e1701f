"""Labeled evaluation inputs: ImageFolder labels, class-balanced low-shot subsets, TFDS offline.

Low-shot evaluation (SEER, SwAV, SimCLR: ImageNet 1% / 10%) needs subsets that are balanced
across classes and identical for a seed, whoever lists the files and in whatever order.
"""

import os

import numpy as np
import pytest

import image_zoo
from seer_tf.data import decode, labeled


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    classes = {"zebra": 5, "cat": 3, "dog": 4}  # listed out of order on purpose
    for name, count in classes.items():
        for k in range(count):
            sub = "nested" if k == 0 else ""
            path = root / "train" / name / sub / f"{name}{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image_zoo.solid((20 * k, 100, 200), (30 + k, 40)).save(path)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return str(root)


def test_image_folder_labels_follow_sorted_class_names(folder):
    files = labeled.image_folder(folder, "train")
    assert files.class_names == ["cat", "dog", "zebra"]
    assert len(files.paths) == 3 + 5 + 5  # the broken JPEG is listed, the .txt is not
    for path, label in zip(files.paths, files.labels):
        assert os.path.basename(os.path.dirname(path.replace("/nested", ""))) == \
            files.class_names[label]
    assert np.bincount(files.labels).tolist() == [3, 5, 5]


def test_low_shot_subsets_are_balanced_stable_and_nested():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), rng.integers(80, 200, 10))  # imbalanced classes
    keys = [f"img{i:05d}" for i in range(len(labels))]
    one = labeled.low_shot_indices(labels, fraction=0.01, seed=4, keys=keys)
    ten = labeled.low_shot_indices(labels, fraction=0.10, seed=4, keys=keys)
    per_class_1 = max(1, round(0.01 * len(labels) / 10))
    per_class_10 = round(0.10 * len(labels) / 10)
    assert np.bincount(labels[one], minlength=10).tolist() == [per_class_1] * 10
    assert np.bincount(labels[ten], minlength=10).tolist() == [per_class_10] * 10
    assert set(one) <= set(ten)  # the 1% subset is a prefix of the same per-class draw
    assert np.array_equal(one, labeled.low_shot_indices(labels, fraction=0.01, seed=4, keys=keys))
    other = labeled.low_shot_indices(labels, fraction=0.10, seed=5, keys=keys)
    assert not np.array_equal(ten, other)
    # Independent of listing order: shuffle the listing, select by key, same files.
    perm = rng.permutation(len(labels))
    shuffled = labeled.low_shot_indices(labels[perm], fraction=0.10, seed=4,
                                        keys=[keys[i] for i in perm])
    assert sorted(keys[perm[i]] for i in shuffled) == sorted(keys[i] for i in ten)
    k3 = labeled.low_shot_indices(labels, per_class=3, seed=0)
    assert np.bincount(labels[k3]).tolist() == [3] * 10


def test_folder_dataset_decodes_crops_and_counts_bad_files(folder):
    files = labeled.image_folder(folder, "train")
    stats = decode.DecodeStats()
    ds = labeled.folder_dataset(files, size=16, resize_size=20, batch_size=4, stats=stats)
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    images, labels = np.concatenate(images), np.concatenate(labels)
    assert images.shape == (12, 16, 16, 3) and np.isfinite(images).all()
    good = [i for i, p in enumerate(files.paths) if not p.endswith("broken.jpg")]
    assert labels.tolist() == files.labels[good].tolist()  # evaluation keeps file order
    assert stats.as_dict()["corrupt"] == 1
    subset = files.subset(labeled.low_shot_indices(files.labels, per_class=2, seed=1,
                                                   keys=files.paths))
    train = labeled.folder_dataset(subset, training=True, size=16, batch_size=2, seed=3)
    batches = list(train.as_numpy_iterator())
    assert sum(len(y) for _, y in batches) in (4, 6)  # the broken JPEG may be drawn
    assert all(x.shape[1:] == (16, 16, 3) for x, _ in batches)


def test_tfds_labels_and_low_shot_subset_offline(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=60):
        labels = labeled.tfds_labels("cifar10", "train", data_dir=str(tmp_path))
        assert labels.shape == (60,) and labels.max() < 10
        indices = labeled.low_shot_indices(labels, per_class=2, seed=0)
        ds = labeled.tfds_dataset("cifar10", "train", data_dir=str(tmp_path), indices=indices,
                                  size=24, resize_size=32)
        got = [(x.shape, int(y)) for x, y in ds]
    assert [y for _, y in got] == labels[indices].tolist()
    assert all(shape == (24, 24, 3) for shape, _ in got)
    assert all(count <= 2 for count in np.bincount(labels[indices]))
