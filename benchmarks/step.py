"""SwAV training-step speed, seer_tf against the fastest PyTorch configuration of each precision.

    python -m benchmarks.run --what=step [--processes=3] [--torch_python=PYTHON]

Ours: `benchmarks/swav_step.py` in fresh processes, float32 and mixed_bfloat16, best of
`--processes` each. The peer: `peers/torch_swav.py`, every variant of `--peer_variants` (eager
or torch.compile, NCHW or channels_last, fp32 or bf16 autocast), best of `--processes` each.
The peer to beat in a precision is its fastest variant in that precision on this machine:
mixed_bfloat16 is compared with bf16 autocast, never with the peer's fp32. Also reported: the
FLOP utilization of our fp32 step against the highest fp32 matmul peak measured in the run
(TF's or torch's), and the machine (CPU model and the ISA flags that decide oneDNN's kernels),
since every ratio depends on it.
"""

from __future__ import annotations

import sys

from benchmarks import isolation
from seer_tf import cpu

# Our precision -> the peer's name for the same arithmetic.
PEER_PRECISION = {"float32": "fp32", "mixed_bfloat16": "bf16"}
DEFAULT_VARIANTS = ("fp32", "fp32+channels_last", "fp32+channels_last+compile",
                    "bf16", "bf16+channels_last", "bf16+channels_last+compile")


def add_arguments(parser):
    parser.add_argument("--preset", default="regnet_y_400mf")
    parser.add_argument("--crops", default="2x224,4x96")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per process")
    parser.add_argument("--peer_variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated PRECISION[+channels_last][+compile], "
                             "PRECISION in fp32 | bf16")


def parse_variant(text):
    """'bf16+channels_last+compile' -> {"precision": "bf16", "channels_last": True, ...}."""
    precision, *options = text.strip().split("+")
    if precision not in PEER_PRECISION.values() or set(options) - {"channels_last", "compile"}:
        raise ValueError(f"bad peer variant {text!r}: fp32|bf16[+channels_last][+compile]")
    return {"precision": precision, "channels_last": "channels_last" in options,
            "compile": "compile" in options}


def best_of(runs):
    """The fastest run, with every run's images/s and peak memory beside it."""
    good = [r for r in runs if "images_per_s" in r]
    if not good:
        return {"error": runs[-1].get("error") if runs else "no runs", "runs": []}
    return {**max(good, key=lambda r: r["images_per_s"]),
            "all_images_per_s": [r["images_per_s"] for r in good],
            "all_step_peak_mib": [r.get("step_peak_mib") for r in good], "processes": len(runs)}


def best_per_precision(variants):
    """{peer precision: the fastest variant's best run} over {variant name: best_of(...)}."""
    best = {}
    for name, result in variants.items():
        precision = parse_variant(name)["precision"]
        if "images_per_s" in result and (
                precision not in best or result["images_per_s"] > best[precision]["images_per_s"]):
            best[precision] = {"variant": name, **result}
    return best


def ratios(ours, peer_best):
    """{our precision: our images/s over the peer's best in the same precision}."""
    out = {}
    for precision, result in ours.items():
        peer = peer_best.get(PEER_PRECISION.get(precision))
        if peer and "images_per_s" in result:
            out[precision] = round(result["images_per_s"] / peer["images_per_s"], 3)
    return out


def run_ours(**kwargs):
    """One fresh process of `swav_step.measure_once` with these arguments (its JSON, or an
    error)."""
    cmd = [sys.executable, "-m", "benchmarks.swav_step"] + [f"--{k}={v}" for k, v in
                                                          kwargs.items()]
    result = isolation.run_isolated(cmd)
    isolation.progress("seer_tf " + " ".join(f"{k}={v}" for k, v in kwargs.items()), result)
    return result


def run_peer(python, variant, preset, crops, batch, steps, warmup, matmul_peak=False):
    v = parse_variant(variant)
    cmd = [python, isolation.peer_script("torch_swav.py"), f"--arch={preset}",
           f"--batch={batch}", f"--crops={crops}", f"--precision={v['precision']}",
           f"--steps={steps}", f"--warmup={warmup}", "--optimizer=lars"]
    cmd += ["--channels_last"] * v["channels_last"] + ["--compile"] * v["compile"]
    cmd += ["--matmul_peak"] * matmul_peak
    result = isolation.run_isolated(cmd)
    isolation.progress(f"peer {preset} {variant}", result)
    return result


def _ours(preset, crops, batch, precisions, steps, warmup, processes):
    """Precisions take turns, process by process, like the peer's variants."""
    native_bf16 = cpu.has_native_bf16()
    runs = {precision: [] for precision in precisions}
    for i in range(processes):
        for precision in precisions:
            # Half precision on a CPU without native bf16 (no AVX512_BF16 / AMX) is ~8x slower
            # than fp32: it is measured, with fewer steps and processes.
            full = precision == "float32" or native_bf16
            if full or i < max(1, processes // 3):
                runs[precision].append(run_ours(
                    preset=preset, crops=crops, batch=batch, precision=precision,
                    steps=steps if full else 2, warmup=warmup if full else 1))
    return {precision: best_of(r) for precision, r in runs.items()}


def _peer(python, variants, preset, crops, batch, steps, warmup, processes):
    """Variants take turns, process by process, so the machine's drift lands on all alike."""
    runs = {v: [] for v in variants}
    for i in range(processes):
        for v in variants:
            runs[v].append(run_peer(python, v, preset, crops, batch, steps, warmup,
                                    matmul_peak=i == 0 and v == variants[0]))
    return {v: best_of(r) for v, r in runs.items()}


def _utilization(report):
    """Our fp32 step's achieved GFLOP/s over the highest fp32 matmul peak of the run."""
    peaks = [r["matmul_peak_gflops"]["float32"] for side in (report["ours"], report["peer"].get(
        "variants", {})) for r in side.values() if "float32" in r.get("matmul_peak_gflops", {})]
    fp32 = report["ours"].get("float32", {})
    if peaks and "achieved_gflops" in fp32:
        report["fp32_matmul_peak_gflops"] = round(max(peaks), 1)
        report["fp32_flop_utilization"] = round(fp32["achieved_gflops"] / max(peaks), 3)


def run_step_benchmark(preset="regnet_y_400mf", crops="2x224,4x96", batch=32,
                       precisions=("float32", "mixed_bfloat16"), steps=5, warmup=2,
                       processes=3, variants=DEFAULT_VARIANTS, torch_python=None, peer=True):
    """Best-of-`processes` fresh runs per configuration, ours and the peer's, and the ratios."""
    variants = tuple(v.strip() for v in variants if v.strip())
    for v in variants:
        parse_variant(v)  # a typo fails before minutes of measurement
    report = {"machine": cpu.describe(), "preset": preset, "crops": crops, "batch": batch,
              "processes": processes, "malloc_env": isolation.MALLOC_ENV,
              "ours": _ours(preset, crops, batch, precisions, steps, warmup, processes)}
    python = isolation.find_torch_python(torch_python) if peer else None
    if python:
        results = _peer(python, variants, preset, crops, batch, steps, warmup, processes)
        report["peer"] = {"torch_python": python, "variants": results,
                          "best": best_per_precision(results)}
        report["ratios_over_peer_best"] = ratios(report["ours"], report["peer"]["best"])
    else:
        report["peer"] = {"skipped": isolation.NO_TORCH if peer else "disabled"}
    _utilization(report)
    return report


def run(args):
    return run_step_benchmark(
        args.preset, args.crops, args.batch, tuple(args.precisions.split(",")),
        steps=args.repetitions, warmup=args.warmup, processes=args.processes,
        variants=args.peer_variants.split(","),
        torch_python=args.torch_python, peer=args.peer)
