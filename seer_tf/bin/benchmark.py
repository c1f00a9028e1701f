"""Micro-benchmarks that print one JSON object on stdout.

    python -m seer_tf.bin.benchmark --what=sinkhorn|pipeline|step|memory [--repetitions=5]

Each `--what` value is one function in BENCHMARKS taking the parsed flags and returning a
JSON-serialisable dict; add a new benchmark (step, pipeline, memory, ...) by writing such a
function, here or in its own module, and registering it. Timings are wall-clock milliseconds
after one warm-up call (which includes tracing / XLA compilation); the median and the minimum of
`--repetitions` calls are reported, with the process's CPU use, since shared machines sometimes
give a process less than its cores (DESIGN.md section 4).
"""

import json
import os
import statistics
import sys
import time

from absl import app, flags

flags.DEFINE_string("what", "sinkhorn", "Which benchmark to run (see BENCHMARKS).")
flags.DEFINE_integer("repetitions", 5, "Timed calls per configuration, after one warm-up.")
flags.DEFINE_integer("processes", 3, "step/memory: fresh processes per configuration (best kept).")
flags.DEFINE_string("remat_modes", "none,block,stage,block@0.6",
                    "memory: activation checkpointing modes, compared with the first ('none').")
FLAGS = flags.FLAGS


def _time_calls(fn, repetitions):
    """Warm-up once, then time `repetitions` calls; returns a dict of ms and CPU use."""
    fn()  # tracing and XLA compilation are not part of the steady state
    times = []
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for _ in range(repetitions):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    cpu = (time.process_time() - cpu_start) / max(time.perf_counter() - wall_start, 1e-9)
    return {
        "median_ms": round(statistics.median(times), 3),
        "min_ms": round(min(times), 3),
        "repetitions": repetitions,
        "cpu_cores_used": round(cpu, 2),
    }


# (name, per-replica batch B, prototypes K, Sinkhorn iterations): SwAV and SEER settings.
SINKHORN_CONFIGS = (
    ("swav", 256, 3000, 3),
    ("seer", 512, 16000, 10),
)


def benchmark_sinkhorn(flags_):
    """Single-replica Sinkhorn on cosine-like scores, with and without XLA."""
    import tensorflow as tf

    from seer_tf.sinkhorn import make_sinkhorn_fn

    results = []
    for name, batch, prototypes, iterations in SINKHORN_CONFIGS:
        scores = tf.random.stateless_uniform([batch, prototypes], seed=[0, 1], minval=-1.0)
        for jit in (False, True):
            fn = make_sinkhorn_fn(epsilon=0.05, iterations=iterations, jit_compile=jit)
            if not jit:
                fn = tf.function(fn)  # graph mode without XLA: the fair comparison
            timing = _time_calls(lambda fn=fn: fn(scores).numpy(), flags_.repetitions)
            results.append(
                {"config": name, "batch": batch, "prototypes": prototypes,
                 "iterations": iterations, "jit_compile": jit, **timing}
            )
    return {
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "tensorflow": tf.__version__,
        "results": results,
    }


def benchmark_pipeline(flags_):
    """Decode + 2x224/4x96 multi-crop images/s on skimage photographs, side by side with the
    PyTorch peer (../shared/bench/peer_torch_pipeline.py) when a torch interpreter is found."""
    from seer_tf.bin.benchmark_pipeline import run_pipeline_benchmark

    return run_pipeline_benchmark(repetitions=max(1, min(flags_.repetitions, 5)))


def benchmark_step(flags_):
    """SwAV step images/s for RegNetY-400MF, 2x224+4x96, batch 32, fp32 and bf16, beside the
    PyTorch peer (fp32, plain and channels_last), best of `--processes` fresh processes each."""
    from seer_tf.bin.benchmark_step import run_step_benchmark

    return run_step_benchmark(steps=flags_.repetitions, processes=flags_.processes)


def benchmark_memory(flags_):
    """Step peak memory and time of RegNetY-1.6GF, batch 64, with and without activation
    checkpointing (`--remat_modes`: none / block / stage / block@<remat_fraction>)."""
    from seer_tf.bin.benchmark_step import run_memory_benchmark

    modes = tuple(m.strip() for m in flags_.remat_modes.split(",") if m.strip())
    return run_memory_benchmark(modes=modes, processes=flags_.processes)


BENCHMARKS = {
    "sinkhorn": benchmark_sinkhorn,
    "pipeline": benchmark_pipeline,
    "step": benchmark_step,
    "memory": benchmark_memory,
}


def main(argv):
    del argv
    if FLAGS.what not in BENCHMARKS:
        print(f"benchmark: unknown --what={FLAGS.what!r}; choose one of: "
              f"{', '.join(sorted(BENCHMARKS))}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    report = {"what": FLAGS.what, "cpu_count": os.cpu_count(), **BENCHMARKS[FLAGS.what](FLAGS)}
    report["total_s"] = round(time.perf_counter() - start, 2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    app.run(main)
