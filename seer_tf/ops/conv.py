"""conv2d with PyTorch's padding (k//2 each side) and groups, on the kernels `select.conv` picks.

Why not Keras' Conv2D: with groups > 1 on the TensorFlow backend it runs a nested XLA function
~100x slower on CPU than `tf.nn.conv2d` with a grouped kernel (oneDNN), and TF's "SAME" pads
stride-2 convolutions asymmetrically (0 before, 1 after for even sizes) where PyTorch pads k//2
on both sides: converted torchvision/VISSL weights only reproduce with PyTorch's padding.
The kernel is TF's (kh, kw, in/groups, out): output channel o reads group o // (out/groups).
"""

from __future__ import annotations

import tensorflow as tf

from seer_tf.ops import channel_scale as native_scale
from seer_tf.ops import grouped_conv as native_grouped
from seer_tf.ops import select


def conv2d(x, kernel, *, strides=1, groups=1, training=None, channel_scale=None, bias=None):
    """conv(x [* channel_scale[:, None, None, :]]) [+ bias] for NHWC `x`, a (k, k, C/groups, F)
    kernel, an optional (N, C) per-image channel scale (the SE excitation) and (F,) bias.
    Training may take seer_tf's native CPU ops; inference keeps TensorFlow's (exported
    SavedModels hold only TensorFlow ops)."""
    kernel_size, filters = int(kernel.shape[0]), int(kernel.shape[-1])
    plan = select.conv(select.machine(), x.dtype, x.shape, filters, kernel_size, strides, groups,
                       training, channel_scale is not None)
    if plan.scale == "kernel":
        return _bias(_scaled_pointwise(x, kernel, channel_scale), bias)
    if plan.scale == "native":
        x = native_scale.channel_scale(x, tf.cast(channel_scale, x.dtype))
    elif plan.scale == "mul":
        x = x * channel_scale[:, None, None, :]
    if plan.kernel in ("native", "native_gradient"):
        return _bias(_native_grouped3x3(x, tf.cast(kernel, x.dtype), strides, plan.kernel), bias)
    padding = "SAME" if plan.padding in ("SAME", "widened") else "VALID"
    if plan.padding == "explicit":  # conv2d's explicit-padding kernel has no grouped gradient
        x = tf.pad(x, [[0, 0], pads(x.shape[1], kernel_size, strides),
                       pads(x.shape[2], kernel_size, strides), [0, 0]])
    out_dtype = x.dtype
    if plan.float32:
        x = tf.cast(x, tf.float32)  # e.g. bf16 on a CPU without AVX512_BF16: no grouped grad
    kernel = tf.cast(kernel, x.dtype)
    if plan.padding == "widened":
        kernel = widened(kernel)
    if plan.kernel == "matmul":
        y = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), tf.reshape(kernel, kernel.shape[2:]))
        y = tf.reshape(y, tf.concat([tf.shape(x)[:-1], [filters]], axis=0))
        y.set_shape(x.shape[:-1] + (filters,))
    elif plan.kernel == "per_group":
        y = tf.concat([tf.nn.conv2d(xg, kg, strides=strides, padding=padding)
                       for xg, kg in zip(tf.split(x, groups, axis=-1),
                                         tf.split(kernel, groups, axis=-1))], axis=-1)
    else:
        y = tf.nn.conv2d(x, kernel, strides=strides, padding=padding)
    return _bias(tf.cast(y, out_dtype), bias)


def _bias(y, bias):
    return y if bias is None else tf.nn.bias_add(y, tf.cast(bias, y.dtype))


def pads(size, k, s):
    """[before, after] padding for PyTorch's (k//2, k//2) at stride s: trailing rows no window
    reads are left out. Same output; on even sizes it avoids a slow oneDNN grouped
    backprop-input path (2-5x slower on a RegNetY-400MF stage-3 transition block)."""
    p = k // 2
    if size is None:
        return [p, p]
    out = (size + 2 * p - k) // s + 1
    return [p, max(0, min(p, (out - 1) * s + k - size - p))]


def widened(kernel):
    """A zero last row and column: a 4x4 "SAME" kernel at stride 2 pads (1, 1|2), PyTorch's
    windows (`select.widened_same`)."""
    return tf.pad(kernel, [[0, 1], [0, 1], [0, 0], [0, 0]])


def _grouped3x3_tf(x, kernel, strides: int):
    """TF's grouped 3x3 conv2d with PyTorch's padding 1 (stride 2: the widened "SAME" kernel,
    exact on every size)."""
    return tf.nn.conv2d(x, widened(kernel) if strides == 2 else kernel, strides=strides,
                        padding="SAME")


def _native_grouped3x3(x, kernel, strides: int, how: str):
    if how == "native":
        return native_grouped.grouped_conv3x3(x, kernel, strides)
    return native_grouped.with_native_gradient(
        lambda x, k: _grouped3x3_tf(x, k, strides), x, kernel, strides)


def _scaled_pointwise(x, kernel, channel_scale):
    """1x1 conv of x * scale as one batched matmul with a (C_in, C_out) kernel per image."""
    filters = int(kernel.shape[-1])
    kernel = tf.cast(tf.reshape(kernel, kernel.shape[2:]), x.dtype)
    per_image = channel_scale[:, :, None] * kernel[None]  # (N, C_in, C_out)
    n, h, w, c = tf.shape(x)[0], x.shape[1], x.shape[2], int(x.shape[-1])
    y = tf.matmul(tf.reshape(x, [n, h * w, c]), per_image)
    return tf.reshape(y, [n, h, w, filters])
