"""--what=device: the check to run the day a GPU host or a TPU VM is available.

    python -m benchmarks.run --what=device            # every local GPU, or the TPU, 2 precisions

It trains RegNetY-400MF with SEER's crops (2x224 + 4x96), per-replica batch 64, through the
real `Trainer` (MirroredStrategy over every local GPU, or TPUStrategy; the replica step
XLA-compiled; 10 steps per device call), 30 steps in mixed_float16 and in mixed_bfloat16, and
prints one JSON object: images/s and step time over the last 20 steps (the first 10 include
compilation), FLOP utilization against the device's peak (trunk forward + backward, multiply-
adds x 2; `--peak_tflops` when the device is not in the table), and whether the loss is finite
and falling. The batch is one fixed random batch repeated (the input pipeline is not what this
measures), which the loss can fit: it must fall.

Without an accelerator it runs on the CPU with the default strategy (the test does, with a tiny
model), so the plumbing is checked everywhere; the figures only mean something on a device.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile

from benchmarks import swav_step

# Dense half-precision tensor peaks, TFLOP/s per device (vendor data sheets; SXM parts).
PEAK_TFLOPS = {
    "H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
    "A10G": 70.0, "A10": 125.0, "V100": 125.0, "T4": 65.0,
    "TPU v6": 918.0, "TPU v5p": 459.0, "TPU v5": 197.0, "TPU v4": 275.0, "TPU v3": 123.0,
}


def add_arguments(group):
    group.add_argument("--device_preset", default="regnet_y_400mf")
    group.add_argument("--device_crops", default="2x224,4x96", help="COUNTxSIZE,...")
    group.add_argument("--per_replica_batch", type=int, default=64)
    group.add_argument("--device_steps", type=int, default=30)
    group.add_argument("--steps_per_loop", type=int, default=10)
    group.add_argument("--precisions", default="mixed_float16,mixed_bfloat16")
    group.add_argument("--jit", default=True, action="store_true")
    group.add_argument("--no_jit", dest="jit", action="store_false")
    group.add_argument("--peak_tflops", type=float, default=0.0,
                       help="the device's peak when it is not in the table")


def device_name(tf):
    """The accelerator's marketing name ("NVIDIA H100 80GB HBM3", "TPU v4"), or "CPU"."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    tpus = tf.config.list_logical_devices("TPU")
    if tpus:
        return getattr(tpus[0], "device_type", "TPU")
    return "CPU"


def peak_tflops(name, override=0.0):
    if override:
        return override
    for key, value in PEAK_TFLOPS.items():  # most specific first, by table order
        if key in name:
            return value
    return None


def _strategy(tf):
    if tf.config.list_logical_devices("TPU"):
        from seer_tf import distribute

        return distribute.get_strategy("tpu", "local")
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _train_one(strategy, args, precision):
    """Trains args.device_steps steps; returns the per-window figures and the losses."""
    import keras
    import tensorflow as tf

    from seer_tf import distribute
    from seer_tf.models import family
    from seer_tf.models.regnet import RegNet
    from seer_tf.models.swav import SwAVModel
    from seer_tf.optim.lars import LARC
    from seer_tf.train.loop import Trainer
    from seer_tf.train.step import SwAVStep

    keras.mixed_precision.set_global_policy(precision)
    pairs = swav_step.parse_crops(args.device_crops)
    batch = args.per_replica_batch * strategy.num_replicas_in_sync
    dtype = tf.bfloat16 if precision == "mixed_bfloat16" else tf.float32
    fixed = tuple(tf.random.stateless_normal([args.per_replica_batch, s, s, 3], [0, i], dtype=dtype)
                  for i, s in enumerate(s for n, s in pairs for _ in range(n)))
    with strategy.scope():
        keras.utils.set_random_seed(0)
        trunk = RegNet(**family.spec_for(args.device_preset).as_kwargs(),
                       sync_bn=strategy.num_replicas_in_sync > 1)
        model = SwAVModel(trunk, [trunk.widths[-1], 2048, 128], [3000], use_bn=True,
                          sync_bn=strategy.num_replicas_in_sync > 1)
        model.build_all()
        opt = LARC(0.3 * batch / 256, weight_decay=1e-6)
        if precision == "mixed_float16":
            opt = keras.optimizers.LossScaleOptimizer(opt)
        step = SwAVStep(model, opt, num_replicas=strategy.num_replicas_in_sync,
                        replica_sum=distribute.replica_sum_fn(),
                        replica_max=distribute.replica_max_fn(),
                        all_gather=distribute.replica_all_gather_fn(),
                        replica_index=distribute.replica_index)
    windows = {}
    workdir = tempfile.mkdtemp(prefix="seer_tf_device_")
    try:
        trainer = Trainer(strategy, step, lambda ctx, start: tf.data.Dataset.from_tensors(
                              fixed).repeat(), workdir=workdir,
                          total_steps=args.device_steps, global_batch_size=batch,
                          steps_per_loop=args.steps_per_loop, log_every=args.steps_per_loop,
                          checkpoint_every=0, histogram_every=0, jit_step=args.jit,
                          on_log=windows.__setitem__)
        losses = trainer.run()["losses"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        keras.mixed_precision.set_global_policy("float32")
    return windows, losses, batch


def run(args):
    import seer_tf  # noqa: F401  (oneDNN on before TensorFlow loads)
    import tensorflow as tf

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    strategy = _strategy(tf)
    name = device_name(tf)
    peak = peak_tflops(name, args.peak_tflops)
    report = {"what": "device", "device": name, "replicas": strategy.num_replicas_in_sync,
              "model": args.device_preset, "crops": args.device_crops,
              "per_replica_batch": args.per_replica_batch, "steps": args.device_steps,
              "jit": args.jit, "peak_tflops_per_device": peak}
    for precision in args.precisions.split(","):
        windows, losses, batch = _train_one(strategy, args, precision)
        timed = [v for s, v in sorted(windows.items()) if s > args.steps_per_loop] or \
            list(windows.values())
        images_per_sec = sum(v["images_per_sec"] for v in timed) / len(timed)
        tflop = swav_step._train_gflop(args.device_preset, args.device_crops, batch) / 1e3
        achieved = tflop * images_per_sec / batch
        k = max(1, min(5, len(losses) // 3))
        report[precision] = {
            "images_per_sec": round(images_per_sec, 1),
            "step_time_ms": round(1e3 * batch / images_per_sec, 2),
            "achieved_tflops": round(achieved, 4),
            "flop_utilization": (round(achieved / (peak * strategy.num_replicas_in_sync), 3)
                                 if peak else None),
            "loss_first": round(sum(losses[:k]) / k, 4), "loss_last": round(sum(losses[-k:]) / k, 4),
            "loss_finite": all(math.isfinite(x) for x in losses),
            "loss_falling": sum(losses[-k:]) < sum(losses[:k]),
        }
    return report
