"""A shortened first-run demo must learn: pretrained features beat the same network at random
init by a clear margin, without prototype collapse (the full demo is the README's command)."""

import json
import os
import subprocess
import sys

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
