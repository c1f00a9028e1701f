"""The real pretraining binary in subprocesses: resume after SIGKILL, TensorBoard, JPEG folders,
config errors, re-runs, XLA, and MultiWorkerMirroredStrategy across two processes (training,
SIGTERM to one worker, resume). The single-host SIGTERM run is the demo's (tests/test_demo.py)."""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from seer_tf.train.preemption import RESTART_EXIT_CODE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "experiments", "cpu_smoke.py")
FAST = ["--config.swav.freeze_prototypes_steps=0", "--config.train.image_every=0",
        "--config.train.histogram_every=0", "--config.optim.lr_per_256=20.0"]


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2",
           "TF_DETERMINISTIC_OPS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _cmd(workdir, *overrides):
    return [sys.executable, "-m", "seer_tf.bin.pretrain", f"--config={SMOKE}",
            f"--workdir={workdir}", *overrides]


def _run(workdir, *overrides, timeout=300):
    return subprocess.run(_cmd(workdir, *overrides), env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def tb_scalars(workdir, tag="train/loss"):
    """{step: value} from every event file (later files win: a resumed run rewrites steps)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.*")),
                       key=os.path.getmtime):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.tag == tag:
                    out[event.step] = float(tf.make_ndarray(v.tensor))
    return out


# The SwAV feature queue (2 global batches, used from step 2) is part of the resumed state.
QUEUE = ["--config.swav.queue_length=16", "--config.swav.queue_start_step=0"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("full"))
    r = _run(wd, "--config.train.total_steps=5", *FAST, *QUEUE)
    assert r.returncode == 0, r.stderr[-3000:]
    return wd, json.loads(r.stdout.strip().splitlines()[-1])


def test_binary_logs_loss_to_tensorboard(uninterrupted):
    wd, final = uninterrupted
    losses = tb_scalars(wd)
    assert sorted(losses) == [1, 2, 3, 4, 5]
    assert all(np.isfinite(v) and 0 < v < 10 for v in losses.values())
    assert losses[5] == pytest.approx(final["final"]["loss"], rel=1e-6)
    assert os.path.exists(os.path.join(wd, "checkpoints", "ckpt-5.index"))
    assert set(tb_scalars(wd, "train/lr")) == {1, 2, 3, 4, 5}


def test_the_same_command_on_a_finished_workdir_prints_the_summary_again(uninterrupted):
    wd, final = uninterrupted
    r = _run(wd, "--config.train.total_steps=5", *FAST, *QUEUE)
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads(r.stdout.strip().splitlines()[-1])
    assert again["step"] == 5 and again["final"] == final["final"]
    assert again["weights_digest"] == final["weights_digest"]
    with open(os.path.join(wd, "config.json")) as f:  # the workdir says what it holds
        assert json.load(f)["train"]["total_steps"] == 5
    assert os.path.exists(os.path.join(wd, "model.json"))


def test_resuming_with_a_changed_crop_config_is_one_error_line(uninterrupted):
    wd, _ = uninterrupted
    r = _run(wd, "--config.train.total_steps=6", "--config.data.crop_counts=(2, 1)", *FAST,
             *QUEUE)
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "data.crop_counts" in lines[-1], r.stderr[-2000:]
    assert "train.total_steps" not in lines[-1]  # schedule keys may change
    assert not any(ln.startswith("Traceback") for ln in lines)


def test_a_seer_config_needs_a_workdir():
    r = subprocess.run([sys.executable, "-m", "seer_tf.bin.pretrain",
                        f"--config={os.path.join(ROOT, 'experiments', 'seer_regnety_8gf.py')}"],
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: --workdir is required")


def test_resume_after_sigkill_repeats_the_same_losses(uninterrupted, tmp_path):
    wd = str(tmp_path)
    proc = subprocess.Popen(_cmd(wd, "--config.train.total_steps=5",
                                 "--config.train.checkpoint_every=1", *FAST, *QUEUE),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(wd, "checkpoints", "ckpt-2.index")):
        assert proc.poll() is None and time.time() < deadline, "run ended before step 2"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The checkpoint a restart resumes from: the newest one the manager's state file names. A
    # kill between writing ckpt-N's files and updating that file leaves ckpt-(N-1) the latest.
    latest = tf.train.latest_checkpoint(os.path.join(wd, "checkpoints"))
    assert latest, "no complete checkpoint before the kill"
    killed_at = int(latest.rsplit("-", 1)[-1])
    assert killed_at < 5, "the run finished before it was killed; the test proves nothing"
    before = _model_tensors(os.path.join(wd, "checkpoints", f"ckpt-{killed_at}"))
    r = _run(wd, "--config.train.total_steps=5", "--config.train.checkpoint_every=1", *FAST, *QUEUE)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {os.path.join(wd, 'checkpoints', f'ckpt-{killed_at}')}" in r.stderr
    ref, got = tb_scalars(uninterrupted[0]), tb_scalars(wd)
    assert sorted(got) == [1, 2, 3, 4, 5]
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-6, abs=1e-6), step
    # Every model tensor (not only what Keras' object graph happens to track) was restored:
    # the resumed run ends with the uninterrupted run's weights, which training had moved.
    final = _model_tensors(os.path.join(wd, "checkpoints", "ckpt-5"))
    ref_final = _model_tensors(os.path.join(uninterrupted[0], "checkpoints", "ckpt-5"))
    assert len(final) == len(ref_final) > 150
    queue = [n for n, _ in tf.train.list_variables(os.path.join(wd, "checkpoints", "ckpt-5"))
             if n.startswith("queue/")]
    assert queue, "the feature queue is not in the checkpoint"
    moved = 0.0
    for name, value in ref_final.items():
        np.testing.assert_allclose(final[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        moved = max(moved, float(np.abs(value - before[name]).max()))
    assert moved > 1e-3


def test_jit_step_trains_cpu_smoke_like_the_graph_step(tmp_path):
    """jit_step=1: the replica step XLA-compiled (the iterator outside), multi-crop with the
    feature queue; the per-step losses equal the graph step's."""
    losses = {}
    for jit in (0, 1):  # cpu_smoke's own learning rate (FAST's large one amplifies rounding)
        wd = str(tmp_path / f"jit{jit}")
        r = _run(wd, "--config.train.total_steps=5", f"--config.train.jit_step={jit}",
                 *FAST[:3], *QUEUE)
        assert r.returncode == 0, r.stderr[-3000:]
        losses[jit] = tb_scalars(wd)
    ref, got = losses[0], losses[1]
    assert sorted(got) == [1, 2, 3, 4, 5] and len(set(got.values())) > 1
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-4), step


def test_sigkill_and_resume_on_a_photo_folder_equals_the_uninterrupted_run(tmp_path):
    """Files with shuffle and refresh on: the input iterator is in the checkpoint, so the
    resumed run sees the same images, crops and losses as the uninterrupted one."""
    from test_resume_data import _photos
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    photos = _photos()
    for k in range(64):
        im = np.roll(photos[k % len(photos)], 5 * k, axis=1)[k % 7:]
        Image.fromarray(np.ascontiguousarray(im)).save(folder / f"{k:02d}.{'jpg' if k % 3 else 'png'}")
    args = ["--config.data.source=files", f"--config.data.paths=('{folder}',)",
            "--config.data.shuffle_buffer=16", "--config.data.refresh_every_steps=2",
            "--config.train.total_steps=6", "--config.train.checkpoint_every=1", *FAST]
    ref = str(tmp_path / "ref")
    r = _run(ref, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    wd = str(tmp_path / "killed")
    proc = subprocess.Popen(_cmd(wd, *args), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(wd, "checkpoints", "ckpt-3.index")):
        assert proc.poll() is None and time.time() < deadline, "run ended before step 3"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(tf.train.latest_checkpoint(os.path.join(wd, "checkpoints")).rsplit("-", 1)[1])
    assert killed_at < 6
    assert any(n.startswith("input/") for n, _ in tf.train.list_variables(
        os.path.join(wd, "checkpoints", f"ckpt-{killed_at}"))), "no input state checkpointed"
    r = _run(wd, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"ckpt-{killed_at}" in r.stderr
    want, got = tb_scalars(ref), tb_scalars(wd)
    assert sorted(got) == list(range(1, 7))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-6), step
    a = _model_tensors(os.path.join(ref, "checkpoints", "ckpt-6"))
    b = _model_tensors(os.path.join(wd, "checkpoints", "ckpt-6"))
    for name, value in a.items():
        np.testing.assert_allclose(b[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def _model_tensors(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {n: reader.get_tensor(n) for n, _ in tf.train.list_variables(prefix)
            if n.startswith("model/")}


def test_pretrain_on_a_folder_of_jpegs(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs" / "sub"
    folder.mkdir(parents=True)
    for i in range(8):
        arr = rng.integers(0, 255, size=(40 + i, 48, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.jpg", quality=90)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("hello")
    (folder / "cut.jpg").write_bytes((folder / "0.jpg").read_bytes()[:100])
    # names an uncurated crawl has: not UTF-8, and a format TensorFlow cannot decode
    (folder / os.fsdecode(b"caf\xe9.jpg")).write_bytes((folder / "1.jpg").read_bytes())
    (folder / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    wd = str(tmp_path / "wd")
    r = _run(wd, "--config.data.source=files", f"--config.data.paths=('{tmp_path / 'imgs'}',)",
             "--config.train.total_steps=8", "--config.train.batch_size=4", *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = tb_scalars(wd)
    assert sorted(losses) == list(range(1, 9)) and all(np.isfinite(v) for v in losses.values())
    # 32 draws from 14 files, 4 of them bad (the HEIC is listed and counted as unsupported,
    # the non-UTF-8 name is read): bad files are counted and named, never fatal.
    bad, ok = tb_scalars(wd, "data/bad_files"), tb_scalars(wd, "data/decoded_ok")
    assert max(bad.values()) >= 1 and max(ok.values()) >= 32
    assert "first bad:" in r.stderr


@pytest.mark.parametrize("override,message", [
    ("--config.train.nonexistent=1", "error:"),
    ("--config.swav.queue_length=12", "error: swav.queue_length 12 is not a multiple of the global batch 8"),
    ("--config.swav.crops_for_assign=(0, 9)", "error: swav.crops_for_assign [0, 9] must index the 4 crops"),
    ("--config.train.precision=float8", "error: train.precision must be"),
])
def test_bad_settings_are_one_clear_line(tmp_path, override, message):
    r = _run(str(tmp_path), override)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith(message), r.stderr[-2000:]
    assert not any(ln.startswith("Traceback") for ln in lines), r.stderr[-2000:]


def test_a_missing_data_path_is_one_error_line_within_seconds(tmp_path):
    t = time.time()
    r = _run(str(tmp_path), "--config.data.source=files", "--config.data.paths=('/no/such/dir',)")
    assert time.time() - t < 10
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1] == "error: data path /no/such/dir: no such directory", r.stderr[-2000:]
    assert not any(ln.startswith("Traceback") for ln in lines)


def test_batch_must_split_over_replicas():
    from experiments import cpu_smoke
    from seer_tf.bin import pretrain

    config = cpu_smoke.get_config()
    config.train.batch_size = 7
    with pytest.raises(pretrain.ConfigError, match="batch_size 7 is not divisible by the 2 replicas"):
        pretrain.validate(config, 2)


def test_remat_fraction_reaches_the_trunk():
    from experiments import cpu_smoke
    from seer_tf.bin import pretrain

    config = cpu_smoke.get_config()
    config.model.update(remat="block", remat_fraction=0.5)
    pretrain.validate(config, 1)
    trunk = pretrain.build_model(config).backbone
    # regnety_tiny: the shortest prefix of its checkpointable blocks holding half their
    # estimated activations (test_remat checks the rule itself).
    assert trunk.remat_fraction == 0.5
    assert 0 < trunk.remat_blocks < len(trunk.blocks()) - 1
    config.model.update(remat="stage")
    with pytest.raises(pretrain.ConfigError, match="model.remat_fraction=0.5 needs remat='block'"):
        pretrain.validate(config, 1)
    config.model.update(remat="block", remat_fraction=0.0)
    with pytest.raises(pretrain.ConfigError, match=r"model.remat_fraction must be in \(0, 1\]"):
        pretrain.validate(config, 1)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCHER = os.path.join(ROOT, "experiments", "launch", "multi_worker.sh")


def _launch_workers(tmp_path, wd, name, *overrides):
    """Both workers of a 2-host cluster on 127.0.0.1, started through the launcher."""
    hosts = ",".join(f"127.0.0.1:{_free_port()}" for _ in range(2))
    procs = []
    for i in range(2):
        log = open(tmp_path / f"{name}{i}.log", "w+")  # files, not pipes: a full pipe would
        procs.append((subprocess.Popen(                # block one worker inside a collective
            ["bash", LAUNCHER, f"--config={SMOKE}", f"--workdir={wd}",
             "--config.model.sync_bn=True", *FAST, *overrides],
            env=_env(HOSTS=hosts, INDEX=str(i), PYTHON=sys.executable), stdout=log,
            stderr=subprocess.STDOUT), log))
    return procs


def _finish(procs, timeout=400):
    outs = []
    for p, log in procs:
        p.wait(timeout=timeout)
        log.seek(0)
        outs.append((p.returncode, log.read()))
    return outs


def _final(output):
    return json.loads([ln for ln in output.splitlines() if ln.startswith("{")][-1])


def test_sigterm_to_one_worker_stops_both_at_the_same_step(tmp_path):
    wd = str(tmp_path / "wd")
    procs = _launch_workers(tmp_path, wd, "run", "--config.train.total_steps=100000",
                            "--config.train.checkpoint_every=0")
    deadline = time.time() + 300
    while len(tb_scalars(wd)) < 2:  # the chief has logged two steps: both workers train
        assert all(p.poll() is None for p, _ in procs) and time.time() < deadline, \
            [log.seek(0) or log.read()[-2000:] for _, log in procs]
        time.sleep(0.2)
    procs[1][0].send_signal(signal.SIGTERM)  # the launcher exec'd python: this is the worker
    outs = _finish(procs, timeout=200)
    steps = []
    for code, text in outs:
        assert code == RESTART_EXIT_CODE, text[-3000:]
        steps.append(_final(text)["step"])
    assert steps[0] == steps[1] >= 2
    step = steps[0]
    assert tf.train.latest_checkpoint(os.path.join(wd, "checkpoints")).endswith(f"ckpt-{step}")
    assert not os.path.exists(os.path.join(wd, "tmp_worker"))
    # the relaunch resumes there and both workers finish cpu_smoke with identical weights
    outs = _finish(_launch_workers(tmp_path, wd, "resume",
                                   f"--config.train.total_steps={step + 2}",
                                   "--config.train.checkpoint_every=0"))
    for code, text in outs:
        assert code == 0, text[-3000:]
        assert f"resumed from {os.path.join(wd, 'checkpoints', f'ckpt-{step}')}" in text
    finals = [_final(text) for _, text in outs]
    assert finals[0]["step"] == finals[1]["step"] == step + 2
    assert finals[0]["weights_digest"] == finals[1]["weights_digest"]
    assert not os.path.exists(os.path.join(wd, "tmp_worker"))
