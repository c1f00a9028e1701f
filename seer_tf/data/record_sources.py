"""Sources of encoded image records: TFRecord shards and prepared TFDS datasets.

Both yield `(name, encoded bytes)` (`reads_files = False`) into the same guarded decoder as
the file sources (sources.py, which re-exports them); the pass loop is passes.py.
"""

import tensorflow as tf

from seer_tf.data import decode as decode_lib
from seer_tf.data.passes import AUTOTUNE, ImageSource, _passes, _shuffle, pass_seed
from seer_tf.usage import UsageError


class TFRecordSource(ImageSource):
    """tf.train.Example records in TFRecord shards (e.g. written by bin/pack_tfrecords.py).

    Shards are re-globbed every pass (new shards are picked up), shuffled with the pass seed and
    interleaved. Names are the `name_key` feature when present, else `shard:index`. A shard that
    cannot be read to its end (truncated, damaged, unreadable) keeps the records before the
    damage, is counted once as `corrupt_shard`, and the other shards keep streaming: each
    shard's record bytes (+ 16 bytes of framing each) are summed and compared with the file size
    taken when the source was built (uncompressed shards; compressed ones are not checked, and
    shards that appear later are not either).
    """

    reads_files = False

    def __init__(self, patterns, image_key="image/encoded", name_key="image/filename",
                 compression_type=None, cycle_length=8):
        self.patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        self.image_key, self.name_key = image_key, name_key
        self.compression_type = compression_type
        self.cycle_length = cycle_length

    def check(self):
        if not any(tf.io.gfile.glob(p) for p in self.patterns):
            raise UsageError(f"data path {', '.join(self.patterns)}: no TFRecord shard matches")
        return self

    def _sizes(self):
        files = tf.io.gfile.glob(self.patterns)
        sizes = [-1 if self.compression_type else tf.io.gfile.stat(f).length for f in files]
        with tf.init_scope():
            return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant(files or [""], tf.string), tf.constant(sizes or [-1], tf.int64)), -1)

    def _parse(self, shard, index, serialized):
        features = {self.image_key: tf.io.FixedLenFeature([], tf.string, default_value="")}
        if self.name_key:
            features[self.name_key] = tf.io.FixedLenFeature([], tf.string, default_value="")
        ex = tf.io.parse_single_example(serialized, features)
        fallback = tf.strings.join([shard, tf.strings.as_string(index)], ":")
        name = ex[self.name_key] if self.name_key else fallback
        name = tf.where(tf.strings.length(name) > 0, name, fallback)
        return name, ex[self.image_key]

    def _shard_files(self, index, seed):
        files = tf.io.matching_files(self.patterns)  # sorted by the op
        return tf.random.experimental.stateless_shuffle(
            files, tf.stack([pass_seed(seed, index), 3]))

    def _shard(self, f, sizes):
        """(name, bytes) of one shard; one corrupt_shard marker if it ends before its size."""
        records = tf.data.TFRecordDataset(f, compression_type=self.compression_type)
        records = records.map(lambda r: (r, tf.cast(tf.strings.length(r), tf.int64) + 16, False))
        end = tf.data.Dataset.from_tensors((tf.constant(b""), tf.constant(0, tf.int64), True))
        size = sizes.lookup(f)

        def count(total, e):
            record, n, is_end = e
            bad = is_end & (size >= 0) & tf.not_equal(total, size)
            return total + n, (record, is_end, bad)

        ds = records.ignore_errors().concatenate(end).scan(tf.constant(0, tf.int64), count)
        ds = ds.filter(lambda r, is_end, bad: tf.logical_not(is_end) | bad).enumerate()
        marker = decode_lib.skip_marker(decode_lib.CORRUPT_SHARD)
        return ds.map(lambda i, e: tf.cond(
            e[2], lambda: (f, tf.constant(marker)), lambda: self._parse(f, i, e[0])))

    def _read(self, files, sizes):
        return tf.data.Dataset.from_tensor_slices(files).interleave(
            lambda f: self._shard(f, sizes), cycle_length=self.cycle_length,
            num_parallel_calls=AUTOTUNE)

    def records(self, num_input_pipelines=1, input_pipeline_id=0, seed=0, num_epochs=None,
                refresh_every=None, shuffle_buffer=0, strides=1):
        sizes = self._sizes()
        self._read_fn = lambda files: self._read(files, sizes)
        by_file = len(tf.io.gfile.glob(self.patterns)) >= num_input_pipelines > 1
        if not by_file:
            return super().records(num_input_pipelines, input_pipeline_id, seed, num_epochs,
                                   refresh_every, shuffle_buffer, strides)
        take = -(-int(refresh_every) // num_input_pipelines) if refresh_every else None

        def one_pass(index):  # whole shard files per pipeline: no wasted reads
            files = self._shard_files(index, seed)[input_pipeline_id::num_input_pipelines]
            ds = self._read_fn(files)
            return ds.take(take) if take else ds

        return _shuffle(_passes(one_pass, num_epochs, repr(self)), shuffle_buffer, seed)

    def _one_pass(self, index, seed):
        return self._read_fn(self._shard_files(index, seed))

    def __repr__(self):
        return f"TFRecordSource({self.patterns})"


class TfdsSource(ImageSource):
    """A TFDS dataset already prepared under `data_dir`; never downloads.

    Images are read as encoded bytes (`SkipDecoding`) so that they go through the same guarded
    decoder; sharding uses `tfds.even_splits` (each pipeline reads only its part). The dataset is
    static, so there is nothing to refresh; the file order and the shuffle buffer are reshuffled
    every epoch from `seed` (tf.data's reshuffle_each_iteration, saved with the iterator).
    """

    reads_files = False

    def __init__(self, name, data_dir=None, split="train", image_key="image"):
        self.name, self.data_dir, self.split, self.image_key = name, data_dir, split, image_key

    def builder(self):
        import tensorflow_datasets as tfds

        return tfds.builder(self.name, data_dir=self.data_dir)

    def check(self):
        try:
            builder = self.builder()
        except Exception as e:  # noqa: BLE001  (tfds raises several kinds for unknown names)
            raise UsageError(f"tfds dataset {self.name!r}: {str(e).splitlines()[0]}") from None
        if not builder.is_prepared():
            raise UsageError(f"tfds dataset {self.name!r} is not prepared under "
                             f"{builder.data_dir}; prepare it first (runs never download)")
        return self

    def records(self, num_input_pipelines=1, input_pipeline_id=0, seed=0, num_epochs=None,
                refresh_every=None, shuffle_buffer=0, strides=1):
        import tensorflow_datasets as tfds

        del refresh_every, strides  # static data
        split = self.split
        if num_input_pipelines > 1:
            split = tfds.even_splits(split, num_input_pipelines)[input_pipeline_id]
        ds = self.builder().as_dataset(
            split=split, shuffle_files=True,
            decoders={self.image_key: tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(shuffle_seed=seed, add_tfds_id=True,
                                        shuffle_reshuffle_each_iteration=True))
        ds = ds.map(lambda ex: (ex["tfds_id"], ex[self.image_key]))
        if shuffle_buffer and shuffle_buffer > 1:  # reshuffled every epoch, filled once per epoch
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        return ds.repeat(num_epochs)

    def __repr__(self):
        return f"TfdsSource({self.name!r}, {self.data_dir!r}, {self.split!r})"
