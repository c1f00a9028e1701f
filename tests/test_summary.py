"""`python -m seer_tf.bin.summary`: the README's first command until pretraining lands."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    return subprocess.run([sys.executable, "-m", "seer_tf.bin.summary", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})


def test_json_for_seer_256gf():
    r = run("--preset=seer_regnety_256gf", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["params_trunk"] == 1_272_156_138
    assert [st["width"] for st in s["stages"]] == [746, 1492, 4103, 10444]
    assert [st["groups"] for st in s["stages"]] == [2, 4, 11, 28]


def test_table_and_list():
    r = run("--preset=regnet_y_400mf")
    assert r.returncode == 0 and "4,344,144" in r.stdout
    r = run("--list")
    assert "seer_regnety_10b" in r.stdout.split() and "regnet_y_128gf" in r.stdout.split()


def test_bad_preset_is_one_clear_line():
    r = run("--preset=seer_256gf")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr  # TensorFlow's start-up lines may come first
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert lines == r.stderr.strip().splitlines()[-1:] == ["error: unknown RegNet preset 'seer_256gf'; did you mean seer_regnety_256gf, "
                     "seer_regnety_64gf, seer_regnety_32gf?"]
