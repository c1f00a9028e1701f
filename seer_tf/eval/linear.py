"""Linear probe on frozen features (VISSL `eval_mlp` head, SEER/SwAV linear evaluation).

VISSL's benchmark attaches `LinearEvalMLP` to the frozen trunk: BatchNorm (affine, eps 1e-5,
PyTorch momentum 0.1) on the pooled feature, then one Linear layer initialized N(0, 0.01) with
zero bias. Its ImageNet config (`eval_resnet_8gpu_transfer_in1k_linear.yaml`) trains 28 epochs
with SGD, nesterov momentum 0.9, lr 0.01 per 256 images (linear scaling), x0.1 at epochs 8, 16
and 24, weight decay 5e-4 as L2 in the gradient on the linear layer (VISSL's `regularize_bn:
False` keeps it off BatchNorm). Every number is a `LinearConfig` field.

One deliberate difference: VISSL runs the trunk on randomly augmented crops every epoch; here
the features are computed once (center crop, `eval.inputs.eval_preprocess`) and the probe trains
on the stored arrays, which is ~28x cheaper and what most linear-probe code (DINO's
`eval_linear` with frozen features, scikit-learn probes) does. Expect slightly lower accuracy
than with augmentation on large datasets.

Keras' SGD keeps an lr-scaled velocity (`m = mu*m - lr*g`); PyTorch keeps `b = mu*b + g` and
multiplies by lr at the update. They are identical between LR steps and differ only for a few
iterations after each x0.1 drop.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from seer_tf.eval.progress import Progress


@dataclasses.dataclass
class LinearConfig:
    epochs: int = 28
    batch_size: int = 256
    base_lr: float = 0.01  # per `lr_reference_batch` images
    lr_reference_batch: int = 256
    milestones: Sequence[int] = (8, 16, 24)
    gamma: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    batch_norm: bool = True
    regularize_bn: bool = False
    seed: int = 0


# ------------------------------------------------------------------ shared by every protocol

def classification_metrics(scores, labels, num_classes: int) -> Dict:
    """top-1 / top-5 accuracy (percent), per-class top-1 (None for classes absent from `labels`),
    their mean, and the count. Ties rank the lower class index first."""
    scores, labels = np.asarray(scores), np.asarray(labels).astype(np.int64)
    order = np.argsort(-scores, axis=1, kind="stable")
    hit1 = order[:, 0] == labels
    k = min(5, num_classes)
    hit5 = (order[:, :k] == labels[:, None]).any(axis=1)
    per_class = []
    for c in range(num_classes):
        mask = labels == c
        per_class.append(float(hit1[mask].mean() * 100.0) if mask.any() else None)
    present = [a for a in per_class if a is not None]
    return {"top1": float(hit1.mean() * 100.0), "top5": float(hit5.mean() * 100.0),
            "per_class_top1": per_class,
            "mean_per_class_top1": float(np.mean(present)) if present else None,
            "num_examples": int(labels.shape[0])}


def step_lr(config, epoch: int) -> float:
    """Linearly scaled base LR (lr * batch / reference batch), x gamma at each passed milestone."""
    lr = config.base_lr * config.batch_size / config.lr_reference_batch
    return lr * config.gamma ** sum(epoch >= m for m in config.milestones)


def decay_mask(model, regularize_bn: bool):
    """Per trainable variable: does weight decay apply? BatchNorm gamma/beta only if asked."""
    bn = set()
    if not regularize_bn:
        for layer in model._flatten_layers(include_self=True, recursive=True):
            if isinstance(layer, keras.layers.BatchNormalization):
                bn.update(id(v) for v in layer.trainable_weights)
    return [id(v) not in bn for v in model.trainable_variables]


def add_weight_decay(grads, variables, mask, weight_decay: float):
    """PyTorch-style coupled weight decay: g + wd * w (before momentum), as VISSL's SGD."""
    if not weight_decay:
        return list(grads)
    return [g + weight_decay * tf.cast(v.value, g.dtype) if m else g
            for g, v, m in zip(grads, variables, mask)]


# ------------------------------------------------------------------ the probe

@keras.saving.register_keras_serializable(package="seer_tf")
class LinearClassifier(keras.Model):
    """BatchNorm (VISSL `channel_bn`) then Linear, on precomputed features."""

    def __init__(self, num_classes: int, batch_norm: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.batch_norm = int(num_classes), bool(batch_norm)
        self.bn = (keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn")
                   if batch_norm else None)
        self.fc = keras.layers.Dense(num_classes, name="fc",
                                     kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01),
                                     bias_initializer="zeros")

    def build(self, input_shape):
        dim = int(input_shape[-1])
        if self.bn is not None:
            self.bn.build((None, dim))
        self.fc.build((None, dim))
        self.built = True

    def call(self, features, training=None):
        x = tf.cast(features, tf.float32)
        if self.bn is not None:
            x = self.bn(x, training=training)
        return self.fc(x)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "batch_norm": self.batch_norm}


def train_linear(features, labels, num_classes: int, config: Optional[LinearConfig] = None,
                 on_epoch: Optional[Callable[[int, Dict], None]] = None) -> LinearClassifier:
    """Train the probe on `features` [N, d] (numpy, memmap ok) and integer `labels` [N]."""
    config = config or LinearConfig()
    if not isinstance(features, np.memmap):
        features = np.asarray(features, np.float32)
    labels = np.asarray(labels).astype(np.int32)
    n, dim = features.shape
    keras.utils.set_random_seed(config.seed)
    clf = LinearClassifier(num_classes, config.batch_norm)
    clf.build((None, dim))
    optimizer = keras.optimizers.SGD(step_lr(config, 0), momentum=config.momentum,
                                     nesterov=config.nesterov)
    variables = clf.trainable_variables
    optimizer.build(variables)
    mask = decay_mask(clf, config.regularize_bn)

    @tf.function(reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = clf(x, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                y, logits, from_logits=True))
        grads = add_weight_decay(tape.gradient(loss, variables), variables, mask,
                                 config.weight_decay)
        optimizer.apply(grads, variables)
        return loss

    rng = np.random.default_rng(config.seed)
    bs = min(config.batch_size, n)
    steps = max(1, n // bs if n % bs == 1 else -(-n // bs))  # drop a 1-sample tail (BatchNorm)
    progress = Progress("linear probe", config.epochs, unit="epochs")
    for epoch in range(config.epochs):
        optimizer.learning_rate = step_lr(config, epoch)
        perm = rng.permutation(n)
        losses = []
        for i in range(steps):
            idx = np.sort(perm[i * bs:(i + 1) * bs])  # sorted: memmap reads stay sequential
            losses.append(float(step(features[idx], labels[idx])))
        stats = {"loss": float(np.mean(losses)), "lr": step_lr(config, epoch)}
        progress.update(1, f"loss {stats['loss']:.4f} lr {stats['lr']:.4g}")
        if on_epoch:
            on_epoch(epoch, stats)
    logging.info("linear probe trained: %d examples, dim %d, %d classes", n, dim, num_classes)
    return clf


def predict(clf, features, batch_size: int = 4096) -> np.ndarray:
    """Logits for `features` in batches (BatchNorm in inference mode)."""
    fn = tf.function(lambda x: clf(x, training=False), reduce_retracing=True)
    return np.concatenate([np.asarray(fn(np.asarray(features[i:i + batch_size])))
                           for i in range(0, len(features), batch_size)], axis=0)


def linear_probe(train_features, train_labels, eval_features, eval_labels, num_classes: int,
                 config: Optional[LinearConfig] = None, on_epoch=None) -> Dict:
    """Train on one split, report `classification_metrics` on the other."""
    clf = train_linear(train_features, train_labels, num_classes, config, on_epoch)
    metrics = classification_metrics(predict(clf, eval_features), eval_labels, num_classes)
    metrics["num_train"] = int(len(train_labels))
    return metrics
