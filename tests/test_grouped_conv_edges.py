"""seer_tf's native grouped 3x3 convolution (seer_tf.ops.grouped_conv) on the smallest images a
RegNetY sees: SwAV's 96/160 px multi-crops reach stage 4 as 3x3 / 5x5 pixels and tiny test crops
as 2x2 and 1x1 (row tiles longer than the row, packed rows mostly padding, one output pixel).

Forward and both gradients against TF's grouped tf.nn.conv2d with PyTorch's padding, computed
in float32 on the same (bf16-rounded) values, for float32 and bfloat16, strides 1 and 2, group
widths 8 and 16 (an odd number of groups: the 512-bit kernels' half-empty last pair), both
vector widths. Each gradient runs several times after the allocator's free blocks and the op's
per-thread scratch were filled with NaN, so an output element or accumulator the op forgot to
write would show up as a NaN or a run-to-run difference.
"""

import numpy as np
import pytest
import tensorflow as tf

from seer_tf.ops import grouped_conv as native_grouped

pytestmark = pytest.mark.usefixtures("native_ops")  # conftest: built, or no compiler (skip)

SIZES = [(1, 1), (2, 2), (3, 3), (1, 5), (5, 1), (7, 9)]
RUNS = 5
# Relative to the largest reference value: float32 summation order; bf16 output rounding (half
# an ulp is 2^-9) on top of float32 sums.
TOLERANCE = {tf.float32: 5e-6, tf.bfloat16: 5e-3}


def _dirty(dtype, shapes, stride, cg, vector_bits):
    """NaN in the memory the next outputs will likely get: freed blocks of the outputs' sizes,
    and the op's per-thread packing scratch (a larger convolution of NaN inputs)."""
    nan = tf.constant(np.nan, dtype)
    junk = [tf.fill(s, nan) * tf.constant(1, dtype) for s in shapes for _ in range(4)]
    del junk
    x = tf.fill([2, 12, 12, 2 * cg], nan)
    k = tf.fill([3, 3, cg, 2 * cg], nan)
    y = native_grouped.grouped_conv3x3(x, k, stride, vector_bits)
    native_grouped._gradient(y, x, k, stride, vector_bits)


def _reference(x, k, dy, stride):
    """(y, dx, dk) of TF's grouped conv2d, padding 1 each side, in float32."""
    with tf.GradientTape() as tape:
        tape.watch([x, k])
        y = tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), k, stride, "VALID")
    return [t.numpy() for t in [y] + tape.gradient(y, [x, k], output_gradients=dy)]


def _case(rng, dtype, n, h, w, cg, stride, vector_bits):
    c = 3 * cg
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    x, k, dy = (tf.cast(tf.constant(a, tf.float32), dtype) for a in (
        rng.normal(size=(n, h, w, c)), rng.normal(size=(3, 3, cg, c)) * 0.2,
        rng.normal(size=(n, ho, wo, c))))
    want = _reference(*(tf.cast(t, tf.float32) for t in (x, k, dy)), stride)
    for ref in want:
        assert np.isfinite(ref).all()
    outputs = [[] for _ in want]
    for _ in range(RUNS):
        _dirty(dtype, [(n, ho, wo, c), x.shape, k.shape], stride, cg, vector_bits)
        y = native_grouped.grouped_conv3x3(x, k, stride, vector_bits)
        _dirty(dtype, [x.shape, k.shape], stride, cg, vector_bits)
        dx, dk = native_grouped._gradient(dy, x, k, stride, vector_bits)
        for out, t in zip(outputs, (y, dx, dk)):
            out.append(tf.cast(t, tf.float32).numpy())
    where = f"{dtype.name} n={n} {h}x{w} cg={cg} stride={stride} vector_bits={vector_bits}"
    for name, runs, ref in zip(("y", "dx", "dk"), outputs, want):
        assert runs[0].shape == ref.shape, f"{name} {where}"
        assert np.isfinite(runs[0]).all(), f"{name} not finite: {where}"
        np.testing.assert_allclose(runs[0], ref, rtol=0, atol=TOLERANCE[dtype] * np.abs(ref).max(),
                                   err_msg=f"{name} {where}")
        for i, other in enumerate(runs[1:], 1):
            assert np.array_equal(other, runs[0]), f"{name} run {i} differs from run 0: {where}"


@pytest.mark.parametrize("vector_bits", [0, 256])
@pytest.mark.parametrize("cg", [8, 16])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16], ids=["float32", "bfloat16"])
def test_tiny_images_match_tf_and_repeat(dtype, stride, cg, vector_bits):
    """y, dx, dk at 1x1 .. 5x5, 1x5, 5x1 and 7x9 pixels, batch 1 and 3: finite, equal to TF's
    grouped conv2d within float32 / bf16 rounding, and bit-identical over repeated runs with
    NaN-filled memory underneath."""
    rng = np.random.default_rng(stride * 100 + cg + vector_bits)
    for h, w in SIZES:
        for n in (1, 3):
            _case(rng, dtype, n, h, w, cg, stride, vector_bits)


def test_one_pixel_wide_bf16_stride2_kernel_gradient_is_exact_and_finite():
    """A 1-pixel-wide input at stride 2 in bfloat16 (RegNetY's last stage on small crops):
    oneDNN's bf16-emulation backward-weights kernel leaves dK partly unwritten with the widened
    SAME kernel on AVX-512 CPUs without AVX512_BF16, so ops.conv2d must not pick it there."""
    from seer_tf import ops

    rng = np.random.default_rng(0)
    x32 = tf.constant(rng.standard_normal((8, 1, 1, 64)), tf.float32)
    k32 = tf.constant(rng.standard_normal((3, 3, 16, 64)) * 0.1, tf.float32)
    x, k = tf.cast(x32, tf.bfloat16), tf.cast(k32, tf.bfloat16)

    def kernel_grad(x, k):
        with tf.GradientTape() as tape:
            tape.watch(k)
            y = ops.conv2d(x, k, strides=2, groups=4, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
        return tf.cast(tape.gradient(loss, k), tf.float32).numpy()

    ref = kernel_grad(tf.cast(x, tf.float32), tf.cast(k, tf.float32))
    for _ in range(5):
        dk = kernel_grad(x, k)
        assert np.isfinite(dk).all()
        np.testing.assert_allclose(dk, ref, atol=0.05 * np.abs(ref).max())
