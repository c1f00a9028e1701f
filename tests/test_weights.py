"""seer_tf.weights: the training checkpoint layout, workdir description and every reader.

Asserts: a SwAVModel (RegNet trunk, BN head, two prototype heads) round-trips through Keras
serialization with equal outputs once weights are copied; a workdir written the way train/loop
writes it (describe_workdir + tf.train.Checkpoint(model=model_checkpoint_items(model), ...))
loads back in a fresh process, where Keras auto-names start over, with outputs equal to the
saved model's; --step picks an older checkpoint; missing pieces are one-line UsageErrors.
"""

import ast
import json
import os
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from seer_tf import usage, weights
from seer_tf.models.regnet import RegNet
from seer_tf.models.swav import SwAVModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}


def tiny_swav(seed=0):
    keras.utils.set_random_seed(seed)
    trunk = RegNet(depths=[1, 1], widths=[8, 16], group_widths=[8, 8], stem_width=8,
                   name="regnet")
    return SwAVModel(trunk, [16, 24, 8], [10, 6], use_bn=True)


def images(n=3, size=32, seed=1):
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype("float32")


def write_workdir(workdir, model, steps=(1, 2), config=None):
    """A workdir as bin/pretrain + train/loop write it; weights differ per step."""
    weights.describe_workdir(str(workdir), config or {"train": {"total_steps": 2}}, model)
    step = tf.Variable(0, dtype=tf.int64)
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    ckpt = tf.train.Checkpoint(model=weights.model_checkpoint_items(model), optimizer=optimizer,
                               global_step=step)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(workdir, weights.CHECKPOINT_DIR), 3)
    outputs = {}
    for s in steps:
        for v in model.trainable_variables:
            v.assign(v + 0.01 * s)
        step.assign(s)
        manager.save(checkpoint_number=s)
        outputs[s] = model([images()], training=False)
    return outputs


def _json(value):
    return json.loads(json.dumps(value))  # tuples and lists compare equal


def test_swav_model_round_trips_through_serialization():
    model = tiny_swav()
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
    copy = keras.saving.deserialize_keras_object(config)
    copy.build_all()
    assert isinstance(copy, SwAVModel) and isinstance(copy.backbone, RegNet)
    assert _json(copy.get_config()) == _json(model.get_config())
    assert [v.path for v in copy.weights] == [v.path for v in model.weights]
    copy.set_weights(model.get_weights())
    a, b = model([images()], training=False), copy([images()], training=False)
    np.testing.assert_allclose(a["embeddings"], b["embeddings"], atol=1e-6)
    for x, y in zip(a["scores"], b["scores"]):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_checkpoint_items_are_every_weight_by_unique_path():
    model = tiny_swav()
    items = weights.model_checkpoint_items(model)
    assert len(items) == len(model.weights) and all(items[v.path] is v for v in model.weights)
    clash = types.SimpleNamespace(weights=[keras.Variable(1.0, name="w"),
                                           keras.Variable(2.0, name="w")])
    with pytest.raises(ValueError, match=r"unique paths.*\['w'\]"):
        weights.model_checkpoint_items(clash)


_LOAD = """
import sys, json, numpy as np
import seer_tf
from seer_tf import weights
model = weights.load_workdir_model(sys.argv[1], None if sys.argv[2] == "latest" else int(sys.argv[2]))
x = np.random.default_rng(1).normal(size=(3, 32, 32, 3)).astype("float32")
out = model([x], training=False)
print(json.dumps({"embeddings": out["embeddings"].numpy().tolist(),
                  "scores": out["scores"][1].numpy().tolist(), "class": type(model).__name__}))
"""


def test_workdir_loads_in_a_fresh_process(tmp_path):
    tiny_swav(seed=5)  # other models first: Keras auto-names in this process move on
    model = tiny_swav()
    outputs = write_workdir(tmp_path, model)
    assert json.load(open(tmp_path / "config.json")) == {"train": {"total_steps": 2}}
    assert weights.read_config(str(tmp_path)) == {"train": {"total_steps": 2}}
    assert weights.checkpoint_steps(str(tmp_path)) == [1, 2]
    for step in ("latest", "1"):
        proc = subprocess.run([sys.executable, "-c", _LOAD, str(tmp_path), step],
                              capture_output=True, text=True, env=ENV, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        want = outputs[2 if step == "latest" else 1]
        assert got["class"] == "SwAVModel"
        np.testing.assert_allclose(got["embeddings"], want["embeddings"], atol=1e-5)
        np.testing.assert_allclose(got["scores"], want["scores"][1], atol=1e-5)


def test_missing_workdir_pieces_are_usage_errors(tmp_path):
    assert weights.read_config(str(tmp_path)) is None
    with pytest.raises(usage.UsageError, match="no model.json"):
        weights.load_workdir_model(str(tmp_path))
    weights.describe_workdir(str(tmp_path), {}, tiny_swav())
    with pytest.raises(usage.UsageError, match="no checkpoint in checkpoints/"):
        weights.load_workdir_model(str(tmp_path))
    write_workdir(tmp_path, tiny_swav(), steps=(3,))
    with pytest.raises(usage.UsageError, match=r"no checkpoint at step 7 \(have steps \[3\]\)"):
        weights.load_workdir_model(str(tmp_path), step=7)
    with pytest.raises(usage.UsageError, match="no such directory"):
        weights.load_workdir_model(str(tmp_path / "nope"))
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]  # temp files renamed away


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    write_workdir(tmp_path, tiny_swav(), steps=(1,))
    other = SwAVModel(RegNet(depths=[1, 1], widths=[8, 24], group_widths=[8, 8], stem_width=8,
                             name="regnet"), [24, 8], [10])
    with pytest.raises(ValueError, match="not a checkpoint of this architecture"):
        weights.restore_model(other, weights.checkpoint_prefix(str(tmp_path)))


def test_import_seer_tf_registers_every_class_after_setting_onednn():
    """`import seer_tf` registers the Keras classes and still sets TF_ENABLE_ONEDNN_OPTS before
    anything starts TensorFlow."""
    code = ("import os, sys, json; import seer_tf, keras; "
        "print(json.dumps([os.environ['TF_ENABLE_ONEDNN_OPTS'], "
        "sorted(k for k in keras.saving.get_custom_objects() if k.startswith('seer_tf>'))]))")
    env = {k: v for k, v in ENV.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    onednn, names = json.loads(r.stdout.strip().splitlines()[-1])
    assert onednn == "1"
    # The variable is read when TensorFlow starts: it must be set above every import that can
    # start it (this CPU turns oneDNN on by default, so the log line would not tell).
    tree = ast.parse(open(os.path.join(ROOT, "seer_tf", "__init__.py")).read())
    setdefault = next(n.lineno for n in tree.body if "TF_ENABLE_ONEDNN_OPTS" in ast.dump(n))
    imports = [n.lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
               and "os" not in [a.name for a in n.names]]
    assert imports and setdefault < min(imports)
    assert {"seer_tf>RegNet", "seer_tf>SwAVModel", "seer_tf>ProjectionHead", "seer_tf>Prototypes",
            "seer_tf>YBlock", "seer_tf>Classifier", "seer_tf>LinearClassifier"} <= set(names)


def test_a_mixed_precision_run_loads_in_float32(tmp_path):
    """bf16 training keeps float32 variables; evaluation and serving compute in float32."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny_swav()
        assert model.backbone.compute_dtype == "bfloat16"
        write_workdir(tmp_path, model, steps=(1,))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    loaded = weights.load_workdir_model(str(tmp_path))
    assert loaded.backbone.compute_dtype == "float32"
    assert {v.dtype for v in loaded.weights} == {"float32"}
    reference = tiny_swav()  # float32, the checkpoint's weights
    weights.restore_model(reference, weights.checkpoint_prefix(str(tmp_path)))
    np.testing.assert_allclose(loaded([images()], training=False)["embeddings"],
                               reference([images()], training=False)["embeddings"], atol=1e-6)
