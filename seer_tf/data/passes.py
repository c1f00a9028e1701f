"""The pass loop shared by every source: per-pass order from (seed, pass), refresh, sharding.

See sources.py for the whole stream. A pass is one read of a source's listing; `pass_seed`
derives all of its randomness (listing order, strides, shuffle buffer) from (seed, pass), so
that every pass differs, every worker draws the same order (disjoint shards) and a rerun with
the same seed repeats the stream.
"""

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def pipeline_shard(input_context=None, num_input_pipelines=None, input_pipeline_id=None):
    """(num_input_pipelines, input_pipeline_id) from an InputContext-like object or ints."""
    if input_context is not None:
        return int(input_context.num_input_pipelines), int(input_context.input_pipeline_id)
    n = 1 if num_input_pipelines is None else int(num_input_pipelines)
    i = 0 if input_pipeline_id is None else int(input_pipeline_id)
    if not 0 <= i < n:
        raise ValueError(f"input_pipeline_id {i} not in [0, {n})")
    return n, i


def pass_seed(seed, index):
    """int64 seed of pass `index` (a tensor inside the pass loop): the listing order, strides."""
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)])
    return tf.random.stateless_uniform([], key, minval=None, maxval=None, dtype=tf.int64)


class ImageSource:
    """Base: a listing of encoded images, re-read every pass. Subclasses define `_one_pass`."""

    reads_files = True  # elements are paths to read (False: they are the encoded bytes)

    def records(self, num_input_pipelines=1, input_pipeline_id=0, seed=0, num_epochs=None,
                refresh_every=None, shuffle_buffer=0, strides=1):
        """Dataset of (name, path-or-bytes) over `num_epochs` passes (None: forever).

        `refresh_every`: at most this many listing elements per pass (counted before sharding),
        then the listing is read again: the online refresh. `shuffle_buffer`: see `_shuffle`.
        `strides`: see the module docstring.
        """
        def one_pass(index):
            ds = self._strided_pass(index, seed, strides)
            if refresh_every:
                ds = ds.take(refresh_every)
            return ds.shard(num_input_pipelines, input_pipeline_id)

        return _shuffle(_passes(one_pass, num_epochs, repr(self)), shuffle_buffer, seed)

    def _strided_pass(self, index, seed, strides):
        if not strides or strides <= 1:
            return self._one_pass(index, seed)
        order = tf.random.experimental.stateless_shuffle(
            tf.range(strides, dtype=tf.int64), tf.stack([pass_seed(seed, index), 1]))
        return tf.data.Dataset.from_tensor_slices(order).flat_map(
            lambda k: self._one_pass(index, seed).shard(strides, k))

    def _one_pass(self, index, seed):
        raise NotImplementedError

    def check(self):
        """Raise UsageError (one line naming the path) if the source cannot give any image."""
        return self


def check_source(source):
    """`source.check()`: call it when the run is built, before any graph (missing paths, empty
    globs and unprepared TFDS data are then one UsageError line, not a traceback at step 1)."""
    return source.check()


def _shuffle(ds, buffer, seed):
    """One shuffle buffer over the stream of passes, seeded with `seed`.

    Its random state runs on across passes (so every pass is shuffled differently, and the
    state is saved with the iterator); a buffer larger than a pass mixes consecutive passes.
    The seed is a Python int on purpose: `Dataset.shuffle` with a tensor seed fails to trace
    when the global seed is 0 (`keras.utils.set_random_seed(0)`, TF's random_seed.get_seed
    compares the seed pair with (0, 0) in Python).
    """
    if not buffer or buffer <= 1:
        return ds
    return ds.shuffle(buffer, seed=int(seed) % (2**63 - 1))


def _passes(one_pass, num_epochs, what):
    """Concatenate one_pass(0), one_pass(1), ...; an empty pass of an endless stream raises.

    Without the check, `Dataset.counter().flat_map` over a listing that became empty (or a shard
    that gets no files) would spin forever without producing or failing. Each pass ends with a
    marker; two markers in a row mean a pass without elements.
    """
    if num_epochs is not None:
        return tf.data.Dataset.range(num_epochs).flat_map(one_pass)
    marker = tf.data.Dataset.from_tensors((tf.constant(b""), tf.constant(b""), True))
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
