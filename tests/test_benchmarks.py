"""Benchmark plumbing: fresh processes get the malloc setting, results and failures come back."""

import json
import sys

import pytest

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
    """Modes take turns process by process; each keeps its fastest run and that run's peak."""
    calls = []
    runs = {("none", 1.0): [{"step_peak_mib": 1000, "step_s_median": 2.0, "images_per_s": 32.0},
                            {"step_peak_mib": 990, "step_s_median": 2.5, "images_per_s": 25.6}],
            ("block", 0.6): [{"step_peak_mib": 500, "step_s_median": 3.0, "images_per_s": 21.3},
                             {"step_peak_mib": 520, "step_s_median": 2.4, "images_per_s": 26.7}]}

    def fake(remat, remat_fraction, **kw):
        calls.append((remat, remat_fraction))
        return runs[(remat, remat_fraction)][sum(c == calls[-1] for c in calls) - 1]

    monkeypatch.setattr(benchmark_step, "_run_ours", fake)
    report = benchmark_step.run_memory_benchmark(modes=("none", "block@0.6"), processes=2)
    assert calls == [("none", 1.0), ("block", 0.6)] * 2
    assert report["modes"]["block@0.6"]["all_step_peak_mib"] == [500, 520]
    assert report["block@0.6_memory_saving"] == 0.48
    assert report["block@0.6_time_overhead"] == 0.2
    json.dumps(report)


@pytest.mark.parametrize("text,expected", [
    ("none", {"remat": "none", "remat_fraction": 1.0}),
    ("block@0.6", {"remat": "block", "remat_fraction": 0.6})])
def test_parse_remat_mode(text, expected):
    assert benchmark_step.parse_remat_mode(text) == expected


@pytest.mark.parametrize("text", ["stage@0.5", "layer", "block@"])
def test_parse_remat_mode_rejects(text):
    with pytest.raises(ValueError):
        benchmark_step.parse_remat_mode(text)
