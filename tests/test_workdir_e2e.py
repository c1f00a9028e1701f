"""From a pretraining workdir to evaluation and a served model, with no hand work.

A demo-sized run (bin/pretrain, digits demo config, a few steps) leaves a workdir, and that is
all the user passes: the digits
demo's printed next commands run as printed (bin/evaluate --workdir=W --protocol=knn,
bin/export --workdir=W --output=W/serving, saved_model_cli on the export with PNG bytes), plus
the uint8 signature. Asserts: every command exits 0; the export carries the SwAV outputs; the
served pooled feature, embedding and prototype scores equal the checkpoint's (atol 1e-5) for
both signatures; kNN on the digits reads the run's latest step and beats chance by far.
"""

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from seer_tf import weights
from seer_tf.data import digits
from seer_tf.eval import digits_demo, inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
STEPS = 3


def _pretrain(workdir):
    """The digits demo config for STEPS steps (batch 32) through bin/pretrain, demo table off:
    config.json, model.json, checkpoints/ckpt-STEPS, tensorboard/ as every run writes them."""
    _finish(_start([sys.executable, "-m", "seer_tf.bin.pretrain",
                    "--config=experiments/digits_demo.py", f"--workdir={workdir}",
                    f"--config.train.total_steps={STEPS}", "--config.train.batch_size=32",
                    "--config.demo.enabled=False"]), timeout=600)


def _argv(command):
    argv = shlex.split(command)
    return [{"python": sys.executable, "saved_model_cli": CLI}.get(argv[0], argv[0])] + argv[1:]


def _start(argv):
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, cwd=ROOT)


def _finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def _reference(model, images):
    """The checkpoint's features, computed with Keras from the shared eval preprocessing."""
    x = inputs.eval_preprocess(images, 32, 32)
    pooled = model.backbone(x, training=False)["pooled"]
    embedding = model.head(pooled, training=False)
    return {"pooled": pooled.numpy(), "embedding": embedding.numpy(),
            "prototype_scores": model.prototypes(embedding)[0].numpy()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("run") / "w")
    _pretrain(path)
    return path


def test_workdir_to_evaluation_and_serving(workdir, tmp_path):
    images = digits.load(32)[0][:4]
    examples = digits_demo.write_examples(workdir, images)
    evaluate, export, request, tensorboard = digits_demo.next_commands(workdir)
    assert tensorboard == f"tensorboard --logdir {os.path.join(workdir, 'tensorboard')}"
    assert tf.io.gfile.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    running_eval = _start(_argv(evaluate))
    exported = json.loads(_finish(_start(_argv(export))).strip().splitlines()[-1])
    assert {"embedding", "prototype_scores", "pooled"} <= set(exported["outputs"])
    assert (exported["resize"], exported["crop"]) == (32, 32)  # the run's image size
    serving = os.path.join(workdir, "serving")
    assert exported["saved_model"] == os.path.abspath(serving)
    uint8 = [CLI, "run", "--dir", serving, "--tag_set", "serve", "--signature_def",
             "serving_images", "--inputs", f"images={examples['uint8']}"]
    runs = {"bytes": _start(_argv(request) + ["--outdir", str(tmp_path / "bytes")]),
            "uint8": _start(uint8 + ["--outdir", str(tmp_path / "uint8")])}
    want = _reference(weights.load_workdir_model(workdir), images)
    for name, proc in runs.items():
        _finish(proc)
        for key, value in want.items():
            got = np.load(tmp_path / name / f"{key}.npy")
            np.testing.assert_allclose(got, value, atol=1e-5, err_msg=f"{name} {key}")
    result = json.loads(_finish(running_eval).strip().splitlines()[-1])
    assert result["protocol"] == "knn" and result["data"] == "digits" and result["step"] == STEPS
    assert result["num_examples"] == 540 and result["num_train"] == 1257
    assert result["top1"] > 50.0  # 10 classes: chance is 10%
    with open(os.path.join(workdir, "eval", "knn.json")) as f:
        assert json.load(f)["top1"] == result["top1"]
