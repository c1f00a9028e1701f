"""The trunk's ReLUs with an XLA-compiled gradient, for bfloat16 on CPU (`select.xla_relu_grad`).

The BatchNorm+ReLU half applies only without seer_tf's native CPU ops (no C++ compiler, or
SEER_TF_NATIVE_OPS=0), which fuse that ReLU themselves; the block-output add+ReLU keeps its
XLA kernels.

Why: TensorFlow's Eigen element-wise kernels run bfloat16 about 2x slower per element than
float32 on CPU (they convert element by element), and a RegNetY step has ~100 ReLU gradients on
activation-sized tensors. XLA's CPU compiler emits vector code for the same arithmetic. Measured
on a 2-core AMX Xeon, one 32x112x112x48 tensor (RegNetY-400MF stage 1): ReluGrad 16.7 ms in
Eigen bf16, 7.3 ms XLA bf16, 5.5 ms Eigen fp32; a bf16 ReLU forward 17.5 ms in Eigen.
In float32 Eigen is the faster one (XLA 10.2 ms), so callers ask for XLA only in bfloat16.

Two shapes of ReLU occur in a Y block, and each keeps what TensorFlow already fuses:
  * BatchNorm -> ReLU (`batch_norm_relu`): grappler fuses the forward pair into one oneDNN
    `_FusedBatchNormEx` as long as the BatchNorm output has the ReLU as its only consumer. A
    custom gradient on the ReLU alone would add a consumer (the tape's identity), so the custom
    gradient spans both: ReLU gradient (XLA), then TF's own `FusedBatchNormGradV3`.
  * add -> ReLU at the block output (`add_relu`): one XLA kernel forward and backward.
The arithmetic is TF's own (`ReluGrad`: gradient where the output is > 0), so results are
bit-identical to the plain path (tests/test_relu.py), except where b's output also feeds the SE
squeeze: that gradient is added inside the same kernel (`relu_grad(dz, z, dmean)`), one bf16
rounding instead of three. `folded_batch_norm.py` uses the same kernels.
"""

from __future__ import annotations

import tensorflow as tf


@tf.function(jit_compile=True, reduce_retracing=True)
def _relu_grad(dz, z):
    return tf.raw_ops.ReluGrad(gradients=dz, features=z)


@tf.function(jit_compile=True, reduce_retracing=True)
def _relu_grad_with_mean(dz, dmean, z):
    """ReLU gradient of z where z also fed mean(z over H, W) (the SE squeeze): the mean's
    gradient, spread over the pixels, joins dz in the same kernel (no Tile/AddN pass)."""
    hw = tf.cast(tf.shape(z)[1] * tf.shape(z)[2], tf.float32)
    d = tf.cast(dz, tf.float32) + tf.cast(dmean, tf.float32)[:, None, None, :] / hw
    return tf.cast(tf.where(z > 0, d, 0.0), z.dtype)


def relu_grad(dz, z, dmean=None):
    """XLA ReLU gradient; with `dmean`, of an output that also fed its spatial mean."""
    return _relu_grad(dz, z) if dmean is None else _relu_grad_with_mean(dz, dmean, z)


@tf.function(jit_compile=True, reduce_retracing=True)
def _add_relu_forward(a, b):
    return tf.nn.relu(a + b)


def add_relu(a, b, xla: bool):
    """relu(a + b); with `xla`, one compiled kernel each way."""
    if not xla:
        return tf.nn.relu(a + b)

    @tf.custom_gradient
    def f(a, b):
        z = _add_relu_forward(a, b)

        def grad(dz):
            g = _relu_grad(dz, z)
            return g, g

        return z, grad

    return f(a, b)


def batch_norm_relu(x, gamma, beta, epsilon: float, xla: bool, spatial_mean: bool = False):
    """relu(training-mode FusedBatchNormV3(x)) -> (output, batch mean, batch variance)
    [+ (N, C) mean of the output over H, W when `spatial_mean`: the SE squeeze, whose gradient
    then joins the XLA ReLU gradient instead of a Tile and an AddN of its own].

    gamma and beta are float32 tensors; x is float32 or bfloat16. The mean and variance are the
    kernel's (the variance unbiased, as TF returns it) for the caller's moving statistics; they
    carry no gradient (the caller stops it), as in the plain path.
    """
    def forward(x, gamma, beta):
        y, mean, variance, r1, r2, r3 = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=tf.zeros([0]), variance=tf.zeros([0]),
            epsilon=epsilon, exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
        return tf.nn.relu(y), mean, variance, (r1, r2, r3)

    if not xla:
        z, mean, variance, _ = forward(x, gamma, beta)
        return (z, mean, variance) + ((tf.reduce_mean(z, [1, 2]),) if spatial_mean else ())

    @tf.custom_gradient
    def f(x, gamma, beta):
        z, mean, variance, (r1, r2, r3) = forward(x, gamma, beta)
        outputs = (z, mean, variance) + ((tf.reduce_mean(z, [1, 2]),) if spatial_mean else ())
        scope = tf.get_current_name_scope()  # the layer's, so profiles file the gradient there

        def grad(dz, unused_dmean=None, unused_dvariance=None, dsqueeze=None):
            with tf.name_scope(scope + "/" if scope else ""):
                dy = relu_grad(dz, z, dsqueeze)
                dx, dgamma, dbeta, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                    y_backprop=dy, x=x, scale=gamma, reserve_space_1=r1, reserve_space_2=r2,
                    reserve_space_3=r3, epsilon=epsilon, data_format="NHWC", is_training=True)
            return dx, dgamma, dbeta

        return outputs, grad

    return f(x, gamma, beta)
