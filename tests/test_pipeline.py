"""The assembled training stream: crops of one sample come from one image; sharding; dtypes.

Solid-color images make the "same image" property strict: with color jitter and grayscale off,
every crop of a solid image (any box, flip, blur, resize) is exactly that color, so each crop
names its source image.
"""

import os
import types

import numpy as np
import tensorflow as tf

import image_zoo
from benchmarks import pipeline as benchmark_pipeline
from seer_tf.data import multicrop as mc
from seer_tf.data import pipeline, sources

CROPS = (mc.CropSpec(16, 2, (0.14, 1.0)), mc.CropSpec(8, 2, (0.05, 0.14)))
COLORS = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (250, 250, 10), (250, 10, 250),
          (10, 250, 250), (130, 60, 200), (60, 200, 130)]
SOLID = mc.Augment(jitter=0.0, grayscale=0.0, jit_compile=False)


def _solid_dir(root):
    for k, color in enumerate(COLORS):
        image_zoo.solid(color, (20 + 7 * k, 50 - 3 * k)).save(os.path.join(root, f"c{k}.png"))
    return str(root)


def _color_index(crop):
    """Index of the solid color a (normalized) crop shows; asserts the crop is uniform."""
    rgb = crop.astype(np.float64) * np.array(mc.IMAGENET_STD) + np.array(mc.IMAGENET_MEAN)
    assert np.ptp(rgb.reshape(-1, 3), axis=0).max() < 2e-3, "crop is not one solid color"
    distances = np.abs(np.array(COLORS) / 255.0 - rgb.reshape(-1, 3)[0]).max(axis=1)
    assert distances.min() < 2e-3
    return int(distances.argmin())


def test_every_crop_of_a_sample_comes_from_the_same_image(tmp_path):
    ds, stats = pipeline.training_stream(sources.DirectorySource(_solid_dir(tmp_path)), 4,
                                         crops=CROPS, augment=SOLID, shuffle_buffer=6, seed=3)
    seen = []
    for batch in ds.take(6).as_numpy_iterator():
        assert [c.shape for c in batch] == [(4, 16, 16, 3)] * 2 + [(4, 8, 8, 3)] * 2
        for b in range(4):
            indices = {_color_index(crop[b]) for crop in batch}
            assert len(indices) == 1, indices
            seen += indices
    assert sorted(set(seen)) == list(range(len(COLORS)))  # 3 shuffled passes over 8 images
    assert stats.as_dict()["ok"] >= 24


def test_input_context_sharding_and_per_replica_batch(tmp_path):
    root = _solid_dir(tmp_path)
    parts = []
    for pipeline_id in range(2):
        ctx = types.SimpleNamespace(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                    num_replicas_in_sync=2,
                                    get_per_replica_batch_size=lambda g: g // 2)
        ds, _ = pipeline.training_stream(
            sources.DirectorySource(root), global_batch_size=4, input_context=ctx, crops=CROPS,
            augment=SOLID, num_epochs=1, dtype=tf.bfloat16, drop_remainder=False)
        colors = []
        for batch in ds:
            assert batch[0].dtype == tf.bfloat16 and batch[0].shape[0] <= 2
            colors += [_color_index(c) for c in batch[0].numpy().astype(np.float32)]
        parts.append(colors)
    assert len(parts[0]) == len(parts[1]) == 4
    assert sorted(parts[0] + parts[1]) == list(range(len(COLORS)))


def test_stream_under_a_mirrored_strategy(tmp_path, mirrored_strategy):
    """The dataset function of distribute_datasets_from_function, built inside the scope."""
    root = _solid_dir(tmp_path)
    made = []

    def dataset_fn(ctx):
        ds, stats = pipeline.training_stream(sources.DirectorySource(root), global_batch_size=8,
                                             input_context=ctx, crops=CROPS, augment=SOLID)
        made.append(stats)
        return ds

    with mirrored_strategy.scope():
        dist = mirrored_strategy.distribute_datasets_from_function(dataset_fn)
    batch = next(iter(dist))
    local = mirrored_strategy.experimental_local_results(batch[2])
    assert [tuple(x.shape) for x in local] == [(4, 8, 8, 3)] * 2
    assert made and made[0].as_dict()["ok"] >= 8


def test_bad_files_do_not_reach_the_crops(tmp_path):
    good, bad = image_zoo.make_zoo(str(tmp_path))
    ds, stats = pipeline.training_stream(
        sources.DirectorySource(str(tmp_path)), 5, crops=CROPS, augment=mc.Augment(
            jit_compile=False), num_epochs=1, drop_remainder=False,
        max_pixels=image_zoo.MAX_PIXELS)
    n = 0
    for batch in ds:
        assert all(np.isfinite(c.numpy()).all() for c in batch)
        n += batch[0].shape[0]
    # Default header cap: the 200 x 200 PNG is decoded (and resized), not skipped.
    assert n == len(good) + bad["too_large"]
    assert stats.as_dict()["bad"] == sum(bad.values()) - bad["too_large"]


def test_pipeline_benchmark_reports_images_per_second(tmp_path):
    root = _solid_dir(tmp_path)
    report = benchmark_pipeline.run_pipeline_benchmark(
        images=root, crops="2x24", batch=4, batches=2, repetitions=1, peer=False)
    assert report["ours"]["images_per_s"] > 0 and report["files"] == len(COLORS)
    assert report["peer"] == {"skipped": "disabled"}
    assert report["ours"]["decode"]["bad"] == 0
