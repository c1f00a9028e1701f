"""Sources and robust decoding: the bad-file zoo, sharding, refresh, every source kind.

docs/design.md section 1 (SEER: an uncurated stream) and section 4 (what tf.io.decode_image raises
on): a run must see every good image once per pass, skip and count every bad one by reason,
and never crash or stall.
"""

import os
import types

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from seer_tf.bin import pack_tfrecords
from seer_tf.data import decode, headers, listing, sources
import image_zoo


def _one_pass(source, **kwargs):
    kwargs.setdefault("max_pixels", image_zoo.MAX_PIXELS)
    kwargs.setdefault("max_decode_pixels", image_zoo.MAX_DECODE_PIXELS)
    ds, stats = sources.image_stream(source, num_epochs=1, **kwargs)
    seen = {}
    for name, image in ds.as_numpy_iterator():
        name = name.decode()
        assert name not in seen, f"{name} yielded twice in one pass"
        seen[name] = image
    return seen, stats.as_dict()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("zoo"))
    good, bad = image_zoo.make_zoo(root)
    return root, good, bad


def test_zoo_streams_exactly_the_good_images_and_counts_the_bad(zoo):
    root, good, bad = zoo
    seen, stats = _one_pass(sources.DirectorySource(root), seed=3)
    names = {os.path.relpath(n, root): img for n, img in seen.items()}
    assert sorted(names) == sorted(good)
    for name, image in names.items():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        assert image.shape[:2] == good[name], (name, image.shape)
        assert image.shape[0] * image.shape[1] <= image_zoo.MAX_PIXELS
    for reason, count in bad.items():
        assert stats[reason] == count, (reason, stats)
    assert stats["ok"] == len(good) and stats["bad"] == sum(bad.values()) >= 10
    reported = {os.path.basename(n): s for n, s in stats["first_bad"]}
    assert reported["dangling.jpg"] == "unreadable"
    assert reported["truncated.jpg"] == "corrupt" and reported["scan.tif"] == "unsupported_format"
    # Conversions: the GIF's first frame (red), the 1x1 PNG's color, gray -> R = G = B.
    assert tuple(names["animated.gif"][0, 0]) == (255, 0, 0)
    assert tuple(names["one_pixel.png"][0, 0]) == (10, 200, 30)
    gray = names["gray.jpg"].astype(int)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])


def test_decode_reports_status_without_raising():
    png = tf.io.encode_png(tf.zeros([5, 7, 3], tf.uint8))
    status, image = decode.decode(png)
    assert int(status) == decode.OK and image.shape == (5, 7, 3)
    for data, expected in [(b"", decode.EMPTY), (b"GIF89a\x01", decode.CORRUPT),
                           (b"hello world", decode.UNSUPPORTED)]:
        status, image = decode.decode(tf.constant(data))
        assert int(status) == expected and image.shape == (0, 0, 3)
    status, _ = decode.read_and_decode(tf.constant("/nonexistent/file.jpg"))
    assert int(status) == decode.UNREADABLE


def test_an_all_bad_infinite_source_fails_loudly_instead_of_spinning(tmp_path):
    for k in range(3):
        (tmp_path / f"bad{k}.jpg").write_bytes(b"garbage")
    stats = decode.DecodeStats(max_consecutive_bad=30)
    ds, _ = sources.image_stream(sources.DirectorySource(str(tmp_path)), stats=stats,
                                 shuffle_buffer=4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="consecutive"):
        next(iter(ds))
    assert stats.as_dict()["unsupported_format"] >= 29


def test_an_endless_stream_over_an_empty_listing_or_shard_fails_loudly(tmp_path):
    listing = tmp_path / "empty.txt"
    listing.write_text("# nothing listed\n")
    ds, _ = sources.image_stream(sources.FileListSource(str(listing)), shuffle_buffer=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="no elements"):
        next(iter(ds))
    image_zoo.solid((1, 2, 3)).save(tmp_path / "only.png")
    ds, _ = sources.image_stream(sources.DirectorySource(str(tmp_path)), shuffle_buffer=0,
                                 num_input_pipelines=2, input_pipeline_id=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="no elements"):
        next(iter(ds))


def _colored_dir(root, n, size=(8, 8)):
    os.makedirs(root, exist_ok=True)
    for k in range(n):
        image_zoo.solid((k, 255 - k, 7), size).save(os.path.join(root, f"img{k:03d}.png"))
    return sorted(os.path.join(root, f"img{k:03d}.png") for k in range(n))


def test_shards_are_disjoint_and_cover_everything(tmp_path):
    paths = _colored_dir(str(tmp_path), 23)
    source = sources.DirectorySource(str(tmp_path))
    parts = [set(_one_pass(source, num_input_pipelines=3, input_pipeline_id=i, seed=5)[0])
             for i in range(2)]
    ctx = types.SimpleNamespace(num_input_pipelines=3, input_pipeline_id=2)
    parts.append(set(_one_pass(source, input_context=ctx, seed=5)[0]))
    assert sum(len(p) for p in parts) == 23 and set().union(*parts) == set(paths)
    assert min(len(p) for p in parts) >= 7


def test_same_seed_same_order_other_seed_other_order(tmp_path):
    _colored_dir(str(tmp_path), 30)
    source = sources.DirectorySource(str(tmp_path))
    order = lambda seed: list(_one_pass(source, seed=seed, shuffle_buffer=8)[0])  # noqa: E731
    first = order(1)
    assert order(1) == first
    other = order(2)
    assert other != first and sorted(other) == sorted(first)


def test_refresh_picks_up_new_files_and_skips_deleted_ones(tmp_path):
    paths = _colored_dir(str(tmp_path), 10)
    # Sequential and unbuffered, so that few elements are decoded ahead of the consumer.
    ds, stats = sources.image_stream(sources.DirectorySource(str(tmp_path)), refresh_every=4,
                                     shuffle_buffer=2, seed=0, num_parallel_calls=1,
                                     prefetch=False)
    it = iter(ds)
    before = [next(it)[0].numpy().decode() for _ in range(12)]
    assert set(before) <= set(paths)
    os.remove(paths[0])
    os.remove(paths[1])
    new = os.path.join(str(tmp_path), "new.png")
    image_zoo.solid((1, 2, 3)).save(new)
    after = [next(it)[0].numpy().decode() for _ in range(60)]
    assert new in after
    late = after[20:]  # past what was listed, shuffled and decoded before the change
    assert paths[0] not in late and paths[1] not in late
    assert stats.as_dict()["bad"] <= 2  # at most the deleted files, if listed before deletion


def test_iterator_checkpoint_resumes_the_same_stream(tmp_path, monkeypatch):
    monkeypatch.setattr(listing, "CHUNK", 3)  # several listing pages per pass
    _colored_dir(str(tmp_path), 11)
    make = lambda: sources.image_stream(sources.DirectorySource(str(tmp_path)),  # noqa: E731
                                        shuffle_buffer=4, seed=1)[0]
    it = iter(make())
    for _ in range(5):
        next(it)
    saved = tf.train.Checkpoint(iterator=it).save(str(tmp_path / "ckpt" / "it"))
    expected = [next(it)[0].numpy() for _ in range(25)]
    restored = iter(make())  # a fresh pipeline, as after a restart
    tf.train.Checkpoint(iterator=restored).restore(saved)
    assert [next(restored)[0].numpy() for _ in range(25)] == expected


def test_file_list_and_glob_sources(tmp_path):
    paths = _colored_dir(str(tmp_path / "imgs"), 5)
    listing = tmp_path / "list.txt"
    listing.write_text("# a comment\n\nimgs/img000.png\n" + "\n".join(paths[1:]) +
                       "\nimgs/missing.png\n")
    seen, stats = _one_pass(sources.FileListSource(str(listing)))
    assert sorted(os.path.realpath(p) for p in seen) == sorted(os.path.realpath(p) for p in paths)
    assert stats["unreadable"] == 1 and stats["first_bad"][0][0].endswith("missing.png")
    seen, _ = _one_pass(sources.GlobSource(str(tmp_path / "**" / "img00[0-2].png")))
    assert sorted(seen) == paths[:3]


def test_pack_tfrecords_round_trip(zoo, tmp_path):
    root, good, bad = zoo
    report = pack_tfrecords.pack(root, str(tmp_path / "out" / "zoo"), num_shards=3,
                                 max_pixels=image_zoo.MAX_PIXELS)
    # Packing validates with the default (large) header cap: the 200 x 200 PNG is kept here and
    # skipped by the reader below, which uses the zoo's small cap.
    assert report["written"] == len(good) + bad["too_large"] and len(report["shards"]) == 3
    assert report["decode"]["bad"] == sum(bad.values()) - bad["too_large"]
    assert report["decode"]["ok"] == report["written"]
    pattern = str(tmp_path / "out" / "zoo-*")
    seen, stats = _one_pass(sources.TFRecordSource(pattern))
    assert sorted(seen) == sorted(good) and stats["bad"] == bad["too_large"]
    for name in ("rgb.png", "animated.gif", "huger.jpg"):
        status, expected = decode.read_and_decode(os.path.join(root, name), image_zoo.MAX_PIXELS)
        assert int(status) == decode.OK and np.array_equal(seen[name], expected.numpy())
    # Whole shard files per input pipeline when there are enough of them.
    parts = [set(_one_pass(sources.TFRecordSource(pattern), num_input_pipelines=3,
                           input_pipeline_id=i)[0]) for i in range(3)]
    assert sum(len(p) for p in parts) == len(good) and set().union(*parts) == set(good)
    assert all(parts)


def test_tfds_source_reads_a_prepared_dataset_offline(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        source = sources.TfdsSource("cifar10", data_dir=str(tmp_path), split="train")
        seen, stats = _one_pass(source)
    assert len(seen) == 12 and stats["ok"] == 12
    assert all(img.shape == (32, 32, 3) for img in seen.values())


def test_missing_tfds_data_is_an_error_not_a_download(tmp_path):
    source = sources.TfdsSource("cifar10", data_dir=str(tmp_path / "empty"))
    with pytest.raises(AssertionError, match="download"):
        sources.image_stream(source)
    assert not os.path.exists(tmp_path / "empty" / "downloads")


def test_large_jpeg_is_decoded_under_the_cap_at_reduced_scale():
    big = np.asarray(image_zoo.noise((1000, 1500), 0))
    encoded = tf.io.encode_jpeg(big, quality=50)
    status, image = decode.decode(encoded, max_pixels=200_000)
    assert int(status) == decode.OK and tuple(image.shape) == (250, 375, 3)  # ratio 4
    status, image = decode.decode(encoded, max_pixels=10_000)  # 1/8 = 125 x 188: windowed
    assert int(status) == decode.OK and image.shape[0] * image.shape[1] <= 10_000
    assert abs(image.shape[1] / image.shape[0] - 1.5) < 0.05


def test_header_sizes(tmp_path):
    import io

    for fmt, kwargs in [("PNG", {}), ("GIF", {}), ("BMP", {}), ("WEBP", {"lossless": True}),
                        ("WEBP", {"quality": 80})]:
        buf = io.BytesIO()
        Image.new("RGB", (37, 23), (1, 2, 3)).save(buf, fmt, **kwargs)
        h, w = headers.header_size(tf.constant(buf.getvalue()))
        assert (int(h), int(w)) == (23, 37), fmt


def test_jpeg_decode_matches_pil_and_the_eval_decoder(tmp_path):
    """Training, labeled-eval and feature-extraction decoders all give PIL's pixels for a JPEG
    (libjpeg's accurate DCT); TF's default DCT is several levels off."""
    import skimage.data

    from seer_tf.eval.features import decode_image_bytes

    path = str(tmp_path / "astronaut.jpg")
    Image.fromarray(skimage.data.astronaut()).save(path, quality=90)
    pil = np.asarray(Image.open(path).convert("RGB"))
    status, ours = decode.read_and_decode(tf.constant(path))
    assert int(status) == decode.OK
    np.testing.assert_array_equal(ours.numpy(), pil)
    np.testing.assert_array_equal(decode_image_bytes(tf.io.read_file(path)).numpy(), pil)
    fast = tf.io.decode_jpeg(tf.io.read_file(path), channels=3, dct_method="INTEGER_FAST")
    assert np.abs(fast.numpy().astype(int) - pil).max() > 0  # the check above can fail
