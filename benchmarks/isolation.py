"""Fair benchmark processes: every measurement, ours and the PyTorch peer's, in a fresh process
under the same malloc setting, and the interpreter that runs the peers.

Why fresh processes: on shared 2-core machines one process in four gets one core's worth, so
each configuration keeps the best of several processes, and no process inherits another's
warmed-up (or fragmented) heap.

Why the malloc setting (MALLOC_ENV): glibc's default malloc hands large buffers back to the OS
and faults them in again every step (~28% of CPU time in the kernel, +-30% step variation on
the machines of docs/benchmarks.md); both sides get the same setting and reports say which.

An optional runner (`--runner` / `$SEER_TF_BENCH_RUNNER`) wraps each command, for a machine
where something must wait until the machine is idle: it is called as
`RUNNER --retries N -- CMD...`, runs CMD, and may print one `{"run_when_idle_kept": {...},
"clean": bool}` line on stderr, which the report keeps as `isolation`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
TORCH_PYTHON_ENV = "SEER_TF_TORCH_PYTHON"
RUNNER_ENV = "SEER_TF_BENCH_RUNNER"
NO_TORCH = ("no interpreter with torch and torchvision: pass --torch_python=PYTHON or set "
            f"${TORCH_PYTHON_ENV}; the PyTorch peer figures are omitted")


def peer_script(name: str) -> str:
    """Path of one of our PyTorch peers (`torch_swav.py`, `torch_pipeline.py`)."""
    return os.path.join(ROOT, "benchmarks", "peers", name)


def _imports_torch(python: str) -> bool:
    try:
        done = subprocess.run([python, "-c", "import torch, torchvision"], capture_output=True,
                              timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def find_torch_python(explicit: str | None = None) -> str | None:
    """The interpreter for the peers: `explicit` (--torch_python), else $SEER_TF_TORCH_PYTHON,
    else this interpreter; None (and one line on stderr) when that one cannot import torch."""
    python = explicit or os.environ.get(TORCH_PYTHON_ENV) or sys.executable
    if _imports_torch(python):
        return python
    print(f"benchmark: {python}: {NO_TORCH}", file=sys.stderr, flush=True)
    return None


def last_json_object(text: str):
    """The last JSON object in `text` that starts a line (one-line or indented), or None."""
    lines = text.splitlines()
    for i in reversed(range(len(lines))):
        if lines[i].startswith("{"):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    return None


def run_isolated(cmd, timeout=1800, malloc=True, retries=2, runner=None, cwd=ROOT):
    """Run `cmd` in a fresh process (through the runner when one is set) and parse the last
    JSON object it prints: that dict, plus `isolation` when the runner reported, or
    {"error": ...}."""
    env = {**os.environ, **(MALLOC_ENV if malloc else {})}
    runner = runner or os.environ.get(RUNNER_ENV)
    if runner:
        cmd = [sys.executable, runner, "--retries", str(retries), "--"] + list(cmd)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": repr(e)}
    result = last_json_object(done.stdout)
    if done.returncode or result is None:
        return {"error": f"rc={done.returncode}: {(done.stderr or done.stdout)[-800:]}"}
    kept = [ln for ln in done.stderr.splitlines() if ln.startswith('{"run_when_idle_kept"')]
    if kept:
        info = json.loads(kept[-1])
        result["isolation"] = {"clean": info["clean"], **info["run_when_idle_kept"]}
    return result


def progress(label: str, result: dict) -> None:
    """One stderr line per fresh process: these benchmarks take minutes."""
    figure = result.get("images_per_s")
    text = f"{figure:.3f} images/s" if figure else f"failed: {str(result.get('error'))[:200]}"
    print(f"benchmark: {label}: {text}", file=sys.stderr, flush=True)
