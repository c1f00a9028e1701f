"""Parity with the PyTorch references through converted weights, and loud conversion errors.

Fixtures in tests/testdata/ come from tools/make_parity_fixtures.py (torchvision RegNet,
ClassyVision RegNet named as VISSL's trunk with a SwAV head, timm RegNet): tiny RegNetY configs
with stride 2, projection shortcuts, two groups and SE in every stage, in both rounding modes.
"""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from seer_tf import convert, usage
from seer_tf.weights import pytorch

DATA = os.path.join(os.path.dirname(__file__), "testdata")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4


def fixture(name):
    with np.load(os.path.join(DATA, name + ".npz")) as z:
        arrays = {k: z[k] for k in z.files}
    state = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
    return state, arrays


@pytest.mark.parametrize("name,fmt,widths", [
    ("torchvision_tiny", "torchvision", [32, 32, 48, 64]),  # torchvision rounding
    ("timm_tiny", "timm", [32, 32, 32, 64]),  # pycls rounding
])
def test_classifier_parity(name, fmt, widths):
    state, ref = fixture(name)
    model, report = convert.convert_state(state)
    assert report["format"] == fmt and report["spec"]["widths"] == widths
    assert report["num_classes"] == 10
    for x in ("x_even", "x_odd"):
        out = model(ref[x], training=False)
        np.testing.assert_allclose(out["pooled"], ref[f"{x}/pooled"], atol=TOL, rtol=0)
        np.testing.assert_allclose(out["logits"], ref[f"{x}/logits"], atol=TOL, rtol=0)
        if f"{x}/stage4" in ref:
            np.testing.assert_allclose(out["stage4"], ref[f"{x}/stage4"], atol=TOL, rtol=0)


def test_vissl_trunk_and_swav_head_parity():
    state, ref = fixture("vissl_tiny")
    model, report = convert.convert_state(state)
    assert report["format"] == "vissl"
    assert report["head"] == {"dims": [64, 32, 16], "use_bn": True, "use_bias": True,
                              "num_prototypes": [20, 12]}
    for x in ("x_even", "x_odd"):
        out = model([ref[x]], training=False)
        np.testing.assert_allclose(model.features([ref[x]]), ref[f"{x}/pooled"], atol=TOL, rtol=0)
        np.testing.assert_allclose(out["embeddings"], ref[f"{x}/embeddings"], atol=TOL, rtol=0)
        for j in range(2):
            np.testing.assert_allclose(out["scores"][j], ref[f"{x}/scores{j}"], atol=TOL, rtol=0)


def test_vissl_fsdp_and_checkpoint_wrapper_names():
    """VISSL's FSDP RegNet groups blocks as `blockS-partP` and wraps modules; same weights."""
    state, ref = fixture("vissl_tiny")
    renamed = {}
    for k, v in state.items():
        k = k.replace("trunk._feature_blocks.", "trunk._fsdp_wrapped_module._feature_blocks.")
        for s in range(1, 5):
            k = k.replace(f".res{s + 1}.block{s}-", f".res{s + 1}.block{s}-part0._checkpoint_wrapped_module.block{s}-")
        renamed[k] = v
    model, _ = convert.convert_state(renamed, include_head=False)
    out = model(ref["x_even"], training=False)
    np.testing.assert_allclose(out["pooled"], ref["x_even/pooled"], atol=TOL, rtol=0)


def test_trunk_only_drops_head_and_reports_it():
    state, _ = fixture("vissl_tiny")
    model, report = convert.convert_state(state, include_head=False)
    assert type(model).__name__ == "RegNet"
    # 27 BN counters (26 trunk + 1 head) + 10 head tensors (2 linears x (w, b), 4 BN, 2 prototypes)
    assert report["ignored"]["count"] == 27 + 10


def test_errors_list_unknown_missing_and_misshaped_keys():
    state, _ = fixture("torchvision_tiny")
    bad = dict(state)
    bad["trunk_output.block1.block1-0.f.zz.weight"] = np.zeros(3, "float32")
    del bad["trunk_output.block2.block2-1.f.b.1.running_var"]
    k = "trunk_output.block3.block3-0.f.se.fc2.bias"
    bad[k] = np.zeros(bad[k].shape[0] + 1, "float32")
    with pytest.raises(usage.UsageError) as e:
        convert.convert_state(bad)
    msg = str(e.value)
    assert "unknown keys (1): trunk_output.block1.block1-0.f.zz.weight" in msg
    assert "missing keys (1): trunk_output.block2.block2-1.f.b.1.running_var" in msg
    assert "mis-shaped keys (1): trunk_output.block3.block3-0.f.se.fc2.bias" in msg


def test_preset_check():
    state, _ = fixture("torchvision_tiny")
    with pytest.raises(usage.UsageError, match="is not regnety_tiny: widths"):
        convert.convert_state(state, preset="regnety_tiny")  # pycls widths differ from the file's
    state, _ = fixture("timm_tiny")
    convert.convert_state(state, preset="regnety_tiny")


def test_unrecognised_checkpoint():
    with pytest.raises(usage.UsageError, match="cannot tell the checkpoint format"):
        convert.convert_state({"encoder.layer1.weight": np.zeros((2, 2))})


def write_safetensors(path, arrays):
    header, offset, blobs = {}, 0, []
    for k, v in arrays.items():
        b = np.ascontiguousarray(v, dtype="<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_safetensors_reader_and_bf16(tmp_path):
    state, _ = fixture("timm_tiny")
    state = {k: v for k, v in state.items() if v.dtype == np.float32}
    path = str(tmp_path / "m.safetensors")
    write_safetensors(path, state)
    back = pytorch.read_safetensors(path)
    assert set(back) == set(state)
    for k in state:
        np.testing.assert_array_equal(back[k], state[k])
    # bfloat16: the top 16 bits of a float32
    x = np.array([1.0, -2.5, 3.140625], "float32")
    bf = (x.view(np.uint32) >> 16).astype("<u2").tobytes()
    h = json.dumps({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    with open(tmp_path / "b.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + bf)
    np.testing.assert_array_equal(pytorch.read_safetensors(str(tmp_path / "b.safetensors"))["x"], x)


def test_nested_flatten_keeps_non_arrays_aside():
    arrays, others = pytorch.flatten({"a": {"b": np.ones(2), "epoch": 3}, "c": np.zeros(1)})
    assert sorted(arrays) == ["a.b", "c"] and others == {"a.epoch": 3}


def test_pth_without_torch_gives_one_line(tmp_path, monkeypatch):
    path = tmp_path / "m.pth"
    path.write_bytes(b"not really")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(usage.UsageError, match="needs PyTorch"):
        pytorch.read_weights(str(path))


def _run_convert(*args):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "seer_tf.bin.convert", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_convert_binary_keras_and_h5_outputs(tmp_path):
    import keras

    state, ref = fixture("torchvision_tiny")
    src = str(tmp_path / "tv.npz")
    np.savez(src, **state)
    out = str(tmp_path / "tv.keras")
    r = _run_convert(f"--input={src}", f"--output={out}")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tensors_assigned"] == 160
    model = keras.models.load_model(out)
    np.testing.assert_allclose(model(ref["x_even"], training=False)["logits"], ref["x_even/logits"],
                               atol=TOL, rtol=0)
    h5 = str(tmp_path / "tv.weights.h5")
    assert _run_convert(f"--input={src}", f"--output={h5}").returncode == 0
    from seer_tf.models.regnet import RegNet

    with open(h5 + ".config.json") as f:
        cfg = json.load(f)
    m2 = RegNet.from_config(cfg["config"])
    m2.build((None, None, None, 3))
    m2.load_weights(h5)
    np.testing.assert_allclose(m2(ref["x_odd"], training=False)["logits"], ref["x_odd/logits"],
                               atol=TOL, rtol=0)
    r = _run_convert(f"--input={tmp_path / 'missing.pth'}", f"--output={out}")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: no such file")


def test_converted_keras_file_loads_with_plain_keras_after_import_seer_tf(tmp_path):
    """`import seer_tf` registers every class: no seer_tf.models import by hand."""
    state, ref = fixture("vissl_tiny")
    src = str(tmp_path / "vissl.npz")
    np.savez(src, **state)
    out = str(tmp_path / "vissl.keras")
    assert _run_convert(f"--input={src}", f"--output={out}").returncode == 0
    np.save(tmp_path / "x.npy", ref["x_even"])
    code = ("import sys, json, numpy as np; import seer_tf, keras; "
            "m = keras.saving.load_model(sys.argv[1]); "
            "x = np.load(sys.argv[2]); out = m([x], training=False); "
            "print(json.dumps([type(m).__name__, "
            "m.backbone(x, training=False)['pooled'].numpy().tolist(), "
            "out['embeddings'].numpy().tolist(), out['scores'][1].numpy().tolist()]))")
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, "-c", code, out, str(tmp_path / "x.npy")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    name, pooled, embeddings, scores = json.loads(r.stdout.strip().splitlines()[-1])
    assert name == "SwAVModel"  # and the head came along: not re-initialized on load
    np.testing.assert_allclose(pooled, ref["x_even/pooled"], atol=TOL, rtol=0)
    np.testing.assert_allclose(embeddings, ref["x_even/embeddings"], atol=TOL, rtol=0)
    np.testing.assert_allclose(scores, ref["x_even/scores1"], atol=TOL, rtol=0)
