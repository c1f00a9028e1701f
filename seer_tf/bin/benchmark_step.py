"""SwAV training-step throughput, side by side with the PyTorch peer (issue 7).

Same work on both sides as ../shared/bench/peer_torch_swav.py: a RegNetY trunk, a 3-layer
projection head without BN ([w, 2048, 2048, 128]), K=3000 prototypes, Sinkhorn (eps 0.05, 3
iterations), swapped prediction over crops 0 and 1, random inputs (no data loading). Ours uses
LARC (what SEER trains with); the peer's default is plain SGD, which costs no less.

Reported: images/s (an image = all of its crops), step-time median/min, model FLOPs (analytic,
3x forward for a training step), FLOP utilization against a matmul peak measured in this
process, CPU cores used, and the peer's figures and the ratio when a torch interpreter exists.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time

from seer_tf.bin.benchmark_pipeline import _find_torch_python

PEER_SCRIPT = "/work/shared/bench/peer_torch_swav.py"


def _matmul_peak_gflops(dtype="float32", n=2048, reps=10):
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


def _crops(text):
    return [(int(c), int(s)) for c, s in (p.split("x") for p in text.split(","))]


def build_train_fn(preset="regnet_y_400mf", crops="2x224,4x96", batch=32, precision="float32"):
    """The benchmarked work as one tf.function of no arguments (returns the loss)."""
    import keras
    import tensorflow as tf

    from seer_tf.models import family
    from seer_tf.models.regnet import RegNet
    from seer_tf.models.swav import SwAVModel
    from seer_tf.optim.lars import LARC
    from seer_tf.train.step import SwAVStep

    keras.mixed_precision.set_global_policy("float32" if precision == "float32" else precision)
    spec = family.spec_for(preset)
    model = SwAVModel(RegNet(**spec.as_kwargs()), [spec.widths[-1], 2048, 2048, 128], [3000])
    step = SwAVStep(model, LARC(0.6, weight_decay=1e-6), jit_sinkhorn=True)
    inputs = [tf.random.normal([batch, s, s, 3]) for n, s in _crops(crops) for _ in range(n)]

    @tf.function
    def train():
        step.normalize_prototypes()
        return step.replica_step(inputs, tf.constant(1000, tf.int64), False)["loss"]

    return train


def run_step_benchmark(preset="regnet_y_400mf", crops="2x224,4x96", batch=32, precision="float32",
                       steps=5, warmup=2, peer=True, torch_python=None):
    from seer_tf.models import complexity, family

    spec = family.spec_for(preset)
    train = build_train_fn(preset, crops, batch, precision)
    for _ in range(warmup):
        train().numpy()
    times, cpu0, wall0 = [], time.process_time(), time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        train().numpy()
        times.append(time.perf_counter() - t)
    cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    # describe() counts multiply-adds (the RegNet naming convention); a FLOP is half of one.
    gflop = 2 * 3 * sum(n * batch * complexity.describe(spec, 0, s)["gflops_trunk"]
                        for n, s in _crops(crops))
    peak = _matmul_peak_gflops("bfloat16" if "bfloat16" in precision else "float32")
    ours = {"images_per_s": round(batch / statistics.median(times), 2),
            "step_s_median": round(statistics.median(times), 3), "step_s_min": round(min(times), 3),
            "train_gflop_per_step": round(gflop, 1),
            "achieved_gflops": round(gflop / statistics.median(times), 1),
            "matmul_peak_gflops": round(peak, 1),
            "flop_utilization": round(gflop / statistics.median(times) / peak, 3),
            "cpu_cores_used": round(cpu, 2)}
    report = {"preset": preset, "crops": crops, "batch": batch, "precision": precision,
              "ours": ours}
    python = _find_torch_python(torch_python) if peer else None
    if python:
        arch = preset if preset.startswith("regnet_y_") else "regnet_y_400mf"
        runs = []
        for extra in ([], ["--channels_last"]):
            r = subprocess.run([python, PEER_SCRIPT, "--arch", arch, "--batch", str(batch),
                                "--crops", crops, "--threads", "2", "--steps", str(steps),
                                "--warmup", str(warmup), "--no_flops", *extra],
                               capture_output=True, text=True, timeout=1800)
            if r.returncode == 0:
                out = json.loads(r.stdout[r.stdout.index("{"):])
                runs.append({"channels_last": bool(extra), "images_per_s": out["images_per_sec"]})
        if runs:
            best = max(r["images_per_s"] for r in runs)
            report["peer"] = {"runs": runs, "images_per_s": best}
            report["ratio_ours_over_peer"] = round(ours["images_per_s"] / best, 2)
    return report
