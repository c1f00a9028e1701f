"""Pack a folder of images into TFRecord shards that `data.sources.TFRecordSource` reads.

    python -m seer_tf.bin.pack_tfrecords --input_dir=/data/raw --output=/data/tfr/train \
        --num_shards=64

Each record is a tf.train.Example with `image/encoded` (the original bytes, not re-encoded),
`image/filename` (path relative to the input dir, as bytes) and `image/format`. Shards are
written as `NAME.partial-PID` and renamed to their final name once all are complete. Every
file is decoded first with the same guarded decoder as training, so empty, truncated,
unsupported and oversized files are left out and reported (counts and first names as JSON on
stdout) instead of being discovered in the middle of a run. Files are written in a seeded random
order, round-robin over the shards, so each shard is a random sample of the folder (a better
global shuffle than a streaming directory walk: docs/design.md section 1, SEER's random uncurated
stream).
"""

import json
import os
import sys

from absl import app, flags

flags.DEFINE_string("input_dir", None, "Folder of images (walked recursively).")
flags.DEFINE_string("output", None, "Output prefix: shards are PREFIX-00000-of-00064.tfrecord.")
flags.DEFINE_integer("num_shards", 16, "Number of shard files.")
flags.DEFINE_integer("seed", 0, "Order of the files over the shards.")
flags.DEFINE_integer("max_pixels", None, "Decoder pixel cap used for validation (default: "
                     "the training default).")
FLAGS = flags.FLAGS

_FORMATS = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp"),
            (b"RIFF", "webp"))


def _format(data):
    return next((name for magic, name in _FORMATS if data.startswith(magic)), "unknown")


def pack(input_dir, output, num_shards=16, seed=0, max_pixels=None):
    """Validate and write; returns {'written', 'shards', 'decode': DecodeStats.as_dict()}."""
    import tensorflow as tf

    from seer_tf.data import decode, sources

    stats = decode.DecodeStats(keep_names=50, max_consecutive_bad=1 << 62)
    source = sources.DirectorySource(input_dir)
    records = source.records(seed=seed, num_epochs=1)
    max_pixels = max_pixels or decode.DEFAULT_MAX_PIXELS

    def check(name, path):
        status, _ = decode.read_and_decode(path, max_pixels)
        return name, status

    ds = records.map(check, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda name, status: (name, stats.record(name, status)))  # sequential: exact
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    names = [f"{output}-{k:05d}-of-{num_shards:05d}.tfrecord" for k in range(num_shards)]
    # Written under a temporary name and renamed when complete: a crash leaves no torn shard
    # under a name that TFRecordSource's glob would pick up.
    partial = [f"{n}.partial-{os.getpid()}" for n in names]
    writers = [tf.io.TFRecordWriter(n) for n in partial]
    written, complete = 0, False
    try:
        for name, status in ds.as_numpy_iterator():
            if status != decode.OK:
                continue
            with open(name, "rb") as f:  # bytes path: any file name the walk listed
                data = f.read()
            example = _example(tf, data, os.path.relpath(name, os.fsencode(input_dir)))
            writers[written % num_shards].write(example.SerializeToString())
            written += 1
        complete = True
    finally:
        for w in writers:
            w.close()
        for tmp, final in zip(partial, names):
            if complete:
                tf.io.gfile.rename(tmp, final, overwrite=True)
            elif tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
    return {"written": written, "shards": names, "decode": stats.as_dict()}


def _example(tf, data, relative_name):
    def feature(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": feature(data), "image/filename": feature(relative_name),
        "image/format": feature(_format(data).encode())}))


def main(argv):
    del argv
    if not FLAGS.input_dir or not FLAGS.output:
        print("pack_tfrecords: --input_dir and --output are required", file=sys.stderr)
        return 2
    report = pack(FLAGS.input_dir, FLAGS.output, FLAGS.num_shards, FLAGS.seed, FLAGS.max_pixels)
    report["shards"] = len(report["shards"])
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    app.run(main)
