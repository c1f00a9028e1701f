"""XLA-gradient ReLUs (seer_tf.ops.relu): TF's own arithmetic (bit-identical, except where the
SE squeeze's gradient joins the kernel: one rounding instead of three), wired into blocks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from seer_tf import cpu
from seer_tf.models import blocks
from seer_tf.ops import relu as relu_ops
from seer_tf.ops import select


# These are the paths taken without seer_tf's native CPU ops (see conftest.tensorflow_kernels).
pytestmark = pytest.mark.usefixtures("tensorflow_kernels")


RNG = np.random.default_rng(7)
EPS = 1e-5


def _f32(t):
    return tf.cast(t, tf.float32).numpy()


def _bn_relu_and_grads(dtype, xla, x, gamma, beta, dz):
    @tf.function
    def run(x, gamma, beta):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            z, mean, var = relu_ops.batch_norm_relu(x, gamma, beta, EPS, xla=xla)
            loss = tf.reduce_sum(tf.cast(z, tf.float32) * tf.cast(dz, tf.float32))
        return [z, mean, var] + tape.gradient(loss, [x, gamma, beta])

    return [_f32(t) for t in run(tf.cast(x, dtype), gamma, beta)]


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_batch_norm_relu_xla_gradient_is_bit_identical(dtype):
    x = RNG.normal(size=(3, 5, 4, 16)).astype("float32") * 2 + 0.3
    gamma = tf.constant(RNG.uniform(0.5, 1.5, 16), tf.float32)
    beta = tf.constant(RNG.normal(size=16), tf.float32)
    dz = tf.cast(RNG.normal(size=x.shape), dtype)
    plain = _bn_relu_and_grads(dtype, False, x, gamma, beta, dz)
    fast = _bn_relu_and_grads(dtype, True, x, gamma, beta, dz)
    for name, a, b in zip(["z", "mean", "var", "dx", "dgamma", "dbeta"], plain, fast):
        np.testing.assert_array_equal(a, b, err_msg=name)
    # And both are BatchNorm + ReLU: against NumPy's forward and backward (float32 only).
    if dtype == tf.float32:
        m, v = x.mean((0, 1, 2)), x.var((0, 1, 2))
        xhat = (x - m) / np.sqrt(v + EPS)
        y = xhat * gamma.numpy() + beta.numpy()
        np.testing.assert_allclose(fast[0], np.maximum(y, 0), atol=1e-5)
        dy = dz.numpy() * (y > 0)
        n = x.size // 16
        dx = gamma.numpy() / np.sqrt(v + EPS) * (
            dy - dy.mean((0, 1, 2)) - xhat * (dy * xhat).sum((0, 1, 2)) / n)
        np.testing.assert_allclose(fast[3], dx, atol=1e-4)
        np.testing.assert_allclose(fast[4], (dy * xhat).sum((0, 1, 2)), rtol=1e-4)
        np.testing.assert_allclose(fast[5], dy.sum((0, 1, 2)), rtol=1e-4)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_add_relu_xla_gradient_is_bit_identical(dtype):
    a = tf.cast(RNG.normal(size=(2, 6, 6, 8)), dtype)
    b = tf.cast(RNG.normal(size=(2, 6, 6, 8)), dtype)
    dz = tf.cast(RNG.normal(size=(2, 6, 6, 8)), dtype)
    results = []
    for xla in (False, True):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            z = relu_ops.add_relu(a, b, xla=xla)
            loss = tf.reduce_sum(tf.cast(z, tf.float32) * tf.cast(dz, tf.float32))
        results.append([_f32(t) for t in [z] + tape.gradient(loss, [a, b])])
    for x, y in zip(*results):
        np.testing.assert_array_equal(x, y)
    z, ga, gb = results[1]
    np.testing.assert_array_equal(z, _f32(tf.cast(np.maximum(_f32(a) + _f32(b), 0), dtype)))
    np.testing.assert_array_equal(ga, np.where(z > 0, _f32(dz), 0))
    np.testing.assert_array_equal(ga, gb)


def test_xla_rule_is_bfloat16_on_native_bf16_cpus(monkeypatch):
    rule, m = select.xla_relu_grad, select.Machine(native_bf16=True)
    assert rule(m, tf.bfloat16) and not rule(m, tf.float32)
    assert not rule(select.Machine(native_bf16=False), tf.bfloat16)
    assert not rule(select.Machine(inside_xla=True), tf.bfloat16)  # the step is XLA already


def _yblock_step(monkeypatch, xla):
    """Output, gradients and moving statistics of one bf16 Y block training step."""
    monkeypatch.setattr(select, "xla_relu_grad", lambda m, dtype: xla)
    # The path of a CPU with native bf16 (on others b's BatchNorm runs in float32 and its SE
    # squeeze takes the plain gradient), exact on any CPU.
    monkeypatch.setattr(cpu, "has_native_bf16", lambda: True)
    calls, compiled, with_mean = [], relu_ops._relu_grad, relu_ops._relu_grad_with_mean
    monkeypatch.setattr(relu_ops, "_relu_grad", lambda dz, z: calls.append("relu") or compiled(dz, z))
    monkeypatch.setattr(relu_ops, "_relu_grad_with_mean",
                        lambda dz, dm, z: calls.append("relu+se") or with_mean(dz, dm, z))
    keras.utils.set_random_seed(11)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        block = blocks.YBlock(16, 32, stride=2, group_width=8)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = tf.constant(np.random.default_rng(5).normal(size=(2, 8, 8, 16)), tf.float32)
    block.build(x.shape)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = block(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    assert y.dtype == tf.bfloat16 and block.b.bn.compute_dtype == "bfloat16"
    grads = tape.gradient(loss, [x] + block.trainable_variables)
    # a and the block output (add+ReLU) take the compiled gradient, b the one that also takes
    # the SE squeeze's gradient; or none of them.
    assert sorted(calls) == (["relu", "relu", "relu+se"] if xla else [])
    return ([_f32(y)] + [v.numpy() for v in block.non_trainable_variables],
            [_f32(g) for g in grads])


def _assert_bf16_close(fast, plain):
    """bf16 gradients whose only difference is where the SE squeeze's gradient is added
    (one rounding in the XLA kernel instead of three in Tile, Mul and AddN)."""
    for a, b in zip(plain, fast):
        np.testing.assert_allclose(b, a, rtol=0.03, atol=0.03 * np.abs(a).max())


def test_yblock_bf16_step_matches_with_xla_relu_gradients(monkeypatch):
    """Whichever ReLU path a bf16 block takes: the same output and moving statistics (updated
    once), bit for bit, and the same gradients up to bf16 rounding."""
    (plain_fwd, plain), (fast_fwd, fast) = (_yblock_step(monkeypatch, xla) for xla in (False, True))
    assert len(plain) == len(fast) > 10 and len(plain_fwd) == len(fast_fwd) > 5
    for a, b in zip(plain_fwd, fast_fwd):
        np.testing.assert_array_equal(a, b)
    _assert_bf16_close(fast, plain)
    assert np.abs(plain[0]).max() > 0  # the input gradient is not trivially zero
    assert any(np.abs(m).max() > 0 for m in plain_fwd[1:] if m.ndim == 1)  # statistics moved


def test_relu_gradient_with_the_se_squeeze(monkeypatch):
    """float32 BatchNorm+ReLU that also returns the output's H, W mean: the XLA gradient that
    adds the mean's gradient is the plain autodiff one."""
    x = tf.constant(RNG.normal(size=(3, 5, 4, 16)).astype("float32") * 2 + 0.3)
    gamma = tf.constant(RNG.uniform(0.5, 1.5, 16), tf.float32)
    beta = tf.constant(RNG.normal(size=16), tf.float32)
    dz = tf.constant(RNG.normal(size=x.shape), tf.float32)
    dsq = tf.constant(RNG.normal(size=(3, 16)) * 5, tf.float32)
    results = []
    for xla in (False, True):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            z, _, _, sq = relu_ops.batch_norm_relu(x, gamma, beta, EPS, xla=xla, spatial_mean=True)
            loss = tf.reduce_sum(z * dz) + tf.reduce_sum(sq * dsq)
        results.append([z, sq] + tape.gradient(loss, [x, gamma, beta]))
    for name, a, b in zip(["z", "squeeze", "dx", "dgamma", "dbeta"], *results):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(results[1][1].numpy(), results[1][0].numpy().mean((1, 2)), rtol=1e-6)


def _regnet_bf16_step(monkeypatch, xla, remat_mode):
    from seer_tf.models.regnet import RegNet

    monkeypatch.setattr(select, "xla_relu_grad", lambda m, dtype: xla)
    keras.utils.set_random_seed(1)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = RegNet.from_preset("regnety_tiny", remat=remat_mode)
        model.build((None, None, None, 3))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(model(x, training=True)["pooled"], tf.float32) ** 2)
        return loss, tape.gradient(loss, model.trainable_variables)

    loss, grads = step()
    return ([loss.numpy()] + [v.numpy() for v in model.non_trainable_variables],
            [g.numpy() for g in grads])


@pytest.mark.parametrize("remat_mode", ["none", "block"])
def test_bf16_regnet_with_xla_relu_gradients_matches_plain(monkeypatch, remat_mode):
    """A whole bf16 trunk, with and without activation checkpointing (the custom gradients are
    recomputed inside tf.recompute_grad): same loss and moving statistics, the same gradients
    up to bf16 rounding."""
    plain_fwd, plain = _regnet_bf16_step(monkeypatch, False, remat_mode)
    fast_fwd, fast = _regnet_bf16_step(monkeypatch, True, remat_mode)
    assert len(plain) == len(fast) > 20
    for a, b in zip(plain_fwd, fast_fwd):
        np.testing.assert_array_equal(a, b)
    _assert_bf16_close(fast, plain)
