"""Fine-tuning the whole trunk with a new linear classifier (the SEER paper's recipe).

SEER (Goyal et al. 2021, section 4.1): "we finetune for 35 epochs with SGD, a batch size of 256,
a learning rate of 0.0125 reduced by a factor of 10 after 30 epochs, a weight decay of 1e-4 and
momentum of 0.9". The classifier is a fresh Linear on the pooled feature (N(0, 0.01) init, zero
bias as VISSL's MLP head); BatchNorm layers of the trunk train (batch statistics), as PyTorch
fine-tuning does. Training images get the standard ImageNet augmentation (torchvision's
RandomResizedCrop, scale (0.08, 1), aspect (3/4, 4/3), and a horizontal flip:
`eval.inputs.augment`), evaluation the center crop (`eval.inputs.eval_preprocess`). Every
number is a `FinetuneConfig` field.

Distribution: pass a tf.distribute strategy; the trunk is copied into its scope when its
variables were made elsewhere. The per-replica loss is divided by the global batch size because
Keras 3's `optimizer.apply` sums gradients over replicas (docs/design.md section 4).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from seer_tf.eval.features import run_batched
from seer_tf.eval.progress import Progress
from seer_tf.weights import trunk_of
from seer_tf.eval.linear import add_weight_decay, classification_metrics, decay_mask, step_lr


@dataclasses.dataclass
class FinetuneConfig:
    epochs: int = 35
    batch_size: int = 256  # global, over all replicas
    base_lr: float = 0.0125  # per `lr_reference_batch` images
    lr_reference_batch: int = 256
    milestones: Sequence[int] = (30,)
    gamma: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    regularize_bn: bool = False
    label_smoothing: float = 0.0
    seed: int = 0


@keras.saving.register_keras_serializable(package="seer_tf")
class Classifier(keras.Model):
    """A RegNet trunk and a linear layer on its pooled feature; `call` returns logits."""

    def __init__(self, trunk, num_classes: int, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(trunk, dict):
            trunk = keras.saving.deserialize_keras_object(trunk)
        self.trunk, self.num_classes, self.seed = trunk, int(num_classes), int(seed)
        init = keras.initializers.RandomNormal(0.0, 0.01, seed=self.seed)  # same on any strategy
        self.fc = keras.layers.Dense(self.num_classes, name="fc", kernel_initializer=init,
                                     bias_initializer="zeros")

    def build(self, input_shape=None):
        if not self.trunk.built:
            self.trunk.build((None, None, None, 3))
        self.fc.build((None, self.trunk.widths[-1]))
        self.built = True

    def call(self, images, training=None):
        return self.fc(tf.cast(self.trunk(images, training=training)["pooled"], tf.float32))

    def get_config(self):
        return {**super().get_config(), "trunk": keras.saving.serialize_keras_object(self.trunk),
                "num_classes": self.num_classes, "seed": self.seed}


def _in_scope(strategy, trunk):
    """`trunk` itself if its variables belong to `strategy`, else a copy built in its scope."""
    if all(strategy.extended.variable_created_in_scope(v.value) for v in trunk.variables):
        return trunk
    with strategy.scope():
        copy = trunk.__class__.from_config(trunk.get_config())
        copy.build((None, None, None, 3))
    copy.set_weights(trunk.get_weights())
    return copy


def finetune(model, train_dataset, num_classes: int, config: Optional[FinetuneConfig] = None,
             strategy=None, eval_dataset=None,
             on_epoch: Optional[Callable[[int, Dict], None]] = None):
    """Fine-tune trunk + new classifier; returns (Classifier, metrics on eval_dataset or None).

    The trunk is trained IN PLACE when its variables belong to `strategy` (the usual case: the
    model was loaded in `strategy.scope()`, or no strategy is given); otherwise a copy made in
    the strategy's scope is trained and the caller's trunk stays as it was.

    `train_dataset` yields UNBATCHED (image, label) pairs, already augmented and normalized
    (e.g. with `eval.inputs.augment`), and is iterated once per epoch (shuffle it with
    `reshuffle_each_iteration`); it is batched here with the global batch size, dropping the
    remainder so every step has a full batch. `eval_dataset` yields batched (images, labels).
    """
    config = config or FinetuneConfig()
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(config.seed)
    trunk = _in_scope(strategy, trunk_of(model))
    with strategy.scope():
        clf = Classifier(trunk, num_classes, seed=config.seed, name="classifier")
        clf.build()
        optimizer = keras.optimizers.SGD(step_lr(config, 0), momentum=config.momentum,
                                         nesterov=config.nesterov)
        optimizer.build(clf.trainable_variables)
    variables = clf.trainable_variables
    mask = decay_mask(clf, config.regularize_bn)
    global_batch = config.batch_size
    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True,
                                                   label_smoothing=config.label_smoothing,
                                                   reduction=None)

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            logits = clf(images, training=True)
            per_example = loss_fn(tf.one_hot(labels, num_classes), logits)
            loss = tf.reduce_sum(per_example) / global_batch
        grads = add_weight_decay(tape.gradient(loss, variables), variables, mask,
                                 config.weight_decay / strategy.num_replicas_in_sync)
        optimizer.apply(grads, variables)
        return loss

    def train_step(batch):
        losses = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    batched = train_dataset.batch(global_batch, drop_remainder=True).prefetch(2)
    _train_epochs(tf.function(train_step), strategy, batched, optimizer, config, on_epoch)
    metrics = evaluate_classifier(clf, eval_dataset, num_classes, strategy) \
        if eval_dataset is not None else None
    return clf, metrics


def _train_epochs(train_step, strategy, batched, optimizer, config, on_epoch):
    """`config.epochs` passes over `batched` (global batches), the step-schedule LR per epoch."""
    card = int(batched.cardinality())
    distributed = strategy.experimental_distribute_dataset(batched)
    progress = Progress("finetune", config.epochs * card if card > 0 else None, unit="steps")
    for epoch in range(config.epochs):
        optimizer.learning_rate = step_lr(config, epoch)
        losses = []
        for batch in distributed:
            losses.append(float(train_step(batch)))
            progress.update(1, f"epoch {epoch + 1}/{config.epochs} loss {losses[-1]:.4f}")
        if not losses:
            raise ValueError("finetune: fewer training examples than one batch "
                             f"({config.batch_size})")
        stats = {"loss": float(np.mean(losses)), "lr": step_lr(config, epoch)}
        logging.info("finetune epoch %d/%d: loss %.4f lr %.4g", epoch + 1, config.epochs,
                     stats["loss"], stats["lr"])
        if on_epoch:
            on_epoch(epoch, stats)


def evaluate_classifier(clf, dataset, num_classes: int, strategy=None) -> Dict:
    """`classification_metrics` of a classifier over a batched (images, labels) dataset."""
    logits, (labels,) = run_batched(lambda x: clf(x, training=False), dataset, strategy,
                                    name="finetune eval")
    return classification_metrics(logits, labels, num_classes)
