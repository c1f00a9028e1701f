"""The host loop: distributed step functions, checkpoints, resume, TensorBoard, progress.

A multi-day SEER run must survive preemption and say what it is doing:
  * `tf.train.CheckpointManager` in `workdir/checkpoints` (model, optimizer, step, queue) every
    `checkpoint_every` steps and at the end; a restart resumes from the latest one and rebuilds
    the input stream at that step (`dataset_fn(input_context, start_step)`), so a deterministic
    stream continues exactly where it stopped.
  * SIGTERM (preemption) -> checkpoint at the current step, then return.
  * A non-finite loss never reaches a checkpoint: with float16 the loss-scale optimizer skips
    the step; otherwise the run stops with `NonFiniteLossError` naming the step, and the last
    good checkpoint stays the latest.
  * Every `log_every` steps: loss, LR, images/s, ETA, loss scale, code entropy, prototypes used,
    to the log and to TensorBoard (`workdir/tensorboard`), with a grid of crops at the first
    logged step and weight histograms every `histogram_every` steps.

The step function is XLA-compiled only where the platform supports it (GPU/TPU): on CPU, XLA
makes grouped convolutions ~100x slower and fails with cross-replica collectives.
"""

from __future__ import annotations

import math
import os
import signal
import time
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from seer_tf import distribute
from seer_tf.train.step import SwAVStep


class NonFiniteLossError(FloatingPointError):
    pass


class _SigtermFlag:
    """Records SIGTERM instead of dying, so the loop can checkpoint first."""

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some test runners): no handler
            self._previous = None
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: checkpointing after the current step")
        self.received = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Trainer:
    """Runs SwAV pretraining for `total_steps` with a model/optimizer built in `strategy.scope()`."""

    def __init__(self, strategy, step: SwAVStep, dataset_fn: Callable, *, workdir: str,
                 total_steps: int, global_batch_size: int, log_every: int = 10,
                 checkpoint_every: int = 500, keep_checkpoints: int = 3,
                 histogram_every: int = 1000, image_every: int = 0, jit_step: Optional[bool] = None,
                 on_log: Optional[Callable[[int, Dict], None]] = None,
                 extra_scalars: Optional[Callable[[], Dict]] = None):
        self.strategy, self.step, self.dataset_fn = strategy, step, dataset_fn
        self.workdir, self.total_steps = workdir, int(total_steps)
        self.global_batch_size = int(global_batch_size)
        self.log_every, self.checkpoint_every = max(1, int(log_every)), int(checkpoint_every)
        self.histogram_every, self.image_every = int(histogram_every), int(image_every)
        self.on_log, self.extra_scalars = on_log, extra_scalars
        self.jit_step = distribute.on_accelerators(strategy) if jit_step is None else bool(jit_step)
        self.chief = distribute.is_chief(strategy)
        with strategy.scope():
            self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        # Keras 3 layers kept in Python lists (RegNet stages, head linears, prototype kernels)
        # are invisible to tf.train.Checkpoint's object graph, so the model is checkpointed as
        # a flat {variable path: variable} dict: every weight and BN statistic, by name.
        self.model_variables = {v.path: v for v in step.model.weights}
        if len(self.model_variables) != len(step.model.weights):
            raise ValueError("model variables must have unique paths to be checkpointed")
        items = dict(model=self.model_variables, optimizer=step.optimizer,
                     global_step=self.global_step)
        if step.queue is not None:
            items["queue"] = step.queue
        self.checkpoint = tf.train.Checkpoint(**items)
        ckpt_dir = os.path.join(workdir, "checkpoints")
        if not self.chief:  # other workers write to a scratch copy (MultiWorkerMirrored protocol)
            ckpt_dir = os.path.join(workdir, "tmp_worker", f"{strategy.cluster_resolver.task_id}")
        self.manager = tf.train.CheckpointManager(self.checkpoint, ckpt_dir, keep_checkpoints)
        tb_dir = os.path.join(workdir, "tensorboard") if self.chief else os.path.join(ckpt_dir, "tb")
        self.writer = tf.summary.create_file_writer(tb_dir)
        self._fns = {}

    # ------------------------------------------------------------------ step functions

    def _train_fn(self, frozen: bool):
        if frozen in self._fns:
            return self._fns[frozen]
        strategy, step = self.strategy, self.step

        def train(iterator):
            step.normalize_prototypes()
            crops = next(iterator)
            metrics = strategy.run(step.replica_step, args=(crops, self.global_step, frozen))
            self.global_step.assign_add(1)
            return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                    for k, v in metrics.items()}

        fn = tf.function(train, jit_compile=self.jit_step)
        self._fns[frozen] = fn
        return fn

    # ------------------------------------------------------------------ loop

    def restore(self) -> int:
        latest = self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            restored = {n for n, _ in tf.train.list_variables(latest) if n.startswith("model/")}
            if len(restored) < len(self.model_variables):
                raise ValueError(f"{latest} holds {len(restored)} model tensors, the model has "
                                 f"{len(self.model_variables)}: not a checkpoint of this model")
            logging.info("resumed from %s at step %d", latest, int(self.global_step.numpy()))
        return int(self.global_step.numpy())

    def save(self):
        path = self.manager.save(checkpoint_number=int(self.global_step.numpy()))
        logging.info("checkpoint %s", path)
        return path

    def run(self) -> Dict:
        start = self.restore()
        if start >= self.total_steps:
            logging.info("nothing to do: step %d >= total_steps %d", start, self.total_steps)
            return {"step": start, "stopped": "done"}
        dataset = self.strategy.distribute_datasets_from_function(
            lambda ctx: self.dataset_fn(ctx, start))
        iterator = iter(dataset)
        history, last, stopped = [], None, "done"
        t_window, n_window = time.time(), 0
        t_start = time.time()
        with _SigtermFlag() as sigterm:
            while int(self.global_step.numpy()) < self.total_steps:
                step_no = int(self.global_step.numpy())
                frozen = step_no < self.step.freeze_prototypes_steps
                metrics = self._train_fn(frozen)(iterator)
                loss = float(metrics["loss"])
                if not math.isfinite(loss) and not self.step.loss_scaled:
                    raise NonFiniteLossError(
                        f"non-finite loss ({loss}) at step {step_no}; stopping without saving. "
                        f"Last good checkpoint: {self.manager.latest_checkpoint}")
                n_window += 1
                history.append(loss)
                done = step_no + 1
                if done % self.log_every == 0 or done == self.total_steps:
                    now = time.time()
                    last = self._log(done, metrics, n_window / max(now - t_window, 1e-9), t_start, start)
                    t_window, n_window = now, 0
                if self.image_every and (done == 1 or done % self.image_every == 0):
                    self._image_summary(done)
                if self.checkpoint_every and done % self.checkpoint_every == 0:
                    self.save()
                if sigterm.received:
                    stopped = "sigterm"
                    break
        latest = self.manager.latest_checkpoint
        if latest is None or int(latest.rsplit("-", 1)[1]) != int(self.global_step.numpy()):
            self.save()
        self.writer.flush()
        return {"step": int(self.global_step.numpy()), "stopped": stopped, "losses": history,
                "last_metrics": last}

    # ------------------------------------------------------------------ reporting

    def _log(self, step_no, metrics, steps_per_sec, t_start, start_step):
        values = {k: float(v) for k, v in metrics.items()}
        values["lr"] = float(_current_lr(self.step.optimizer))
        values["images_per_sec"] = steps_per_sec * self.global_batch_size
        if self.extra_scalars:  # e.g. data/bad_files from the decoder's counters
            values.update(self.extra_scalars())
        remaining = (self.total_steps - step_no) / max(steps_per_sec, 1e-9)
        elapsed = time.time() - t_start
        logging.info(
            "step %d/%d loss %.4f lr %.4g %.1f img/s entropy %.3f protos %d%s | %s elapsed, ETA %s",
            step_no, self.total_steps, values["loss"], values["lr"], values["images_per_sec"],
            values.get("code_entropy", float("nan")), int(values.get("prototypes_used", 0)),
            f" loss_scale {values['loss_scale']:.0f}" if "loss_scale" in values else "",
            _hms(elapsed), _hms(remaining))
        with self.writer.as_default(step=step_no):
            for k, v in values.items():
                tf.summary.scalar(k if "/" in k else f"train/{k}", v)
            if self.histogram_every and (step_no % self.histogram_every == 0 or step_no == self.log_every):
                for v in self.step.model.trainable_variables[:: max(1, len(self.step.model.trainable_variables) // 16)]:
                    tf.summary.histogram(f"weights/{v.path}", v)
        if self.on_log:
            self.on_log(step_no, values)
        return values

    def _image_summary(self, step_no):
        """A grid of the crops of a few samples (un-normalized for display). Drawn from its own
        copy of the stream, so the training stream (and resume) is not disturbed."""
        if not hasattr(self, "_image_iter"):
            self._image_iter = iter(self.dataset_fn(tf.distribute.InputContext(), step_no))
        local = next(self._image_iter)
        mean = np.array([0.485, 0.456, 0.406], np.float32)
        std = np.array([0.229, 0.224, 0.225], np.float32)
        with self.writer.as_default(step=step_no):
            for i, c in enumerate(local):
                img = np.clip(np.asarray(c[:4], np.float32) * std + mean, 0, 1)
                tf.summary.image(f"crops/crop{i}", img, max_outputs=4)


def _current_lr(optimizer):
    lr = optimizer.learning_rate
    return lr.numpy() if hasattr(lr, "numpy") else lr


def _hms(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
