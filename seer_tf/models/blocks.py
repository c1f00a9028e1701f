"""RegNetY building blocks as Keras 3 layers (RegNet, Radosavovic et al. 2020; SEER's trunk).

Conv (PyTorch-padded, grouped), BatchNorm (PyTorch's running-variance rule), ConvBN, SqueezeExcite
(Hu et al.) and the Y block (pycls ResBottleneckBlock with SE). Architecture only: the kernels
each layer runs on are picked by `seer_tf.ops` (one selection table, docs/kernels.md).

The conv kernel layout is TF's (kh, kw, in/groups, out): output channel o reads group
o // (out/groups), as in PyTorch, so converting a weight is a transpose (out, in/g, kh, kw) ->
(kh, kw, in/g, out). Init is the reference one (pycls / torchvision): conv N(0, sqrt(2 /
fan_out)), fan_out = k*k*out.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from seer_tf import ops
from seer_tf.models import remat
from seer_tf.models.family import se_width_for

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # Keras momentum = 1 - PyTorch momentum (0.1)


def _conv_init(kernel_size: int, filters: int):
    return keras.initializers.RandomNormal(0.0, math.sqrt(2.0 / (kernel_size * kernel_size * filters)))


@keras.saving.register_keras_serializable(package="seer_tf")
class Conv(keras.layers.Layer):
    """Conv2D with PyTorch padding (k//2 each side) and groups (`ops.conv2d`: Keras' grouped
    Conv2D is ~100x slower on CPU, and TF's "SAME" pads stride 2 asymmetrically)."""

    def __init__(self, filters, kernel_size=1, strides=1, groups=1, use_bias=False,
                 kernel_initializer=None, bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.groups = int(groups)
        self.use_bias = bool(use_bias)
        if self.filters % self.groups:
            raise ValueError(f"filters={filters} is not a multiple of groups={groups}")
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or _conv_init(self.kernel_size, self.filters))
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        in_ch = int(input_shape[-1])
        if in_ch % self.groups:
            raise ValueError(f"{self.name}: {in_ch} input channels do not split into {self.groups} groups")
        k = self.kernel_size
        self.kernel = self.add_weight(name="kernel", shape=(k, k, in_ch // self.groups, self.filters),
                                      initializer=self.kernel_initializer)
        self.bias = (self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)
                     if self.use_bias else None)

    def call(self, x, channel_scale=None, training=None):
        """conv(x), or conv(x * channel_scale[:, None, None, :]) for an (N, C_in) scale (SE)."""
        return ops.conv2d(x, self.kernel, strides=self.strides, groups=self.groups,
                          training=training, channel_scale=channel_scale, bias=self.bias)

    def compute_output_shape(self, input_shape):
        def out(n):
            return None if n is None else (n + 2 * (self.kernel_size // 2) - self.kernel_size) // self.strides + 1
        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "groups": self.groups, "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer)}


@keras.saving.register_keras_serializable(package="seer_tf")
class BatchNorm(keras.layers.BatchNormalization):
    """Keras BatchNormalization on a fused kernel, with PyTorch's running-variance rule.

    Why not Keras' own path: it computes moments and the normalization as ~10 separate
    element-wise ops each way; `ops.batch_norm` runs one fused kernel (FusedBatchNormV3, or
    seer_tf's native op in training on CPU).
    The moving variance takes the *unbiased* batch variance, as PyTorch's BatchNorm2d does, so
    statistics trained here match the reference recipe's. While a block is recomputed for
    backprop (`seer_tf.models.remat`) the moving statistics are left alone, so they are updated
    exactly once per step. SyncBN, masks, renorm and non-NHWC inputs use Keras' path, whose
    running variance is the biased one (a factor (n-1)/n off, n = batch x height x width:
    under 0.1% for n >= 1000).
    """

    def _fused_ok(self, inputs, mask):
        return (mask is None and not self.synchronized and not self.renorm and self.scale
                and self.center and len(inputs.shape) == 4 and self.axis in (-1, 3, [3], [-1])
                and inputs.dtype.name in ("float32", "bfloat16", "float16"))

    def call(self, inputs, training=None, mask=None, relu=False, spatial_mean=False):
        """BatchNorm, then ReLU when `relu`. `spatial_mean`: return (y, mean of y over H, W) -
        the SE squeeze, which a fused kernel computes in the same pass."""
        if spatial_mean and not relu:
            raise ValueError("spatial_mean is the SE squeeze of a BatchNorm+ReLU output")
        if not self._fused_ok(inputs, mask):
            y = self._keras_call(inputs, training, mask)
            y = tf.nn.relu(y) if relu else y
            return (y, tf.reduce_mean(y, [1, 2])) if spatial_mean else y
        x = tf.cast(inputs, self.compute_dtype) if inputs.dtype != self.compute_dtype else inputs
        y, batch_stats, squeezed = ops.batch_norm(
            x, self.gamma, self.beta, self.moving_mean, self.moving_variance,
            epsilon=self.epsilon, training=training and self.trainable, relu=relu,
            spatial_mean=spatial_mean)
        if batch_stats is not None:
            self._update_moving(*batch_stats)
        return (y, squeezed) if spatial_mean else y

    def _update_moving(self, mean, variance):
        """moving = moving * m + batch * (1 - m) (Keras' momentum), once per step: not while
        a block is recomputed for backprop."""
        if not remat.is_recomputing():
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + tf.stop_gradient(mean) * (1 - m))
            self.moving_variance.assign(
                self.moving_variance * m + tf.stop_gradient(variance) * (1 - m))

    def _keras_call(self, inputs, training, mask):
        if training and remat.is_recomputing():
            momentum, self.momentum = self.momentum, 1.0  # moving = moving * 1 + batch * 0
            try:
                return super().call(inputs, training=training, mask=mask)
            finally:
                self.momentum = momentum
        return super().call(inputs, training=training, mask=mask)


def batch_norm(name, synchronized=False, gamma_initializer="ones"):
    """BatchNorm with the reference eps 1e-5 and PyTorch momentum 0.1; SyncBN when asked."""
    return BatchNorm(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name,
                     synchronized=synchronized, gamma_initializer=gamma_initializer)


@keras.saving.register_keras_serializable(package="seer_tf")
class ConvBN(keras.layers.Layer):
    """conv -> BN [-> ReLU]: torchvision's Conv2dNormActivation (keys `N.0`, `N.1`)."""

    def __init__(self, filters, kernel_size=1, strides=1, groups=1, activation=True,
                 sync_bn=False, zero_init_gamma=False, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides, self.groups = filters, kernel_size, strides, groups
        self.activation, self.sync_bn, self.zero_init_gamma = activation, sync_bn, zero_init_gamma
        self.conv = Conv(filters, kernel_size, strides, groups, name="conv")
        self.bn = batch_norm("bn", sync_bn, "zeros" if zero_init_gamma else "ones")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, x, training=None, channel_scale=None, spatial_mean=False):
        """BatchNorm(conv(x [* channel_scale])) [-> ReLU]; `spatial_mean`: (y, its H, W mean)."""
        y = self.conv(x, channel_scale=channel_scale, training=training)
        return self.bn(y, training=training, relu=self.activation, spatial_mean=spatial_mean)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "groups": self.groups, "activation": self.activation,
                "sync_bn": self.sync_bn, "zero_init_gamma": self.zero_init_gamma}


@keras.saving.register_keras_serializable(package="seer_tf")
class SqueezeExcite(keras.layers.Layer):
    """SE (Hu et al.): GAP -> 1x1 (w_se, bias) -> ReLU -> 1x1 (bias) -> sigmoid -> scale.

    The 1x1 convs on a pooled vector are dense layers; kernels are stored as (in, out) matrices.
    w_se is computed by the caller from the block INPUT width (pycls/torchvision convention).
    """

    def __init__(self, se_width, **kwargs):
        super().__init__(**kwargs)
        self.se_width = int(se_width)

    def build(self, input_shape):
        ch = int(input_shape[-1])

        def bias_init(fan_in):  # PyTorch's default conv bias init (the reference leaves it)
            return keras.initializers.RandomUniform(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

        self.reduce_kernel = self.add_weight(name="reduce_kernel", shape=(ch, self.se_width),
                                             initializer=_conv_init(1, self.se_width))
        self.reduce_bias = self.add_weight(name="reduce_bias", shape=(self.se_width,),
                                           initializer=bias_init(ch))
        self.expand_kernel = self.add_weight(name="expand_kernel", shape=(self.se_width, ch),
                                             initializer=_conv_init(1, ch))
        self.expand_bias = self.add_weight(name="expand_bias", shape=(ch,),
                                           initializer=bias_init(self.se_width))

    def gate(self, x):
        """The (N, C) excitation that multiplies x."""
        return self.excite(tf.reduce_mean(x, axis=[1, 2]))

    def excite(self, squeezed):
        """(N, C) excitation from the (N, C) squeeze (x's mean over H, W). YBlock takes the
        squeeze from b's BatchNorm+ReLU and hands the excitation to conv c, which may fold it
        into its kernel (`Conv.call(channel_scale=...)`)."""
        with tf.name_scope(self.name):
            dt = squeezed.dtype
            s = tf.nn.relu(tf.matmul(squeezed, tf.cast(self.reduce_kernel, dt))
                           + tf.cast(self.reduce_bias, dt))
            return tf.sigmoid(tf.matmul(s, tf.cast(self.expand_kernel, dt))
                              + tf.cast(self.expand_bias, dt))

    def call(self, x):
        return x * self.gate(x)[:, None, None, :]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "se_width": self.se_width}


@keras.saving.register_keras_serializable(package="seer_tf")
class YBlock(keras.layers.Layer):
    """RegNetY residual bottleneck block (pycls ResBottleneckBlock with SE).

    a: 1x1 -> w_b, BN, ReLU; b: 3x3 group conv (groups = w_b / g), stride s, BN, ReLU; SE;
    c: 1x1 -> w_out, BN (no ReLU). Shortcut: 1x1 conv stride s + BN when the shape changes.
    Output: ReLU(shortcut + c).
    """

    def __init__(self, width_in, width_out, stride=1, group_width=1, bottleneck_multiplier=1.0,
                 se_ratio=0.25, sync_bn=False, zero_init_last_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.width_in, self.width_out, self.stride = int(width_in), int(width_out), int(stride)
        self.group_width, self.bottleneck_multiplier = int(group_width), float(bottleneck_multiplier)
        self.se_ratio, self.sync_bn, self.zero_init_last_bn = se_ratio, sync_bn, zero_init_last_bn
        w_b = int(round(self.width_out * self.bottleneck_multiplier))
        if w_b % self.group_width:
            raise ValueError(f"bottleneck width {w_b} is not a multiple of group width {group_width}")
        self.a = ConvBN(w_b, 1, 1, sync_bn=sync_bn, name="a")
        self.b = ConvBN(w_b, 3, self.stride, groups=w_b // self.group_width, sync_bn=sync_bn, name="b")
        w_se = se_width_for(self.width_in, se_ratio)
        self.se = SqueezeExcite(w_se, name="se") if w_se else None
        self.c = ConvBN(self.width_out, 1, 1, activation=False, sync_bn=sync_bn,
                        zero_init_gamma=zero_init_last_bn, name="c")
        self.has_proj = self.width_in != self.width_out or self.stride != 1
        self.proj = (ConvBN(self.width_out, 1, self.stride, activation=False, sync_bn=sync_bn, name="proj")
                     if self.has_proj else None)

    def build(self, input_shape):
        self.a.build(input_shape)
        s = self.a.compute_output_shape(input_shape)
        self.b.build(s)
        s = self.b.compute_output_shape(s)
        if self.se is not None:
            self.se.build(s)
        self.c.build(s)
        if self.proj is not None:
            self.proj.build(input_shape)

    def call(self, x, training=None):
        y = self.a(x, training=training)
        scale = None
        if self.se is not None:  # SE: squeeze from b's output, y * scale inside c
            y, squeezed = self.b(y, training=training, spatial_mean=True)
            scale = self.se.excite(squeezed)
        else:
            y = self.b(y, training=training)
        y = self.c(y, training=training, channel_scale=scale)
        shortcut = self.proj(x, training=training) if self.proj is not None else x
        return ops.add_relu(shortcut, y)

    def compute_output_shape(self, input_shape):
        return self.b.compute_output_shape(input_shape)[:3] + (self.width_out,)

    def get_config(self):
        return {**super().get_config(), "width_in": self.width_in, "width_out": self.width_out,
                "stride": self.stride, "group_width": self.group_width,
                "bottleneck_multiplier": self.bottleneck_multiplier, "se_ratio": self.se_ratio,
                "sync_bn": self.sync_bn, "zero_init_last_bn": self.zero_init_last_bn}
