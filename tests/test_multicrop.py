"""SwAV multi-crop augmentation: decision statistics, pixel semantics, determinism.

The rates and ranges are the SwAV/SEER recipe of docs/design.md section 1. Rates are checked over
2000 draws against binomial tolerances (5 sigma); the pixels are checked against a NumPy
re-implementation of torchvision's definitions driven by the same decisions.
"""

import colorsys

import numpy as np
import pytest
import tensorflow as tf

from seer_tf.data import multicrop as mc

N = 2000
FIVE_SIGMA = lambda p: 5 * np.sqrt(p * (1 - p) / N)  # noqa: E731
NO_JIT = mc.Augment(jit_compile=False)


def _draw(spec, height, width, n=N, augment=mc.Augment(), seed=77):
    ds = tf.data.Dataset.range(n).map(
        lambda i: mc.sample_crop_params(tf.stack([i, tf.constant(seed, tf.int64)]), height,
                                        width, spec, augment))
    return {k: v.numpy() for k, v in next(iter(ds.batch(n))).items()}


@pytest.mark.parametrize("spec", mc.SWAV_CROPS, ids=["224", "96"])
def test_crop_boxes_follow_random_resized_crop(spec):
    height, width = 375, 500
    p = _draw(spec, height, width)
    y, x, h, w = p["box"].T
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= height).all() and (x + w <= width).all()
    inner = ~p["fallback"]
    assert p["fallback"].mean() < 0.02
    area = (h * w / (height * width))[inner]
    lo, hi = spec.scale
    assert area.min() >= lo * 0.98 and area.max() <= hi * 1.02  # w, h are rounded to pixels
    assert area.min() < lo + 0.05 * (hi - lo) and area.max() > hi - 0.2 * (hi - lo)
    log_aspect = np.log(w / h)[inner]
    bound = np.log(4 / 3)
    assert np.abs(log_aspect).max() <= bound + 0.03
    # Log-uniform aspect (torchvision): symmetric in log space, flat (4 equal-width bins).
    counts = np.histogram(log_aspect, bins=4, range=(-bound, bound))[0] / inner.sum()
    if spec.scale[1] < 0.5:  # small crops are never rejected, so the law is exact
        assert np.all(np.abs(counts - 0.25) < FIVE_SIGMA(0.25)), counts
    # Offsets are uniform over the valid positions: mean relative position ~ 1/2.
    rel = (x / np.maximum(width - w, 1))[inner & (w < width - 10)]
    assert abs(rel.mean() - 0.5) < 5 * 0.29 / np.sqrt(len(rel))


def test_decision_rates_and_ranges():
    p = _draw(mc.SWAV_CROPS[1], 96, 128)
    for key, rate in [("flip", 0.5), ("jitter", 0.8), ("grayscale", 0.2), ("blur", 0.5)]:
        assert abs(p[key].mean() - rate) < FIVE_SIGMA(rate), (key, p[key].mean())
    for key in ("brightness", "contrast", "saturation"):
        v = p[key]
        assert v.min() >= 0.2 and v.max() <= 1.8 and abs(v.mean() - 1.0) < 0.05, key
    assert np.abs(p["hue"]).max() <= 0.2 and abs(p["hue"].mean()) < 0.01
    assert p["sigma"].min() >= 0.1 and p["sigma"].max() <= 2.0
    assert (np.sort(p["order"], axis=1) == np.arange(4)).all()  # a permutation
    first = np.bincount(p["order"][:, 0], minlength=4) / N  # random order: each op first 1/4
    assert np.all(np.abs(first - 0.25) < FIVE_SIGMA(0.25))
    # Independence of two decisions (flip and grayscale): joint rate = product.
    joint = (p["flip"] & p["grayscale"]).mean()
    assert abs(joint - 0.1) < FIVE_SIGMA(0.1)


def test_fallback_is_torchvision_center_crop():
    spec = mc.CropSpec(16, 1, (0.14, 1.0))
    p = _draw(spec, 10, 1000, n=20)  # aspect 100: no attempt can fit
    assert p["fallback"].all()
    assert (p["box"] == [0, (1000 - 13) // 2, 10, 13]).all()  # h = 10, w = round(10 * 4 / 3)
    p = _draw(spec, 1, 1, n=20)  # 1x1 image: the whole pixel, upscaled
    assert (p["box"] == [0, 0, 1, 1]).all()


def _gray(x):
    return x @ np.array([0.299, 0.587, 0.114], np.float32)


def _hue(x, shift):
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*x[idx])
        out[idx] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
    return out


def _blur(x, sigma, radius=6):
    t = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(x, [(radius, radius), (0, 0), (0, 0)], mode="symmetric")
    x = sum(k[i] * pad[i:i + x.shape[0]] for i in range(len(k)))
    pad = np.pad(x, [(0, 0), (radius, radius), (0, 0)], mode="symmetric")
    return sum(k[i] * pad[:, i:i + x.shape[1]] for i in range(len(k)))


def reference_augment(x, p):
    """torchvision/PIL definitions (ColorJitter, RandomGrayscale, GaussianBlur), in NumPy."""
    clip = lambda v: np.clip(v, 0.0, 1.0)  # noqa: E731
    if p["flip"]:
        x = x[:, ::-1]
    if p["jitter"]:
        for op in p["order"]:
            if op == 0:
                x = clip(x * p["brightness"])
            elif op == 1:
                x = clip(p["contrast"] * x + (1 - p["contrast"]) * _gray(x).mean())
            elif op == 2:
                x = clip(p["saturation"] * x + (1 - p["saturation"]) * _gray(x)[..., None])
            else:
                x = clip(_hue(x, p["hue"]))
    if p["grayscale"]:
        x = np.repeat(_gray(x)[..., None], 3, axis=-1)
    if p["blur"]:
        x = _blur(x, p["sigma"])
    return (x - np.array(mc.IMAGENET_MEAN)) / np.array(mc.IMAGENET_STD)


@pytest.mark.parametrize("augment", [NO_JIT, mc.Augment()], ids=["graph", "xla"])
def test_pixels_match_the_reference_for_the_drawn_decisions(augment):
    rng = np.random.default_rng(0)
    image = tf.constant(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    spec = mc.CropSpec(24, 1, (0.14, 1.0))  # the size of the other XLA tests: one compile
    seen = {k: 0 for k in ("flip", "jitter", "grayscale", "blur")}
    for k in range(24):
        params = mc.sample_crop_params(tf.constant([k, 5]), 40, 48, spec, augment)
        ours = mc.apply_crop_params(image, params, 24, augment).numpy()
        p = {key: v.numpy() for key, v in params.items()}
        resized = mc.resized_crop(image, params["box"], 24).numpy()
        np.testing.assert_allclose(ours, reference_augment(resized, p), atol=2e-4)
        for key in seen:
            seen[key] += int(p[key])
    assert all(v >= 3 for v in seen.values()), seen  # every step was exercised


def test_grayscale_decision_is_visible_in_the_pixels():
    image = tf.constant(np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    crops = (mc.CropSpec(16, 2, (0.14, 1.0)), mc.CropSpec(8, 2, (0.05, 0.14)))
    ds = tf.data.Dataset.range(60).map(
        lambda i: mc.multicrop_with_params(image, tf.stack([i, 9]), crops, NO_JIT))
    gray_flags, equal_channels = [], []
    std = np.array(mc.IMAGENET_STD)
    mean = np.array(mc.IMAGENET_MEAN)
    for outputs, params in ds.as_numpy_iterator():
        for out, p in zip(outputs, params):
            rgb = out * std + mean
            gray_flags.append(bool(p["grayscale"]))
            equal_channels.append(bool(np.abs(rgb - rgb[..., :1]).max() < 1e-4))
    assert gray_flags == equal_channels
    rate = np.mean(gray_flags)
    assert abs(rate - 0.2) < 5 * np.sqrt(0.16 / len(gray_flags))


def test_same_crops_eagerly_and_inside_tf_data():
    image = tf.constant(np.random.default_rng(2).integers(0, 256, (50, 60, 3), dtype=np.uint8))
    crops = (mc.CropSpec(24, 2, (0.14, 1.0)), mc.CropSpec(24, 1, (0.05, 0.14)))
    seed = tf.constant([11, 12], tf.int64)
    eager = mc.multicrop(image, seed, crops)  # default Augment: XLA after the resize
    ds = tf.data.Dataset.from_tensors((image, seed)).map(lambda i, s: mc.multicrop(i, s, crops))
    inside = next(iter(ds))
    assert len(eager) == 3 and all(c.shape == (24, 24, 3) for c in eager)
    for a, b in zip(eager, inside):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    other = mc.multicrop(image, tf.constant([11, 13], tf.int64), crops)
    assert not np.allclose(eager[0].numpy(), other[0].numpy())
    graph = mc.multicrop(image, seed, crops, NO_JIT)  # XLA and plain TF agree
    for a, b in zip(eager, graph):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)


def test_blur_is_a_normalized_gaussian():
    impulse = np.zeros([31, 31, 3], np.float32)
    impulse[15, 15] = 1.0
    for sigma in (0.5, 1.0, 2.0):
        out = mc.gaussian_blur(tf.constant(impulse), sigma, 6).numpy()[..., 0]
        assert abs(out.sum() - 1.0) < 1e-5 and np.allclose(out, out.T, atol=1e-7)
        t = np.arange(31) - 15
        taps = np.exp(-0.5 * (np.arange(-6, 7) / sigma) ** 2)  # sampled at integer offsets
        expected = (taps * np.arange(-6, 7) ** 2).sum() / taps.sum()
        assert abs((out.sum(0) * t**2).sum() - expected) < 1e-5
        assert abs(np.sqrt(expected) - sigma) < 0.08 * sigma  # sampling shrinks small sigmas
    flat = np.full([20, 20, 3], 0.3, np.float32)
    assert np.allclose(mc.gaussian_blur(tf.constant(flat), 1.7, 6).numpy(), 0.3, atol=1e-6)


def test_parse_crops():
    assert mc.parse_crops("2x224,4x96") == mc.SWAV_CROPS
    assert mc.parse_crops("2x160,6x96:0.05:0.3")[1] == mc.CropSpec(96, 6, (0.05, 0.3))
