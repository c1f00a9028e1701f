"""Exact resume of the training input, and a new order in every pass (SEER's refresh).

The training stream over real photographs (scikit-image and scikit-learn ship them) is
checkpointed after 3 batches with `tf.train.Checkpoint(iterator=...)`; a freshly built stream
restored from it must produce batches 4-6 bit for bit. Then: every pass of every source kind
is a different order drawn from (seed, pass), the same for every worker.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from seer_tf.data import listing, multicrop, pipeline, sources

CROPS = multicrop.parse_crops("2x32,2x16")
AUGMENT = multicrop.Augment(jit_compile=False)


def _photos():
    import skimage.data
    from sklearn.datasets import load_sample_images

    images = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(),
              skimage.data.rocket()] + list(load_sample_images().images)
    return [np.asarray(Image.fromarray(im).resize((64, 48))) for im in images]


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """64 small JPEG/PNG files: each photo in 11 variants (crops, flips)."""
    root = tmp_path_factory.mktemp("photos")
    photos = _photos()
    for k in range(64):
        im = photos[k % len(photos)]
        im = np.roll(im, 3 * k, axis=1) if k % 2 else im[:, ::-1]
        im = Image.fromarray(np.ascontiguousarray(im[k % 5:, :]))
        im.save(root / f"img{k:02d}.{'jpg' if k % 3 else 'png'}")
    return str(root)


def _stream(root, **kwargs):
    kwargs = {"per_replica_batch_size": 4, "crops": CROPS, "augment": AUGMENT, "seed": 3,
              "shuffle_buffer": 16, "refresh_every": 24, **kwargs}
    return pipeline.training_stream(sources.DirectorySource(root), **kwargs)[0]


@pytest.fixture
def global_seed_zero():
    """bin/pretrain calls keras.utils.set_random_seed(train.seed = 0): build under it."""
    tf.random.set_seed(0)
    yield
    tf.random.set_seed(None)


def test_restored_iterator_continues_the_stream_bit_for_bit(photo_dir, tmp_path, monkeypatch,
                                                            global_seed_zero):
    monkeypatch.setattr(listing, "CHUNK", 5)  # several listing pages per pass
    it = iter(_stream(photo_dir))
    first = [next(it) for _ in range(3)]
    path = tf.train.Checkpoint(iterator=it).save(str(tmp_path / "input" / "ckpt"))
    expected = [next(it) for _ in range(3)]  # batches 4-6, uninterrupted
    restored = iter(_stream(photo_dir))  # a new pipeline, as after a restart
    tf.train.Checkpoint(iterator=restored).restore(path).assert_consumed()
    for want, got in zip(expected, [next(restored) for _ in range(3)]):
        assert len(want) == len(got) == 4
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    # And the restore really mattered: a new iterator would have started with batch 1.
    assert not np.array_equal(first[0][0].numpy(), expected[0][0].numpy())


def _names(ds, n):
    return [name.numpy() for name, _ in ds.take(n)]


def _records(source, **kwargs):
    return source.records(seed=7, **kwargs).map(lambda name, payload: (name, payload))


def test_every_refresh_draws_a_new_sample_the_same_on_every_worker(photo_dir):
    source = sources.DirectorySource(photo_dir)
    names = _names(_records(source, refresh_every=8), 64)
    passes = [names[8 * p:8 * p + 8] for p in range(8)]
    assert len(set(names)) > 30  # 8 refreshes of 8 from 64 files; one fixed prefix would be 8
    assert all(passes[p] != passes[p + 1] for p in range(7))
    assert names == _names(_records(source, refresh_every=8), 64)  # same seed, same stream
    # Two workers, two passes: each pass's prefix is split, disjoint and complete.
    parts = [_names(_records(source, refresh_every=8, num_input_pipelines=2,
                             input_pipeline_id=i), 8) for i in range(2)]
    for p in range(2):
        union = parts[0][4 * p:4 * p + 4] + parts[1][4 * p:4 * p + 4]
        assert sorted(union) == sorted(passes[p])


def test_strided_passes_sample_the_whole_of_a_text_list(photo_dir, tmp_path):
    listed = tmp_path / "list.txt"
    (tmp_path / "link").symlink_to(photo_dir)
    listed.write_text("\n".join(f"link/{n}" for n in sorted(os.listdir(photo_dir))) + "\n")
    source = sources.FileListSource(str(listed))
    plain = _names(_records(source, refresh_every=8), 32)
    assert len(set(plain)) == 8  # a refresh re-reads the list's first lines: what strides fix
    strided = _names(_records(source, refresh_every=8, strides=8), 64)
    assert len(set(strided)) > 30
    first = sorted(int(os.path.basename(n)[3:5]) for n in strided[:8])
    assert first[-1] - first[0] >= 32  # one refresh spans the list, not its first 8 lines
    assert strided[:8] != strided[8:16]


def test_tfrecord_and_glob_passes_differ(photo_dir, tmp_path):
    from seer_tf.bin import pack_tfrecords

    pack_tfrecords.pack(photo_dir, str(tmp_path / "tfr" / "p"), num_shards=4)
    source = sources.TFRecordSource(str(tmp_path / "tfr" / "p-*"), cycle_length=2)
    names = _names(_records(source), 128)
    assert sorted(names[:64]) == sorted(names[64:]) and names[:64] != names[64:]
    glob = sources.GlobSource(os.path.join(photo_dir, "img*.jpg"))
    names = _names(_records(glob, refresh_every=6), 60)
    assert len(set(names)) > 20 and all(n.endswith(b".jpg") for n in names)


def test_consecutive_refreshes_of_a_large_list_overlap_like_random_draws(tmp_path):
    """10,000 listed images, a refresh every 1,000, strides = listing size / refresh size (the
    README's rule for `data.listing_strides`): consecutive refreshes share no more than random
    draws of 1,000 would (~10%), and each pass is ordered anew."""
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join(f"/data/img{i:05d}.jpg" for i in range(10_000)) + "\n")
    source = sources.FileListSource(str(listed))
    names = [n.numpy() for n in source.records(seed=7, refresh_every=1000, strides=10)
             .map(lambda name, payload: name).take(4000)]
    refreshes = [names[1000 * r:1000 * (r + 1)] for r in range(4)]
    for a, b in zip(refreshes, refreshes[1:]):
        assert len(set(a)) == 1000
        assert len(set(a) & set(b)) / 1000 < 0.2
        assert a[:50] != b[:50]
