"""--what=loop: what the Trainer's host loop costs over the bare compiled step.

The bare step is one `tf.function` (next batch, `strategy.run(replica_step)`, step += 1)
called back to back with nothing read from the device until the end: the fastest any loop can
drive it. The Trainer runs the same model and data with `steps_per_loop` K in {1, 10}, logging
every 10 K steps and no checkpoints inside the timed window. A loop that read a device value
every step (the loss, the step counter) would stall dispatch; the target is >= 90% of the bare
rate for both K. A tiny RegNetY keeps the step short, so host overhead shows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time


def add_arguments(group):
    group.add_argument("--loop_steps", type=int, default=200, help="timed steps per measurement")
    group.add_argument("--loop_batch", type=int, default=8, help="global batch of the tiny model")


def _setup(batch):
    import keras
    import tensorflow as tf

    from seer_tf import distribute
    from seer_tf.data import synthetic
    from seer_tf.models.regnet import RegNet
    from seer_tf.models.swav import SwAVModel
    from seer_tf.optim.lars import LARC
    from seer_tf.train.step import SwAVStep

    keras.utils.set_random_seed(0)
    trunk = RegNet.from_preset("regnety_tiny")
    model = SwAVModel(trunk, [trunk.widths[-1], 32, 16], [24], use_bn=True)
    model.build_all()
    step = SwAVStep(model, LARC(0.05, weight_decay=1e-4), freeze_prototypes_steps=0,
                    replica_sum=distribute.replica_sum_fn(),
                    replica_max=distribute.replica_max_fn(),
                    all_gather=distribute.replica_all_gather_fn(),
                    replica_index=distribute.replica_index)

    def data(ctx, start):
        return synthetic.crops_dataset(ctx, start, batch, [32, 16], [2, 2], seed=3)

    return tf.distribute.get_strategy(), step, data


def bare_steps_per_sec(steps, batch):
    import tensorflow as tf

    strategy, step, data = _setup(batch)
    global_step = tf.Variable(0, dtype=tf.int64)
    iterator = iter(strategy.distribute_datasets_from_function(lambda ctx: data(ctx, 0)))

    @tf.function
    def one():
        step.normalize_prototypes()
        metrics = strategy.run(step.replica_step, args=(next(iterator), global_step, False))
        global_step.assign_add(1)
        return metrics["loss"]

    for _ in range(5):  # trace and warm up
        one()
    float(one())
    t = time.perf_counter()
    for _ in range(steps):
        loss = one()
    float(loss)
    return steps / (time.perf_counter() - t)


def trainer_steps_per_sec(steps, batch, k):
    from absl import logging

    from seer_tf.train.loop import Trainer

    strategy, step, data = _setup(batch)
    workdir = tempfile.mkdtemp(prefix="seer_tf_loop_")
    logging.set_verbosity(logging.WARNING)
    try:
        warm = 10 * k
        trainer = Trainer(strategy, step, data, workdir=workdir, total_steps=warm,
                          global_batch_size=batch, steps_per_loop=k, log_every=10 * k,
                          checkpoint_every=0, histogram_every=0, jit_step=False)
        trainer.run()  # traces, warms up, saves step `warm`
        trainer.total_steps = trainer.reporter.total_steps = warm + steps
        t = time.perf_counter()
        trainer.run()  # the same compiled loop: restores (cheap), `steps` steps, one save
        return steps / (time.perf_counter() - t)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(args):
    import seer_tf  # noqa: F401  (oneDNN on before TensorFlow loads)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    steps, batch = args.loop_steps, args.loop_batch
    report = {"what": "loop", "model": "regnety_tiny", "crops": "2x32,2x16", "batch": batch,
              "steps": steps, "bare_steps_per_sec": round(bare_steps_per_sec(steps, batch), 2)}
    for k in (1, 10):
        rate = trainer_steps_per_sec(steps - steps % (10 * k) or 10 * k, batch, k)
        report[f"trainer_k{k}_steps_per_sec"] = round(rate, 2)
        report[f"trainer_k{k}_over_bare"] = round(rate / report["bare_steps_per_sec"], 3)
    report["target"] = ">= 0.9 for K = 1 and 10"
    return report
