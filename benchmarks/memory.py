"""Step peak memory and time with and without activation checkpointing (fp32, seer_tf only).

    python -m benchmarks.run --what=memory [--remat_modes=none,block,stage,block@0.6]

Modes: `none`, `block` and `stage` (`model.remat`), and `block@F` (`remat=block` with
`remat_fraction=F`: only the earliest blocks holding that share of the activations are
checkpointed, seer_tf/models/regnet.py). Each is compared with the first mode (`none`).
"""

from __future__ import annotations

from benchmarks.step import best_of, run_ours
from seer_tf import cpu


def add_arguments(parser):
    parser.add_argument("--remat_modes", default="none,block,stage,block@0.6",
                        help="activation checkpointing modes, compared with the first ('none')")
    parser.add_argument("--preset", default="regnet_y_1_6gf")
    parser.add_argument("--crops", default="2x224")
    parser.add_argument("--batch", type=int, default=64)


def parse_remat_mode(text):
    """'none' | 'block' | 'stage' | 'block@0.6' (remat_fraction 0.6) -> RegNet keyword args."""
    mode, at, fraction = text.partition("@")
    if mode not in ("none", "block", "stage") or (at and (mode != "block" or not fraction)):
        raise ValueError(f"bad remat mode {text!r}: none, block, stage or block@<fraction>")
    return {"remat": mode, "remat_fraction": float(fraction) if fraction else 1.0}


def run_memory_benchmark(preset="regnet_y_1_6gf", crops="2x224", batch=64,
                         modes=("none", "block", "stage", "block@0.6"), steps=2, warmup=1,
                         processes=3):
    """Each mode's fastest of `processes` fresh runs, and its saving and overhead over `none`.

    The modes take turns (none, block, ..., none, block, ...) rather than running each mode's
    processes back to back, so a drift in the machine's speed (+-25% within an hour on some
    VMs) lands on every mode alike."""
    report = {"machine": cpu.describe(), "preset": preset, "crops": crops, "batch": batch,
              "processes": processes}
    parsed = {mode: parse_remat_mode(mode) for mode in modes}
    runs = {mode: [] for mode in modes}
    for _ in range(processes):
        for mode in modes:
            runs[mode].append(run_ours(preset=preset, crops=crops, batch=batch,
                                       precision="float32", steps=steps, warmup=warmup,
                                       **parsed[mode]))
    report["modes"] = {mode: best_of(runs[mode]) for mode in modes}
    base = report["modes"].get("none", {})
    for mode, r in report["modes"].items():
        if mode != "none" and "step_peak_mib" in r and "step_peak_mib" in base:
            report[f"{mode}_memory_saving"] = round(1 - r["step_peak_mib"] / base["step_peak_mib"], 3)
            report[f"{mode}_time_overhead"] = round(r["step_s_median"] / base["step_s_median"] - 1, 3)
    return report


def run(args):
    modes = tuple(m.strip() for m in args.remat_modes.split(",") if m.strip())
    return run_memory_benchmark(args.preset, args.crops, args.batch, modes=modes,
                                processes=args.processes)
