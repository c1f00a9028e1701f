"""Where the PyTorch peers are, and how benchmark processes are run fairly (issue 7).

    python -m seer_tf.bin.peers      # prints what the benchmarks will use, as JSON

The peers are the scripts in `../shared/bench/` beside the repository (or `$SEER_TF_PEER_DIR`),
run by an interpreter with torch + torchvision (`--torch_python`, `$SEER_TF_TORCH_PYTHON`, or
one of TORCH_PYTHONS). Every benchmark process, ours and the peer's, is started fresh:
  * through `run_when_idle.py` from the same folder when it exists: it waits until the machine
    is idle, holds a lock so no two benchmark processes overlap, and retries runs that other
    processes disturbed;
  * under MALLOC_ENV: glibc's default malloc hands large buffers back to the OS and faults them
    in again every step (~28% of CPU time in the kernel, +-30% step variation); both sides get
    the same setting, and reports say which.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from seer_tf import cpu

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TORCH_PYTHONS = ("/work/torchenv/bin/python", os.path.expanduser("~/.torchenv/bin/python"),
                 os.path.join(ROOT, ".torchenv", "bin", "python"))
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


def peer_dir() -> str:
    return os.environ.get("SEER_TF_PEER_DIR") or os.path.normpath(
        os.path.join(ROOT, "..", "shared", "bench"))


def peer_script(name: str) -> str:
    """Path of a peer script (`peer_torch_swav.py`, ...); it may not exist."""
    return os.path.join(peer_dir(), name)


def find_torch_python(explicit=None):
    """An interpreter with torch, or None (the peer side of a benchmark is then skipped)."""
    env = os.environ.get("SEER_TF_TORCH_PYTHON")
    for candidate in [c for c in (explicit, env) if c] + list(TORCH_PYTHONS):
        if os.path.exists(candidate):
            return candidate
    return None


def _last_json_object(text):
    """The last JSON object in `text` that starts a line (one-line or indented), or None."""
    lines = text.splitlines()
    for i in reversed(range(len(lines))):
        if lines[i].startswith("{"):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    return None


def run_isolated(cmd, timeout=1800, malloc=True, retries=2):
    """Run `cmd` in a fresh process (through run_when_idle.py when present) and parse the last
    JSON object it prints. Returns the dict, with an `isolation` entry (idle-wait facts), or
    {"error": ...}."""
    env = {**os.environ, **(MALLOC_ENV if malloc else {})}
    runner = os.path.join(peer_dir(), "run_when_idle.py")
    if os.path.exists(runner):
        cmd = [sys.executable, runner, "--retries", str(retries), "--"] + list(cmd)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": repr(e)}
    result = _last_json_object(done.stdout)
    if done.returncode or result is None:
        return {"error": f"rc={done.returncode}: {(done.stderr or done.stdout)[-800:]}"}
    kept = [ln for ln in done.stderr.splitlines() if ln.startswith('{"run_when_idle_kept"')]
    if kept:
        info = json.loads(kept[-1])
        result["isolation"] = {"clean": info["clean"], **info["run_when_idle_kept"]}
    return result


def describe():
    return {"machine": cpu.describe(), "peer_dir": peer_dir(), "torch_python": find_torch_python(),
            "run_when_idle": os.path.exists(os.path.join(peer_dir(), "run_when_idle.py")),
            "scripts": sorted(f for f in os.listdir(peer_dir()) if f.endswith(".py"))
            if os.path.isdir(peer_dir()) else [], "malloc_env": MALLOC_ENV}


if __name__ == "__main__":
    print(json.dumps(describe(), indent=2))
