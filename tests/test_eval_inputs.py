"""seer_tf.eval.inputs: the one place evaluation reads labeled images.

Asserts: ImageFolder and list splits label files by the train split's sorted class names and
drop unreadable files from the image stream; a TFDS split (mocked, offline) gives its labels
before decoding and only the requested examples; the digits split is the demo probe's 70/30
split; a published subset list (SimCLR's file names) selects exactly those examples and names
the missing ones; drawn subsets are balanced, stable and nested; fine-tuning crops come from
`data.multicrop.sample_box` (torchvision's RandomResizedCrop), pixel for pixel.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import image_zoo
from seer_tf import usage
from seer_tf.data import multicrop
from seer_tf.eval import inputs


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    for split, classes in {"train": {"zebra": 5, "cat": 3, "dog": 4}, "val": {"dog": 2}}.items():
        for name, count in classes.items():
            for k in range(count):
                sub = "nested" if k == 0 else ""
                path = root / split / name / sub / f"{name}{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                image_zoo.solid((20 * k, 100, 200), (30 + k, 40)).save(path)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return str(root)


def test_folder_splits_follow_the_train_class_names(folder):
    train, val = inputs.load_splits(folder, None, "train", "val")
    assert train.class_names == val.class_names == ["cat", "dog", "zebra"]
    assert np.bincount(train.labels).tolist() == [3, 5, 5]  # broken.jpg listed, .txt not
    assert val.labels.tolist() == [1, 1]
    for path, label in zip(train.ids, train.labels):
        assert os.path.basename(os.path.dirname(path.replace("/nested", ""))) == \
            train.class_names[label]
    got = [(x.shape, int(y)) for x, y in train.images()]
    good = [i for i, p in enumerate(train.ids) if not p.endswith("broken.jpg")]
    assert [y for _, y in got] == train.labels[good].tolist()  # order kept, bad file dropped
    from PIL import Image

    assert tuple(got[0][0]) == np.asarray(Image.open(train.ids[0]).convert("RGB")).shape
    picked = [int(y) for _, y in train.images([0, 12])]
    assert picked == [0, 2]
    with pytest.raises(usage.UsageError, match="no 'test' folder"):
        inputs.load_splits(folder, None, "train", "test")


def test_list_split_labels_and_relative_paths(folder, tmp_path):
    lines = [f"{os.path.join(folder, 'train', 'cat', 'cat1.png')} cat",
             f"{os.path.relpath(os.path.join(folder, 'train', 'dog', 'dog1.png'), tmp_path)} dog"]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "val.txt").write_text(lines[1] + "\n")
    train, val = inputs.load_splits(str(tmp_path), None, "train.txt", "val.txt")
    assert train.class_names == ["cat", "dog"] and train.labels.tolist() == [0, 1]
    assert val.labels.tolist() == [1] and os.path.isfile(val.ids[0])
    assert [int(y) for _, y in train.images()] == [0, 1]
    (tmp_path / "bad.txt").write_text(lines[1].replace(" dog", " bird") + "\n")
    with pytest.raises(usage.UsageError, match=r"labels not in the train split: \['bird'\]"):
        inputs.load_splits(str(tmp_path), None, "train.txt", "bad.txt")


def test_tfds_split_offline_reads_only_the_requested_examples(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=30):
        split = inputs.tfds_split("cifar10", str(tmp_path), "train")
        assert split.labels.shape == (30,) and len(split.class_names) == 10
        indices = inputs.balanced_subset(split.labels, per_class=1, seed=0, ids=split.ids)
        got = [int(y) for _, y in split.images(indices)]
    assert got == split.labels[indices].tolist()
    assert np.bincount(split.labels[indices]).max() == 1


def test_digits_split_is_the_demo_probe_split():
    train, val = inputs.load_splits(inputs.DIGITS, None, "train", "val", image_size=16)
    assert len(train.labels) == 1257 and len(val.labels) == 540
    assert not set(train.ids) & set(val.ids)
    counts = np.bincount(val.labels)
    assert counts.min() >= 50 and counts.max() <= 56  # stratified
    image, label = next(iter(val.images([3])))
    assert image.shape == (16, 16, 3) and image.dtype == tf.uint8 and int(label) == val.labels[3]
    assert inputs.resolve({"data": {"source": "digits", "image_size": 16}}) == \
        ("digits", 16, 16, 16)
    assert inputs.resolve(None, "/data/imagenet") == ("/data/imagenet", 32, 256, 224)


def test_published_subset_file_selects_its_files(tmp_path):
    ids = [f"/data/train/n0{c}/n0{c}_{i}.JPEG" for c in range(3) for i in range(5)]
    labels = np.repeat(np.arange(3), 5)
    (tmp_path / "1percent.txt").write_text("n00_3.JPEG\nn02_0.JPEG\n\nn01_4.JPEG\n")
    idx = inputs.indices_from_file(str(tmp_path / "1percent.txt"), ids)
    assert idx.tolist() == [3, 9, 10]
    report = inputs.subset_report(labels, idx, 3, None)
    assert report == {"size": 3, "min_per_class": 1, "max_per_class": 1}
    (tmp_path / "bad.txt").write_text("n00_3.JPEG\nn09_9.JPEG\n")
    with pytest.raises(usage.UsageError, match="1 of 2 listed files are not in the train split "
                                               r"\(first: n09_9.JPEG\)"):
        inputs.indices_from_file(str(tmp_path / "bad.txt"), ids)


def test_drawn_subsets_are_balanced_stable_and_nested():
    labels = np.repeat(np.arange(4), [100, 100, 100, 7])
    one = inputs.balanced_subset(labels, fraction=0.04, seed=3)
    assert np.bincount(labels[one]).tolist() == [3, 3, 3, 3]  # round(0.04 * 307 / 4) = 3
    np.testing.assert_array_equal(one, inputs.balanced_subset(labels, fraction=0.04, seed=3))
    ten = inputs.balanced_subset(labels, per_class=10, seed=3)
    assert np.bincount(labels[ten]).tolist() == [10, 10, 10, 7] and set(one) <= set(ten)


def test_finetune_crops_are_torchvision_random_resized_crops():
    image = tf.constant(image_zoo.noise((48, 64), seed=2))
    for s in range(4):
        seed = tf.constant([7, s], tf.int64)
        got = inputs.train_preprocess(image, seed, crop=24, scale=(0.2, 0.9)).numpy()
        box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        box, _ = multicrop.sample_box(box_seed, 48, 64, (0.2, 0.9))
        want = multicrop.resized_crop(image, box, 24)
        want = tf.image.stateless_random_flip_left_right(want, flip_seed).numpy()
        want = (want - np.array(inputs.IMAGENET_MEAN)) / np.array(inputs.IMAGENET_STD)
        np.testing.assert_allclose(got, want, atol=1e-6)
        area = int(box[2]) * int(box[3]) / (48 * 64)
        assert 0.2 - 0.02 <= area <= 0.9 + 0.02 and 3 / 4 - 0.1 <= int(box[3]) / int(box[2]) <= 4 / 3 + 0.1


def test_evaluation_decodes_with_the_guarded_decoder():
    """Evaluation and feature extraction share training's and serving's guard: a PNG declaring
    40000x40000 is one error, never a 4.8 GB buffer; normal images decode at full size."""
    import io

    import numpy as np
    import pytest
    import tensorflow as tf
    from PIL import Image

    from seer_tf.eval.inputs import decode_image_bytes
    from test_decode_guard import png_bomb

    with pytest.raises(tf.errors.InvalidArgumentError, match="(?s)image could not be decoded.*too_large"):
        decode_image_bytes(tf.constant(png_bomb()))
    pixels = np.random.default_rng(0).integers(0, 256, (300, 500, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_image_bytes(tf.constant(buffer.getvalue())).numpy(), pixels)
