"""Sources of unlabeled images -> an infinite, sharded, shuffled, refreshable, decoded stream.

SEER pretrains on a stream of random, uncurated images that is periodically resampled. Here a
source lists encoded images (files or records); `image_stream` turns it into `(name, uint8
[h, w, 3])` elements:

  passes (Dataset.counter) -> one listing per pass (re-read every pass: new files are picked
  up, deleted ones are gone; `refresh_every` ends a pass early, SEER's periodic resampling)
  -> shard per input pipeline -> shuffle buffer (within the pass) -> read + decode (never
  raises, see decode.py)
  -> count in DecodeStats -> drop the bad ones -> prefetch.

Memory does not grow with the number of files: directory and glob listings stream from a
Python generator in pages of 65,536 paths (shuffled per page, directories visited in a seeded
random order, so the walk is different every pass but the same on every worker, which keeps
the shards disjoint); text lists and TFRecord shards stream through tf.data readers. The mixing
is therefore local (page + shuffle buffer), as for any streaming reader; sharded TFRecords give
a better global mix on huge collections (`bin/pack_tfrecords.py`).

The iterator can be saved with `tf.train.Checkpoint` and restored into a freshly built stream
(the listing of the current pass is regenerated from its seed; if files changed meanwhile, the
resumed pass follows the new listing).

Sharding follows `tf.distribute.InputContext` without importing it (DESIGN.md section 2: data
code does not touch tf.distribute): pass the context object, or `num_input_pipelines` and
`input_pipeline_id`. Files are sharded by element of the listing, TFRecords by shard file when
there are at least as many files as pipelines.
"""

import collections
import os
import threading

import numpy as np
import tensorflow as tf

from seer_tf.data import decode as decode_lib

# Extensions a directory walk keeps (case-insensitive). TIFF is listed on purpose: such files
# exist in the wild, cannot be decoded by TensorFlow and are then counted, not silently ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".jxl", ".tif", ".tiff")
AUTOTUNE = tf.data.AUTOTUNE
_CHUNK = 65536  # paths shuffled together by the streaming listings
_PAGER_LOCK = threading.Lock()


def pipeline_shard(input_context=None, num_input_pipelines=None, input_pipeline_id=None):
    """(num_input_pipelines, input_pipeline_id) from an InputContext-like object or ints."""
    if input_context is not None:
        return int(input_context.num_input_pipelines), int(input_context.input_pipeline_id)
    n = 1 if num_input_pipelines is None else int(num_input_pipelines)
    i = 0 if input_pipeline_id is None else int(input_pipeline_id)
    if not 0 <= i < n:
        raise ValueError(f"input_pipeline_id {i} not in [0, {n})")
    return n, i


def _is_remote(path):
    return "://" in path


def _chunked_shuffle(paths, rng, chunk=None):
    """Yield numpy arrays of paths, each a shuffled chunk of the incoming stream."""
    chunk = chunk or _CHUNK
    buf = []
    for p in paths:
        buf.append(p)
        if len(buf) >= chunk:
            rng.shuffle(buf)
            yield np.array(buf, dtype=object)
            buf = []
    if buf:
        rng.shuffle(buf)
        yield np.array(buf, dtype=object)


def _walk(root, rng, extensions):
    """Files under root, directories visited in a random (rng) order; symlinked dirs skipped."""
    stack = [root]
    while stack:
        directory = stack.pop()
        files, subdirs = [], []
        if _is_remote(directory):
            try:
                names = tf.io.gfile.listdir(directory)
            except tf.errors.OpError:
                continue
            for name in names:
                path = os.path.join(directory, name.rstrip("/"))
                (subdirs if name.endswith("/") or tf.io.gfile.isdir(path) else files).append(path)
        else:
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for e in entries:
                try:
                    is_dir = e.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                (subdirs if is_dir else files).append(e.path)
        subdirs.sort()
        rng.shuffle(subdirs)
        stack.extend(subdirs)
        for path in files:
            if extensions is None or path.lower().endswith(extensions):
                yield path


class ImageSource:
    """Base: a listing of encoded images, re-read every pass. Subclasses define `_one_pass`."""

    reads_files = True  # elements are paths to read (False: they are the encoded bytes)

    def records(self, num_input_pipelines=1, input_pipeline_id=0, seed=0, num_epochs=None,
                refresh_every=None, shuffle_buffer=0):
        """Dataset of (name, path-or-bytes) over `num_epochs` passes (None: forever).

        `refresh_every`: at most this many listing elements per pass (counted before sharding),
        then the listing is read again: the online refresh. `shuffle_buffer`: a shuffle buffer
        within each pass (so a small source does not need buffer-size re-listings to start).
        """
        def one_pass(index):
            ds = self._one_pass(index, seed)
            if refresh_every:
                ds = ds.take(refresh_every)
            ds = ds.shard(num_input_pipelines, input_pipeline_id)
            return _shuffle(ds, shuffle_buffer, seed, index)

        return _passes(one_pass, num_epochs, repr(self))

    def _one_pass(self, index, seed):
        raise NotImplementedError


def _shuffle(ds, buffer, seed, index):
    if not buffer or buffer <= 1:
        return ds
    # Dataset.shuffle needs a Python seed: `index` is a tensor inside flat_map, so passes share
    # the buffer's seed and differ through the per-pass listing order instead.
    del index
    return ds.shuffle(buffer, seed=int(seed) % (2**63 - 1))


def _passes(one_pass, num_epochs, what):
    """Concatenate one_pass(0), one_pass(1), ...; an empty pass of an endless stream raises.

    Without the check, `Dataset.counter().flat_map` over a listing that became empty (or a shard
    that gets no files) would spin forever without producing or failing. Each pass ends with a
    marker; two markers in a row mean a pass without elements.
    """
    if num_epochs is not None:
        return tf.data.Dataset.range(num_epochs).flat_map(one_pass)
    marker = tf.data.Dataset.from_tensors((tf.constant(""), tf.constant(""), True))
    marked = tf.data.Dataset.counter().flat_map(
        lambda i: one_pass(i).map(lambda n, p: (n, p, False)).concatenate(marker))

    def count_markers(run, element):
        run = tf.where(element[2], run + 1, 0)
        return run, (element, run)

    def check(element, run):
        message = f"{what}: a pass over the source gave no elements (empty listing or shard)"
        with tf.control_dependencies([tf.debugging.assert_less(run, 2, message=message)]):
            return tf.identity(element[2]), element[0], element[1]

    ds = marked.scan(tf.constant(0), count_markers).map(check)
    return ds.filter(lambda is_marker, n, p: tf.logical_not(is_marker)).map(
        lambda is_marker, n, p: (n, p))


class _GeneratedListing(ImageSource):
    """Listing produced by a Python generator of path chunks, re-run every pass.

    The chunks are served as pages through `tf.py_function` (page j of pass i), not with
    `Dataset.from_generator`, whose iterators cannot be checkpointed: here a restored iterator
    asks for its page again, and the pager re-walks the (seeded, hence identical) listing up to
    it. In normal running pages are asked in order and come from the live generator.
    """

    def _paths(self, rng):
        raise NotImplementedError

    def _generate(self, index, seed):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])
        empty = True
        for chunk in _chunked_shuffle(self._paths(rng), rng):
            empty = False
            yield chunk
        if empty:
            raise FileNotFoundError(f"{self}: no files found (pass {index})")

    def _page(self, index, seed, page):
        key, page = (int(index), int(seed)), int(page)
        with _PAGER_LOCK:
            live = getattr(self, "_live", None)
            if live is None:
                live = self._live = collections.OrderedDict()
            next_page, chunks = live.pop(key, (0, None))
            if chunks is None or next_page != page:  # first page, or a restored iterator
                chunks, next_page = self._generate(*key), 0
                for _ in range(page):
                    next(chunks, None)
            chunk = next(chunks, None)
            if chunk is None:
                return np.zeros([0], dtype=object)  # end of the pass
            live[key] = (page + 1, chunks)
            while len(live) > 4:  # passes cut short by refresh_every leave a generator behind
                live.popitem(last=False)
            return chunk

    def _one_pass(self, index, seed):
        def page(j):
            paths = tf.py_function(self._page, [index, seed, j], tf.string)
            return tf.ensure_shape(paths, [None])

        pages = tf.data.Dataset.counter().map(page).take_while(lambda p: tf.size(p) > 0)
        return pages.unbatch().map(lambda p: (p, p))

    def check(self):
        """Raise FileNotFoundError now if the listing is empty (instead of at the first batch)."""
        for _ in self._paths(np.random.default_rng(0)):
            return self
        raise FileNotFoundError(f"{self}: no files found")


class DirectorySource(_GeneratedListing):
    """All files with an image extension under one or more directories, recursively.

    Subdirectories are walked (a directory named `x.jpg` is a directory, not a bad image);
    symlinked directories are not followed (no cycles); a dangling symlink with an image name is
    listed and then counted as `unreadable`. `extensions=None` lists every file.
    """

    def __init__(self, roots, extensions=IMAGE_EXTENSIONS):
        self.roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
        self.roots = [os.fspath(r) for r in self.roots]
        self.extensions = None if extensions is None else tuple(e.lower() for e in extensions)

    def _paths(self, rng):
        roots = list(self.roots)
        rng.shuffle(roots)
        for root in roots:
            yield from _walk(root, rng, self.extensions)

    def __repr__(self):
        return f"DirectorySource({self.roots})"


class GlobSource(_GeneratedListing):
    """Files matching glob patterns (`**` recursive); directories that match are skipped."""

    def __init__(self, patterns):
        self.patterns = [patterns] if isinstance(patterns, str) else list(patterns)

    def _paths(self, rng):
        import glob as glob_lib

        for pattern in self.patterns:
            if _is_remote(pattern):
                yield from tf.io.gfile.glob(pattern)
                continue
            for path in glob_lib.iglob(pattern, recursive=True):
                if not os.path.isdir(path):
                    yield path

    def __repr__(self):
        return f"GlobSource({self.patterns})"


class FileListSource(ImageSource):
    """Text files with one image path per line; relative paths are relative to the list file.

    Blank lines and lines starting with '#' are ignored. The lists are read by
    `tf.data.TextLineDataset` every pass (editing a list is the refresh), so a list of a billion
    lines costs no memory.
    """

    def __init__(self, list_files):
        self.list_files = [list_files] if isinstance(list_files, str) else list(list_files)

    def check(self):
        for f in self.list_files:
            if not tf.io.gfile.exists(f):
                raise FileNotFoundError(f)
        return self

    def _one_pass(self, index, seed):
        files = tf.constant(self.list_files)
        dirs = tf.constant([os.path.dirname(os.path.abspath(f)) if not _is_remote(f)
                            else f.rsplit("/", 1)[0] for f in self.list_files])

        def lines(f, d):
            ds = tf.data.TextLineDataset(f).map(tf.strings.strip)
            ds = ds.filter(lambda s: tf.logical_and(tf.strings.length(s) > 0,
                                                    tf.strings.substr(s, 0, 1) != "#"))
            absolute = r"(/|[A-Za-z][A-Za-z0-9+.-]*://).*"
            return ds.map(lambda s: tf.where(tf.strings.regex_full_match(s, absolute), s,
                                             tf.strings.join([d, s], "/")))

        ds = tf.data.Dataset.from_tensor_slices((files, dirs)).flat_map(lines)
        return ds.map(lambda p: (p, p))

    def __repr__(self):
        return f"FileListSource({self.list_files})"


class TFRecordSource(ImageSource):
    """tf.train.Example records in TFRecord shards (e.g. written by bin/pack_tfrecords.py).

    Shards are re-globbed every pass (new shards are picked up), shuffled with the pass seed and
    interleaved. Names are the `name_key` feature when present, else `shard:index`.
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
            raise FileNotFoundError(f"{self}: no files match")
        return self

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
        seeds = tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)])
        return tf.random.experimental.stateless_shuffle(files, seeds)

    def _read(self, files):
        def records(f):
            ds = tf.data.TFRecordDataset(f, compression_type=self.compression_type)
            return ds.enumerate().map(lambda i, r: self._parse(f, i, r))

        return tf.data.Dataset.from_tensor_slices(files).interleave(
            records, cycle_length=self.cycle_length, num_parallel_calls=AUTOTUNE)

    def records(self, num_input_pipelines=1, input_pipeline_id=0, seed=0, num_epochs=None,
                refresh_every=None, shuffle_buffer=0):
        by_file = len(tf.io.gfile.glob(self.patterns)) >= num_input_pipelines > 1
        if not by_file:
            return super().records(num_input_pipelines, input_pipeline_id, seed, num_epochs,
                                   refresh_every, shuffle_buffer)

        def one_pass(index):  # whole shard files per pipeline: no wasted reads
            files = self._shard_files(index, seed)[input_pipeline_id::num_input_pipelines]
            ds = self._read(files)
            ds = ds.take(refresh_every) if refresh_every else ds
            return _shuffle(ds, shuffle_buffer, seed, index)

        return _passes(one_pass, num_epochs, repr(self))

    def _one_pass(self, index, seed):
        return self._read(self._shard_files(index, seed))

    def __repr__(self):
        return f"TFRecordSource({self.patterns})"


class TfdsSource(ImageSource):
    """A TFDS dataset already prepared under `data_dir`; never downloads.

    Images are read as encoded bytes (`SkipDecoding`) so that they go through the same guarded
    decoder; sharding uses `tfds.even_splits` (each pipeline reads only its part). The dataset is
    static, so there is nothing to refresh; files are reshuffled every epoch.
    """

    reads_files = False

    def __init__(self, name, data_dir=None, split="train", image_key="image"):
        self.name, self.data_dir, self.split, self.image_key = name, data_dir, split, image_key

    def builder(self):
        import tensorflow_datasets as tfds

        return tfds.builder(self.name, data_dir=self.data_dir)

    def check(self):
        self.builder()  # raises for unknown names; as_dataset raises when not prepared
        return self

    def records(self, num_input_pipelines=1, input_pipeline_id=0, seed=0, num_epochs=None,
                refresh_every=None, shuffle_buffer=0):
        import tensorflow_datasets as tfds

        del refresh_every  # static data
        split = self.split
        if num_input_pipelines > 1:
            split = tfds.even_splits(split, num_input_pipelines)[input_pipeline_id]
        ds = self.builder().as_dataset(
            split=split, shuffle_files=True,
            decoders={self.image_key: tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(shuffle_seed=seed, add_tfds_id=True))
        ds = ds.map(lambda ex: (ex["tfds_id"], ex[self.image_key]))
        if shuffle_buffer and shuffle_buffer > 1:  # reshuffled every epoch, filled once per epoch
            ds = ds.shuffle(shuffle_buffer, seed=seed)
        return ds.repeat(num_epochs)

    def __repr__(self):
        return f"TfdsSource({self.name!r}, {self.data_dir!r}, {self.split!r})"


def decoded(records, reads_files, stats=None, max_pixels=decode_lib.DEFAULT_MAX_PIXELS,
            max_decode_pixels=decode_lib.DEFAULT_MAX_DECODE_PIXELS,
            num_parallel_calls=AUTOTUNE, deterministic=None):
    """(name, payload) -> (name, uint8 [h, w, 3]) for the good ones; bad ones counted in stats."""

    def decode_one(name, payload):
        if reads_files:
            status, image = decode_lib.read_and_decode(payload, max_pixels, max_decode_pixels)
        else:
            status, image = decode_lib.decode(payload, max_pixels, max_decode_pixels)
        return name, status, image

    ds = records.map(decode_one, num_parallel_calls=num_parallel_calls,
                     deterministic=deterministic)
    if stats is not None:  # sequential: counts are exact and in stream order
        ds = ds.map(lambda n, s, i: (n, stats.record(n, s), i))
    ds = ds.filter(lambda n, s, i: tf.equal(s, decode_lib.OK))
    return ds.map(lambda n, s, i: (n, i))


def image_stream(source, *, input_context=None, num_input_pipelines=None,
                 input_pipeline_id=None, seed=0, shuffle_buffer=10_000, refresh_every=None,
                 num_epochs=None, stats=None, max_pixels=decode_lib.DEFAULT_MAX_PIXELS,
                 max_decode_pixels=decode_lib.DEFAULT_MAX_DECODE_PIXELS,
                 num_parallel_calls=AUTOTUNE, deterministic=None, prefetch=True):
    """Decoded images `(name, uint8 [h, w, 3])` from `source`; returns (dataset, stats).

    Infinite unless `num_epochs`; shuffled with `seed` (same seed, same stream); each input
    pipeline sees a disjoint part. `stats` (a DecodeStats, created if None) counts the skipped
    files by reason and keeps the first bad names.
    """
    n, i = pipeline_shard(input_context, num_input_pipelines, input_pipeline_id)
    stats = stats if stats is not None else decode_lib.DecodeStats()
    ds = source.records(n, i, seed=seed, num_epochs=num_epochs, refresh_every=refresh_every,
                        shuffle_buffer=shuffle_buffer)
    ds = decoded(ds, source.reads_files, stats, max_pixels, max_decode_pixels,
                 num_parallel_calls, deterministic)
    if prefetch:
        ds = ds.prefetch(AUTOTUNE)
    return ds.with_options(checkpointable_options()), stats


def checkpointable_options():
    """tf.data options that let `tf.train.Checkpoint` save the iterator of these pipelines.

    DecodeStats' tables are external state; they are only counters, so the saved iterator
    ignores them (a resumed run keeps counting from what its process holds).
    """
    options = tf.data.Options()
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.IGNORE)
    return options
