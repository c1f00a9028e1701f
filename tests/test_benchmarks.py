"""Benchmark plumbing: fresh processes get the malloc setting, results and failures come back."""

import json
import sys

from seer_tf.bin import benchmark_step, peers


def test_run_isolated_passes_the_malloc_setting_and_parses_json(tmp_path, monkeypatch):
    monkeypatch.setenv("SEER_TF_PEER_DIR", str(tmp_path))  # no run_when_idle.py: run directly
    code = ("import json, os; print('log line {not json'); print('{\"first\": 1}'); "
            "print(json.dumps({k: os.environ.get(k) for k in "
            "('MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_')}, indent=1))")
    assert peers.run_isolated([sys.executable, "-c", code]) == peers.MALLOC_ENV
    failed = peers.run_isolated([sys.executable, "-c", "raise SystemExit(3)"])
    assert failed["error"].startswith("rc=3")


def test_runs_through_run_when_idle_when_the_peer_folder_has_it(tmp_path, monkeypatch):
    # A stand-in runner with run_when_idle's interface: the command after "--", then one
    # JSON line on stderr saying which attempt was kept.
    (tmp_path / "run_when_idle.py").write_text(
        "import json, subprocess, sys\n"
        "argv = sys.argv[sys.argv.index('--') + 1:]\n"
        "out = subprocess.run(argv, stdout=subprocess.PIPE).stdout\n"
        "sys.stdout.buffer.write(out)\n"
        "print(json.dumps({'run_when_idle_kept': {'attempt': 1, 'foreign_cpu_s': 0.0},"
        " 'clean': True}), file=sys.stderr)\n")
    monkeypatch.setenv("SEER_TF_PEER_DIR", str(tmp_path))
    result = peers.run_isolated([sys.executable, "-c", "print('{\"x\": 1}')"])
    assert result == {"x": 1, "isolation": {"clean": True, "attempt": 1, "foreign_cpu_s": 0.0}}


def test_memory_report_ratios(monkeypatch):
    fake = {"none": {"step_peak_mib": 1000, "step_s_median": 2.0},
            "block": {"step_peak_mib": 300, "step_s_median": 2.6}}
    monkeypatch.setattr(benchmark_step, "_ours", lambda processes, remat, **kw: fake[remat])
    report = benchmark_step.run_memory_benchmark(modes=("none", "block"))
    assert report["block_memory_saving"] == 0.7 and report["block_time_overhead"] == 0.3
    json.dumps(report)
