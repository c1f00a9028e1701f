"""Training-mode BatchNorm [+ ReLU] [+ SE squeeze] as one native op each way, on CPU.

Why: see batch_norm_relu.cc. In a RegNetY-400MF SwAV step on a 2-core AMX Xeon, forward +
backward per tensor against oneDNN's FusedBatchNormV3 + ReluGrad + FusedBatchNormGradV3
(isolated, ms): 64x112x112x48 fp32 70 -> 56, bf16 67 -> 36; 64x56x56x104 fp32 55 -> 32,
bf16 198 -> 21 (oneDNN has no bf16 vector kernel for C % 16 != 0); 64x7x7x440 bf16 9.6 -> 2.2.

`batch_norm` has FusedBatchNormV3's contract as `normalization.batch_norm` uses it: the
batch mean and the *unbiased* batch variance come back for the moving statistics (they carry no
gradient), the output is normalized with the biased one. The gradient is registered for the op,
so tapes, tf.function and `tf.recompute_grad` see an ordinary TensorFlow op.
"""

from __future__ import annotations

import tensorflow as tf

from seer_tf.ops import native


available = native.available  # the op library is one: both ops or neither


def batch_norm(x, gamma, beta, epsilon: float, relu: bool, spatial_mean: bool = False):
    """(y, batch mean, unbiased batch variance[, (N, C) mean of y over H, W]) for NHWC x.

    x is float32 or bfloat16 (y has its dtype), gamma and beta float32. With `spatial_mean` the
    SE squeeze comes from the same pass that writes y, and its gradient joins the op's own.
    """
    y, mean, _, variance, squeeze = native.load().seer_batch_norm_relu(
        x=x, gamma=gamma, beta=beta, epsilon=epsilon, relu=relu, spatial_mean=spatial_mean)
    outputs = (y, tf.stop_gradient(mean), tf.stop_gradient(variance))
    return outputs + ((tf.cast(squeeze, x.dtype),) if spatial_mean else ())


@tf.RegisterGradient("SeerBatchNormRelu")
def _batch_norm_relu_grad(op, dy, unused_dmean, unused_dinv, unused_dvariance, dsqueeze):
    x, gamma, beta = op.inputs
    _, mean, inv_std, _, _ = op.outputs
    if dsqueeze is None or not op.get_attr("spatial_mean"):
        dsqueeze = tf.zeros([0], tf.float32)
    dx, dgamma, dbeta = native.load().seer_batch_norm_relu_grad(
        dy=dy, x=x, gamma=gamma, beta=beta, mean=mean, inv_std=inv_std,
        dsqueeze=tf.cast(dsqueeze, tf.float32), relu=op.get_attr("relu"))
    return dx, dgamma, dbeta
