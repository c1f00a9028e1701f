"""bin/extract_features: features in input order, bad files skipped and reported, never fatal."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import seer_tf  # noqa: F401
from seer_tf.eval import features as F
from seer_tf.eval import inputs
from seer_tf.models.regnet import RegNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}
COLORS = {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}


@pytest.fixture(scope="module")
def trunk():
    tf.keras.utils.set_random_seed(1)
    model = RegNet.from_preset("regnety_tiny")
    model.build((None, None, None, 3))
    return model


def _solid(color, h=36, w=44):
    return np.broadcast_to(np.array(color, np.uint8), (h, w, 3)).copy()


def _write_tree(root):
    """Solid-color PNG/JPEG images in nested folders, plus four bad files and a non-image."""
    good = {"a/red.png": "red", "a/sub/blue.jpg": "blue", "b/green.png": "green",
            "b/red2.jpg": "red", "c.png": "blue"}
    for rel, color in good.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        encode = tf.io.encode_png if rel.endswith(".png") else tf.io.encode_jpeg
        path.write_bytes(encode(_solid(COLORS[color])).numpy())
    jpeg = tf.io.encode_jpeg(_solid(COLORS["red"])).numpy()
    (root / "a" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "b" / "text.jpg").write_bytes(b"this is not an image")
    (root / "b" / "dangling.png").symlink_to(root / "missing.png")
    (root / "notes.txt").write_text("ignored: not an image suffix")
    return good


def test_binary_on_a_folder_keeps_order_and_reports_bad_files(tmp_path, trunk):
    good = _write_tree(tmp_path / "imgs")
    trunk.save(tmp_path / "trunk.keras")
    out = tmp_path / "out" / "feats"
    r = subprocess.run([sys.executable, "-m", "seer_tf.bin.extract_features",
                        f"--input={tmp_path / 'imgs'}", f"--weights={tmp_path / 'trunk.keras'}",
                        f"--output={out}", "--resize=32", "--crop=32", "--batch_size=2"],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    paths = open(f"{out}.paths.txt").read().splitlines()
    feats = np.load(f"{out}.npy")
    root = str(tmp_path / "imgs") + "/"
    assert [p[len(root):] for p in paths] == ["a/red.png", "a/sub/blue.jpg", "b/green.png",
                                              "b/red2.jpg", "c.png"]  # sorted paths
    bad = ["a/empty.png", "a/truncated.jpg", "b/dangling.png", "b/text.jpg"]
    assert report["count"] == 5 and report["dim"] == 64 and feats.shape == (5, 64)
    assert report["skipped"]["count"] == 4
    assert sorted(p[len(root):] for p in report["skipped"]["files"]) == bad
    assert sorted(open(f"{out}.skipped.txt").read().split()) == [root + b for b in bad]
    # Same features as the Keras trunk on the same decoded, preprocessed images.
    images = [inputs.decode_image_bytes(tf.io.read_file(p)) for p in paths]
    want = trunk(tf.stack([inputs.eval_preprocess(i, 32, 32) for i in images]),
                 training=False)["pooled"].numpy()
    np.testing.assert_allclose(feats, want, atol=1e-5, rtol=1e-5)
    colors = [good[p[len(root):]] for p in paths]
    for i in range(5):
        for j in range(5):
            same = np.abs(feats[i] - feats[j]).max() < 0.05  # JPEG vs PNG of one color: close
            assert same == (colors[i] == colors[j]), (paths[i], paths[j])


def test_extract_from_a_file_list_keeps_list_order(tmp_path, trunk):
    good = _write_tree(tmp_path)
    order = ["c.png", "missing.jpg", "a/red.png", "a/truncated.jpg", "b/green.png", "a/red.png"]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(str(tmp_path / p) + "\n" for p in order) + "\n")
    paths = inputs.list_images(str(listing))
    assert len(paths) == 6  # blank lines dropped, duplicates kept
    feats, kept = F.extract_files(trunk, paths, resize=32, crop=32, batch_size=4)
    assert kept.tolist() == [0, 2, 4, 5] and feats.shape == (4, 64)
    np.testing.assert_allclose(feats[1], feats[3], atol=1e-6)  # the same file twice
    assert good["c.png"] == "blue" and np.abs(feats[0] - feats[1]).max() > 1e-3
    with pytest.raises(ValueError, match="no such directory or file"):
        inputs.list_images(str(tmp_path / "nope"))


def test_bad_input_is_one_error_line(tmp_path):
    nope = tmp_path / "nope"
    r = subprocess.run([sys.executable, "-m", "seer_tf.bin.extract_features", f"--input={nope}",
                        "--weights=w.keras", f"--output={tmp_path}/f"],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"error: --input={nope}: no such directory or file"
