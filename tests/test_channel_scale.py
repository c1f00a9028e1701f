"""seer_tf's native channel-scale op (seer_tf.ops.channel_scale): TF's broadcasting Mul and its
gradient, and Conv's use of it for an SE scale it does not fold into its kernel."""

import numpy as np
import pytest
import tensorflow as tf

from seer_tf.models import blocks
from seer_tf.ops import channel_scale as native_scale
from seer_tf.ops import native
from seer_tf.ops import select

RNG = np.random.default_rng(5)


pytestmark = pytest.mark.usefixtures("native_ops")  # conftest: built, or no compiler (skip)


def _grads(fn, x, s, r):
    with tf.GradientTape() as tape:
        tape.watch([x, s])
        y = fn(x, s)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * r)
    return [tf.cast(t, tf.float32).numpy() for t in [y] + tape.gradient(loss, [x, s])]


@pytest.mark.parametrize("shape", [(4, 7, 7, 24), (2, 50, 50, 40), (3, 1, 1, 5)])
def test_float32_matches_broadcasting_mul(shape):
    """Output and input gradient bit for bit; the scale's gradient (a sum over H*W pixels, here
    over several 2048-pixel work units) to float32 rounding; against a float64 sum too."""
    x = tf.constant(RNG.normal(size=shape), tf.float32)
    s = tf.constant(RNG.uniform(0.1, 1, size=(shape[0], shape[3])), tf.float32)
    r = tf.constant(RNG.normal(size=shape), tf.float32)
    got = _grads(native_scale.channel_scale, x, s, r)
    want = _grads(lambda x, s: x * s[:, None, None, :], x, s, r)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    exact = (r.numpy().astype(np.float64) * x.numpy()).sum((1, 2))
    scale = np.abs(exact).max()
    np.testing.assert_allclose(got[2], want[2], atol=2e-6 * scale)
    ours, tfs = np.abs(got[2] - exact).max(), np.abs(want[2] - exact).max()
    assert ours <= max(2 * tfs, 1e-6 * scale), (ours, tfs)


def test_bfloat16_sums_in_float32():
    shape = (2, 30, 30, 16)
    x = tf.cast(RNG.normal(size=shape), tf.bfloat16)
    s = tf.cast(RNG.uniform(0.1, 1, size=(2, 16)), tf.bfloat16)
    r = tf.constant(RNG.normal(size=shape), tf.float32)
    got = _grads(native_scale.channel_scale, x, s, r)
    xf, sf = x.numpy().astype(np.float64), s.numpy().astype(np.float64)
    ulp = 2.0 ** -8
    np.testing.assert_allclose(got[0], xf * sf[:, None, None, :], rtol=ulp)
    dy = r.numpy().astype(np.float64)  # the loss casts y to float32, so dy arrives rounded
    dy = tf.cast(tf.constant(dy, tf.float32), tf.bfloat16).numpy().astype(np.float64)
    np.testing.assert_allclose(got[2], (dy * xf).sum((1, 2)), rtol=4 * ulp, atol=0.05)


def test_bad_scale_shape_is_a_clear_error():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"scale must be \(N, C\)"):
        native.load().seer_channel_scale(x=tf.zeros([2, 3, 3, 8]), scale=tf.zeros([2, 4]))


def test_conv_uses_it_for_an_unfolded_se_scale(monkeypatch):
    """Where conv c keeps the SE scale out of its kernel (few pixels per channel), it scales
    with the native op in training, and gives what the Mul path gives."""
    x = tf.constant(RNG.normal(size=(4, 7, 7, 440)), tf.float32)
    s = tf.constant(RNG.uniform(0.1, 1, size=(4, 440)), tf.float32)
    conv = blocks.Conv(440, 1)
    conv.build(x.shape)
    assert not select.scale_in_kernel(select.machine(), x.shape)
    calls = []
    real = native_scale.channel_scale
    monkeypatch.setattr(native_scale, "channel_scale", lambda *a: calls.append(1) or real(*a))
    y = conv(x, channel_scale=s, training=True)
    y_inference = conv(x, channel_scale=s)  # inference (and SavedModels): TF's Mul
    monkeypatch.setenv("SEER_TF_NATIVE_OPS", "0")
    y_plain = conv(x, channel_scale=s, training=True)
    assert calls == [1]
    np.testing.assert_array_equal(y_inference.numpy(), y_plain.numpy())
    np.testing.assert_allclose(y.numpy(), y_plain.numpy(), rtol=1e-5, atol=1e-5)
