"""Benchmark plumbing (benchmarks/, outside the package): flags, fresh processes, best-of, the
peer to beat per precision and the ratios. torch is not a requirement: the peers' own test runs
only where torch is importable."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import isolation, memory, run, step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_isolated_passes_the_malloc_setting_and_parses_json(monkeypatch):
    monkeypatch.delenv(isolation.RUNNER_ENV, raising=False)
    code = ("import json, os; print('log line {not json'); print('{\"first\": 1}'); "
            "print(json.dumps({k: os.environ.get(k) for k in "
            "('MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_')}, indent=1))")
    assert isolation.run_isolated([sys.executable, "-c", code]) == isolation.MALLOC_ENV
    failed = isolation.run_isolated([sys.executable, "-c", "raise SystemExit(3)"])
    assert failed["error"].startswith("rc=3")


def test_runs_through_the_runner_when_one_is_set(tmp_path, monkeypatch):
    # A stand-in runner: the command after "--", then one JSON line on stderr saying which
    # attempt was kept.
    runner = tmp_path / "runner.py"
    runner.write_text(
        "import json, subprocess, sys\n"
        "argv = sys.argv[sys.argv.index('--') + 1:]\n"
        "out = subprocess.run(argv, stdout=subprocess.PIPE).stdout\n"
        "sys.stdout.buffer.write(out)\n"
        "print(json.dumps({'run_when_idle_kept': {'attempt': 1, 'foreign_cpu_s': 0.0},"
        " 'clean': True}), file=sys.stderr)\n")
    monkeypatch.setenv(isolation.RUNNER_ENV, str(runner))
    result = isolation.run_isolated([sys.executable, "-c", "print('{\"x\": 1}')"])
    assert result == {"x": 1, "isolation": {"clean": True, "attempt": 1, "foreign_cpu_s": 0.0}}


def test_torch_python_comes_from_the_flag_then_the_environment(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "python"  # an "interpreter" that imports anything: exits 0
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv(isolation.TORCH_PYTHON_ENV, str(fake))
    assert isolation.find_torch_python() == str(fake)
    assert isolation.find_torch_python(sys.executable + "-missing") is None
    assert "--torch_python" in capsys.readouterr().err  # the reason, said once on stderr


def test_best_per_precision_compares_bf16_with_bf16():
    variants = {"fp32": {"images_per_s": 10.0}, "fp32+channels_last": {"images_per_s": 12.0},
                "bf16+channels_last": {"images_per_s": 20.0},
                "bf16+channels_last+compile": {"images_per_s": 18.0},
                "fp32+channels_last+compile": {"error": "rc=1"}}
    best = step.best_per_precision(variants)
    assert best["fp32"] == {"variant": "fp32+channels_last", "images_per_s": 12.0}
    assert best["bf16"]["variant"] == "bf16+channels_last"
    ours = {"float32": {"images_per_s": 18.0}, "mixed_bfloat16": {"images_per_s": 30.0}}
    # bf16 against the peer's bf16 (20), not its fp32 (12): 1.5, not 2.5.
    assert step.ratios(ours, best) == {"float32": 1.5, "mixed_bfloat16": 1.5}
    assert step.ratios(ours, {"fp32": best["fp32"]}) == {"float32": 1.5}


def test_best_of_keeps_the_fastest_run_and_lists_all():
    runs = [{"images_per_s": 9.0, "step_peak_mib": 100}, {"error": "rc=1"},
            {"images_per_s": 11.0, "step_peak_mib": 90}]
    best = step.best_of(runs)
    assert best["images_per_s"] == 11.0 and best["step_peak_mib"] == 90
    assert best["all_images_per_s"] == [9.0, 11.0] and best["processes"] == 3
    assert step.best_of([{"error": "rc=2"}]) == {"error": "rc=2", "runs": []}


@pytest.mark.parametrize("text,expected", [
    ("fp32", {"precision": "fp32", "channels_last": False, "compile": False}),
    ("bf16+channels_last+compile", {"precision": "bf16", "channels_last": True,
                                    "compile": True})])
def test_parse_variant(text, expected):
    assert step.parse_variant(text) == expected


@pytest.mark.parametrize("text", ["fp16", "bf16+nhwc", "float32"])
def test_parse_variant_rejects(text):
    with pytest.raises(ValueError):
        step.parse_variant(text)


def test_step_report_without_a_torch_interpreter(monkeypatch):
    monkeypatch.setattr(step, "run_ours", lambda **kw: {
        "images_per_s": 16.0 if kw["precision"] == "float32" else 24.0,
        "achieved_gflops": 100.0, "matmul_peak_gflops": {"float32": 200.0}})
    monkeypatch.setattr(isolation, "find_torch_python", lambda explicit=None: None)
    report = step.run_step_benchmark(processes=1)
    assert report["peer"]["skipped"] == isolation.NO_TORCH
    assert report["ours"]["mixed_bfloat16"]["images_per_s"] == 24.0
    assert report["fp32_flop_utilization"] == 0.5 and "ratios_over_peer_best" not in report
    json.dumps(report)


def test_memory_report_ratios(monkeypatch):
    """Modes take turns process by process; each keeps its fastest run and that run's peak."""
    calls = []
    runs = {("none", 1.0): [{"step_peak_mib": 1000, "step_s_median": 2.0, "images_per_s": 32.0},
                            {"step_peak_mib": 990, "step_s_median": 2.5, "images_per_s": 25.6}],
            ("block", 0.6): [{"step_peak_mib": 500, "step_s_median": 3.0, "images_per_s": 21.3},
                             {"step_peak_mib": 520, "step_s_median": 2.4, "images_per_s": 26.7}]}

    def fake(remat, remat_fraction, **kw):
        calls.append((remat, remat_fraction))
        return runs[(remat, remat_fraction)][sum(c == calls[-1] for c in calls) - 1]

    monkeypatch.setattr(memory, "run_ours", fake)
    report = memory.run_memory_benchmark(modes=("none", "block@0.6"), processes=2)
    assert calls == [("none", 1.0), ("block", 0.6)] * 2
    assert report["modes"]["block@0.6"]["all_step_peak_mib"] == [500, 520]
    assert report["block@0.6_memory_saving"] == 0.48
    assert report["block@0.6_time_overhead"] == 0.2
    json.dumps(report)


@pytest.mark.parametrize("text,expected", [
    ("none", {"remat": "none", "remat_fraction": 1.0}),
    ("block@0.6", {"remat": "block", "remat_fraction": 0.6})])
def test_parse_remat_mode(text, expected):
    assert memory.parse_remat_mode(text) == expected


@pytest.mark.parametrize("text", ["stage@0.5", "layer", "block@"])
def test_parse_remat_mode_rejects(text):
    with pytest.raises(ValueError):
        memory.parse_remat_mode(text)


def test_flags_of_each_benchmark():
    args = run.parse_args(["--what=memory", "--remat_modes=none,block", "--processes=2"])
    assert (args.remat_modes, args.processes, args.preset, args.batch) == (
        "none,block", 2, "regnet_y_1_6gf", 64)
    args = run.parse_args(["--what", "pipeline", "--images=photos", "--nopeer"])
    assert (args.images, args.peer, args.workers, args.repetitions) == ("photos", False, 2, 5)
    args = run.parse_args(["--what=step", "--torch_python=py", "--peer_variants=bf16"])
    assert (args.torch_python, args.peer_variants, args.preset) == ("py", "bf16",
                                                                    "regnet_y_400mf")
    with pytest.raises(SystemExit):
        run.parse_args(["--what=sinkhorn", "--remat_modes=none"])  # memory's flag only
    with pytest.raises(SystemExit):
        run.parse_args(["--what=nothing"])


def test_every_benchmark_module_has_a_run_function():
    for name, module in run.BENCHMARKS.items():
        assert callable(getattr(__import__(module, fromlist=["run"]), "run")), name


@pytest.mark.parametrize("script", ["torch_swav.py", "torch_pipeline.py"])
def test_peer_help_needs_no_torch(script):
    done = subprocess.run([sys.executable, isolation.peer_script(script), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--crops" in done.stdout


def test_torch_peer_one_step():
    """Where torch is importable: one tiny peer step runs and reports finite figures."""
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    done = subprocess.run(
        [sys.executable, isolation.peer_script("torch_swav.py"), "--crops=2x32,2x16",
         "--batch=4", "--steps=1", "--warmup=1", "--prototypes=16", "--precision=bf16",
         "--channels_last"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["images_per_s"] > 0 and all(v == v for v in report["loss_first_last"])
