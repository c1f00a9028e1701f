"""The launch recipes in experiments/launch: valid bash, the user's --config first, DRY_RUN.

The real two-worker runs through multi_worker.sh (training, SIGTERM, resume) are in
tests/test_pretrain_binary.py.
"""

import glob
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "experiments", "launch")
SCRIPTS = sorted(glob.glob(os.path.join(LAUNCH, "*.sh")))


def test_every_launch_script_is_valid_bash():
    assert {os.path.basename(s) for s in SCRIPTS} >= {"common.sh", "multi_worker.sh", "tpu_vm.sh"}
    for script in SCRIPTS:
        r = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
        assert r.returncode == 0, f"{script}: {r.stderr}"


def _dry(script, *args, **env):
    return subprocess.run(["bash", os.path.join(LAUNCH, script), *args], capture_output=True,
                          text=True, env={**os.environ, "DRY_RUN": "1", "PYTHON": "py", **env})


def test_multi_worker_dry_run_prints_tf_config_and_puts_the_config_first():
    r = _dry("multi_worker.sh", "--workdir=W", "--config=experiments/cpu_smoke.py",
             "--config.train.total_steps=3", HOSTS="10.0.0.1:2222,10.0.0.2:2222", INDEX="1")
    assert r.returncode == 0, r.stderr
    tf_config, command = r.stdout.strip().splitlines()
    assert json.loads(tf_config.split("=", 1)[1]) == {
        "cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
        "task": {"type": "worker", "index": 1}}
    # the launcher's override right after --config, the user's overrides after it (they win)
    assert command.split() == [
        "py", "-m", "seer_tf.bin.pretrain", "--workdir=W", "--config=experiments/cpu_smoke.py",
        "--config.train.strategy=multi_worker", "--config.train.total_steps=3"]


def test_tpu_dry_run_keeps_the_users_precision_override_last():
    r = _dry("tpu_vm.sh", "--config", "experiments/seer_regnety_8gf.py",
             "--config.train.precision=float32")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [
        "py", "-m", "seer_tf.bin.pretrain", "--config", "experiments/seer_regnety_8gf.py",
        "--config.train.strategy=tpu", "--config.train.tpu_address=local",
        "--config.train.precision=mixed_bfloat16", "--config.train.precision=float32"]


@pytest.mark.parametrize("script,env,message", [
    ("tpu_vm.sh", {}, "error: pass --config="),
    ("multi_worker.sh", {"HOSTS": "a:1,b:2", "INDEX": "2"}, "error: INDEX=2 is not a position"),
    ("multi_worker.sh", {"INDEX": "0"}, "HOSTS: comma-separated host:port list"),
])
def test_launchers_refuse_incomplete_commands(script, env, message):
    base = {k: v for k, v in os.environ.items() if k not in ("HOSTS", "INDEX")}
    r = subprocess.run(["bash", os.path.join(LAUNCH, script), "--workdir=W"], capture_output=True,
                       text=True, env={**base, "DRY_RUN": "1", **env})
    assert r.returncode != 0
    assert message in r.stderr
