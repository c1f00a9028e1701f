"""Input-pipeline throughput: decode + SwAV multi-crop, seer_tf vs the PyTorch peer.

    python -m seer_tf.bin.benchmark_pipeline [--crops=2x224,4x96] [--repetitions=3]
    python -m seer_tf.bin.benchmark --what=pipeline      # same function, via the benchmark app

Images: the photographs of scikit-image's `skimage.data` (the ones that load as uint8 RGB or
grayscale arrays), written as JPEG (quality 90) to a temporary folder, or `--images=DIR`.
An image = all of its crops. Our figure: `data.pipeline.training_stream` over the folder, as
training uses it (directory walk, shuffle, guarded decode, stats, multi-crop, batch). The peer:
`../shared/bench/peer_torch_pipeline.py` (see `seer_tf.bin.peers`) (torchvision transforms, PIL, DataLoader workers)
in a subprocess, on the same folder, when a torch interpreter is found. The two are measured
alternately, never at the same time; each figure is the best of `repetitions` (shared machines
sometimes give a process less than its cores, DESIGN.md section 4).
"""

import json
import os
import subprocess
import tempfile
import time

from absl import app, flags

from seer_tf import cpu
from seer_tf.bin import peers

PEER_SCRIPT = peers.peer_script("peer_torch_pipeline.py")

def write_skimage_photos(directory, quality=90):
    """Write skimage.data's uint8 RGB / grayscale images as JPEG; returns their paths."""
    import numpy as np
    import skimage.data
    from PIL import Image

    paths = []
    for name in sorted(getattr(skimage.data, "__all__", [])):
        fn = getattr(skimage.data, name, None)
        if not callable(fn) or name in ("download_all", "lbp_frontal_face_cascade_filename"):
            continue
        try:
            array = fn()
        except Exception:  # needs a download (offline) or an optional dependency
            continue
        if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
            continue
        if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3):
            path = os.path.join(directory, f"{name}.jpg")
            Image.fromarray(array).save(path, quality=quality)
            paths.append(path)
    return paths


def measure_ours(images, crops="2x224,4x96", batch=32, batches=20, warmup=3, seed=0):
    """images/s of `training_stream` over a folder (fresh iterator; warm-up batches excluded)."""
    import tensorflow as tf

    from seer_tf.data import multicrop, pipeline, sources

    ds, stats = pipeline.training_stream(sources.DirectorySource(images), batch,
                                         crops=multicrop.parse_crops(crops), seed=seed)
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(batches):
        out = next(it)
    tf.nest.map_structure(lambda x: x.numpy(), out)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    del it  # stop the prefetching threads before the next measurement
    n = batch * batches
    n_crops = sum(c.count for c in multicrop.parse_crops(crops))
    return {"images_per_s": n / wall, "crops_per_s": n * n_crops / wall,
            "cpu_cores_used": cpu / wall, "decode": {k: v for k, v in stats.as_dict().items()
                                                     if k != "first_bad"}}


def measure_peer(python, images, crops="2x224,4x96", batch=32, batches=20, workers=2,
                 script=PEER_SCRIPT, timeout=900):
    """The peer's JSON line (its own images/s), or {'error': ...}."""
    cmd = [python, script, "--images", images, "--crops", crops, "--batch", str(batch),
           "--batches", str(batches), "--workers", str(workers)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": repr(e)}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        return {"error": f"rc={done.returncode}: {done.stderr[-500:]}"}
    return json.loads(lines[-1])


def run_pipeline_benchmark(images=None, crops="2x224,4x96", batch=32, batches=20,
                           repetitions=3, workers=2, torch_python=None, peer=True,
                           peer_script=PEER_SCRIPT):
    """Side-by-side images/s, ours and the peer's (best of `repetitions`), and their ratio."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        if images is None:
            files = write_skimage_photos(tmp)
            images, source = tmp, f"skimage.data ({len(files)} JPEG q90)"
        else:
            files, source = os.listdir(images), images
        python = peers.find_torch_python(torch_python) if peer else None
        ours, theirs = [], []
        for _ in range(repetitions):
            ours.append(measure_ours(images, crops, batch, batches))
            if python and os.path.exists(peer_script):
                theirs.append(measure_peer(python, images, crops, batch, batches, workers,
                                           peer_script))
        best = max(ours, key=lambda r: r["images_per_s"])
        report = {
            "bench": "pipeline", "images": source, "files": len(files), "crops": crops,
            "batch": batch, "batches": batches, "repetitions": repetitions,
            "machine": cpu.describe(), "tensorflow": tf.__version__,
            "ours": {"images_per_s": round(best["images_per_s"], 1),
                     "crops_per_s": round(best["crops_per_s"], 1),
                     "cpu_cores_used": round(best["cpu_cores_used"], 2),
                     "all_images_per_s": [round(r["images_per_s"], 1) for r in ours],
                     "decode": best["decode"]},
        }
        good = [r for r in theirs if "images_per_s" in r]
        if good:
            peer_best = max(good, key=lambda r: r["images_per_s"])
            report["peer"] = {"images_per_s": round(peer_best["images_per_s"], 1),
                              "workers": workers, "torch": peer_best.get("torch"),
                              "files": peer_best.get("files"),
                              "all_images_per_s": [round(r["images_per_s"], 1) for r in good]}
            report["ratio_ours_over_peer"] = round(
                best["images_per_s"] / peer_best["images_per_s"], 3)
        elif theirs:
            report["peer"] = {"error": theirs[-1].get("error")}
        else:
            report["peer"] = {"skipped": "no torch interpreter" if peer else "disabled"}
    return report


def _define_flags():
    """Flags only when run as a program: `bin/benchmark.py` imports this module with its own."""
    flags.DEFINE_string("images", None, "Folder of images (default: skimage.data photographs).")
    flags.DEFINE_string("crops", "2x224,4x96", "Crop groups, as the peer takes them.")
    flags.DEFINE_integer("batch", 32, "Images per batch.")
    flags.DEFINE_integer("batches", 20, "Timed batches per repetition (after warm-up).")
    flags.DEFINE_integer("repetitions", 3, "Repetitions of each side; the best is reported.")
    flags.DEFINE_integer("workers", 2, "DataLoader workers of the peer.")
    flags.DEFINE_string("torch_python", None, "Interpreter with torch+torchvision for the peer.")
    flags.DEFINE_string("peer_script", PEER_SCRIPT, "The PyTorch peer script.")
    flags.DEFINE_bool("peer", True, "Also run the PyTorch peer when an interpreter is found.")


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    F = flags.FLAGS
    report = run_pipeline_benchmark(F.images, F.crops, F.batch, F.batches, F.repetitions,
                                    F.workers, F.torch_python, F.peer, F.peer_script)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    _define_flags()
    app.run(main)
