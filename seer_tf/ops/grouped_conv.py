"""RegNet's grouped 3x3 convolution (PyTorch padding 1) as one native op each way, on CPU.

Why: see grouped_conv.cc; on AVX2 and AVX-512 CPUs oneDNN's grouped kernels reach a fraction of
the FMA peak at group width 8, and its backward-data kernel is slower still.
"""

from __future__ import annotations

import tensorflow as tf

from seer_tf.ops import native


available = native.available  # the op library is one: all ops or none


def grouped_conv3x3(x, kernel, stride: int, vector_bits: int = 0):
    """conv2d(x, kernel) with groups C / kernel.shape[2], PyTorch's padding 1, stride 1 or 2;
    float32 NHWC x, TF's (3, 3, C / groups, C) kernel. vector_bits 0 takes the widest kernels
    the build has (512-bit for group width 8 on AVX-512 CPUs), 256 the AVX2-width ones (the
    gradient uses the same)."""
    return native.load().seer_grouped_conv3x3(x=x, kernel=kernel, stride=stride,
                                              vector_bits=vector_bits)


def _gradient(dy, x, kernel, stride: int, vector_bits: int = 0):
    """[dx, dkernel] of grouped_conv3x3 in one native op."""
    return native.load().seer_grouped_conv3x3_grad(dy=dy, x=x, kernel=kernel, stride=stride,
                                                    vector_bits=vector_bits)


@tf.RegisterGradient("SeerGroupedConv3x3")
def _grouped_conv3x3_grad(op, dy):
    x, kernel = op.inputs
    return _gradient(dy, x, kernel, op.get_attr("stride"), op.get_attr("vector_bits"))


def with_native_gradient(forward, x, kernel, stride: int):
    """`forward(x, kernel)` as given (TF's own grouped conv2d with PyTorch's padding), with the
    native op's gradient.

    Why both halves: in bfloat16 on an AMX Xeon, oneDNN's grouped forward is the faster one
    (one step's grouped convolutions 132 ms vs the native op's 164) and its two gradients the
    slower (493 ms vs 332; `tools/grouped_conv_compare.py --dtype bfloat16`)."""

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            return _gradient(dy, x, kernel, stride)
        return forward(x, kernel), grad

    return conv(x, kernel)
