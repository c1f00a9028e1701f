"""BatchNorm [+ ReLU] [+ SE squeeze] of an NHWC tensor on the kernels `select.batch_norm` picks.

Why not Keras' own BatchNormalization math: it computes moments and the normalization as ~10
separate element-wise ops (and as many again in the gradient); on CPU they cost as much as the
convolutions of a RegNetY-400MF SwAV step. `FusedBatchNormV3` (oneDNN on CPU, cuDNN on GPU,
XLA-native) does it in one pass each way, and seer_tf's native op (`batch_norm_relu.py`) in one
pass with the ReLU and the squeeze on CPU.
"""

from __future__ import annotations

import tensorflow as tf

from seer_tf.ops import batch_norm_relu as native_bn
from seer_tf.ops import folded_batch_norm as folded
from seer_tf.ops import relu as relu_ops
from seer_tf.ops import select


def batch_norm(x, gamma, beta, moving_mean, moving_variance, *, epsilon: float, training,
               relu: bool = False, spatial_mean: bool = False):
    """-> (y, (batch mean, unbiased batch variance) or None, squeeze or None).

    `training`: normalize with the batch statistics (returned, without gradient, for the
    caller's moving averages: PyTorch's rule takes the unbiased variance); otherwise with the
    moving ones. `relu`: ReLU after the normalization, fused where a kernel can. `spatial_mean`
    (needs `relu`): also the (N, C) mean of y over H, W (the SE squeeze), whose gradient joins
    the ReLU's where a kernel can. y has x's dtype; gamma and beta are read as float32.
    """
    if spatial_mean and not relu:
        raise ValueError("spatial_mean is the SE squeeze of a BatchNorm+ReLU output")
    plan = select.batch_norm(select.machine(), x.dtype, x.shape, training)
    if plan.kernel == "native":
        y, mean, variance, *squeezed = native_bn.batch_norm(
            x, tf.cast(gamma, tf.float32), tf.cast(beta, tf.float32), epsilon, relu,
            spatial_mean=spatial_mean)
        return y, (mean, variance), squeezed[0] if squeezed else None
    dtype = x.dtype
    if plan.float32:
        x = tf.cast(x, tf.float32)
    gamma = tf.cast(gamma, tf.float32)
    beta = tf.cast(beta, tf.float32)
    squeezed, stats = [], None
    if training:
        fused_mean = spatial_mean and not plan.float32
        if plan.kernel == "folded":
            y, mean, variance, *squeezed = folded.batch_norm(
                x, gamma, beta, epsilon, relu, plan.fold, spatial_mean=fused_mean)
        elif relu:
            y, mean, variance, *squeezed = relu_ops.batch_norm_relu(
                x, gamma, beta, epsilon, xla=plan.xla_relu_grad, spatial_mean=fused_mean)
        else:
            y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=tf.zeros([0]), variance=tf.zeros([0]),
                epsilon=epsilon, exponential_avg_factor=1.0, data_format="NHWC",
                is_training=True)
        stats = (mean, variance)
    else:
        y = _inference(x, gamma, beta, tf.cast(moving_mean, tf.float32),
                       tf.cast(moving_variance, tf.float32), epsilon, plan.fold)
        y = tf.nn.relu(y) if relu else y
    y = tf.cast(y, dtype)
    if not spatial_mean:
        return y, stats, None
    return y, stats, squeezed[0] if squeezed else tf.reduce_mean(y, [1, 2])


def _inference(x, gamma, beta, mean, variance, epsilon: float, fold: int):
    if fold > 1:
        return folded.batch_norm_inference(x, gamma, beta, mean, variance, epsilon, fold)
    y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=gamma, offset=beta, mean=mean, variance=variance, epsilon=epsilon,
        exponential_avg_factor=1.0, data_format="NHWC", is_training=False)
    return y
