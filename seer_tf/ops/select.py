"""The kernel selection table: which implementation runs each primitive of the RegNetY trunk.

One key, `Machine` (device, the CPU's instruction sets from `seer_tf.cpu`, whether oneDNN and
seer_tf's native ops are on, whether the step is XLA-compiled), plus the dtype, the static
shapes and training, picks:

  conv2d      native grouped 3x3 | its native gradient only | per-image scaled matmul (SE
              folded into a 1x1 kernel) | pointwise as matmul | per-group convolutions |
              tf.nn.conv2d; padding SAME | widened SAME | explicit pad; float32 compute
  batch_norm  native BN[+ReLU][+squeeze] | folded bf16 | FusedBatchNormV3 (+ XLA ReLU
              gradient) ; float32 compute
  channel scale (SE)  in the kernel | native | TF's Mul
  add+ReLU    XLA kernels | TF

Each rule is a function here, so tests can ask it or replace it; the measurements behind them
are in docs/kernels.md. GPUs, TPUs and XLA-compiled steps (`inside_xla()`) always take TF's own
kernels (XLA fuses the pads and element-wise work there; native ops have no XLA kernel).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import threading

from absl import logging
import tensorflow as tf

from seer_tf import cpu
from seer_tf.ops import folded_batch_norm as folded
from seer_tf.ops import native
from seer_tf.ops import xla_context


@dataclasses.dataclass(frozen=True)
class Machine:
    """The facts every rule reads: device "cpu" | "gpu" | "tpu"; CPU with AVX512_BF16/AMX;
    oneDNN on (grouped conv2d has gradients on CPU); native ops built and on
    (SEER_TF_NATIVE_OPS); SEER_TF_NATIVE_GROUPED_CONV ("auto", "0", "1"); inside_xla()."""
    device: str = "cpu"
    native_bf16: bool = True
    onednn: bool = True
    native_ops: bool = True
    native_grouped: str = "auto"
    inside_xla: bool = False

    @property
    def cpu_kernels(self) -> bool:
        """Whether CPU-only paths (native ops, oneDNN-specific layouts) may run."""
        return self.device == "cpu" and not self.inside_xla


@functools.lru_cache(maxsize=None)
def device() -> str:
    if tf.config.list_logical_devices("TPU"):
        return "tpu"
    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


@functools.lru_cache(maxsize=None)
def onednn() -> bool:
    """oneDNN's CPU kernels are on (see seer_tf/__init__.py): without them a grouped conv2d has
    no gradient on CPU, and Conv runs one convolution per group (slower)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        if _pywrap_util_port.IsMklEnabled():
            return True
    except ImportError:
        pass
    logging.warning("oneDNN is off (TF_ENABLE_ONEDNN_OPTS=0 or TensorFlow imported before "
                    "seer_tf): grouped convolutions run one conv per group, which is slower.")
    return False


def machine() -> Machine:
    """The key now (cheap: read at trace time, per layer call)."""
    where, xla = device(), xla_context.is_inside_xla()
    on_cpu = where == "cpu"
    return Machine(device=where, native_bf16=on_cpu and cpu.has_native_bf16(),
                   onednn=not on_cpu or onednn(),
                   native_ops=on_cpu and not xla and native.available(),  # no build under XLA
                   native_grouped=os.environ.get("SEER_TF_NATIVE_GROUPED_CONV", "auto"),
                   inside_xla=xla)


# ---------------------------------------------------------------------------------- conv2d

@dataclasses.dataclass(frozen=True)
class ConvPlan:
    scale: str = ""          # SE channel scale: "" (none), "kernel", "native", "mul"
    kernel: str = "conv2d"   # "native", "native_gradient", "scaled_matmul", "matmul",
                             # "per_group", "conv2d"
    padding: str = "VALID"   # "SAME", "VALID", "widened" (SAME, 4x4 kernel), "explicit"
    float32: bool = False    # compute in float32 (bf16 grouped conv without a gradient here)


def conv(m: Machine, dtype, shape, filters: int, kernel_size: int, strides: int, groups: int,
         training, scaled: bool) -> ConvPlan:
    """The plan for conv2d of an NHWC input of static `shape` [* an (N, C) scale]."""
    in_channels, pointwise = int(shape[-1]), kernel_size == 1 and strides == 1 and groups == 1
    if scaled and pointwise and scale_in_kernel(m, shape):
        return ConvPlan(scale="kernel", kernel="scaled_matmul")
    scale = ""
    if scaled:
        native_scale = (training and dtype in (tf.float32, tf.bfloat16) and m.cpu_kernels
                        and m.native_ops)
        scale = "native" if native_scale else "mul"
    native = training and native_grouped_conv(m, dtype, in_channels, filters, kernel_size,
                                              strides, groups)
    if native:
        return ConvPlan(scale, "native" if native == "both" else "native_gradient", "SAME")
    padding = "VALID"
    if kernel_size // 2:
        if strides == 1:
            padding = "SAME"  # stride 1, odd k: TF pads k//2 each side, exactly like PyTorch
        elif widened_same(m, kernel_size, strides, groups) and not (
                # oneDNN's bf16-emulation backward-weights kernel (AVX-512 without
                # AVX512_BF16) leaves the kernel gradient partly unwritten (NaN, garbage) at
                # SAME, stride 2, input width 1; the explicit pad is exact there.
                dtype == tf.bfloat16 and shape[2] == 1):
            padding = "widened"
        else:
            padding = "explicit"
    float32 = groups > 1 and not m.inside_xla and not grouped_gradient_works(m, dtype)
    compute = tf.float32 if float32 else dtype
    if pointwise and pointwise_as_matmul(m, compute, in_channels, _elements(
            tuple(shape[:3]) + (filters,))):
        kernel = "matmul"
    elif groups > 1 and not m.inside_xla and not m.onednn:
        kernel = "per_group"
    else:
        kernel = "conv2d"
    return ConvPlan(scale, kernel, padding, float32)


def scale_in_kernel(m: Machine, shape) -> bool:
    """Whether a 1x1 stride-1 conv folds its per-image input scale into the kernel:
    (x * s) W = x (s W), one batched matmul. Wins on CPU once an image has more pixels than
    ~1.3x its channels (it drops the SE's three activation-sized element-wise passes)."""
    h, w, c = shape[1], shape[2], int(shape[-1])
    return h is not None and w is not None and h * w >= 1.3 * c and m.cpu_kernels


def native_grouped_conv(m: Machine, dtype, in_channels: int, filters: int, kernel_size: int,
                        strides: int, groups: int) -> str:
    """How much of a training-mode grouped 3x3 conv runs as the native op
    (`grouped_conv.py`: group width a multiple of 8, C_out = C_in, stride 1/2): "both",
    "gradient" (oneDNN's forward, the native gradient) or "" (TF both ways).

    float32: "both" on every CPU (oneDNN reaches a fraction of the FMA peak at group width 8;
    the fp32 step gains 24% on AVX2 and AVX-512 EPYCs). bfloat16 on CPUs with native bf16:
    "gradient" (oneDNN's bf16 forward is faster, the native gradient faster still). Without
    native bf16, bf16 keeps TF's path. SEER_TF_NATIVE_GROUPED_CONV=0 turns it off, =1 forces
    "both". Inference keeps tf.nn.conv2d, so exported SavedModels hold only TensorFlow ops.
    """
    if (m.native_grouped == "0" or dtype not in (tf.float32, tf.bfloat16) or not m.cpu_kernels
            or kernel_size != 3 or strides not in (1, 2) or groups < 2 or in_channels != filters
            or (in_channels // groups) % 8 or not m.native_ops):
        return ""
    if dtype == tf.float32 or m.native_grouped == "1":
        return "both"
    return "gradient" if m.native_bf16 and m.onednn else ""


def widened_same(m: Machine, kernel_size: int, strides: int, groups: int) -> bool:
    """Whether a stride-2 3x3 grouped conv runs as SAME with its kernel widened to 4x4 by a zero
    last row and column (exact: output i reads inputs 2i-1 .. 2i+2 with K[0..2], 0, PyTorch's
    windows on every size) instead of an explicit pad + VALID: the pad copies the step's largest
    tensors, and these memory-bound convolutions do not mind the 16/9 multiply-adds. Dense
    convolutions (the stem) are compute-bound and slower widened; GPUs/TPUs/XLA fuse the pad."""
    return kernel_size == 3 and strides == 2 and groups > 1 and m.cpu_kernels


def pointwise_as_matmul(m: Machine, dtype, in_channels: int, out_elements=None) -> bool:
    """Whether a stride-1 1x1 conv runs as one matmul over the (N*H*W, C) pixels (same
    arithmetic). On CPU with >= 64 input channels: bf16 AMX matmuls beat oneDNN's 1x1 kernels
    1.4-2.9x; fp32 equal (AVX-512) or 8-27% faster (AVX2); fewer channels are slower. Any
    channel count once the output has >= 32M elements: oneDNN's brgconv_1x1 slows down
    erratically there. CPUs without native bf16 keep the bf16 convolution."""
    if not m.cpu_kernels:
        return False
    fast_dtype = dtype == tf.float32 or (dtype == tf.bfloat16 and m.native_bf16)
    if out_elements is not None and out_elements >= 32 * 2**20 and (
            dtype == tf.float32 or m.native_bf16):
        return True
    return in_channels >= 64 and fast_dtype


def grouped_gradient_works(m: Machine, dtype) -> bool:
    """Whether a grouped conv2d has a gradient in `dtype` here: always on GPU/TPU, in float32
    with oneDNN; half precision on a CPU without native bf16/fp16 kernels falls back to TF's
    Eigen kernel, which has none (probed once per dtype), so those convs compute in float32."""
    if dtype == tf.float32 or not m.onednn or m.device != "cpu":
        return True
    return _grouped_gradient_probe(tf.as_dtype(dtype).name)


@functools.lru_cache(maxsize=None)
def _grouped_gradient_probe(dtype: str) -> bool:
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


def _elements(shape):
    """Number of elements of a static shape, None when any dimension is unknown."""
    dims = tuple(shape)
    return None if None in dims else math.prod(dims)


# ------------------------------------------------------------------------------ batch_norm

@dataclasses.dataclass(frozen=True)
class BatchNormPlan:
    kernel: str = "fused"         # "native", "folded", "fused" (FusedBatchNormV3)
    float32: bool = False         # normalize a half-precision input in float32
    fold: int = 1                 # "folded": pixels per folded row
    xla_relu_grad: bool = False   # "fused" + ReLU in training: the ReLU gradient in XLA


def batch_norm(m: Machine, dtype, shape, training) -> BatchNormPlan:
    """The plan for a fused BatchNorm [+ReLU] of an NHWC input of static `shape` (`training`:
    batch statistics, a trainable layer)."""
    if training and native_batch_norm(m, dtype):
        return BatchNormPlan("native")
    fold = channel_fold(m, dtype, shape)
    if fold > 1:
        return BatchNormPlan("folded", fold=fold)
    float32 = normalize_in_float32(m, dtype, int(shape[-1]))
    return BatchNormPlan(float32=float32,
                         xla_relu_grad=bool(training) and not float32 and xla_relu_grad(m, dtype))


def native_batch_norm(m: Machine, dtype) -> bool:
    """Training BatchNorm [+ReLU] as the native op (`batch_norm_relu.py`: one statistics pass,
    the ReLU mask recomputed in the gradient, bf16 at any channel count): CPU, fp32 or bf16."""
    return dtype in (tf.float32, tf.bfloat16) and m.cpu_kernels and m.native_ops


def channel_fold(m: Machine, dtype, shape) -> int:
    """k > 1 when a bf16 BatchNorm runs on the (pixels/k, k*C) view of its input instead of in
    float32 (`folded_batch_norm.py`: oneDNN's vector kernel for C not a multiple of 16, 1.3-1.9x
    faster). Needs native bf16 and a pixel count known when the step is traced."""
    if dtype != tf.bfloat16 or not m.cpu_kernels or not m.native_bf16:
        return 1
    dims = list(shape)
    pixels = None if None in dims[:3] else dims[0] * dims[1] * dims[2]
    return folded.fold_factor(int(dims[-1]), pixels)


def normalize_in_float32(m: Machine, dtype, channels: int) -> bool:
    """Whether a half-precision input is normalized in float32. On CPU float16 has no
    FusedBatchNorm kernel; bf16 has oneDNN's vector kernel only for C a multiple of 16 (its
    generic loop is ~2x slower than casting), and none at all without native bf16. GPUs, TPUs
    and XLA normalize half precision natively."""
    if dtype not in (tf.float16, tf.bfloat16) or not m.cpu_kernels:
        return False
    return dtype == tf.float16 or channels % 16 != 0 or not m.native_bf16


def xla_relu_grad(m: Machine, dtype) -> bool:
    """Whether the trunk's ReLU gradients run as XLA kernels (`relu.py`): bf16 on a CPU with
    native bf16, where TF's Eigen kernel is ~2x slower per element than fp32 and XLA's ~2.3x
    faster than Eigen's. Float32 keeps Eigen (faster there)."""
    return dtype == tf.bfloat16 and m.cpu_kernels and m.native_bf16
