"""benchmarks --what=device, the accelerator check, runs its whole path on the CPU (tiny model),
so the day a GPU or TPU is there the command is known to work; its figures only mean something
on the device."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_device_check_runs_the_trainer_and_reports_json():
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--what=device", "--no-peer",
         "--device_preset=regnety_tiny", "--device_crops=2x32,2x16", "--per_replica_batch=4",
         "--device_steps=6", "--steps_per_loop=2", "--precisions=float32", "--no_jit"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["device"] == "CPU" and report["replicas"] == 1 and report["steps"] == 6
    fp32 = report["float32"]
    assert fp32["loss_finite"] is True and fp32["loss_first"] > 0
    assert fp32["images_per_sec"] > 0
    assert abs(fp32["step_time_ms"] - 1e3 * 4 / fp32["images_per_sec"]) < 0.05 * fp32["step_time_ms"]
    assert fp32["flop_utilization"] is None  # no peak known for a CPU


def test_peak_table_prefers_the_specific_name():
    from benchmarks import device

    assert device.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert device.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert device.peak_tflops("NVIDIA A10G") == 70.0
    assert device.peak_tflops("Some GPU") is None
    assert device.peak_tflops("Some GPU", 100.0) == 100.0
