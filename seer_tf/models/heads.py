"""SwAV projection head and prototypes (VISSL `SwAVPrototypesHead`).

Projection: for dims [d_0, ..., d_n], Linear(d_i, d_i+1) [+ BN] + ReLU between layers, and a
last Linear without BN/ReLU (VISSL `skip_last_bn=True`). SEER 64GF and larger use no BN
([10444, 8192, 8192, 256] for 256GF); SwAV ResNet-50 and smaller SEER heads use BN. The output is
L2-normalized. Prototypes are bias-free linear maps to K clusters (K=16000 in SEER, 3000 in
SwAV), optionally several heads; they are kept in float32 and re-normalized after every optimizer
step (see `normalize_prototypes`), because Sinkhorn and the loss read them directly.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from seer_tf.models.blocks import BN_EPSILON, BN_MOMENTUM


def _linear_init(fan_in):  # PyTorch nn.Linear default (VISSL leaves head init at default)
    bound = 1.0 / (fan_in ** 0.5)
    return keras.initializers.RandomUniform(-bound, bound)


@keras.saving.register_keras_serializable(package="seer_tf")
class ProjectionHead(keras.layers.Layer):
    """MLP from a dims list, then L2 normalization (the SwAV embedding)."""

    def __init__(self, dims, use_bn=False, use_bias=True, normalize=True, sync_bn=False, **kwargs):
        super().__init__(**kwargs)
        if len(dims) < 2:
            raise ValueError(f"projection dims need at least [input, output], got {dims}")
        self.dims, self.use_bn, self.use_bias = [int(d) for d in dims], bool(use_bn), bool(use_bias)
        self.normalize, self.sync_bn = bool(normalize), bool(sync_bn)
        n = len(self.dims) - 1
        self.linears = [keras.layers.Dense(self.dims[i + 1], use_bias=use_bias, name=f"linear_{i}",
                                           kernel_initializer=_linear_init(self.dims[i]),
                                           bias_initializer=_linear_init(self.dims[i]))
                        for i in range(n)]
        self.bns = [keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                                    synchronized=sync_bn, name=f"bn_{i}")
                    for i in range(n - 1)] if use_bn else []

    def build(self, input_shape):
        for i, layer in enumerate(self.linears):
            layer.build((None, self.dims[i]))
        for i, bn in enumerate(self.bns):
            bn.build((None, self.dims[i + 1]))

    def call(self, x, training=None):
        for i, layer in enumerate(self.linears):
            x = layer(x)
            if i < len(self.linears) - 1:
                if self.bns:
                    x = self.bns[i](x, training=training)
                x = tf.nn.relu(x)
        if self.normalize:
            x = tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1)
        return x

    def get_config(self):
        return {**super().get_config(), "dims": self.dims, "use_bn": self.use_bn,
                "use_bias": self.use_bias, "normalize": self.normalize, "sync_bn": self.sync_bn}


@keras.saving.register_keras_serializable(package="seer_tf")
class Prototypes(keras.layers.Layer):
    """One or more bias-free prototype matrices [dim, K]; scores = embedding @ C (float32)."""

    def __init__(self, num_prototypes, **kwargs):
        kwargs["dtype"] = "float32"  # prototypes stay float32 under any mixed-precision policy
        super().__init__(**kwargs)
        self.num_prototypes = [int(k) for k in (num_prototypes if isinstance(num_prototypes, (list, tuple))
                                                else [num_prototypes])]

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.kernels = [self.add_weight(name=f"prototypes_{j}", shape=(dim, k),
                                        initializer=_linear_init(dim))
                        for j, k in enumerate(self.num_prototypes)]

    def call(self, embeddings):
        e = tf.cast(embeddings, tf.float32)
        return [tf.matmul(e, k) for k in self.kernels]

    def normalize(self):
        """L2-normalize every prototype (column), as SwAV does before each forward pass."""
        for k in self.kernels:
            k.assign(tf.math.l2_normalize(k, axis=0))

    def get_config(self):
        return {**super().get_config(), "num_prototypes": self.num_prototypes}
