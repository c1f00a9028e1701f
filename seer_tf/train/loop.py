"""The host loop: K steps per device call, checkpoints, resume, preemption, non-finite guard.

Laid out as Keras' trainer and TF Model Garden's Orbit lay it out, because that is what keeps
GPUs and TPUs busy:
  * One `tf.function` (never XLA) takes the iterator and runs `steps_per_loop` (K) steps in a
    `tf.range` loop: `next(iterator)`, `strategy.run(replica_step)`, the cross-replica mean of
    the metrics, `global_step += 1`. IteratorGetNext has no XLA kernel, so only the replica
    step (forward, SwAV loss with Sinkhorn, gradients, optimizer) is `jit_compile=True`, and
    it runs inside `ops.inside_xla()` so the model picks no native CPU op there.
  * The host never reads a device value between boundaries: metrics stay on the device and are
    fetched every `log_every` steps (a multiple of K). Checkpoints, summaries and the SIGTERM
    check happen at loop boundaries; a loop is cut short at every boundary (log, checkpoint,
    end of the frozen-prototype phase, end of training).
  * `workdir/checkpoints` (`tf.train.CheckpointManager`): model, optimizer, step, queue, the
    lr schedule's state when it has one, and the input iterator when the stream can be
    checkpointed; a restart resumes from the latest. Other workers write a scratch copy
    (MultiWorkerMirroredStrategy saves need every worker) and delete it at once; they restore
    from the chief's directory, never from a copy of their own.
  * Non-finite steps never reach a checkpoint: the step reports them on the device; float32 and
    bfloat16 stop at the first one (`NonFiniteLossError` names it); under float16 loss scaling
    a non-finite step is skipped and the run stops after `max_nonfinite_steps` of them in a
    row. Before every save the weights are checked finite on the device.
  * SIGTERM on any worker: all workers save at the same step and raise `Preempted`
    (`seer_tf.train.preemption`); the binary exits with the restart code.
"""

from __future__ import annotations

import gc
import os
from typing import Callable, Dict, Optional

import tensorflow as tf
from absl import logging

from seer_tf import distribute, ops, weights
from seer_tf.optim import schedules
from seer_tf.train import preemption
from seer_tf.train.report import Reporter
from seer_tf.train.step import SwAVStep

class NonFiniteLossError(FloatingPointError):
    pass


class Trainer:
    """Runs SwAV pretraining for `total_steps` with a model/optimizer built in `strategy.scope()`.

    `dataset_fn(input_context, start_step)` gives per-replica batches of crops; when
    `checkpoint_input` the iterator's state is saved with the model, so a resumed run reads on
    exactly where the interrupted one stopped.
    """

    def __init__(self, strategy, step: SwAVStep, dataset_fn: Callable, *, workdir: str,
                 total_steps: int, global_batch_size: int, steps_per_loop: int = 1,
                 log_every: int = 10, checkpoint_every: int = 500, keep_checkpoints: int = 3,
                 histogram_every: int = 1000, image_every: int = 0,
                 jit_step: Optional[bool] = None, max_nonfinite_steps: int = 20,
                 checkpoint_input: bool = False,
                 on_log: Optional[Callable[[int, Dict], None]] = None,
                 extra_scalars: Optional[Callable[[], Dict]] = None):
        self.strategy, self.step, self.dataset_fn = strategy, step, dataset_fn
        self.workdir, self.total_steps = workdir, int(total_steps)
        self.steps_per_loop, self.log_every = int(steps_per_loop), int(log_every)
        if self.steps_per_loop < 1 or self.log_every < 1 or self.log_every % self.steps_per_loop:
            raise ValueError(f"log_every ({log_every}) must be a positive multiple of "
                             f"steps_per_loop ({steps_per_loop})")
        self.checkpoint_every, self.image_every = int(checkpoint_every), int(image_every)
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        self.checkpoint_input = bool(checkpoint_input)
        self.jit_step = distribute.on_accelerators(strategy) if jit_step is None else bool(jit_step)
        self.chief = distribute.is_chief(strategy)
        with strategy.scope():
            agg = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.global_step = tf.Variable(0, dtype=tf.int64, name="global_step", **agg)
            # First step (1-based) whose loss or gradients were non-finite and stopped the
            # run (0: none), and the current run of skipped float16 steps.
            self.nonfinite_step = tf.Variable(0, dtype=tf.int64, name="nonfinite_step", **agg)
            self.nonfinite_streak = tf.Variable(0, dtype=tf.int64, name="nonfinite_streak", **agg)
        self.schedule = schedules.observing_schedule(step.optimizer)  # e.g. halve-on-plateau
        self.model_variables = weights.model_checkpoint_items(step.model)
        items = dict(model=self.model_variables, optimizer=step.optimizer,
                     global_step=self.global_step)
        if step.queue is not None:
            items["queue"] = step.queue
        if isinstance(self.schedule, tf.Module) and self.schedule.variables:
            items["schedule"] = self.schedule
        self.checkpoint = tf.train.Checkpoint(**items)
        self.checkpoint_dir = os.path.join(workdir, weights.CHECKPOINT_DIR)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.checkpoint_dir,
                                                  keep_checkpoints)
        writer = (tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
                  if self.chief else tf.summary.create_noop_writer())
        self.reporter = Reporter(writer, model=step.model, optimizer=step.optimizer,
                                 total_steps=total_steps, global_batch_size=global_batch_size,
                                 histogram_every=histogram_every, extra_scalars=extra_scalars,
                                 on_log=on_log)
        self.agreement = preemption.Agreement(strategy)
        self._fns = {}

    # ------------------------------------------------------------------ device functions

    def _replica_fn(self, frozen: bool):
        step = self.step
        if not self.jit_step:
            return lambda crops, global_step: step.replica_step(crops, global_step, frozen)

        def in_xla(crops, global_step):
            with ops.inside_xla():
                return step.replica_step(crops, global_step, frozen)

        return tf.function(in_xla, jit_compile=True)

    def _one_step(self, iterator, replica):
        """One step in cross-replica context; returns the replica-mean metrics."""
        strategy = self.strategy
        self.step.normalize_prototypes()
        crops = next(iterator)
        per_replica = strategy.run(replica, args=(crops, self.global_step))
        metrics = {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica[k], axis=None)
                   for k in self.step.metric_names}
        self.global_step.assign_add(1)
        finite = metrics["finite"] > 0
        if self.step.loss_scaled:  # skipped by the optimizer; stop after too many in a row
            streak = tf.where(finite, tf.constant(0, tf.int64), self.nonfinite_streak + 1)
            self.nonfinite_streak.assign(streak)
            give_up = streak >= self.max_nonfinite_steps
        else:
            give_up = tf.logical_not(finite)
        self.nonfinite_step.assign(tf.where(give_up, self.global_step, self.nonfinite_step))
        if self.schedule is not None:  # fed every finite step, on the device
            def feed():
                self.schedule.observe_loss(metrics["loss"])
                return tf.constant(True)

            tf.cond(finite, feed, lambda: tf.constant(False))
        return metrics

    def _loop_fn(self, frozen: bool):
        """`loop(iterator, n)`: up to n steps on the device; returns the last step's metrics
        and every step's loss. Stops early at a step that ends the run (non-finite)."""
        if frozen in self._fns:
            return self._fns[frozen]
        replica = self._replica_fn(frozen)
        names = self.step.metric_names

        def loop(iterator, n):
            last = {k: tf.constant(0.0) for k in names}
            losses = tf.TensorArray(tf.float32, size=0, dynamic_size=True, element_shape=[])
            for i in tf.range(n):
                if self.nonfinite_step > 0:
                    break
                last = self._one_step(iterator, replica)
                losses = losses.write(i, last["loss"])
            return last, losses.stack()

        fn = tf.function(loop, jit_compile=False)
        self._fns[frozen] = fn
        return fn

    @tf.function
    def _weights_finite(self):
        checks = [tf.reduce_all(tf.math.is_finite(v)) for v in self.step.model.weights
                  if tf.as_dtype(v.dtype).is_floating]
        return tf.reduce_all(tf.stack(checks))

    # ------------------------------------------------------------------ checkpoints

    def _latest(self) -> Optional[str]:
        return tf.train.latest_checkpoint(self.checkpoint_dir)

    def restore(self, iterator=None) -> int:
        if iterator is not None:
            self.checkpoint.input = iterator
        latest = self._latest()
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            restored = {n for n, _ in tf.train.list_variables(latest) if n.startswith("model/")}
            if len(restored) < len(self.model_variables):
                raise ValueError(f"{latest} holds {len(restored)} model tensors, the model has "
                                 f"{len(self.model_variables)}: not a checkpoint of this model")
            logging.info("resumed from %s at step %d", latest, int(self.global_step.numpy()))
        return int(self.global_step.numpy())

    def _check_finite(self):
        bad = int(self.nonfinite_step.numpy())
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss or gradients at step {bad}"
                + (f" ({self.max_nonfinite_steps} skipped float16 steps in a row)"
                   if self.step.loss_scaled else "")
                + f"; stopping without saving. Last good checkpoint: {self._latest()}")

    def save(self) -> Optional[str]:
        """Checkpoint at the current step, unless the state is not finite (then raise)."""
        self._check_finite()
        if int(self.nonfinite_streak.numpy()):  # float16 skipping: wait for a finite step
            logging.warning("skipping a checkpoint while float16 steps are being skipped")
            return None
        if not bool(self._weights_finite()):
            raise NonFiniteLossError(f"non-finite weights at step {int(self.global_step.numpy())}"
                                     f"; not saved. Last good checkpoint: {self._latest()}")
        step = int(self.global_step.numpy())
        if self.chief:
            path = self.manager.save(checkpoint_number=step)
            logging.info("checkpoint %s", path)
            return path
        # Every worker takes part in a save; the others' copies are scratch, deleted at once.
        parent = os.path.join(self.workdir, "tmp_worker")
        scratch = os.path.join(parent, str(self.strategy.cluster_resolver.task_id))
        tf.train.CheckpointManager(self.checkpoint, scratch, 1).save(checkpoint_number=step)
        tf.io.gfile.rmtree(scratch)
        try:  # the last worker out removes the (local) parent; object stores have no folders
            os.rmdir(parent)
        except OSError:
            pass
        return os.path.join(self.checkpoint_dir, f"ckpt-{step}")

    # ------------------------------------------------------------------ loop

    def _next_stop(self, step: int) -> int:
        """The next loop boundary after `step`: K steps, cut at every boundary."""
        stops = [step + self.steps_per_loop, self.total_steps,
                 (step // self.log_every + 1) * self.log_every]
        if self.checkpoint_every:
            stops.append((step // self.checkpoint_every + 1) * self.checkpoint_every)
        if self.image_every:
            stops.append((step // self.image_every + 1) * self.image_every)
        if step < self.step.freeze_prototypes_steps:
            stops.append(self.step.freeze_prototypes_steps)
        return min(stops)

    def run(self) -> Dict:
        """Trains to `total_steps`. Raises `Preempted` after saving when any worker got
        SIGTERM, `NonFiniteLossError` (nothing saved) when the state went non-finite."""
        start = self._peek_start()
        dataset = self.strategy.distribute_datasets_from_function(
            lambda ctx: self.dataset_fn(ctx, start))
        iterator = iter(dataset)
        start = self.restore(iterator if self.checkpoint_input else None)
        if start >= self.total_steps:
            logging.info("nothing to do: step %d >= total_steps %d", start, self.total_steps)
            return {"step": start, "stopped": "done", "losses": [], "last_metrics": None}
        try:
            return self._train(iterator, start)
        except BaseException:
            # An input pipeline error must end the process: drop the iterator now, while the
            # interpreter is whole. Collected during shutdown, its py_function threads can wait
            # for the GIL forever and the failed run never exits.
            del iterator, dataset
            gc.collect()
            raise

    def _train(self, iterator, start: int) -> Dict:
        history, pending, last = [], [], None
        step, first = start, True
        with preemption.SigtermWatch() as sigterm:
            while step < self.total_steps:
                stop = self._next_stop(step)
                frozen = step < self.step.freeze_prototypes_steps
                metrics, losses = self._loop_fn(frozen)(iterator, tf.constant(stop - step))
                pending.append(losses)
                self.reporter.steps_done(stop - step)
                step = stop
                if step % self.log_every == 0 or step == self.total_steps:
                    self._check_finite()
                    history.extend(float(x) for p in pending for x in p.numpy())
                    pending = []
                    last = self.reporter.log(step, metrics)
                if self.image_every and (first or step % self.image_every == 0):
                    self._image_summary(step)
                if self.checkpoint_every and step % self.checkpoint_every == 0:
                    self.save()
                if self.agreement.stop_requested(sigterm.received):
                    self._check_finite()
                    path = self.save()
                    self.reporter.writer.flush()
                    raise preemption.Preempted(step, path)
                first = False
        self._check_finite()
        history.extend(float(x) for p in pending for x in p.numpy())
        latest = self._latest()
        if latest is None or int(latest.rsplit("-", 1)[1]) != step:
            self.save()
        self.reporter.writer.flush()
        return {"step": step, "stopped": "done", "losses": history, "last_metrics": last}

    def _peek_start(self) -> int:
        """The step the latest checkpoint holds, read before the input stream is built."""
        latest = self._latest()
        if not latest:
            return 0
        return int(tf.train.load_checkpoint(latest).get_tensor(
            "global_step/.ATTRIBUTES/VARIABLE_VALUE"))

    def _image_summary(self, step_no):
        """Crops drawn from their own copy of the stream, so training (and resume) is not
        disturbed."""
        if not self.chief:
            return
        if not hasattr(self, "_image_iter"):
            self._image_iter = iter(self.dataset_fn(tf.distribute.InputContext(), step_no))
        self.reporter.crops(step_no, next(self._image_iter))
