"""Channel-folded BatchNorm (seer_tf.ops.folded_batch_norm): a float64 reference, the float32
path it replaces for bfloat16, and the BatchNorm layer's choice of it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from seer_tf import cpu
from seer_tf.models import blocks
from seer_tf.ops import folded_batch_norm as folded
from seer_tf.ops import relu as relu_ops
from seer_tf.ops import select


# These are the paths taken without seer_tf's native CPU ops (see conftest.tensorflow_kernels).
pytestmark = pytest.mark.usefixtures("tensorflow_kernels")


RNG = np.random.default_rng(3)
EPS = 1e-5


def _f32(t):
    return tf.cast(t, tf.float32).numpy()


@pytest.mark.parametrize("channels,pixels,k", [
    (104, 64 * 28 * 28, 2), (440, 64 * 7 * 7, 2), (208, 100, 1), (112, 98, 1), (44, 8, 4),
    (20, 12, 4), (6, 16, 8), (3, 32, 16), (104, 49, 1), (3, 8, 1), (104, None, 1)])
def test_fold_factor(channels, pixels, k):
    """The smallest k with k*C a multiple of 16 that also divides the pixel count, else 1."""
    assert folded.fold_factor(channels, pixels) == k


def _run(x, gamma, beta, dz, relu, k, dsq=None):
    @tf.function
    def run(x, gamma, beta):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            z, mean, var, *sq = folded.batch_norm(x, gamma, beta, EPS, relu, k,
                                                  spatial_mean=dsq is not None)
            loss = tf.reduce_sum(tf.cast(z, tf.float32) * tf.cast(dz, tf.float32))
            if dsq is not None:  # the SE squeeze's gradient joins the ReLU gradient
                loss += tf.reduce_sum(tf.cast(sq[0], tf.float32) * dsq)
        return [z, mean, var] + tape.gradient(loss, [x, gamma, beta])

    return [_f32(t) for t in run(x, gamma, beta)]


def _reference(x, gamma, beta, dz, relu, mask=None, dsq=None):
    """Training-mode BatchNorm [+ReLU] and its gradients in float64; `mask` (where the output is
    > 0) from the implementation under test, so ReLU ties at 0 do not decide the comparison."""
    x, dz = x.astype(np.float64), dz.astype(np.float64)
    axes, n = (0, 1, 2), x.size // x.shape[-1]
    mean, var = x.mean(axes), x.var(axes)
    x_hat = (x - mean) / np.sqrt(var + EPS)
    y = x_hat * gamma + beta
    if dsq is not None:
        dz = dz + dsq[:, None, None, :] / (x.shape[1] * x.shape[2])
    dy = dz * (mask if mask is not None else y > 0) if relu else dz
    dbeta, dgamma = dy.sum(axes), (dy * x_hat).sum(axes)
    dx = gamma / np.sqrt(var + EPS) * (dy - dbeta / n - x_hat * dgamma / n)
    return [np.maximum(y, 0) if relu else y, mean, var * n / (n - 1), dx, dgamma, dbeta]


@pytest.mark.parametrize("relu,squeeze", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("shape", [(4, 6, 5, 24), (2, 3, 4, 20), (2, 2, 4, 6)])
def test_folded_matches_float64_reference(shape, relu, squeeze):
    """Statistics combined over the k pixel groups are the per-channel ones, and the backward
    (inference-mode gradient on the fold + one XLA kernel) is BatchNorm's training gradient."""
    c = shape[-1]
    k = folded.fold_factor(c, shape[0] * shape[1] * shape[2])
    assert k > 1
    # Per-channel offsets larger than the spread: the variance must not cancel away.
    x = (RNG.normal(size=shape) * RNG.uniform(0.5, 3, c) + RNG.normal(size=c) * 4).astype("float32")
    gamma = RNG.uniform(0.5, 1.5, c).astype("float32")
    beta = RNG.normal(size=c).astype("float32")
    dz = RNG.normal(size=shape).astype("float32")
    dsq = (RNG.normal(size=(shape[0], c)) * 10).astype("float32") if squeeze else None
    got = _run(tf.constant(x), tf.constant(gamma), tf.constant(beta), tf.constant(dz), relu, k,
               dsq)
    want = _reference(x, gamma, beta, dz, relu, mask=got[0] > 0, dsq=dsq)
    for name, g, w in zip(["z", "mean", "var", "dx", "dgamma", "dbeta"], got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5 * np.abs(w).max(), err_msg=name)


def test_bfloat16_matches_the_float32_path_it_replaces():
    """bf16 in, bf16 out, float32 statistics: the same numbers as casting to float32, running
    TF's BatchNorm+ReLU there and casting back, up to bf16 rounding of the outputs."""
    shape, c = (8, 14, 14, 40), 40
    x = tf.cast(RNG.normal(size=shape) * 2 + 0.5, tf.bfloat16)
    gamma = tf.constant(RNG.uniform(0.5, 1.5, c), tf.float32)
    beta = tf.constant(RNG.normal(size=c), tf.float32)
    dz = tf.cast(RNG.normal(size=shape), tf.bfloat16)
    got = _run(x, gamma, beta, dz, True, folded.fold_factor(c, 8 * 14 * 14))

    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta])
        z, mean, var = relu_ops.batch_norm_relu(tf.cast(x, tf.float32), gamma, beta, EPS, False)
        z = tf.cast(z, tf.bfloat16)
        loss = tf.reduce_sum(tf.cast(z, tf.float32) * tf.cast(dz, tf.float32))
    want = [_f32(t) for t in [z, mean, var] + tape.gradient(loss, [x, gamma, beta])]
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)  # mean
    np.testing.assert_allclose(got[2], want[2], rtol=1e-5)  # unbiased variance
    same = (got[0] > 0) == (want[0] > 0)
    assert same.mean() > 0.999
    np.testing.assert_allclose(got[0][same], want[0][same], rtol=8e-3, atol=8e-3)
    np.testing.assert_allclose(got[4], want[4], rtol=2e-2, atol=0.5)  # dgamma (sums of 1568)
    np.testing.assert_allclose(got[5], want[5], rtol=2e-2, atol=0.5)  # dbeta
    dx_scale = np.abs(want[3]).max()
    assert np.abs(got[3] - want[3]).mean() < 5e-3 * dx_scale


def test_inference_on_the_fold_is_per_channel_normalization():
    shape, c = (2, 5, 6, 24), 24
    x = RNG.normal(size=shape).astype("float32")
    gamma, beta = RNG.uniform(0.5, 1.5, c), RNG.normal(size=c)
    mean, var = RNG.normal(size=c), RNG.uniform(0.5, 2, c)
    y = folded.batch_norm_inference(tf.constant(x), *(tf.constant(v, tf.float32) for v in
                                                       (gamma, beta, mean, var)), EPS, 2)
    np.testing.assert_allclose(y.numpy(), (x - mean) / np.sqrt(var + EPS) * gamma + beta,
                               rtol=1e-5, atol=1e-5)


def _bn_layer_step(monkeypatch, fold_on, x, relu):
    """Output, input/gamma/beta gradients and moving statistics of a bf16 BatchNorm layer."""
    monkeypatch.setattr(cpu, "has_native_bf16", lambda: True)
    monkeypatch.setattr(select, "device", lambda: "cpu")
    calls = []
    real = folded.batch_norm
    monkeypatch.setattr(folded, "batch_norm", lambda *a, **kw: calls.append(a[5]) or real(*a, **kw))
    if not fold_on:
        monkeypatch.setattr(select, "channel_fold", lambda m, dtype, shape: 1)
    bn = blocks.batch_norm("bn")
    bn.dtype_policy = "mixed_bfloat16"
    bn.build(x.shape)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = bn(x, training=True, relu=relu)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    grads = tape.gradient(loss, [x, bn.gamma, bn.beta])
    eval_y = bn(x, training=False, relu=relu)
    assert y.dtype == tf.bfloat16 and eval_y.dtype == tf.bfloat16
    assert calls == ([2] if fold_on else [])
    return [_f32(y)] + [_f32(g) for g in grads] + [bn.moving_mean.numpy(),
                                                   bn.moving_variance.numpy(), _f32(eval_y)]


@pytest.mark.parametrize("relu", [True, False])
def test_layer_folds_bf16_channels_not_a_multiple_of_16(monkeypatch, relu):
    """A 24-channel bf16 BatchNorm on a native-bf16 CPU runs folded (k=2) and agrees with the
    float32 path it used to take: training output, gradients, moving statistics, inference."""
    x = tf.cast(RNG.normal(size=(4, 6, 6, 24)) * 1.5 + 0.2, tf.bfloat16)
    with monkeypatch.context() as m:
        plain = _bn_layer_step(m, False, x, relu)
    fast = _bn_layer_step(monkeypatch, True, x, relu)
    names = ["y", "dx", "dgamma", "dbeta", "moving_mean", "moving_var", "eval_y"]
    for name, a, b in zip(names, plain, fast):
        np.testing.assert_allclose(b, a, rtol=2e-2, atol=2e-2 * max(1.0, np.abs(a).max()),
                                   err_msg=name)
    np.testing.assert_allclose(fast[4], plain[4], rtol=1e-5, atol=1e-6)  # statistics: float32


def test_layer_keeps_float32_path_when_pixels_do_not_divide(monkeypatch):
    rule, m = select.channel_fold, select.Machine(native_bf16=True)
    assert rule(m, tf.bfloat16, [1, 7, 7, 104]) == 1
    assert rule(m, tf.bfloat16, [2, 7, 7, 104]) == 2
    assert rule(m, tf.float32, [2, 7, 7, 104]) == 1
    assert rule(m, tf.bfloat16, [2, 7, 7, 112]) == 1
    assert rule(m, tf.bfloat16, [None, 7, 7, 104]) == 1
    assert rule(select.Machine(native_bf16=False), tf.bfloat16, [2, 7, 7, 104]) == 1
    assert rule(select.Machine(inside_xla=True), tf.bfloat16, [2, 7, 7, 104]) == 1
