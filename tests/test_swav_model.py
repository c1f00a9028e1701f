"""SwAV model: one trunk pass per crop resolution, crop-major rows, float32 prototypes."""

import numpy as np
import keras
import pytest

from seer_tf.models.regnet import RegNet
from seer_tf.models.swav import SwAVModel


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return SwAVModel(RegNet.from_preset("regnety_tiny"), [64, 32, 16], [20, 12], use_bn=True)


def test_one_trunk_pass_per_resolution_in_crop_order(model):
    rng = np.random.default_rng(0)
    crops = [rng.normal(size=(3, s, s, 3)).astype("float32") for s in (32, 32, 16, 16, 16)]
    calls = []
    original = model.backbone.call

    def counting(images, training=None):
        calls.append(tuple(images.shape))
        return original(images, training=training)

    model.backbone.call = counting
    try:
        feats = model.features(crops, training=False).numpy()
    finally:
        model.backbone.call = original
    assert calls == [(6, 32, 32, 3), (9, 16, 16, 3)]
    separate = np.concatenate([model.backbone(c, training=False)["pooled"].numpy() for c in crops])
    np.testing.assert_allclose(feats, separate, atol=1e-5)


def test_embeddings_unit_norm_and_scores_float32(model):
    out = model([np.ones((2, 32, 32, 3), "float32")], training=False)
    np.testing.assert_allclose(np.linalg.norm(out["embeddings"], axis=1), 1.0, atol=1e-5)
    assert [s.shape for s in out["scores"]] == [(2, 20), (2, 12)]
    assert all(s.dtype == "float32" for s in out["scores"])


def test_prototypes_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        m = SwAVModel(RegNet.from_preset("regnety_tiny"), [64, 16], [10])
        out = m([np.ones((2, 32, 32, 3), "float32")], training=False)
        assert m.prototypes.kernels[0].dtype == "float32"
        assert out["scores"][0].dtype == "float32" and out["embeddings"].dtype == "float32"
        m.prototypes.normalize()
        np.testing.assert_allclose(np.linalg.norm(m.prototypes.kernels[0].numpy(), axis=0), 1, atol=1e-6)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_head_width_must_match_trunk():
    with pytest.raises(ValueError, match="head input dim 32 != trunk output width 64"):
        SwAVModel(RegNet.from_preset("regnety_tiny"), [32, 16], [10])
