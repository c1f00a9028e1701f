"""Nothing in the data stops a run, and a source that cannot work is refused when the run is built.

Uncurated collections (SEER) hold file names that are not UTF-8, formats TensorFlow cannot
decode (HEIC, AVIF), directories the job may not read and TFRecord shards cut short by a crash:
each is counted by reason in DecodeStats and the stream goes on. Missing paths, empty globs and
unprepared TFDS data are one UsageError naming the path, before any graph is built.
"""

import os

import pytest
import tensorflow as tf

from seer_tf.data import decode, listing, sources
from seer_tf.usage import UsageError
import image_zoo


def _one_pass(source, **kwargs):
    ds, stats = sources.image_stream(source, num_epochs=1, shuffle_buffer=0, **kwargs)
    names = [name for name, _ in ds.as_numpy_iterator()]
    assert len(names) == len(set(names))
    return names, stats.as_dict()


def test_non_utf8_names_are_read_and_heic_avif_counted(tmp_path):
    root = os.fsencode(str(tmp_path))
    image_zoo.solid((1, 2, 3)).save(os.path.join(str(tmp_path), "good.png"))
    odd = os.path.join(root, b"caf\xe9-\xff.jpg")  # Latin-1 bytes: not UTF-8
    with open(odd, "wb") as f:
        image_zoo.solid((200, 10, 10)).save(f, "JPEG")
    (tmp_path / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64)
    (tmp_path / "photo.AVIF").write_bytes(b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf" + b"\0" * 64)
    names, stats = _one_pass(sources.DirectorySource(str(tmp_path)))
    assert sorted(names) == sorted([odd, os.path.join(root, b"good.png")])
    assert stats["ok"] == 2 and stats["unsupported_format"] == 2 and stats["bad"] == 2
    assert sorted(os.path.basename(n) for n, _ in stats["first_bad"]) == ["photo.AVIF",
                                                                        "photo.heic"]
    # Globs walk bytes as well.
    names, _ = _one_pass(sources.GlobSource(os.path.join(str(tmp_path), "*.jpg")))
    assert names == [odd]


def test_an_unreadable_directory_is_counted_and_the_rest_streams(tmp_path, monkeypatch):
    for sub in ("a", "locked", "b"):
        os.makedirs(tmp_path / sub)
        image_zoo.solid((5, 6, 7)).save(tmp_path / sub / "x.png")
    real = listing._list_dir

    def list_dir(directory):  # tests run as root: chmod would not stop the walk
        if os.path.basename(directory) == b"locked":
            raise PermissionError(13, "Permission denied", directory)
        return real(directory)

    monkeypatch.setattr(listing, "_list_dir", list_dir)
    names, stats = _one_pass(sources.DirectorySource(str(tmp_path)))
    assert sorted(os.path.basename(os.path.dirname(n)) for n in names) == [b"a", b"b"]
    assert stats["unreadable_dir"] == 1 and stats["bad"] == 1
    assert stats["first_bad"] == [(os.path.join(str(tmp_path), "locked"), "unreadable_dir")]


def _write_shard(path, names):
    with tf.io.TFRecordWriter(path) as w:
        for name in names:
            example = tf.train.Example(features=tf.train.Features(feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[tf.io.encode_png(tf.zeros([4, 4, 3], tf.uint8)).numpy()])),
                "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[name.encode()]))}))
            w.write(example.SerializeToString())


def test_a_truncated_tfrecord_shard_is_counted_and_the_others_stream(tmp_path):
    for k in range(3):
        _write_shard(str(tmp_path / f"s-{k}.tfrecord"), [f"{k}/{i}" for i in range(5)])
    middle = tmp_path / "s-1.tfrecord"
    data = middle.read_bytes()
    middle.write_bytes(data[:len(data) * 3 // 5 + 20])  # 3 records of 137 bytes, then a piece
    source = sources.TFRecordSource(str(tmp_path / "s-*.tfrecord"))
    names, stats = _one_pass(source)
    assert stats["corrupt_shard"] == 1 and stats["bad"] == 1
    assert stats["first_bad"][0] == (str(middle), "corrupt_shard")
    by_shard = {k: sorted(n for n in names if n.startswith(f"{k}/".encode())) for k in range(3)}
    assert len(by_shard[0]) == len(by_shard[2]) == 5
    assert by_shard[1] == [b"1/0", b"1/1", b"1/2"]  # what was intact before the cut
    # The endless stream keeps going over the damaged collection.
    ds, stats = sources.image_stream(source, shuffle_buffer=4)
    assert len(list(ds.take(40).as_numpy_iterator())) == 40
    assert stats.as_dict()["corrupt_shard"] >= 2  # once per pass


def test_sources_are_checked_before_any_graph(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    missing = str(tmp_path / "missing")
    cases = [
        (sources.DirectorySource(missing), missing),
        (sources.DirectorySource(str(tmp_path / "notes")), "notes"),
        (sources.GlobSource(str(tmp_path / "empty" / "*.jpg")), "*.jpg"),
        (sources.FileListSource(missing + ".txt"), "missing.txt"),
        (sources.TFRecordSource(missing + "-*"), "missing-*"),
        (sources.TfdsSource("cifar10", data_dir=str(tmp_path / "tfds")), "not prepared"),
    ]
    for source, named in cases:
        with pytest.raises(UsageError) as e:
            sources.check_source(source)
        assert named in str(e.value) and "\n" not in str(e.value), str(e.value)
    image_zoo.solid((1, 2, 3)).save(tmp_path / "empty" / "a.jpg")
    assert sources.check_source(sources.GlobSource(str(tmp_path / "empty" / "*.jpg")))


def test_pretrain_build_source_raises_the_usage_error(tmp_path):
    from experiments.base import swav_config
    from seer_tf.bin import pretrain

    config = swav_config()
    config.data.update(source="files", paths=(str(tmp_path / "nowhere"),))
    with pytest.raises(UsageError, match="nowhere: no such directory"):
        pretrain.build_source(config.data)
    image_zoo.solid((1, 2, 3)).save(tmp_path / "a.png")
    config.data.paths = (str(tmp_path),)
    fn = pretrain.build_dataset_fn(config)
    assert fn.checkpoint_input is True
    config.data.exact_resume = False
    assert pretrain.build_dataset_fn(config).checkpoint_input is False


def test_decode_stats_names_every_status():
    assert decode.STATUS_NAMES[decode.BAD_NAME] == "bad_name"
    stats = decode.DecodeStats()
    for status in (decode.OK, decode.BAD_NAME, decode.UNREADABLE_DIR, decode.CORRUPT_SHARD):
        stats.record(tf.constant(b"x"), tf.constant(status))
    d = stats.as_dict()
    assert (d["ok"], d["bad_name"], d["unreadable_dir"], d["corrupt_shard"], d["bad"]) == (
        1, 1, 1, 1, 3)
