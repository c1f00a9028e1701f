"""The per-replica SwAV training step (main_swav.py `train`, one iteration).

Order of one iteration, as the official code:
  1. L2-normalize the prototypes (cross-replica context, before `strategy.run`).
  2. Forward all crops (trunk once per resolution, head once), swapped-prediction loss with
     Sinkhorn codes (float32, replica sums injected), optionally with the feature queue.
  3. Backward on loss / num_replicas (Keras' `optimizer.apply` SUMS gradients over replicas),
     scaled by the loss scale under float16.
  4. During the first `freeze_prototypes_steps` iterations the prototypes get no update at all
     (main_swav sets their `.grad = None`, so neither SGD nor LARC touches them): the frozen
     step is a separate trace that simply leaves them out of `optimizer.apply`.
  5. Push the assignment crops' embeddings into the queue.

Nothing here creates a strategy: the replica sum / max / gather callables come from
`seer_tf.distribute` and are passed in by the loop.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import keras
import tensorflow as tf

from seer_tf.losses.swav import DIAGNOSTICS, FeatureQueue, swav_loss


class SwAVStep:
    """Holds what one SwAV iteration needs; `replica_step` runs inside `strategy.run`.

    Construct it inside `strategy.scope()` (it builds the optimizer's slots).
    """

    def __init__(self, model, optimizer, *, num_replicas: int = 1,
                 crops_for_assign: Sequence[int] = (0, 1), temperature: float = 0.1,
                 epsilon: float = 0.05, sinkhorn_iterations: int = 3,
                 freeze_prototypes_steps: int = 0, queue: Optional[FeatureQueue] = None,
                 replica_sum: Optional[Callable] = None, replica_max: Optional[Callable] = None,
                 all_gather: Optional[Callable] = None, replica_index: Optional[Callable] = None,
                 jit_sinkhorn: bool = False):
        self.model, self.optimizer = model, optimizer
        self.num_replicas = int(num_replicas)
        self.crops_for_assign = tuple(crops_for_assign)
        self.temperature, self.epsilon = float(temperature), float(epsilon)
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.freeze_prototypes_steps = int(freeze_prototypes_steps)
        self.queue = queue
        self.replica_sum, self.replica_max = replica_sum, replica_max
        self.all_gather = all_gather
        self.replica_index = replica_index or (lambda: (0, 1))
        self.jit_sinkhorn = bool(jit_sinkhorn)
        self.loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        if not optimizer.built:
            # Build slots for ALL trainable variables now (inside the caller's strategy.scope()):
            # the frozen-prototype step applies a subset, which must not define the optimizer.
            optimizer.build(model.trainable_variables)

    @property
    def metric_names(self):
        """The keys of `replica_step`'s metrics, fixed so a multi-step loop can carry them."""
        return ("loss", "finite", *DIAGNOSTICS) + (("loss_scale",) if self.loss_scaled else ())

    def trainable_variables(self, frozen: bool):
        prototypes = {id(v) for v in self.model.prototypes.trainable_variables}
        return [v for v in self.model.trainable_variables if not (frozen and id(v) in prototypes)]

    def normalize_prototypes(self):
        """Cross-replica context: every replica's copy gets the same normalized value."""
        self.model.prototypes.normalize()

    def loss_and_metrics(self, crops, step, training=True):
        """Forward + SwAV loss for this replica's crops; returns (loss, metrics, embeddings)."""
        out = self.model(list(crops), training=training)
        n = len(crops)
        embeddings = out["embeddings"]
        per_crop_emb = tf.split(embeddings, n, axis=0)
        losses, diags = [], []
        in_use = self.queue.in_use(step) if self.queue is not None else False
        rid, nrep = self.replica_index()
        for h, scores in enumerate(out["scores"]):
            queue_scores = None
            if self.queue is not None:
                kernel = self.model.prototypes.kernels[h]
                queue_scores = self.queue.scores(lambda e, k=kernel: tf.matmul(e, k), rid, nrep)
            loss, diag = swav_loss(
                tf.split(scores, n, axis=0), crops_for_assign=self.crops_for_assign,
                temperature=self.temperature, epsilon=self.epsilon,
                sinkhorn_iterations=self.sinkhorn_iterations, replica_sum=self.replica_sum,
                replica_max=self.replica_max, queue_scores=queue_scores, queue_in_use=in_use,
                jit_compile=self.jit_sinkhorn)
            losses.append(loss)
            diags.append(diag)
        loss = tf.add_n(losses) / len(losses)
        metrics = {k: tf.add_n([d[k] for d in diags]) / len(diags) for k in diags[0]}
        metrics["loss"] = loss
        return loss, metrics, [per_crop_emb[c] for c in self.crops_for_assign]

    def _skip_together(self, grads):
        """Keras' LossScaleOptimizer checks overflow on each replica's LOCAL gradients before
        they are summed, so an inf on one replica alone would reach the weights. Agree first:
        if any replica overflowed, every replica hands NaN gradients to the optimizer, so all
        of them skip the step and halve the loss scale together."""
        bad = tf.add_n([tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(g)), tf.float32))
                        for g in grads if g is not None])
        any_bad = self.replica_sum(bad) > 0
        return [None if g is None else tf.where(any_bad, tf.constant(float("nan"), g.dtype), g)
                for g in grads]

    def _all_finite(self, loss, grads):
        """1.0 when the loss and every gradient are finite on EVERY replica, else 0.0: the
        loop stops (float32 / bfloat16) or counts a skipped step (float16) on this flag, so all
        replicas must see the same value."""
        bad = tf.cast(tf.logical_not(tf.math.is_finite(loss)), tf.float32)
        for g in grads:
            if g is not None:
                bad += tf.cast(tf.logical_not(tf.reduce_all(tf.math.is_finite(g))), tf.float32)
        if self.replica_sum is not None:
            bad = self.replica_sum(bad)
        return tf.cast(tf.equal(bad, 0.0), tf.float32)

    def replica_step(self, crops, step, frozen: bool):
        """One replica's iteration; returns per-replica metrics (the loop reduces them).

        `metrics["finite"]` says whether this step's loss and gradients were finite on every
        replica. Under float16 loss scaling a non-finite step is skipped (the optimizer leaves
        the weights alone and halves the scale); otherwise its update is applied and the loop
        must stop before anything is saved.
        """
        variables = self.trainable_variables(frozen)
        with tf.GradientTape() as tape:
            loss, metrics, assign_emb = self.loss_and_metrics(crops, step)
            objective = loss / self.num_replicas
            if self.loss_scaled:
                objective = self.optimizer.scale_loss(objective)
        grads = tape.gradient(objective, variables)
        if self.loss_scaled and self.replica_sum is not None:
            grads = self._skip_together(grads)
        metrics["finite"] = self._all_finite(loss, grads)
        self.optimizer.apply(grads, variables)
        if self.queue is not None:
            self.queue.push(tf.stack(assign_emb), step, all_gather=self.all_gather)
        if self.loss_scaled:
            metrics["loss_scale"] = tf.convert_to_tensor(self.optimizer.dynamic_scale, tf.float32)
        return metrics
