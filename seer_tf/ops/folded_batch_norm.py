"""BatchNorm(+ReLU) of a bfloat16 tensor whose channel count oneDNN cannot vectorize.

Training on CPU takes seer_tf's native op (`batch_norm_relu.py`) when it builds; this module
is the path without a C++ compiler (or SEER_TF_NATIVE_OPS=0) and for inference
(`select.channel_fold`).

Why: oneDNN's bf16 BatchNorm kernels need the channel count C to be a multiple of 16 (one
AVX-512 register); otherwise it falls back to a generic loop that is ~2x slower than casting to
float32 and back. RegNetY-400MF's stages 2 and 4 are 104 and 440 wide, and casting costs two
extra passes over every such activation. Instead we *fold* the channels: an NHWC tensor is, in
memory, a (P, C) matrix of P = N*H*W pixels, and the same bytes read as (P/k, k*C) put k
consecutive pixels side by side. With k*C a multiple of 16 oneDNN's vector kernel applies.
A folded "channel" j is channel j mod C of every k-th pixel, so per-channel statistics are the
k group statistics combined (equal counts: the mean is their average, the variance the average
of theirs plus the variance of the group means).

    forward   oneDNN training BatchNorm on the fold -> k group means/variances (its normalized
              output is discarded), combine; normalize (+ReLU) in one XLA kernel
    backward  ReLU gradient (XLA, with the SE squeeze's gradient when asked for; see
              `relu.batch_norm_relu`); oneDNN inference-mode BatchNorm gradient on the fold, whose
              sum(dy) and sum(dy * x_hat) per folded channel add up over the k groups to the
              per-channel dbeta and dgamma; dx = gamma/sigma * (dy - mean(dy) - x_hat *
              mean(dy * x_hat)) in one XLA kernel

Statistics and gradients accumulate in float32 (oneDNN's and XLA's arithmetic), as TF's own
bf16 BatchNorm does. Measured on a 2-core AMX Xeon, forward+backward of the RegNetY-400MF
stage-2 shapes (64x28x28x104 + 128x12x12x104, bf16, with ReLU): 24.2 ms with the float32
casts, 12.9 ms folded; 440 channels 6.3 -> 4.7 ms (tests/test_folded_batch_norm.py checks the
numbers against a float64 reference; `benchmarks.run --what=step` the step).
"""

from __future__ import annotations

import math

import tensorflow as tf

from seer_tf.ops import relu as relu_ops

VECTOR_CHANNELS = 16  # oneDNN's bf16 BatchNorm vectorizes C in multiples of 16 (AVX-512)


def fold_factor(channels: int, pixels) -> int:
    """The smallest k with k*C a multiple of 16 that divides the pixel count; 1 = no folding
    (C already a multiple of 16, or P unknown / not divisible by k)."""
    k = VECTOR_CHANNELS // math.gcd(channels, VECTOR_CHANNELS)
    if k == 1 or pixels is None or pixels % k:
        return 1
    return k


def _fold(x, k):
    return tf.reshape(x, [1, 1, -1, k * int(x.shape[-1])])


@tf.function(jit_compile=True, reduce_retracing=True)
def _combine(group_mean, group_var, group_count, k: int):
    """(k*C) group means and unbiased variances over `group_count` pixels each -> per-channel
    mean and biased variance over k*group_count pixels."""
    m = tf.reshape(group_mean, [k, -1])
    v = tf.reshape(group_var, [k, -1]) * ((group_count - 1.0) / group_count)
    mean = tf.reduce_mean(m, 0)
    return mean, tf.reduce_mean(v, 0) + tf.reduce_mean(tf.square(m - mean), 0)


@tf.function(jit_compile=True, reduce_retracing=True)
def _normalize(x, mean, inv_std, gamma, beta, relu: bool):
    y = (tf.cast(x, tf.float32) - mean) * (inv_std * gamma) + beta
    return tf.cast(tf.nn.relu(y) if relu else y, x.dtype)


@tf.function(jit_compile=True, reduce_retracing=True)
def _input_gradient(dy, x, mean, inv_std, gamma, dgamma, dbeta, count):
    dy = tf.cast(dy, tf.float32)
    x_hat = (tf.cast(x, tf.float32) - mean) * inv_std
    dx = (gamma * inv_std) * (dy - dbeta / count - x_hat * (dgamma / count))
    return tf.cast(dx, x.dtype)


def batch_norm(x, gamma, beta, epsilon: float, relu: bool, k: int, spatial_mean: bool = False):
    """Training-mode BatchNorm [+ReLU] of NHWC `x` on its k-fold -> (output, batch mean,
    unbiased batch variance) [+ the output's mean over H, W], like `relu.batch_norm_relu`;
    gamma and beta are float32. The statistics carry no gradient (the caller stops it)."""
    channels = int(x.shape[-1])
    if spatial_mean and not relu:
        raise ValueError("spatial_mean is the SE squeeze of a BatchNorm+ReLU output")

    @tf.custom_gradient
    def f(x, gamma, beta):
        xk = _fold(x, k)
        _, group_mean, group_var, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=xk, scale=tf.ones([k * channels]), offset=tf.zeros([k * channels]),
            mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=epsilon,
            exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
        group_count = tf.cast(tf.shape(xk)[2], tf.float32)
        count = group_count * k
        mean, var = _combine(group_mean, group_var, group_count, k)
        inv_std = tf.math.rsqrt(var + epsilon)
        z = _normalize(x, mean, inv_std, gamma, beta, relu)
        unbiased = var * (count / tf.maximum(count - 1.0, 1.0))
        outputs = (z, mean, unbiased) + ((tf.reduce_mean(z, [1, 2]),) if spatial_mean else ())
        scope = tf.get_current_name_scope()

        def grad(dz, unused_dmean=None, unused_dvariance=None, dsqueeze=None):
            with tf.name_scope(scope + "/" if scope else ""):
                dy = relu_ops.relu_grad(dz, z, dsqueeze) if relu else dz
                tile = lambda v: tf.tile(v, [k])
                _, dgamma_k, dbeta_k, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                    y_backprop=_fold(dy, k), x=xk, scale=tf.ones([k * channels]),
                    reserve_space_1=tile(mean), reserve_space_2=tile(var),
                    reserve_space_3=tf.zeros([0]), epsilon=epsilon, data_format="NHWC",
                    is_training=False)
                dgamma = tf.reduce_sum(tf.reshape(dgamma_k, [k, channels]), 0)
                dbeta = tf.reduce_sum(tf.reshape(dbeta_k, [k, channels]), 0)
                dx = _input_gradient(dy, x, mean, inv_std, gamma, dgamma, dbeta, count)
            return dx, dgamma, dbeta

        return outputs, grad

    return f(x, gamma, beta)


def batch_norm_inference(x, gamma, beta, mean, variance, epsilon: float, k: int):
    """Inference-mode BatchNorm of NHWC `x` with given statistics, on its k-fold (the same
    per-channel arithmetic, tiled k times)."""
    tile = lambda v: tf.tile(v, [k])
    y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=_fold(x, k), scale=tile(gamma), offset=tile(beta), mean=tile(mean),
        variance=tile(variance), epsilon=epsilon, exponential_avg_factor=1.0,
        data_format="NHWC", is_training=False)
    return tf.reshape(y, x.shape)  # static: folding needs a known pixel count
