"""Input-pipeline throughput: decode + SwAV multi-crop, seer_tf against the PyTorch peer.

    python -m benchmarks.run --what=pipeline [--images=DIR] [--crops=2x224,4x96] [--workers=2]

Images: the photographs of scikit-image's `skimage.data` (those that load as uint8 RGB or
grayscale arrays), written as JPEG (quality 90) to a temporary folder, or `--images=DIR`.
An image = all of its crops. Ours: `data.pipeline.training_stream` over the folder, as
training uses it (directory walk, shuffle, guarded decode, stats, multi-crop, batch). The peer:
`peers/torch_pipeline.py` (torchvision transforms, PIL, DataLoader workers) in a subprocess on
the same folder. The two are measured alternately, never at the same time; each figure is the
best of `--repetitions` (at most 5), since shared machines sometimes give a process less than
its cores.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

from benchmarks import isolation
from seer_tf import cpu

PEER_SCRIPT = isolation.peer_script("torch_pipeline.py")


def add_arguments(parser):
    parser.add_argument("--images", default=None,
                        help="folder of images (default: skimage.data photographs)")
    parser.add_argument("--crops", default="2x224,4x96")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per repetition")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the peer")
    parser.add_argument("--peer_script", default=PEER_SCRIPT)


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
        except Exception:  # noqa: BLE001 (needs a download, offline, or an optional dependency)
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
    used = time.process_time() - cpu0
    del it  # stop the prefetching threads before the next measurement
    n = batch * batches
    n_crops = sum(c.count for c in multicrop.parse_crops(crops))
    return {"images_per_s": n / wall, "crops_per_s": n * n_crops / wall,
            "cpu_cores_used": used / wall, "decode": {k: v for k, v in stats.as_dict().items()
                                                      if k != "first_bad"}}


def measure_peer(python, images, crops="2x224,4x96", batch=32, batches=20, workers=2,
                 script=PEER_SCRIPT, timeout=900):
    """The peer's JSON (its own images/s), or {'error': ...}."""
    cmd = [python, script, f"--images={images}", f"--crops={crops}", f"--batch={batch}",
           f"--batches={batches}", f"--workers={workers}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": repr(e)}
    result = isolation.last_json_object(done.stdout)
    if done.returncode or result is None:
        return {"error": f"rc={done.returncode}: {done.stderr[-500:]}"}
    return result


def _summary(ours, theirs, workers):
    best = max(ours, key=lambda r: r["images_per_s"])
    report = {"ours": {"images_per_s": round(best["images_per_s"], 1),
                       "crops_per_s": round(best["crops_per_s"], 1),
                       "cpu_cores_used": round(best["cpu_cores_used"], 2),
                       "all_images_per_s": [round(r["images_per_s"], 1) for r in ours],
                       "decode": best["decode"]}}
    good = [r for r in theirs if "images_per_s" in r]
    if good:
        peer = max(good, key=lambda r: r["images_per_s"])
        report["peer"] = {"images_per_s": round(peer["images_per_s"], 1), "workers": workers,
                          "torch": peer.get("torch"), "files": peer.get("files"),
                          "all_images_per_s": [round(r["images_per_s"], 1) for r in good]}
        report["ratio_ours_over_peer"] = round(best["images_per_s"] / peer["images_per_s"], 3)
    elif theirs:
        report["peer"] = {"error": theirs[-1].get("error")}
    return report


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
        python = isolation.find_torch_python(torch_python) if peer else None
        ours, theirs = [], []
        for _ in range(repetitions):
            ours.append(measure_ours(images, crops, batch, batches))
            if python:
                theirs.append(measure_peer(python, images, crops, batch, batches, workers,
                                           peer_script))
        report = {"bench": "pipeline", "images": source, "files": len(files), "crops": crops,
                  "batch": batch, "batches": batches, "repetitions": repetitions,
                  "machine": cpu.describe(), "tensorflow": tf.__version__,
                  **_summary(ours, theirs, workers)}
        report.setdefault("peer", {"skipped": isolation.NO_TORCH if peer else "disabled"})
    return report


def run(args):
    return run_pipeline_benchmark(args.images, args.crops, args.batch, args.batches,
                                  max(1, min(args.repetitions, 5)), args.workers,
                                  args.torch_python, args.peer, args.peer_script)
