"""BatchNorm on the fused kernel: PyTorch BatchNorm2d semantics, Keras' gradients."""

import numpy as np
import pytest
import tensorflow as tf

from seer_tf.models import remat
from seer_tf.models.blocks import batch_norm

RNG = np.random.default_rng(3)
X = (RNG.normal(size=(4, 5, 6, 3)) * [1.0, 3.0, 0.5] + [2.0, -1.0, 0.0]).astype("float32")
GAMMA = np.array([1.5, 0.5, -1.0], "float32")
BETA = np.array([0.1, -0.2, 0.3], "float32")


def _bn():
    bn = batch_norm("bn")
    bn.build(X.shape)
    bn.gamma.assign(GAMMA)
    bn.beta.assign(BETA)
    bn.moving_mean.assign([0.5, 0.5, 0.5])
    bn.moving_variance.assign([2.0, 2.0, 2.0])
    return bn


def test_training_output_and_pytorch_running_statistics():
    bn = _bn()
    y = bn(X, training=True).numpy()
    mean, var = X.mean(axis=(0, 1, 2)), X.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (X - mean) / np.sqrt(var + 1e-5) * GAMMA + BETA, atol=2e-5)
    # torch.nn.BatchNorm2d(momentum=0.1): running = 0.9 running + 0.1 batch, var unbiased (n-1).
    n = X.size // 3
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.9 * 0.5 + 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(),
                               0.9 * 2.0 + 0.1 * var * n / (n - 1), rtol=1e-5)


def test_inference_uses_moving_statistics():
    bn = _bn()
    y = bn(X, training=False).numpy()
    np.testing.assert_allclose(y, (X - 0.5) / np.sqrt(2.0 + 1e-5) * GAMMA + BETA, atol=2e-5)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), [0.5, 0.5, 0.5])


def test_gradients_match_keras_unfused_path():
    bn = _bn()
    w = tf.constant(RNG.normal(size=X.shape).astype("float32"))
    grads = []
    for call in (lambda x: bn(x, training=True), lambda x: bn._keras_call(x, True, None)):
        x = tf.constant(X)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(call(x) ** 2 * w)
        grads.append([g.numpy() for g in tape.gradient(loss, [x, bn.gamma, bn.beta])])
    for fused, keras_ in zip(*grads):
        np.testing.assert_allclose(fused, keras_, rtol=1e-4, atol=1e-4 * np.abs(keras_).max())


def test_recompute_leaves_moving_statistics():
    bn = _bn()
    with remat.recomputing():
        bn(X, training=True)
    np.testing.assert_array_equal(bn.moving_variance.numpy(), [2.0, 2.0, 2.0])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_inputs_normalize_in_float32_statistics(dtype):
    bn = batch_norm("bn")
    bn.dtype_policy = f"mixed_{dtype}"
    bn.build(X.shape)
    y = bn(tf.cast(X, dtype), training=True)
    assert y.dtype == dtype
    mean, var = X.mean(axis=(0, 1, 2)), X.var(axis=(0, 1, 2))
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), (X - mean) / np.sqrt(var + 1e-5),
                               atol=0.05)
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.1 * mean, rtol=0.02, atol=1e-3)
