"""Single-replica Sinkhorn-Knopp on cosine-like scores, with and without XLA.

    python -m benchmarks.run --what=sinkhorn [--repetitions=5]

Settings: SwAV's (B=256, K=3000, 3 iterations) and SEER's (B=512 per replica, K=16000,
10 iterations). Timings are wall-clock milliseconds after one warm-up call (tracing and XLA
compilation), median and minimum of `--repetitions` calls, with the process's CPU use.
"""

from __future__ import annotations

import statistics
import time

# (name, per-replica batch B, prototypes K, Sinkhorn iterations): SwAV and SEER settings.
SINKHORN_CONFIGS = (
    ("swav", 256, 3000, 3),
    ("seer", 512, 16000, 10),
)


def time_calls(fn, repetitions):
    """Warm-up once, then time `repetitions` calls; returns a dict of ms and CPU use."""
    fn()  # tracing and XLA compilation are not part of the steady state
    times = []
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for _ in range(repetitions):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    cpu = (time.process_time() - cpu_start) / max(time.perf_counter() - wall_start, 1e-9)
    return {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3),
            "repetitions": repetitions, "cpu_cores_used": round(cpu, 2)}


def run(args):
    import tensorflow as tf

    from seer_tf.sinkhorn import make_sinkhorn_fn

    results = []
    for name, batch, prototypes, iterations in SINKHORN_CONFIGS:
        scores = tf.random.stateless_uniform([batch, prototypes], seed=[0, 1], minval=-1.0)
        for jit in (False, True):
            fn = make_sinkhorn_fn(epsilon=0.05, iterations=iterations, jit_compile=jit)
            if not jit:
                fn = tf.function(fn)  # graph mode without XLA: the fair comparison
            timing = time_calls(lambda fn=fn: fn(scores).numpy(), args.repetitions)
            results.append({"config": name, "batch": batch, "prototypes": prototypes,
                            "iterations": iterations, "jit_compile": jit, **timing})
    return {"devices": [d.name for d in tf.config.list_logical_devices()],
            "tensorflow": tf.__version__, "results": results}
