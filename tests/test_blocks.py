"""BatchNorm on the fused kernel: PyTorch BatchNorm2d semantics, Keras' gradients."""

import numpy as np
import pytest
import tensorflow as tf

from seer_tf import cpu
from seer_tf.models import remat
from seer_tf.models.blocks import Conv, batch_norm
from seer_tf.ops import select

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


@pytest.mark.parametrize("dtype,channels", [("bfloat16", 3), ("bfloat16", 16), ("float16", 3)])
def test_half_precision_inputs_normalize_in_float32_statistics(dtype, channels):
    # bfloat16 with 16 channels runs oneDNN's bf16 kernel on CPUs with native bf16; 3 channels
    # (and float16) go through float32 on CPU (`select.normalize_in_float32`). Both must give the
    # same normalization.
    x = np.tile(X, (1, 1, 1, 6))[..., :channels]
    bn = batch_norm("bn")
    bn.dtype_policy = f"mixed_{dtype}"
    bn.build(x.shape)
    y = bn(tf.cast(x, dtype), training=True)
    assert y.dtype == dtype
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), (x - mean) / np.sqrt(var + 1e-5),
                               atol=0.05)
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.1 * mean, rtol=0.02, atol=1e-3)


def test_which_half_precision_inputs_normalize_in_float32():
    rule, m = select.normalize_in_float32, select.Machine(native_bf16=True)
    assert rule(m, tf.bfloat16, 104) and rule(m, tf.bfloat16, 440)
    assert not rule(m, tf.bfloat16, 208)
    assert rule(m, tf.float16, 208)
    assert not rule(m, tf.float32, 104)
    assert rule(select.Machine(native_bf16=False), tf.bfloat16, 208)
    # GPUs, TPUs and XLA-compiled steps normalize half precision natively
    assert not rule(select.Machine(device="gpu"), tf.bfloat16, 104)
    assert not rule(select.Machine(inside_xla=True), tf.float16, 104)


def test_bfloat16_pointwise_conv_as_matmul_matches_conv2d(monkeypatch):
    """1x1 stride-1 convolutions with >= 64 input channels run as one matmul in bf16 on CPUs
    with native bf16: same output and gradients as tf.nn.conv2d (up to bf16 rounding). The
    matmul is exact on any CPU (emulated bf16 is only slower), so the test forces the rule on."""
    rule, m = select.pointwise_as_matmul, select.Machine(native_bf16=True)
    assert not rule(select.Machine(native_bf16=False), tf.bfloat16, 440)
    assert rule(m, tf.bfloat16, 64) and not rule(m, tf.bfloat16, 48)
    assert rule(m, tf.float32, 440) and not rule(m, tf.float32, 48)
    # Outputs of >= 32M elements (oneDNN's 1x1 kernel slows down there): matmul in either dtype.
    big = 64 * 112 * 112 * 48
    assert rule(m, tf.float32, 32, big) and rule(m, tf.bfloat16, 32, big)
    assert not rule(m, tf.float32, 32, big // 2)
    assert not rule(m, tf.float32, 32, None)
    assert not rule(select.Machine(inside_xla=True), tf.float32, 440)
    monkeypatch.setattr(cpu, "has_native_bf16", lambda: True)
    conv = Conv(24, kernel_size=1, dtype="mixed_bfloat16")
    x = tf.constant(RNG.normal(size=(2, 5, 3, 64)), tf.bfloat16)
    conv.build(x.shape)
    dy = tf.constant(RNG.normal(size=(2, 5, 3, 24)), tf.bfloat16)
    results = []
    for fn in (conv, lambda v: tf.nn.conv2d(v, tf.cast(conv.kernel, tf.bfloat16), 1, "VALID")):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.cast(dy, tf.float32))
        gx, gk = tape.gradient(loss, [x, conv.kernel])
        results.append((y, gx, gk))
    assert results[0][0].shape == (2, 5, 3, 24) and results[0][0].dtype == tf.bfloat16
    for ours, ref in zip(*results):
        ours, ref = tf.cast(ours, tf.float32).numpy(), tf.cast(ref, tf.float32).numpy()
        np.testing.assert_allclose(ours, ref, rtol=0.02, atol=0.02 * np.abs(ref).max())


@pytest.mark.parametrize("shape,folded", [((3, 6, 5, 16), True), ((3, 3, 3, 16), False)])
def test_channel_scale_folded_into_pointwise_kernel(shape, folded):
    """conv(x * s) for a per-image (N, C) scale (the SE gate): as one batched matmul with
    per-image kernels s W when an image has >= 1.3x more pixels than channels, else the plain
    multiply; output and all three gradients agree with the unfused arithmetic."""
    conv = Conv(12, kernel_size=1)
    x = tf.constant(RNG.normal(size=shape), tf.float32)
    s = tf.constant(RNG.uniform(0.1, 1.0, size=(shape[0], shape[-1])), tf.float32)
    dy = tf.constant(RNG.normal(size=shape[:3] + (12,)), tf.float32)
    conv.build(x.shape)
    m = select.machine()
    assert (select.conv(m, x.dtype, x.shape, 12, 1, 1, 1, True, True).scale == "kernel") == folded
    assert select.conv(m, x.dtype, x.shape, 12, 3, 1, 1, True, True).scale != "kernel"
    results = []
    for fn in (lambda: conv(x, channel_scale=s),
               lambda: tf.nn.conv2d(x * s[:, None, None, :], conv.kernel, 1, "VALID")):
        with tf.GradientTape() as tape:
            tape.watch([x, s])
            y = fn()
            loss = tf.reduce_sum(y * dy)
        results.append([y] + tape.gradient(loss, [x, s, conv.kernel]))
    assert results[0][0].shape == shape[:3] + (12,)
    for name, ours, ref in zip(["y", "dx", "ds", "dkernel"], *results):
        np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("size", [7, 8, 9, 28])
@pytest.mark.parametrize("groups", [1, 4])
def test_stride2_conv_with_widened_kernel_is_pytorch_padding(monkeypatch, size, groups):
    """A stride-2 3x3 Conv on CPU runs as "SAME" with a zero-widened 4x4 kernel: output, input
    and kernel gradients are PyTorch's (1, 1)-padded convolution on odd and even
    sizes (to float32 rounding); the explicit-pad path it replaces (GPUs, TPUs) gives the same
    numbers."""
    x = tf.constant(RNG.normal(size=(2, size, size, 16)), tf.float32)
    r = tf.constant(RNG.normal(size=(2, (size + 1) // 2, (size + 1) // 2, 16)), tf.float32)

    def run(widen):
        monkeypatch.setattr(select, "widened_same", lambda m, k, s, g: widen and k == 3 and s == 2)
        conv = Conv(16, 3, 2, groups=groups)
        conv.build(x.shape)
        return conv

    fast = run(True)
    kernel = tf.constant(RNG.normal(size=fast.kernel.shape), tf.float32)
    fast.kernel.assign(kernel)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fast(x)
        loss = tf.reduce_sum(y * r)
    got = [y] + tape.gradient(loss, [x, fast.kernel])

    with tf.GradientTape() as tape:  # the definition: pad (1, 1), VALID
        tape.watch([x, kernel])
        y_ref = tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), kernel, 2, "VALID")
        loss = tf.reduce_sum(y_ref * r)
    want = [y_ref] + tape.gradient(loss, [x, kernel])
    # Bit for bit with oneDNN's AVX-512 kernels; its AVX2 grouped kernels sum the taps of the
    # two shapes in different orders (float32 rounding, ~1 ulp).
    for name, a, b in zip(["y", "dx", "dkernel"], got, want):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)

    plain = run(False)
    plain.kernel.assign(kernel)
    np.testing.assert_allclose(plain(x).numpy(), got[0].numpy(), rtol=1e-5, atol=1e-5)


def test_only_grouped_stride2_convolutions_are_widened():
    """Widening pays for memory-bound grouped convolutions; the dense stem (3 -> 32) keeps the
    explicit pad (slower widened on an AVX2 CPU: 178 vs 124 ms forward+backward)."""
    rule, m = select.widened_same, select.Machine()
    assert rule(m, 3, 2, 6)
    assert not rule(m, 3, 2, 1)
    assert not rule(m, 3, 1, 6) and not rule(m, 1, 2, 6)
    assert not rule(select.Machine(device="gpu"), 3, 2, 6)  # XLA fuses the pad there
    assert not rule(select.Machine(inside_xla=True), 3, 2, 6)
