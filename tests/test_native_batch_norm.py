"""seer_tf's native BatchNorm [+ ReLU] [+ SE squeeze] op (seer_tf.ops.batch_norm_relu): a float64
reference, parity with TF's FusedBatchNormV3 path, and the BatchNorm layer's use of it."""

import shutil

import numpy as np
import pytest
import tensorflow as tf

from seer_tf.models import blocks
from seer_tf.ops import batch_norm_relu as native_bn
from seer_tf.ops import native

RNG = np.random.default_rng(11)
EPS = 1e-5


pytestmark = pytest.mark.usefixtures("native_ops")  # conftest: built, or no compiler (skip)


def _reference(x, gamma, beta, dz, relu, dsq=None):
    """float64 BatchNorm [+ ReLU] forward, unbiased variance, squeeze, and the input/gamma/beta
    gradients of sum(y * dz) + sum(squeeze * dsq), written out from the definitions."""
    x = x.astype(np.float64)
    n = x.shape[0] * x.shape[1] * x.shape[2]
    mean = x.mean((0, 1, 2))
    var = x.var((0, 1, 2))
    xhat = (x - mean) / np.sqrt(var + EPS)
    z = xhat * gamma + beta
    y = np.maximum(z, 0) if relu else z
    squeeze = y.mean((1, 2))
    g = dz.astype(np.float64)
    if dsq is not None:
        g = g + dsq[:, None, None, :] / (x.shape[1] * x.shape[2])
    if relu:
        g = g * (z > 0)
    dbeta = g.sum((0, 1, 2))
    dgamma = (g * xhat).sum((0, 1, 2))
    dx = gamma / np.sqrt(var + EPS) * (g - dbeta / n - xhat * dgamma / n)
    return y, mean, var * n / (n - 1), squeeze, dx, dgamma, dbeta


def _native(x, gamma, beta, dz, relu, dsq=None):
    x = tf.constant(x)
    gamma, beta = tf.constant(gamma, tf.float32), tf.constant(beta, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta])
        y, mean, var, *sq = native_bn.batch_norm(x, gamma, beta, EPS, relu,
                                                 spatial_mean=dsq is not None)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.cast(dz, tf.float32))
        if dsq is not None:
            loss += tf.reduce_sum(tf.cast(sq[0], tf.float32) * dsq)
    dx, dgamma, dbeta = tape.gradient(loss, [x, gamma, beta])
    out = [y, mean, var, sq[0] if sq else None, dx, dgamma, dbeta]
    return [None if t is None else tf.cast(t, tf.float32).numpy() for t in out]


@pytest.mark.parametrize("shape", [(4, 7, 7, 24), (2, 50, 50, 104), (3, 3, 3, 440), (5, 1, 1, 3)])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("squeeze", [False, True])
def test_float32_matches_a_float64_reference(shape, relu, squeeze):
    """Every output and gradient, on shapes with one and several work units per image
    (50x50 = 2500 pixels > the 2048-pixel unit) and odd channel counts."""
    c = shape[-1]
    x = (RNG.normal(size=shape) * 1.7 + 0.4).astype(np.float32)
    gamma, beta = RNG.uniform(0.5, 1.5, c), RNG.normal(size=c)
    dz = RNG.normal(size=shape).astype(np.float32)
    dsq = RNG.normal(size=(shape[0], c)).astype(np.float32) if squeeze else None
    got = _native(x, gamma, beta, dz, relu, dsq)
    want = _reference(x, gamma, beta, dz, relu, dsq)
    for name, a, b in zip(["y", "mean", "variance", "squeeze", "dx", "dgamma", "dbeta"], got, want):
        if b is None or (name == "squeeze" and not squeeze):
            continue
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(b).max()),
                                   err_msg=name)


def test_statistics_do_not_cancel_for_a_large_mean():
    """One-pass sums are shifted by each channel's first value, so a mean 1000x the standard
    deviation still gives the variance to float32 precision (unshifted E[x^2] - E[x]^2 in
    float32 would lose all of it)."""
    x = (1000.0 + RNG.normal(size=(8, 16, 16, 32))).astype(np.float32)
    got = _native(x, np.ones(32), np.zeros(32), np.zeros_like(x), relu=False)
    want = _reference(x, np.ones(32), np.zeros(32), np.zeros_like(x), relu=False)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-4)
    np.testing.assert_allclose(got[0], want[0], atol=2e-3)


def test_bfloat16_is_float32_arithmetic_rounded_once():
    """bf16 in, bf16 out: the result is the float32 computation on the same bf16 inputs,
    rounded to bf16 (within one bf16 ulp of the float64 reference)."""
    shape, c = (4, 20, 20, 104), 104
    x = tf.cast(RNG.normal(size=shape) * 2 + 0.5, tf.bfloat16)
    dz = tf.cast(RNG.normal(size=shape), tf.bfloat16)
    gamma, beta = RNG.uniform(0.5, 1.5, c), RNG.normal(size=c)
    got = _native(x, gamma, beta, dz, True)
    want = _reference(x.numpy().astype(np.float32), gamma, beta,
                      dz.numpy().astype(np.float32), True)
    ulp = 2.0 ** -8
    np.testing.assert_allclose(got[0], want[0], rtol=ulp, atol=1e-5 * np.abs(want[0]).max())
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-5)
    np.testing.assert_allclose(got[4], want[4], rtol=ulp, atol=ulp * np.abs(want[4]).max())
    np.testing.assert_allclose(got[5], want[5], rtol=1e-4, atol=1e-3)
    assert got[0].dtype == np.float32 and x.dtype == tf.bfloat16


def test_bad_input_is_a_clear_error():
    with pytest.raises(tf.errors.InvalidArgumentError, match="NHWC"):
        native.load().seer_batch_norm_relu(x=tf.zeros([4, 8]), gamma=tf.ones([8]),
                                           beta=tf.zeros([8]), epsilon=EPS, relu=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="gamma"):
        native.load().seer_batch_norm_relu(x=tf.zeros([2, 2, 2, 8]), gamma=tf.ones([4]),
                                           beta=tf.zeros([4]), epsilon=EPS, relu=True)


def _layer_step(monkeypatch, native_on, x, gamma, relu, spatial_mean=False):
    monkeypatch.setenv("SEER_TF_NATIVE_OPS", "1" if native_on else "0")
    calls = []
    real = native_bn.batch_norm
    monkeypatch.setattr(native_bn, "batch_norm", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    bn = blocks.batch_norm("bn")
    bn.build(x.shape)
    bn.gamma.assign(gamma)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = bn(x, training=True, relu=relu, spatial_mean=spatial_mean)
        y, sq = out if spatial_mean else (out, None)
        loss = tf.reduce_sum(y * tf.sin(y)) + (tf.reduce_sum(sq ** 2) if spatial_mean else 0.0)
    grads = tape.gradient(loss, [x, bn.gamma, bn.beta])
    eval_y = bn(x, training=False, relu=relu)
    assert calls == ([1] if native_on else [])
    return [t.numpy() for t in [y, *grads, bn.moving_mean, bn.moving_variance, eval_y]
            + ([sq] if spatial_mean else [])]


@pytest.mark.parametrize("relu,spatial_mean", [(True, False), (False, False), (True, True)])
def test_layer_uses_the_op_and_agrees_with_tensorflow_batch_norm(monkeypatch, relu, spatial_mean):
    """The training-mode layer takes the op (when it built) and gives the FusedBatchNormV3
    path's output, gradients, moving statistics (PyTorch's unbiased rule) and inference."""
    x = tf.constant(RNG.normal(size=(4, 9, 9, 40)) * 1.3 + 0.3, tf.float32)
    gamma = RNG.uniform(0.5, 1.5, 40).astype(np.float32)
    with monkeypatch.context() as m:
        plain = _layer_step(m, False, x, gamma, relu, spatial_mean)
    fast = _layer_step(monkeypatch, True, x, gamma, relu, spatial_mean)
    names = ["y", "dx", "dgamma", "dbeta", "moving_mean", "moving_var", "eval_y", "squeeze"]
    for name, a, b in zip(names, plain, fast):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(a).max()),
                                   err_msg=name)
    assert np.abs(plain[4]).max() > 0 and np.abs(plain[1]).max() > 0


def test_switch_off(monkeypatch):
    monkeypatch.setenv("SEER_TF_NATIVE_OPS", "0")
    assert not native_bn.available()


def test_a_failed_build_falls_back(monkeypatch, tmp_path):
    """A compiler that fails (here /bin/false) gives None (callers keep TF's kernels) and leaves
    no half-written library in the cache."""
    monkeypatch.setenv("CXX", shutil.which("false"))
    monkeypatch.setenv("SEER_TF_CACHE", str(tmp_path))
    assert native._load.__wrapped__() is None
    assert not list(tmp_path.iterdir())
