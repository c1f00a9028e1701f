"""One seer_tf SwAV training-step measurement in this process, printed as JSON.

    python -m benchmarks.swav_step --preset=regnet_y_400mf --precision=float32

`benchmarks/step.py` and `benchmarks/memory.py` start this module in fresh processes
(`isolation.run_isolated`); `tools/profile_step.py` and `tools/onednn_compare.py` use it too.
The work is the one the PyTorch peer (`peers/torch_swav.py`) does: a RegNetY trunk, a 3-layer
projection head without BN ([w, 2048, 2048, 128], SEER's large-model head), K=3000 prototypes,
Sinkhorn (eps 0.05, 3 iterations), swapped prediction over crops 0 and 1, random inputs (no
data loading), LARC (SEER's optimizer).

Reported: images/s (an image = all of its crops), step time median/min, CPU cores used, model
FLOPs (analytic: 2 FLOPs per multiply-add, 3x the forward for a training step), the fp32 (and
bf16) matmul peak measured in this process, and peak memory: the resident-set high-water mark
minus the resident set once the model, optimizer slots and inputs exist.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

if __package__ in (None, ""):  # `python benchmarks/swav_step.py`: the repository root first
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.isolation import MALLOC_ENV  # noqa: E402


def parse_crops(text):
    """[(count, size)] from '2x224,4x96' (the peers' --crops syntax)."""
    from seer_tf.data.multicrop import parse_crops as parse

    return [(spec.count, spec.size) for spec in parse(text)]


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def matmul_peak_gflops(dtype="float32", n=2048, reps=10):
    """Best-of-`reps` GFLOP/s of one n x n matmul: the FLOP-utilization denominator."""
    import tensorflow as tf

    a = tf.random.normal([n, n], dtype=dtype)
    f = tf.function(lambda x: tf.matmul(x, x))
    f(a).numpy()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a).numpy()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def build_train_fn(preset="regnet_y_400mf", crops="2x224,4x96", batch=32, precision="float32",
                   remat="none", remat_fraction=1.0):
    """The benchmarked work as one tf.function of no arguments (returns the loss)."""
    import keras
    import tensorflow as tf

    from seer_tf.models import family
    from seer_tf.models.regnet import RegNet
    from seer_tf.models.swav import SwAVModel
    from seer_tf.optim.lars import LARC
    from seer_tf.train.step import SwAVStep

    keras.mixed_precision.set_global_policy(precision)
    spec = family.spec_for(preset)
    model = SwAVModel(RegNet(**spec.as_kwargs(), remat=remat, remat_fraction=remat_fraction),
                      [spec.widths[-1], 2048, 2048, 128], [3000])
    step = SwAVStep(model, LARC(0.6, weight_decay=1e-6), jit_sinkhorn=True)
    inputs = [tf.random.normal([batch, s, s, 3]) for n, s in parse_crops(crops) for _ in range(n)]

    @tf.function
    def train():
        step.normalize_prototypes()
        return step.replica_step(inputs, tf.constant(1000, tf.int64), False)["loss"]

    return train


def _train_gflop(preset, crops, batch):
    from seer_tf.models import complexity, family

    spec = family.spec_for(preset)
    # describe() counts multiply-adds (the RegNet naming convention); a FLOP is half of one.
    return 2 * 3 * sum(n * batch * complexity.describe(spec, 0, s)["gflops_trunk"]
                       for n, s in parse_crops(crops))


def measure_once(preset="regnet_y_400mf", crops="2x224,4x96", batch=32, precision="float32",
                 steps=5, warmup=2, remat="none", remat_fraction=1.0, matmul_peak=True):
    """One in-process measurement (call it in a fresh process: see the module docstring)."""
    import seer_tf  # noqa: F401  (oneDNN on before TensorFlow loads)
    import tensorflow as tf

    train = build_train_fn(preset, crops, batch, precision, remat, remat_fraction)
    rss_ready = _rss_mib()
    losses = [float(train().numpy()) for _ in range(warmup)]
    times, cpu0, wall0 = [], time.process_time(), time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        losses.append(float(train().numpy()))
        times.append(time.perf_counter() - t)
    cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gflop = _train_gflop(preset, crops, batch)
    median = statistics.median(times)
    report = {"preset": preset, "crops": crops, "batch": batch, "precision": precision,
              "remat": remat, "remat_fraction": remat_fraction,
              "images_per_s": round(batch / median, 3),
              "step_s_median": round(median, 3), "step_s_min": round(min(times), 3),
              "cpu_cores_used": round(cpu, 2), "train_gflop_per_step": round(gflop, 1),
              "achieved_gflops": round(gflop / median, 1),
              "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
              "rss_ready_mib": round(rss_ready), "peak_rss_mib": round(peak_rss),
              "step_peak_mib": round(peak_rss - rss_ready), "tensorflow": tf.__version__,
              "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV}}
    if not matmul_peak:  # e.g. tools/onednn_compare.py: only the steps' primitives in the log
        return report
    report["matmul_peak_gflops"] = {"float32": round(matmul_peak_gflops("float32"), 1)}
    if "bfloat16" in precision:
        report["matmul_peak_gflops"]["bfloat16"] = round(matmul_peak_gflops("bfloat16"), 1)
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description="One SwAV step measurement in this process (JSON).")
    ap.add_argument("--preset", default="regnet_y_400mf")
    ap.add_argument("--crops", default="2x224,4x96")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--precision", default="float32",
                    choices=["float32", "mixed_bfloat16", "mixed_float16"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--remat", default="none", choices=["none", "block", "stage"])
    ap.add_argument("--remat_fraction", type=float, default=1.0,
                    help="with --remat=block: checkpoint the earliest blocks holding this share "
                         "of the activations (seer_tf/models/regnet.py)")
    ap.add_argument("--no_matmul_peak", dest="matmul_peak", action="store_false",
                    help="skip the matmul peak measured after the steps")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(json.dumps(measure_once(**vars(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
