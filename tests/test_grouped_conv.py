"""seer_tf's native grouped 3x3 convolution (seer_tf.ops.grouped_conv) against TF's grouped
tf.nn.conv2d with PyTorch's padding, forward and both gradients, and Conv's use of it."""

import numpy as np
import pytest
import tensorflow as tf

from seer_tf import cpu
from seer_tf import ops
from seer_tf.models import blocks
from seer_tf.ops import grouped_conv as native_grouped
from seer_tf.ops import select

RNG = np.random.default_rng(11)

pytestmark = pytest.mark.usefixtures("native_ops")  # conftest: built, or no compiler (skip)


def _reference(x, k, stride):
    """PyTorch's conv2d(padding=1, groups=C/cg) in float64 NumPy: the ground truth for both."""
    n, h, w, c = x.shape
    cg = k.shape[2]
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    xp = np.pad(x.astype(np.float64), [(0, 0), (1, 1), (1, 1), (0, 0)])
    y = np.zeros((n, ho, wo, c))
    for g in range(c // cg):
        sl = slice(g * cg, (g + 1) * cg)
        for ty in range(3):
            for tx in range(3):
                patch = xp[:, ty:ty + stride * (ho - 1) + 1:stride, tx:tx + stride * (wo - 1) + 1:stride, sl]
                y[..., sl] += patch @ k[ty, tx, :, sl].astype(np.float64)
    return y


def _native_and_tf(x, k, r, stride, vector_bits=0):
    """(y, dx, dk) of the native op and of tf.nn.conv2d, loss = sum(y * r)."""
    out = []
    for conv in (lambda x, k: native_grouped.grouped_conv3x3(x, k, stride, vector_bits),
                 lambda x, k: tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), k, stride,
                                           "VALID")):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = conv(x, k)
            loss = tf.reduce_sum(y * r)
        out.append([t.numpy() for t in [y] + tape.gradient(loss, [x, k])])
    return out


# Widths 1-3 (single small tiles), 7 and 13 (remainder tiles of 8 and 4 after 10), 26 / 23 (two
# full tiles + remainders at stride 1 / 2); group widths 8, 16 (two 8-channel slices) and 24;
# at group width 8 an odd number of groups (3, 5, 1: the 512-bit kernels' half-empty last pair).
@pytest.mark.parametrize("vector_bits", [0, 256])
@pytest.mark.parametrize("shape,cg,stride", [
    ((2, 7, 13, 16), 8, 1), ((2, 7, 13, 16), 8, 2), ((1, 26, 23, 24), 8, 1), ((2, 23, 26, 16), 8, 2),
    ((3, 1, 1, 16), 16, 1), ((1, 2, 3, 16), 8, 2), ((2, 9, 17, 48), 24, 2), ((2, 6, 6, 32), 16, 1),
    ((2, 11, 9, 40), 8, 2), ((1, 5, 12, 8), 8, 1),
])
def test_matches_tf_conv2d_and_float64(shape, cg, stride, vector_bits):
    """Output and both gradients against TF's grouped conv2d to float32 rounding, and against a
    float64 reference no further than TF is; with the widest kernels the build has (512-bit
    ones for group width 8 on AVX-512 machines) and with the 256-bit ones."""
    c = shape[3]
    x = tf.constant(RNG.normal(size=shape), tf.float32)
    k = tf.constant(RNG.normal(size=(3, 3, cg, c)) * 0.2, tf.float32)
    ho, wo = (shape[1] - 1) // stride + 1, (shape[2] - 1) // stride + 1
    r = tf.constant(RNG.normal(size=(shape[0], ho, wo, c)), tf.float32)
    ours, theirs = _native_and_tf(x, k, r, stride, vector_bits)
    for got, want in zip(ours, theirs):
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, atol=2e-6 * scale, rtol=0)
    y64 = _reference(x.numpy(), k.numpy(), stride)
    assert np.abs(ours[0] - y64).max() <= 2 * np.abs(theirs[0] - y64).max() + 1e-6
    # dk from float64: sum over pixels of x-patches times r, i.e. the reference's linearity in k
    dk64 = np.zeros(k.shape)
    for ty in range(3):
        for tx in range(3):
            e = np.zeros(k.shape)
            for i in range(cg):
                e[:] = 0
                e[ty, tx, i, :] = 1
                dk64[ty, tx, i] = (_reference(x.numpy(), e, stride) * r.numpy()).sum((0, 1, 2))
    assert np.abs(ours[2] - dk64).max() <= 2 * np.abs(theirs[2] - dk64).max() + 1e-5


@pytest.mark.parametrize("vector_bits", [0, 256])
@pytest.mark.parametrize("shape,cg,stride", [((2, 9, 13, 24), 8, 1), ((2, 10, 7, 48), 16, 2)])
def test_bfloat16_is_the_float32_op_rounded(shape, cg, stride, vector_bits):
    """bfloat16 tensors: the float32 op's output and gradients on the same (bf16-valued) inputs,
    each rounded once to bfloat16 (float32 arithmetic inside)."""
    c = shape[3]
    ho, wo = (shape[1] - 1) // stride + 1, (shape[2] - 1) // stride + 1
    x, k, dy = (tf.cast(tf.constant(RNG.normal(size=s) * scale, tf.float32), tf.bfloat16)
                for s, scale in ((shape, 1.0), ((3, 3, cg, c), 0.2), ((shape[0], ho, wo, c), 1.0)))
    lib = native_grouped.native.load()
    got = [lib.seer_grouped_conv3x3(x=x, kernel=k, stride=stride, vector_bits=vector_bits)]
    got += lib.seer_grouped_conv3x3_grad(dy=dy, x=x, kernel=k, stride=stride, vector_bits=vector_bits)
    x32, k32, dy32 = (tf.cast(t, tf.float32) for t in (x, k, dy))
    want = [lib.seer_grouped_conv3x3(x=x32, kernel=k32, stride=stride, vector_bits=vector_bits)]
    want += lib.seer_grouped_conv3x3_grad(dy=dy32, x=x32, kernel=k32, stride=stride,
                                          vector_bits=vector_bits)
    for g, w in zip(got, want):
        assert g.dtype == tf.bfloat16
        g, w = g.numpy().astype(np.float32), w.numpy()
        # same float32 arithmetic in the same order, then one rounding to nearest: at most half
        # a bf16 ulp (2^-8 relative)
        assert np.all(np.abs(g - w) <= 2.0 ** -8 * np.abs(w))
        assert np.abs(w).max() > 0


def test_shape_inference_and_bad_input():
    x = tf.zeros([2, 9, 8, 16])
    k = tf.zeros([3, 3, 8, 16])
    y = tf.function(lambda x: native_grouped.grouped_conv3x3(x, k, 2)).get_concrete_function(
        tf.TensorSpec([None, 9, 8, 16])).outputs[0]
    assert y.shape.as_list() == [None, 5, 4, 16]
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiple of 8"):
        native_grouped.grouped_conv3x3(tf.zeros([1, 4, 4, 12]), tf.zeros([3, 3, 4, 12]), 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="C_out = C_in"):
        native_grouped.grouped_conv3x3(x, tf.zeros([3, 3, 8, 32]), 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="stride must be 1 or 2"):
        native_grouped.grouped_conv3x3(x, k, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="vector_bits must be 0"):
        native_grouped.grouped_conv3x3(x, k, 1, vector_bits=128)


def test_gating(monkeypatch):
    """float32 grouped 3x3 convolutions with 8k-channel groups: native both ways; bfloat16 on a
    CPU with native bf16: TF's forward and the native gradient; dense, group width 4,
    C_out != C_in and 1x1 convolutions keep tf.nn.conv2d; on by default on any CPU where the op
    builds; SEER_TF_NATIVE_GROUPED_CONV=0 off, =1 both ways in either dtype."""
    def mode(*args):  # the rule on this machine's facts (env and CPU read each time)
        return select.native_grouped_conv(select.machine(), *args)

    monkeypatch.delenv("SEER_TF_NATIVE_GROUPED_CONV", raising=False)
    built = native_grouped.available()
    assert mode(tf.float32, 48, 48, 3, 2, 6) == ("both" if built else "")
    bf16 = "gradient" if built and cpu.has_native_bf16() else ""
    assert mode(tf.bfloat16, 48, 48, 3, 2, 6) == bf16
    monkeypatch.setattr(cpu, "has_native_bf16", lambda: False)
    assert mode(tf.bfloat16, 48, 48, 3, 2, 6) == ""
    monkeypatch.setenv("SEER_TF_NATIVE_GROUPED_CONV", "1")
    assert mode(tf.float32, 48, 48, 3, 2, 6) == "both"
    assert mode(tf.bfloat16, 48, 48, 3, 2, 6) == "both"
    assert mode(tf.float16, 48, 48, 3, 2, 6) == ""
    assert mode(tf.float32, 48, 48, 3, 1, 1) == ""
    assert mode(tf.float32, 48, 48, 3, 1, 12) == ""  # group width 4
    assert mode(tf.float32, 48, 96, 3, 1, 6) == ""
    assert mode(tf.float32, 48, 48, 1, 1, 6) == ""
    monkeypatch.setenv("SEER_TF_NATIVE_GROUPED_CONV", "0")
    assert mode(tf.float32, 48, 48, 3, 2, 6) == ""
    assert mode(tf.bfloat16, 48, 48, 3, 2, 6) == ""
    monkeypatch.setenv("SEER_TF_NATIVE_GROUPED_CONV", "1")
    with ops.inside_xla():  # no native op in a step XLA compiles
        assert mode(tf.float32, 48, 48, 3, 2, 6) == ""


@pytest.mark.skipif(not cpu.has_native_bf16(), reason="the bf16 hybrid runs only on CPUs with "
                    "native bf16 (TF's bf16 grouped conv has no gradient elsewhere)")
@pytest.mark.parametrize("stride,size", [(1, 11), (2, 11), (2, 10)])
def test_bfloat16_trains_on_tf_forward_and_native_gradient(monkeypatch, stride, size):
    """The bf16 hybrid ("gradient"): the forward graph holds TF's Conv2D (PyTorch padding, the
    widened kernel at stride 2), the gradient the native op; output and gradients match the
    all-TF path (native op off) to bf16 rounding of float32 sums: one bf16 ulp (2^-7) of the
    largest element."""
    monkeypatch.setattr(select, "native_grouped_conv", lambda *a: "gradient")
    conv = blocks.Conv(48, 3, stride, groups=6, dtype="mixed_bfloat16")
    x = tf.constant(RNG.normal(size=(2, size, size + 1, 48)), tf.bfloat16)
    conv.build(x.shape)

    @tf.function
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = conv(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
        return [y] + tape.gradient(loss, [x, conv.kernel])

    types = {op.type for op in run.get_concrete_function(x).graph.get_operations()}
    assert {"Conv2D", "SeerGroupedConv3x3Grad"} <= types and "SeerGroupedConv3x3" not in types
    hybrid = [t.numpy().astype(np.float32) for t in run(x)]
    monkeypatch.setattr(select, "native_grouped_conv", lambda *a: "")
    onednn = [t.numpy().astype(np.float32) for t in tf.function(run.python_function)(x)]
    assert hybrid[0].shape == onednn[0].shape == (2, (size - 1) // stride + 1,
                                                  size // stride + 1, 48)
    for got, want in zip(hybrid, onednn):
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(got, want, atol=2.0 ** -7 * np.abs(want).max(), rtol=0)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_layer_trains_on_the_native_op_and_infers_on_tf(monkeypatch, stride):
    """Conv(training=True) takes the native op (and its gradient), training=False TF's conv2d
    (what SavedModels hold); both give the same output, and the gradients match those of the
    oneDNN path (native op off)."""
    monkeypatch.setenv("SEER_TF_NATIVE_GROUPED_CONV", "1")
    conv = blocks.Conv(32, 3, stride, groups=4)
    x = tf.constant(RNG.normal(size=(2, 11, 10, 32)), tf.float32)
    conv.build(x.shape)

    def run(training):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = conv(x, training=training)
            loss = tf.reduce_sum(y * y)
        return [t.numpy() for t in [y] + tape.gradient(loss, [x, conv.kernel])]

    graph = tf.function(lambda x: conv(x, training=True)).get_concrete_function(x).graph
    assert "SeerGroupedConv3x3" in {op.type for op in graph.get_operations()}
    graph = tf.function(lambda x: conv(x, training=False)).get_concrete_function(x).graph
    assert "SeerGroupedConv3x3" not in {op.type for op in graph.get_operations()}
    native = run(True)
    monkeypatch.setenv("SEER_TF_NATIVE_GROUPED_CONV", "0")
    onednn = run(True)
    inference = run(False)
    for got, want in zip(native, onednn):
        np.testing.assert_allclose(got, want, atol=3e-6 * np.abs(want).max(), rtol=0)
    np.testing.assert_allclose(native[0], inference[0], atol=3e-6 * np.abs(inference[0]).max(), rtol=0)


def test_compare_tool_lists_the_steps_grouped_convolutions():
    """tools/grouped_conv_compare.py times what one SwAV step runs: every b convolution at every
    crop resolution (RegNetY-400MF: 16 blocks x 2 resolutions; stride 2 first in each stage)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "tools", "grouped_conv_compare.py")
    spec = importlib.util.spec_from_file_location("grouped_conv_compare", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    shapes = tool.step_shapes("regnet_y_400mf", "2x224,4x96", 32)
    assert sum(s[4] for s in shapes) == 32
    assert shapes[0] == (64, 112, 48, 2, 1, 8)
    assert (64, 7, 440, 1, 5, 8) in shapes and (128, 3, 440, 1, 5, 8) in shapes
    assert sum(s[4] for s in shapes if s[3] == 2) == 8


@pytest.mark.parametrize("shape", [(0, 5, 5, 16), (2, 0, 5, 16)])
def test_empty_batches_and_images(shape):
    """As tf.nn.conv2d: empty outputs, and a zero kernel gradient."""
    x = tf.zeros(shape)
    k = tf.ones([3, 3, 8, 16])
    with tf.GradientTape() as tape:
        tape.watch([x, k])
        y = native_grouped.grouped_conv3x3(x, k, 2)
        loss = tf.reduce_sum(y)
    assert y.shape == (shape[0], (shape[1] + 1) // 2, 3, 16)
    dx, dk = tape.gradient(loss, [x, k])
    assert dx.shape == shape and not np.any(dk.numpy())
