"""RegNetY building blocks as Keras 3 layers: PyTorch-padded (grouped) convolution, stem, SE, Y block.

Why our own convolution layer:
  * Keras 3 `Conv2D(groups>1)` on the TensorFlow backend runs through a nested XLA function that
    is ~100x slower on CPU than `tf.nn.conv2d` with a grouped kernel (oneDNN); RegNet's 3x3 convs
    are all grouped.
  * TF "same" padding pads stride-2 convolutions asymmetrically (0 before, 1 after for even
    sizes); PyTorch pads k//2 on both sides. Converted torchvision/VISSL weights only give the
    same outputs with PyTorch's padding.

The kernel layout is TF's (kh, kw, in/groups, out): output channel o reads group o // (out/groups),
as in PyTorch, so converting a weight is a transpose (out, in/g, kh, kw) -> (kh, kw, in/g, out).
Init is the reference one (pycls / torchvision): conv N(0, sqrt(2 / fan_out)), fan_out = k*k*out.
"""

from __future__ import annotations

import functools
import math
import os
import threading

import keras
from absl import logging
import tensorflow as tf

from seer_tf import cpu
from seer_tf import ops
from seer_tf.models import folded_batch_norm as folded
from seer_tf.models import relu as relu_ops
from seer_tf.models import remat
from seer_tf.models.family import se_width_for
from seer_tf.ops import batch_norm_relu as native_bn
from seer_tf.ops import channel_scale as native_scale
from seer_tf.ops import grouped_conv as native_grouped

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # Keras momentum = 1 - PyTorch momentum (0.1)


@functools.lru_cache(maxsize=None)
def _accelerator_present() -> bool:
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def _tf_kernels_only() -> bool:
    """GPU/TPU, or a step XLA compiles (`ops.inside_xla()`): no native op, no CPU-only path."""
    return _accelerator_present() or ops.is_inside_xla()


@functools.lru_cache(maxsize=None)
def _grouped_conv_native() -> bool:
    """Whether one grouped tf.nn.conv2d has gradients here: on GPU/TPU, and on CPU with oneDNN
    (see seer_tf/__init__.py). Otherwise Conv runs one convolution per group (slower)."""
    if _accelerator_present():
        return True
    try:
        from tensorflow.python.util import _pywrap_util_port

        if _pywrap_util_port.IsMklEnabled():
            return True
    except ImportError:
        pass
    logging.warning("oneDNN is off (TF_ENABLE_ONEDNN_OPTS=0 or TensorFlow imported before "
                    "seer_tf): grouped convolutions run one conv per group, which is slower.")
    return False


@functools.lru_cache(maxsize=None)
def _grouped_gradient_works(dtype: str) -> bool:
    """Probe once per dtype whether a grouped conv has a gradient here. float32 is handled by
    `_grouped_conv_native`; half precision on CPUs without native bf16/fp16 kernels falls back
    to TF's Eigen kernel, which has none, so those convolutions compute in float32."""
    if dtype == "float32" or not _grouped_conv_native():
        return True
    if _accelerator_present():
        return True
    result = []

    def probe():  # a fresh thread runs eagerly, outside any tf.function or tape of the caller
        try:
            x = tf.zeros([1, 4, 4, 4], dtype)
            k = tf.zeros([3, 3, 2, 4], dtype)
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.nn.conv2d(x, k, 1, "SAME")
            tape.gradient(y, x).numpy()
            result.append(True)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
            result.append(False)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    if not result[0]:
        logging.warning("no grouped-conv gradient for %s on this CPU: grouped convolutions "
                        "compute in float32", dtype)
    return result[0]


def _pointwise_as_matmul(dtype, in_channels: int, out_elements=None) -> bool:
    """Whether a stride-1 1x1 convolution runs as one matmul over the (N*H*W, C) pixels.

    On CPU, with >= 64 input channels: in bfloat16 oneDNN's AMX matmul does a RegNetY 1x1
    convolution's forward and both gradients 1.4-2.9x faster than its 1x1-convolution kernels
    (fewer channels: the convolution kernels are as fast or faster); in float32 the two are equal
    with AVX-512 (2 threads), and on an AVX2-only CPU (2-core AMD EPYC) the matmul is 8-27%
    faster forward+backward on the RegNetY-400MF shapes (64x14x14x208 -> 208: 22.6 -> 19.0 ms,
    128x6x6x208: 10.7 -> 7.8) but slower below 64 channels (64x112x112x32 -> 48: 82 -> 104).
    Same arithmetic, so the choice is free. Either dtype, a 1x1 convolution whose output has
    >= 32M elements (`out_elements`, static N*H*W*C_out) runs as a matmul too: oneDNN 3.7's
    brgconv_1x1 slows down erratically there on AVX-512 (RegNetY-400MF's first block at 2x32
    224px crops, 64x112x112x32 -> 48: 42-58 ms per forward in the step against ~11 ms as a
    matmul; forward+backward isolated bf16 68.7 vs 36.9 ms, fp32 94.5 vs 71.2). CPUs without
    native bf16 keep the convolution in bf16 (not measured).
    """
    if _tf_kernels_only():
        return False
    if out_elements is not None and out_elements >= 32 * 2**20 and (
            dtype == tf.float32 or cpu.has_native_bf16()):
        return True
    if in_channels < 64:
        return False
    return dtype == tf.float32 or (dtype == tf.bfloat16 and cpu.has_native_bf16())


def _elements(shape):
    """Number of elements of a static shape, None when any dimension is unknown."""
    dims = tuple(shape)
    return None if None in dims else math.prod(dims)


def _xla_relu_grad(dtype) -> bool:
    """Whether the trunk's ReLU gradients run as XLA kernels (`seer_tf.models.relu`): bfloat16
    on a CPU with native bf16, where TF's Eigen kernel is ~2x slower per element than float32
    and XLA's ~2.3x faster than Eigen's. Float32 keeps Eigen (faster there)."""
    return dtype == tf.bfloat16 and not _tf_kernels_only() and cpu.has_native_bf16()


def _pads(size, p, k, s):
    """[before, after] padding for PyTorch's (p, p) at stride s: trailing rows no window reads
    are left out. Same output; on even sizes it avoids a slow oneDNN grouped backprop-input path
    (2-5x slower on a RegNetY-400MF stage-3 transition block)."""
    if size is None:
        return [p, p]
    out = (size + 2 * p - k) // s + 1
    return [p, max(0, min(p, (out - 1) * s + k - size - p))]


def _native_grouped_conv(dtype, in_channels: int, filters: int, kernel_size: int, strides: int,
                         groups: int) -> str:
    """How much of a training-mode grouped 3x3 convolution runs as seer_tf's native CPU op
    (`seer_tf.ops.grouped_conv`: float32 or bfloat16 tensors, float32 arithmetic; group width a
    multiple of 8, C_out = C_in, stride 1/2): "both" (forward and gradient), "gradient"
    (TF's oneDNN forward, the native gradient) or "" (TF both ways).

    Why: with group width 8 (RegNetY-400MF) oneDNN 3.7 runs these convolutions far below the FMA
    peak, on AVX2 and AVX-512 alike (its stride-2 backward-data kernel is the slowest:
    64x112x112x48 forward+backward 128 ms on a 2-core AVX-512 EPYC, 60 native). The step's grouped
    convolutions (2x224 + 4x96 crops, batch 32, forward + both gradients,
    `tools/grouped_conv_compare.py`): 2-core AVX2 EPYC oneDNN 1.25 s, native 0.58 s; 2-core
    AVX-512 EPYC (Zen 5) 0.76 s vs 0.45 s; 2-core AMX Xeon 0.90 s vs 0.65 s. The fp32 step
    gains 24% on both EPYCs (interleaved A/B).
    bfloat16, on CPUs with native bf16: "gradient". On the AMX Xeon oneDNN's bf16 forward beats
    the native one (0.13 s vs 0.16 s per step) and the native gradient beats oneDNN's (0.33 s vs
    0.49 s); `--dtype bfloat16` of the compare tool. Without native bf16, bf16 keeps TF's path
    (which computes grouped convolutions in float32 there).
    SEER_TF_NATIVE_GROUPED_CONV=0 turns the op off, =1 forces "both" in either dtype.
    Inference keeps tf.nn.conv2d, so exported SavedModels hold only TensorFlow ops.
    """
    choice = os.environ.get("SEER_TF_NATIVE_GROUPED_CONV", "auto")
    if (choice == "0" or dtype not in (tf.float32, tf.bfloat16) or _tf_kernels_only()
            or kernel_size != 3 or strides not in (1, 2) or groups < 2 or in_channels != filters
            or (in_channels // groups) % 8 or not native_grouped.available()):
        return ""
    if dtype == tf.float32 or choice == "1":
        return "both"
    return "gradient" if cpu.has_native_bf16() and _grouped_conv_native() else ""


def _widened(kernel):
    """A zero last row and column: a 4x4 "SAME" kernel at stride 2 pads (1, 1|2), PyTorch's
    windows (`_widened_same_ok`)."""
    return tf.pad(kernel, [[0, 1], [0, 1], [0, 0], [0, 0]])


def _grouped_conv3x3_tf(x, kernel, strides: int):
    """TF's grouped 3x3 conv2d with PyTorch's padding 1 (stride 2: the widened "SAME" kernel,
    exact on every size)."""
    return tf.nn.conv2d(x, _widened(kernel) if strides == 2 else kernel, strides=strides,
                        padding="SAME")


def _widened_same_ok(kernel_size: int, strides: int, groups: int) -> bool:
    """Whether a stride-2 3x3 convolution runs as TF "SAME" with its kernel widened to 4x4 by a
    zero last row and column, instead of an explicit pad + "VALID".

    Why it is exact: for stride 2 and a 4-wide window TF's "SAME" pads 1 before (and 1 after
    an even size, 2 after an odd one) and has ceil(n / 2) outputs, so output i reads inputs
    2i-1 .. 2i+2 with weights K[0..2], 0: PyTorch's 2i-1 .. 2i+1 with K, on every size.
    Why it is faster on CPU: the explicit pad writes (and its gradient's Slice reads) a copy of
    the input, the largest tensors of the step (RegNetY-400MF stage 1: 64x112x112x48); the
    zeros cost 16/9 the multiply-adds, but these grouped convolutions are memory-bound. Dense
    ones are not: the stem's 3 -> 32 convolution, 64x224x224x3, runs forward+backward in 124 ms
    padded and 178 ms widened on an AVX2 EPYC, so only grouped convolutions are widened (on that
    CPU the grouped ones come out even, 141 vs 154 ms at 64x112x112x48, 85 vs 79 at 56x56x104).
    Forward + both gradients on a 2-core AMX Xeon, fp32 / bf16: 64x112x112x48 (6 groups)
    119 -> 103 / 75 -> 72 ms, 64x56x56x104 60 -> 55 / 43 -> 40, 64x28x28x208 30 -> 27 /
    25 -> 23, 128x48x48x48 41 -> 36 / 32 -> 26. GPUs and TPUs keep the pad (XLA fuses it).
    """
    return kernel_size == 3 and strides == 2 and groups > 1 and not _tf_kernels_only()


def _conv_init(kernel_size: int, filters: int):
    return keras.initializers.RandomNormal(0.0, math.sqrt(2.0 / (kernel_size * kernel_size * filters)))


@keras.saving.register_keras_serializable(package="seer_tf")
class Conv(keras.layers.Layer):
    """Conv2D with PyTorch padding (k//2 each side) and groups on `tf.nn.conv2d` (oneDNN on CPU)."""

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
        """conv(x), or conv(x * channel_scale[:, None, None, :]) for an (N, C_in) scale (SE).
        In training on CPU the scale is seer_tf's native op; inference keeps TF's Mul, so
        exported SavedModels hold only TensorFlow ops."""
        if channel_scale is not None:
            if self._scale_in_kernel(x):
                return self._scaled_pointwise(x, channel_scale)
            if (training and x.dtype in (tf.float32, tf.bfloat16) and not _tf_kernels_only()
                    and native_scale.available()):
                x = native_scale.channel_scale(x, tf.cast(channel_scale, x.dtype))
            else:
                x = x * channel_scale[:, None, None, :]
        native = training and _native_grouped_conv(x.dtype, int(x.shape[-1]), self.filters,
                                                   self.kernel_size, self.strides, self.groups)
        if native:
            kernel = tf.cast(self.kernel, x.dtype)
            if native == "both":
                y = native_grouped.grouped_conv3x3(x, kernel, self.strides)
            else:
                y = native_grouped.with_native_gradient(
                    lambda x, k: _grouped_conv3x3_tf(x, k, self.strides), x, kernel, self.strides)
            if self.use_bias:
                y = tf.nn.bias_add(y, tf.cast(self.bias, y.dtype))
            return y
        p = self.kernel_size // 2
        padding = "VALID"
        widen = False
        if p and self.strides == 1:
            padding = "SAME"  # stride 1, odd k: TF pads k//2 each side, exactly like PyTorch
        elif p and _widened_same_ok(self.kernel_size, self.strides, self.groups):
            padding, widen = "SAME", True
        elif p:
            # Explicit pad + VALID (conv2d's explicit-padding kernel has no grouped gradient).
            x = tf.pad(x, [[0, 0], _pads(x.shape[1], p, self.kernel_size, self.strides),
                           _pads(x.shape[2], p, self.kernel_size, self.strides), [0, 0]])
        out_dtype = x.dtype
        if (self.groups > 1 and not ops.is_inside_xla()
                and not _grouped_gradient_works(x.dtype.name)):
            x = tf.cast(x, tf.float32)  # e.g. bf16 on a CPU without AVX512_BF16: no grouped grad
        kernel = tf.cast(self.kernel, x.dtype)
        if widen:
            kernel = _widened(kernel)
        if (self.kernel_size == 1 and self.strides == 1 and self.groups == 1
                and _pointwise_as_matmul(x.dtype, int(x.shape[-1]), _elements(
                    x.shape[:3] + (self.filters,)))):
            y = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), tf.reshape(kernel, kernel.shape[2:]))
            y = tf.reshape(y, tf.concat([tf.shape(x)[:-1], [self.filters]], axis=0))
            y.set_shape(x.shape[:-1] + (self.filters,))
        elif self.groups > 1 and not ops.is_inside_xla() and not _grouped_conv_native():
            y = tf.concat([tf.nn.conv2d(xg, kg, strides=self.strides, padding=padding)
                           for xg, kg in zip(tf.split(x, self.groups, axis=-1),
                                             tf.split(kernel, self.groups, axis=-1))], axis=-1)
        else:
            y = tf.nn.conv2d(x, kernel, strides=self.strides, padding=padding)
        y = tf.cast(y, out_dtype)
        if self.use_bias:
            y = tf.nn.bias_add(y, tf.cast(self.bias, y.dtype))
        return y

    def _scale_in_kernel(self, x) -> bool:
        """Whether a per-image input scale is folded into the kernel: (x * s) W = x (s W), one
        batched matmul with a (C_in, C_out) kernel per image. On CPU that removes the SE's three
        activation-sized element-wise passes (the scale, its gradient and the gate's gradient
        reduction; the gate's now comes from the small per-image kernel gradients) and wins
        once an image has more pixels than ~1.3x its channels: measured forward+backward on a
        2-core AMX Xeon, RegNetY-400MF shapes, bf16 / fp32: 64x56x56x48 23.7 -> 6.1 / 29.6 ->
        14.2 ms, 64x28x28x104 9.5 -> 5.3 / 20.1 -> 12.9, 128x12x12x104 4.4 -> 4.0 / 7.0 -> 5.9;
        slower at 64x14x14x208 (5.6 -> 6.5) and 64x7x7x440 (4.5 -> 22.3), where it is not used.
        """
        h, w, c = x.shape[1], x.shape[2], int(x.shape[-1])
        return (self.kernel_size == 1 and self.strides == 1 and self.groups == 1
                and h is not None and w is not None and h * w >= 1.3 * c
                and not _tf_kernels_only())

    def _scaled_pointwise(self, x, channel_scale):
        kernel = tf.cast(tf.reshape(self.kernel, self.kernel.shape[2:]), x.dtype)
        per_image = channel_scale[:, :, None] * kernel[None]  # (N, C_in, C_out)
        n, h, w, c = tf.shape(x)[0], x.shape[1], x.shape[2], int(x.shape[-1])
        y = tf.matmul(tf.reshape(x, [n, h * w, c]), per_image)
        y = tf.reshape(y, [n, h, w, self.filters])
        if self.use_bias:
            y = tf.nn.bias_add(y, tf.cast(self.bias, y.dtype))
        return y

    def compute_output_shape(self, input_shape):
        def out(n):
            return None if n is None else (n + 2 * (self.kernel_size // 2) - self.kernel_size) // self.strides + 1
        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "groups": self.groups, "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer)}


def _normalize_in_float32(dtype, channels: int) -> bool:
    """Whether a half-precision BatchNorm input is normalized in float32 on this device.

    On CPU, float16 has no FusedBatchNorm kernel at all. bfloat16 has oneDNN's vectorized kernel
    only when the channel count is a multiple of 16 (one AVX-512 register); otherwise oneDNN
    falls back to a generic loop (`nspc_bnorm:any`) that is ~2x slower than casting to float32
    and back (RegNetY-400MF's 104- and 440-wide stages: 0.96 s of a 2.4 s bf16 step, measured
    with ONEDNN_VERBOSE on an AMX CPU); BatchNorm.call folds such bf16 inputs instead
    (`_channel_fold`) when it can and comes here only when it cannot. CPUs without native bf16
    get no oneDNN bf16 kernel at all (TensorFlow's generic one instead), so they normalize in
    float32 too. GPUs and TPUs normalize half precision natively.
    """
    if dtype not in (tf.float16, tf.bfloat16) or _tf_kernels_only():
        return False
    return dtype == tf.float16 or channels % 16 != 0 or not cpu.has_native_bf16()


def _native_batch_norm(x) -> bool:
    """Whether a training-mode BatchNorm [+ ReLU] runs as seer_tf's native CPU op
    (`seer_tf.ops.batch_norm_relu`: one statistics pass, the ReLU mask recomputed in the
    gradient, bf16 for any channel count): on CPU, float32 or bfloat16, when the op built.
    Otherwise TF's FusedBatchNormV3 paths below (folded, float32-cast or XLA-gradient ones)."""
    return (x.dtype in (tf.float32, tf.bfloat16) and not _tf_kernels_only()
            and native_bn.available())


def _channel_fold(x) -> int:
    """k > 1 when a bfloat16 BatchNorm runs on the (pixels/k, k*C) view of its input instead of
    in float32 (`seer_tf.models.folded_batch_norm`: oneDNN's vector kernel for C not a multiple
    of 16, no casts; 1.3-1.9x faster forward+backward). Needs a CPU with native bf16 and a
    pixel count known when the step is traced."""
    if x.dtype != tf.bfloat16 or _tf_kernels_only() or not cpu.has_native_bf16():
        return 1
    dims = x.shape.as_list()
    pixels = None if None in dims[:3] else dims[0] * dims[1] * dims[2]
    return folded.fold_factor(int(dims[-1]), pixels)


@keras.saving.register_keras_serializable(package="seer_tf")
class BatchNorm(keras.layers.BatchNormalization):
    """Keras BatchNormalization on a fused kernel, with PyTorch's running-variance rule.

    Training on CPU uses seer_tf's native BatchNorm[+ReLU] op when it built
    (`_native_batch_norm`); inference, GPUs, TPUs and machines without a C++ compiler use TF's
    `FusedBatchNormV3` as below.

    Why not Keras' own path: it computes moments and the normalization as ~10 separate
    element-wise ops (and as many again in the gradient); on CPU they cost as much as the
    convolutions of a RegNetY-400MF SwAV step (tools/profile_step.py). `FusedBatchNormV3`
    (oneDNN on CPU, cuDNN on GPU, XLA-native) does it in one pass each way.
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
        """BatchNorm, then ReLU when `relu` (in the normalization's dtype, so grappler fuses the
        pair into one oneDNN kernel, and with an XLA gradient where that is faster).
        `spatial_mean`: return (y, mean of y over H, W) - the SE squeeze, whose gradient joins
        the XLA ReLU gradient where there is one."""
        if spatial_mean and not relu:
            raise ValueError("spatial_mean is the SE squeeze of a BatchNorm+ReLU output")
        if not self._fused_ok(inputs, mask):
            y = self._keras_call(inputs, training, mask)
            y = tf.nn.relu(y) if relu else y
            return (y, tf.reduce_mean(y, [1, 2])) if spatial_mean else y
        squeezed = None
        x = tf.cast(inputs, self.compute_dtype) if inputs.dtype != self.compute_dtype else inputs
        if training and self.trainable and _native_batch_norm(x):
            y, mean, variance, *squeezed = native_bn.batch_norm(
                x, tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32), self.epsilon,
                relu, spatial_mean=spatial_mean)
            self._update_moving(mean, variance)
            return (y, squeezed[0]) if spatial_mean else y
        fold = _channel_fold(x)
        if fold == 1 and _normalize_in_float32(x.dtype, int(x.shape[-1])):
            x = tf.cast(x, tf.float32)
        gamma = tf.cast(self.gamma, tf.float32)
        beta = tf.cast(self.beta, tf.float32)
        if training and self.trainable:
            fused_mean = spatial_mean and x.dtype == self.compute_dtype
            if fold > 1:
                y, mean, variance, *squeezed = folded.batch_norm(
                    x, gamma, beta, self.epsilon, relu, fold, spatial_mean=fused_mean)
            elif relu:
                y, mean, variance, *squeezed = relu_ops.batch_norm_relu(
                    x, gamma, beta, self.epsilon, xla=_xla_relu_grad(x.dtype),
                    spatial_mean=fused_mean)
            else:
                y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                    x=x, scale=gamma, offset=beta, mean=tf.zeros([0]), variance=tf.zeros([0]),
                    epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
                    is_training=True)
            self._update_moving(mean, variance)
        elif fold > 1:
            y = folded.batch_norm_inference(
                x, gamma, beta, tf.cast(self.moving_mean, tf.float32),
                tf.cast(self.moving_variance, tf.float32), self.epsilon, fold)
            if relu:
                y = tf.nn.relu(y)
        else:
            y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
                exponential_avg_factor=1.0, data_format="NHWC", is_training=False)
            if relu:
                y = tf.nn.relu(y)
        y = tf.cast(y, self.compute_dtype)
        if not spatial_mean:
            return y
        return y, squeezed[0] if squeezed else tf.reduce_mean(y, [1, 2])

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
        return relu_ops.add_relu(shortcut, y, xla=_xla_relu_grad(y.dtype))

    def compute_output_shape(self, input_shape):
        return self.b.compute_output_shape(input_shape)[:3] + (self.width_out,)

    def get_config(self):
        return {**super().get_config(), "width_in": self.width_in, "width_out": self.width_out,
                "stride": self.stride, "group_width": self.group_width,
                "bottleneck_multiplier": self.bottleneck_multiplier, "se_ratio": self.se_ratio,
                "sync_bn": self.sync_bn, "zero_init_last_bn": self.zero_init_last_bn}
