"""The serving SavedModel returns the Keras model's features, through every way of running it.

A tiny SwAV model (non-trivial BatchNorm statistics, so inference mode matters) is saved as
`.keras`, exported by `bin/export`, then run with `tf.saved_model.load` and with the
`saved_model_cli run` command line, for JPEG/PNG bytes and for uint8 arrays, and compared with
the Keras model applied to the same decoded (by PIL, as the PyTorch references do) and
preprocessed image.
"""

import ast
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import seer_tf  # noqa: F401
from seer_tf import export
from seer_tf.eval import inputs
from seer_tf.models.regnet import RegNet
from seer_tf.models.swav import SwAVModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
RESIZE, CROP, TOL = 40, 32, 1e-5
ENV = {**os.environ, "PYTHONPATH": ROOT}


def _swav_model():
    tf.keras.utils.set_random_seed(3)
    trunk = RegNet.from_preset("regnety_tiny")
    model = SwAVModel(trunk, [64, 32, 16], 10)
    model.build_all()
    rng = np.random.default_rng(0)
    for v in model.weights:  # moving statistics away from (0, 1)
        if v.path.endswith("moving_mean"):
            v.assign(rng.normal(0, 0.5, v.shape).astype(np.float32))
        elif v.path.endswith("moving_variance"):
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype(np.float32))
    return model


def _images():
    rng = np.random.default_rng(1)
    smooth = tf.image.resize(rng.uniform(0, 255, (1, 6, 7, 3)), [50, 45]).numpy()[0]
    a = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
    b = np.clip(tf.image.resize(rng.uniform(0, 255, (1, 5, 9, 3)), [37, 61]).numpy()[0], 0,
                255).astype(np.uint8)
    return a, b


def _reference(model, decoded):
    """Keras features of each image: the shared preprocessing, then trunk and head."""
    rows = {"pooled": [], "embedding": [], "prototype": []}
    for image in decoded:
        x = inputs.eval_preprocess(image, RESIZE, CROP)[None]
        pooled = model.backbone(x, training=False)["pooled"]
        emb = model.head(pooled, training=False)
        rows["pooled"].append(pooled.numpy()[0])
        rows["embedding"].append(emb.numpy()[0])
        rows["prototype"].append(int(np.argmax(model.prototypes(emb)[0].numpy()[0])))
    return {k: np.asarray(v) for k, v in rows.items()}


def _check(out, ref):
    np.testing.assert_allclose(np.asarray(out["pooled"]), ref["pooled"], atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np.asarray(out["embedding"]), ref["embedding"], atol=TOL, rtol=TOL)
    np.testing.assert_array_equal(np.asarray(out["prototype"]), ref["prototype"])


def test_saved_model_matches_keras_for_bytes_and_arrays(tmp_path):
    from PIL import Image

    model = _swav_model()
    model.save(tmp_path / "swav.keras")
    saved = tmp_path / "serving"
    exporter = subprocess.Popen(
        [sys.executable, "-m", "seer_tf.bin.export", f"--weights={tmp_path / 'swav.keras'}",
         f"--output={saved}", f"--resize={RESIZE}", f"--crop={CROP}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)

    a, b = _images()
    buf_jpeg, buf_png = io.BytesIO(), io.BytesIO()
    Image.fromarray(a).save(buf_jpeg, format="JPEG", quality=90)
    Image.fromarray(b).save(buf_png, format="PNG")
    encoded = [buf_jpeg.getvalue(), buf_png.getvalue()]
    decoded = [np.asarray(Image.open(io.BytesIO(e)).convert("RGB")) for e in encoded]
    ref_bytes = _reference(model, decoded)
    batch = np.stack([a, np.flip(a, 1)])  # serving_images: one size per batch
    ref_images = _reference(model, list(batch))

    out, err = exporter.communicate(timeout=300)
    assert exporter.returncode == 0, err[-2000:]
    assert '"prototype"' in out and '"serving_images"' in out

    # saved_model_cli (TF1-style session loading, as TF Serving): both signatures in parallel.
    np.save(tmp_path / "bytes.npy", np.array(encoded, dtype=bytes))  # 'S' dtype: no pickle
    np.save(tmp_path / "images.npy", batch)
    runs = {sig: subprocess.Popen(
        [CLI, "run", "--dir", str(saved), "--tag_set", "serve", "--signature_def", sig,
         "--inputs", f"images={tmp_path / name}", "--outdir", str(tmp_path / sig)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        for sig, name in (("serving_bytes", "bytes.npy"), ("serving_images", "images.npy"))}

    loaded = tf.saved_model.load(str(saved))
    assert {"serving_bytes", "serving_images", "serving_default"} <= set(loaded.signatures)
    _check(loaded.signatures["serving_bytes"](images=tf.constant(encoded)), ref_bytes)
    _check(loaded.signatures["serving_default"](images=tf.constant(encoded)), ref_bytes)
    _check(loaded.signatures["serving_images"](images=tf.constant(batch)), ref_images)
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["serving_bytes"](images=tf.constant([b"not an image"]))

    for sig, ref in (("serving_bytes", ref_bytes), ("serving_images", ref_images)):
        _, err = runs[sig].communicate(timeout=300)
        assert runs[sig].returncode == 0, err[-2000:]
        _check({k: np.load(tmp_path / sig / f"{k}.npy")
                for k in ("pooled", "embedding", "prototype")}, ref)


def test_plain_trunk_exports_pooled_only_and_bad_flags_fail_in_one_line():
    trunk = RegNet.from_preset("regnety_tiny")
    trunk.build((None, None, None, 3))
    module = export.ServingModule(trunk, resize=0, crop=CROP)  # resize 0: shorter side -> crop
    outputs = module.serving_images.get_concrete_function().structured_outputs
    assert set(outputs) == {"pooled"} and module.resize == CROP
    with pytest.raises(ValueError, match="SwAVModel"):
        export.ServingModule(trunk, include_swav=True)
    r = subprocess.run([sys.executable, "-m", "seer_tf.bin.export", "--weights=x.keras",
                        "--output=out", "--resize=16", "--crop=32"],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "Traceback" not in r.stderr  # TF start-up lines may come first
    assert r.stderr.strip().splitlines()[-1] == "error: --resize (16) must be >= --crop (32)"


def _seer_imports(module):
    """seer_tf modules imported anywhere in `module`'s source (function-level imports too)."""
    path = os.path.join(ROOT, *module.split(".")) + ".py"
    if not os.path.exists(path):
        path = path[:-3] + "/__init__.py"
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("seer_tf")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("seer_tf"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if os.path.exists(os.path.join(ROOT, *sub.split(".")) + ".py")
                          else node.module)
    return found


def test_export_never_reaches_train():
    seen, todo = set(), ["seer_tf.export", "seer_tf.bin.export"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += sorted(_seer_imports(module))
    assert "seer_tf.eval.features" in seen
    assert not [m for m in seen if m.startswith("seer_tf.train")], sorted(seen)
