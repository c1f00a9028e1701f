"""Sources of unlabeled images -> an infinite, sharded, shuffled, refreshable, decoded stream.

SEER pretrains on a stream of random, uncurated images that is periodically resampled. Here a
source lists encoded images (files or records); `image_stream` turns it into `(name, uint8
[h, w, 3])` elements:

  passes (Dataset.counter) -> one listing per pass, in an order drawn from (seed, pass)
  (re-read every pass: new files are picked up, deleted ones are gone; `refresh_every` ends a
  pass early, SEER's periodic resampling) -> shard per input pipeline -> one shuffle buffer
  over the passes, seeded by `seed` -> read + decode (never raises, see decode.py) -> count in
  DecodeStats -> drop the bad ones -> prefetch.

Every pass has its own order, the same on every worker (so shards stay disjoint), and the same
in a rerun with the same seed. Mixing per source (listing.py for directories and globs):
  * directories / globs: directories in a random order, paths shuffled in pages of 65,536.
  * text lists: the list files in a random order, interleaved line by line.
  * TFRecords: shard files in a random order, `cycle_length` of them interleaved.
  * TFDS: its file shuffle and a shuffle buffer, reseeded every epoch by tf.data.
  * `strides` > 1 (listings too large to shuffle in memory): a pass is `strides` sub-passes
    over the listing, sub-pass k keeping every strides-th element from offset perm[k], perm
    drawn from (seed, pass). A refresh of R elements then samples 1/strides of the *whole*
    listing, spread evenly over it, instead of its first R elements; choose strides >= listing
    size / R (SEER: 1B images / (5000 steps x 8192) -> 25). The cost is that each sub-pass
    re-reads the listing (strides x listing reads per full pass; a refresh reads about one).
    The order inside a sub-pass is the listing's, mixed by the shuffle buffer.

Resume: `image_stream`'s iterator (and `pipeline.training_stream`'s) can be saved with
`tf.train.Checkpoint` and restored into a freshly built stream: every stage is a tf.data
dataset with saveable state (directory listings regenerate their page from the pass seed; if
files changed meanwhile, the resumed pass follows the new listing). The shuffle buffer is part
of that state: see `checkpointable_options`.

Sharding follows `tf.distribute.InputContext` without importing it (docs/design.md section 2: data
code does not touch tf.distribute): pass the context object, or `num_input_pipelines` and
`input_pipeline_id`. Files are sharded by element of the listing, TFRecords by shard file when
there are at least as many files as pipelines.
"""

import os

import tensorflow as tf

from seer_tf.data import decode as decode_lib
from seer_tf.data import listing
from seer_tf.data.passes import (  # noqa: F401  (the public API of sources)
    AUTOTUNE, ImageSource, _passes, _shuffle, check_source, pass_seed, pipeline_shard)
from seer_tf.data.record_sources import TFRecordSource, TfdsSource  # noqa: F401
from seer_tf.usage import UsageError

# Extensions a directory walk keeps (case-insensitive). TIFF, HEIC and AVIF are listed on
# purpose: such files exist in the wild, cannot be decoded by TensorFlow and are then counted
# (`unsupported_format`), not silently ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".jxl", ".tif", ".tiff",
                    ".heic", ".heif", ".avif")


def _no_files(what):
    return UsageError(f"{what}: no image files found")


class DirectorySource(listing.GeneratedListing, ImageSource):
    """All files with an image extension under one or more directories, recursively.

    Subdirectories are walked (a directory named `x.jpg` is a directory, not a bad image);
    symlinked directories are not followed (no cycles); a dangling symlink with an image name is
    listed and then counted as `unreadable`. `extensions=None` lists every file.
    """

    def __init__(self, roots, extensions=IMAGE_EXTENSIONS):
        roots = [roots] if isinstance(roots, (str, bytes, os.PathLike)) else list(roots)
        self.roots = [os.fsdecode(r) for r in roots]
        self.extensions = None if extensions is None else tuple(
            os.fsencode(e.lower()) for e in extensions)

    def _paths(self, rng):
        roots = list(self.roots)
        rng.shuffle(roots)
        exts = self.extensions
        accept = None if exts is None else (lambda rel: rel.lower().endswith(exts))
        for root in roots:
            yield from listing.walk(root, rng, accept)

    def check(self):
        for root in self.roots:
            if not listing.is_remote(root) and not os.path.isdir(root):
                raise UsageError(f"data path {root}: no such directory")
        if self.first_path() is None:
            raise _no_files(", ".join(self.roots))
        return self

    def __repr__(self):
        return f"DirectorySource({self.roots})"


class GlobSource(listing.GeneratedListing, ImageSource):
    """Files matching glob patterns (`**` recursive); directories that match are skipped.

    Local patterns are walked like directories (random order per pass, see listing.py), not
    expanded by `glob`, whose listing order is fixed; remote ones use `tf.io.gfile.glob`.
    """

    def __init__(self, patterns):
        self.patterns = [patterns] if isinstance(patterns, str) else list(patterns)

    def _paths(self, rng):
        patterns = list(self.patterns)
        rng.shuffle(patterns)
        for pattern in patterns:
            if listing.is_remote(pattern):
                yield from (p.encode("utf-8", "surrogateescape")
                            for p in tf.io.gfile.glob(pattern))
                continue
            root, accept, depth = listing.glob_matcher(pattern)
            yield from listing.walk(root, rng, accept, depth)

    def check(self):
        if self.first_path() is None:
            raise UsageError(f"data path {', '.join(self.patterns)}: the glob matches no file")
        return self

    def __repr__(self):
        return f"GlobSource({self.patterns})"


class FileListSource(ImageSource):
    """Text files with one image path per line; relative paths are relative to the list file.

    Blank lines and lines starting with '#' are ignored. The lists are read by
    `tf.data.TextLineDataset` every pass (editing a list is the refresh), so a list of a billion
    lines costs no memory; every pass takes the list files in a new order and interleaves them
    line by line (split a huge list into shards for a better mix, and see `strides`).
    """

    def __init__(self, list_files, cycle_length=16):
        self.list_files = [list_files] if isinstance(list_files, str) else list(list_files)
        self.cycle_length = cycle_length

    def check(self):
        for f in self.list_files:
            if not tf.io.gfile.exists(f):
                raise UsageError(f"data path {f}: no such file list")
        return self

    def _one_pass(self, index, seed):
        files = tf.constant(self.list_files)
        dirs = tf.constant([os.path.dirname(os.path.abspath(f)) if not listing.is_remote(f)
                            else f.rsplit("/", 1)[0] for f in self.list_files])
        order = tf.random.experimental.stateless_shuffle(
            tf.range(len(self.list_files)), tf.stack([pass_seed(seed, index), 2]))

        def lines(k):
            f, d = files[k], dirs[k]
            ds = tf.data.TextLineDataset(f).ignore_errors().map(tf.strings.strip)
            ds = ds.filter(lambda s: tf.logical_and(tf.strings.length(s) > 0,
                                                    tf.strings.substr(s, 0, 1) != "#"))
            absolute = r"(/|[A-Za-z][A-Za-z0-9+.-]*://).*"
            return ds.map(lambda s: tf.where(tf.strings.regex_full_match(s, absolute), s,
                                             tf.strings.join([d, s], "/")))

        ds = tf.data.Dataset.from_tensor_slices(order).interleave(
            lines, cycle_length=min(len(self.list_files), self.cycle_length), block_length=1)
        return ds.map(lambda p: (p, p))

    def __repr__(self):
        return f"FileListSource({self.list_files})"


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
                 num_parallel_calls=AUTOTUNE, deterministic=None, prefetch=True, strides=1):
    """Decoded images `(name, uint8 [h, w, 3])` from `source`; returns (dataset, stats).

    Infinite unless `num_epochs`; shuffled with `seed` (same seed, same stream); each input
    pipeline sees a disjoint part. `stats` (a DecodeStats, created if None) counts the skipped
    files by reason and keeps the first bad names. `strides`: see the module docstring.
    """
    n, i = pipeline_shard(input_context, num_input_pipelines, input_pipeline_id)
    stats = stats if stats is not None else decode_lib.DecodeStats()
    ds = source.records(n, i, seed=seed, num_epochs=num_epochs, refresh_every=refresh_every,
                        shuffle_buffer=shuffle_buffer, strides=strides)
    ds = decoded(ds, source.reads_files, stats, max_pixels, max_decode_pixels,
                 num_parallel_calls, deterministic)
    if prefetch:
        ds = ds.prefetch(AUTOTUNE)
    return ds.with_options(checkpointable_options()), stats


def checkpointable_options():
    """tf.data options that let `tf.train.Checkpoint` save the iterator of these pipelines.

    What is saved: positions of every reader, the elements in every shuffle and prefetch buffer.
    A shuffle buffer holds (name, path) for file sources but (name, encoded image) for
    TFRecord/TFDS sources, so it costs about shuffle_buffer x encoded size per input pipeline.
    Measured on 64 photos of 2.9 KB (JPEG/PNG, 64 x 48; the buffer full, 64 elements): 2,881
    bytes per buffered element from TFRecords, 290 from a directory (two ~140-byte paths). For
    web-size JPEGs (~100 KB) a 10,000-element buffer is ~1 GB per pipeline and checkpoint;
    prefetched batches of crops are stored as well. Use `data.exact_resume=False`
    (bin/pretrain) when that is too much. Not saved: DecodeStats'
    tables and TFRecordSource's size table (external state; counters only, a resumed run keeps
    counting from zero), and the directory pager (it regenerates its page from the pass seed).
    """
    options = tf.data.Options()
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.IGNORE)
    return options
