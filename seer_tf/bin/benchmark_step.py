"""SwAV training-step speed and memory, side by side with the PyTorch peer (issue 7).

    python -m seer_tf.bin.benchmark --what=step   [--processes=3]   # ours fp32 + bf16 vs peer
    python -m seer_tf.bin.benchmark --what=memory [--processes=3]   # peak memory, remat on/off
    python -m seer_tf.bin.benchmark_step --preset=regnet_y_400mf --precision=float32  # one run

Same work on both sides as ../shared/bench/peer_torch_swav.py: a RegNetY trunk, a 3-layer
projection head without BN ([w, 2048, 2048, 128]), K=3000 prototypes, Sinkhorn (eps 0.05, 3
iterations), swapped prediction over crops 0 and 1, random inputs (no data loading), and LARC
on both sides (what SEER trains with: ours `optim.lars.LARC`, the peer's `--optimizer lars`).

Every measurement is a fresh process (`seer_tf.bin.peers.run_isolated`: idle machine, no
overlap, same malloc setting for both sides); each configuration keeps the best of
`processes` runs, because one process in four on a shared machine gets one core's worth.
Reported per run: images/s (an image = all of its crops), step time median/min, CPU cores used,
model FLOPs (analytic: 2 FLOPs per multiply-add, 3x the forward for a training step), FLOP
utilization against a matmul peak measured in the same process (and torch's, when present: the
higher one is the limit), and peak memory: resident-set high-water mark minus the resident set
after the model, optimizer slots and inputs exist.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

from seer_tf import cpu
from seer_tf.bin import peers


def _crops(text):
    """[(count, size)] from '2x224,4x96' (the peer's --crops syntax)."""
    from seer_tf.data.multicrop import parse_crops

    return [(spec.count, spec.size) for spec in parse_crops(text)]


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


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

    keras.mixed_precision.set_global_policy("float32" if precision == "float32" else precision)
    spec = family.spec_for(preset)
    model = SwAVModel(RegNet(**spec.as_kwargs(), remat=remat, remat_fraction=remat_fraction),
                      [spec.widths[-1], 2048, 2048, 128], [3000])
    step = SwAVStep(model, LARC(0.6, weight_decay=1e-6), jit_sinkhorn=True)
    inputs = [tf.random.normal([batch, s, s, 3]) for n, s in _crops(crops) for _ in range(n)]

    @tf.function
    def train():
        step.normalize_prototypes()
        return step.replica_step(inputs, tf.constant(1000, tf.int64), False)["loss"]

    return train


def measure_once(preset="regnet_y_400mf", crops="2x224,4x96", batch=32, precision="float32",
                 steps=5, warmup=2, remat="none", remat_fraction=1.0, matmul_peak=True):
    """One in-process measurement (call it in a fresh process: see the module docstring)."""
    import seer_tf  # noqa: F401  (oneDNN on before TensorFlow loads)
    import tensorflow as tf

    from seer_tf.models import complexity, family

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
    spec = family.spec_for(preset)
    # describe() counts multiply-adds (the RegNet naming convention); a FLOP is half of one.
    gflop = 2 * 3 * sum(n * batch * complexity.describe(spec, 0, s)["gflops_trunk"]
                        for n, s in _crops(crops))
    median = statistics.median(times)
    report = {"preset": preset, "crops": crops, "batch": batch, "precision": precision,
              "remat": remat, "remat_fraction": remat_fraction,
              "images_per_s": round(batch / median, 3),
              "step_s_median": round(median, 3), "step_s_min": round(min(times), 3),
              "cpu_cores_used": round(cpu, 2), "train_gflop_per_step": round(gflop, 1),
              "achieved_gflops": round(gflop / median, 1),
              "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
              "rss_ready_mib": round(rss_ready), "peak_rss_mib": round(peak_rss),
              "step_peak_mib": round(peak_rss - rss_ready),
              "tensorflow": tf.__version__, "malloc_env": {k: os.environ.get(k) for k in
                                                           peers.MALLOC_ENV}}
    if not matmul_peak:  # e.g. tools/onednn_compare.py: only the steps' primitives in the log
        return report
    report["matmul_peak_gflops"] = {"float32": round(_matmul_peak_gflops("float32"), 1)}
    if "bfloat16" in precision:
        report["matmul_peak_gflops"]["bfloat16"] = round(_matmul_peak_gflops("bfloat16"), 1)
    return report


def _progress(label, result):
    """One stderr line per fresh process: these benchmarks take minutes."""
    figure = result.get("images_per_s", result.get("images_per_sec"))
    text = f"{figure:.3f} images/s" if figure else f"failed: {str(result.get('error'))[:200]}"
    print(f"benchmark: {label}: {text}", file=sys.stderr, flush=True)


def _run_ours(**kwargs):
    """One fresh process of `measure_once` with these arguments (its JSON, or an error)."""
    cmd = [sys.executable, "-m", "seer_tf.bin.benchmark_step"]
    cmd += [f"--{k}={v}" for k, v in kwargs.items()]
    result = peers.run_isolated(cmd)
    _progress("seer_tf " + " ".join(f"{k}={v}" for k, v in kwargs.items()), result)
    return result


def _best_of(runs):
    """The fastest run, with every run's images/s and peak memory beside it."""
    good = [r for r in runs if "images_per_s" in r]
    if not good:
        return {"error": runs[-1].get("error"), "runs": []}
    return {**max(good, key=lambda r: r["images_per_s"]),
            "all_images_per_s": [r["images_per_s"] for r in good],
            "all_step_peak_mib": [r.get("step_peak_mib") for r in good], "processes": len(runs)}


def _ours(processes, **kwargs):
    return _best_of([_run_ours(**kwargs) for _ in range(processes)])


def _peer(python, processes, preset, crops, batch, steps, warmup):
    arch = preset if preset.startswith("regnet_y_") else "regnet_y_400mf"
    best, runs = None, []
    for _ in range(processes):
        for layout in ([], ["--channels_last"]):
            r = peers.run_isolated([python, peers.peer_script("peer_torch_swav.py"), "--arch",
                                    arch, "--batch", str(batch), "--crops", crops, "--threads",
                                    "2", "--steps", str(steps), "--warmup", str(warmup),
                                    "--optimizer", "lars", "--no_flops", *layout])
            _progress(f"peer {arch} channels_last={bool(layout)}", r)
            if "images_per_sec" not in r:
                runs.append({"channels_last": bool(layout), "error": r.get("error")})
                continue
            runs.append({"channels_last": bool(layout), "images_per_s":
                         round(r["images_per_sec"], 3), "peak_rss_mib": r.get("peak_rss_mib")})
            if best is None or runs[-1]["images_per_s"] > best["images_per_s"]:
                best = runs[-1]
    return {"arch": arch, "runs": runs, **(best or {"error": "no peer run succeeded"})}


def _torch_matmul_peak(python):
    script = peers.peer_script("cpu_peak_matmul.py")
    if not os.path.exists(script):
        return None
    r = peers.run_isolated([python, script, "--n", "2048", "--threads", "2", "--reps", "10"])
    return next((r[k] for k in ("best_gflops", "gflops_best", "gflops") if k in r), None)


def run_step_benchmark(preset="regnet_y_400mf", crops="2x224,4x96", batch=32,
                       precisions=("float32", "mixed_bfloat16"), steps=5, warmup=2,
                       processes=3, peer=True, torch_python=None):
    """Best-of-`processes` fresh runs per configuration, ours and the peer's, and the ratios."""
    report = {"machine": cpu.describe(), "preset": preset, "crops": crops, "batch": batch,
              "processes": processes, "malloc_env": peers.MALLOC_ENV, "ours": {}}
    native_bf16 = cpu.has_native_bf16()
    for precision in precisions:
        # Half precision on a CPU without native bf16 (no AVX512_BF16 / AMX) is ~8x slower than
        # fp32: it is measured, but with fewer steps and processes.
        full = precision == "float32" or native_bf16
        report["ours"][precision] = _ours(
            processes if full else max(1, processes // 3), preset=preset, crops=crops,
            batch=batch, precision=precision, steps=steps if full else 2,
            warmup=warmup if full else 1)
    python = peers.find_torch_python(torch_python) if peer else None
    peaks = [r["matmul_peak_gflops"]["float32"] for r in report["ours"].values()
             if "matmul_peak_gflops" in r]
    if python and os.path.exists(peers.peer_script("peer_torch_swav.py")):
        report["peer"] = _peer(python, processes, preset, crops, batch, steps, warmup)
        torch_peak = _torch_matmul_peak(python)
        if torch_peak:
            report["peer"]["matmul_peak_gflops"] = round(torch_peak, 1)
            peaks.append(torch_peak)
    else:
        report["peer"] = {"skipped": "no torch interpreter or peer script" if peer else "off"}
    fp32 = report["ours"].get("float32", {})
    if peaks and "achieved_gflops" in fp32:
        report["fp32_flop_utilization"] = round(fp32["achieved_gflops"] / max(peaks), 3)
        report["fp32_matmul_peak_gflops"] = round(max(peaks), 1)
    peer_ips = report["peer"].get("images_per_s")
    if peer_ips:
        for precision, r in report["ours"].items():
            if "images_per_s" in r:
                report[f"ratio_{precision}_over_peer_fp32"] = round(r["images_per_s"] / peer_ips, 3)
    return report


def parse_remat_mode(text):
    """'none' | 'block' | 'stage' | 'block@0.6' (remat_fraction 0.6) -> RegNet keyword args."""
    mode, at, fraction = text.partition("@")
    if mode not in ("none", "block", "stage") or (at and (mode != "block" or not fraction)):
        raise ValueError(f"bad remat mode {text!r}: none, block, stage or block@<fraction>")
    return {"remat": mode, "remat_fraction": float(fraction) if fraction else 1.0}


def run_memory_benchmark(preset="regnet_y_1_6gf", crops="2x224", batch=64,
                         modes=("none", "block", "stage", "block@0.6"), steps=2, warmup=1,
                         processes=3):
    """Step peak memory and time with and without activation checkpointing (fp32).

    The modes take turns (none, block, ..., none, block, ...) rather than running each mode's
    processes back to back, so a drift in the machine's speed (+-25% within an hour on some of
    these VMs) lands on every mode alike; each mode keeps its fastest process."""
    report = {"machine": cpu.describe(), "preset": preset, "crops": crops, "batch": batch,
              "processes": processes}
    parsed = {mode: parse_remat_mode(mode) for mode in modes}
    runs = {mode: [] for mode in modes}
    for _ in range(processes):
        for mode in modes:
            runs[mode].append(_run_ours(preset=preset, crops=crops, batch=batch,
                                        precision="float32", steps=steps, warmup=warmup,
                                        **parsed[mode]))
    report["modes"] = {mode: _best_of(runs[mode]) for mode in modes}
    base = report["modes"].get("none", {})
    for mode, r in report["modes"].items():
        if mode != "none" and "step_peak_mib" in r and "step_peak_mib" in base:
            report[f"{mode}_memory_saving"] = round(1 - r["step_peak_mib"] / base["step_peak_mib"], 3)
            report[f"{mode}_time_overhead"] = round(r["step_s_median"] / base["step_s_median"] - 1, 3)
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
                         "of the activations (models/regnet.py)")
    ap.add_argument("--no_matmul_peak", dest="matmul_peak", action="store_false",
                    help="skip the matmul peak measured after the steps")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(json.dumps(measure_once(**vars(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
