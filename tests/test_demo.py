"""A shortened first-run demo must learn: pretrained features beat the same network at random
init by a clear margin, without prototype collapse (the full demo is the README's command)."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_short_digits_demo_beats_random_init(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run([sys.executable, "-m", "seer_tf.bin.pretrain", f"--workdir={tmp_path}",
                        "--config.train.total_steps=250", "--config.train.log_every=50",
                        "--config.train.checkpoint_every=0", "--config.train.image_every=0",
                        "--config.train.histogram_every=0"],
                       env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(next(line for line in reversed(r.stdout.splitlines())
                              if line.startswith("{")))  # the next commands follow it
    ours = summary["SwAV-pretrained RegNetY (ours)"]
    random_init = summary["same network, random init"]
    assert summary["steps"] == 250
    assert ours["linear"] >= random_init["linear"] + 0.04, summary
    assert ours["few_shot"] >= random_init["few_shot"] + 0.10, summary
    assert summary["prototypes_used"] >= summary["num_prototypes"] // 2, summary


def test_sigterm_stops_the_demo_before_its_probes_and_the_rerun_finishes(tmp_path):
    """A preempted demo saves, prints no results table and exits with the restart code; the
    same command resumes from that step and finishes."""
    from seer_tf.train.preemption import RESTART_EXIT_CODE

    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "seer_tf.bin.pretrain", f"--workdir={tmp_path}",
           "--config.train.total_steps=60", "--config.train.log_every=1",
           "--config.train.checkpoint_every=0", "--config.train.image_every=0",
           "--config.train.histogram_every=0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    deadline = time.time() + 300
    while not glob.glob(os.path.join(tmp_path, "tensorboard", "events.*")) or \
            os.path.getsize(glob.glob(os.path.join(tmp_path, "tensorboard", "events.*"))[0]) < 2000:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == RESTART_EXIT_CODE, err[-3000:]
    stopped = json.loads(out.strip().splitlines()[-1])
    step = stopped["step"]
    assert stopped["stopped"] == "preempted" and 1 <= step < 60
    assert "linear probe" not in out and "Next, on this run" not in out
    assert f"preempted at step {step}" in err
    assert os.path.exists(os.path.join(tmp_path, "checkpoints", f"ckpt-{step}.index"))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {os.path.join(tmp_path, 'checkpoints', f'ckpt-{step}')}" in r.stderr
    assert "linear probe" in r.stdout
    summary = json.loads(next(line for line in reversed(r.stdout.splitlines())
                              if line.startswith("{")))
    assert summary["steps"] == 60
