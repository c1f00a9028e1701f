"""Directory and glob listings that stream: a seeded random walk, paths as bytes, never raises.

SEER's stream is a random sample of a huge, uncurated, changing collection. A walk is re-run
every pass (new files are picked up, deleted ones are gone) with a generator seeded by
(seed, pass): directories are visited in a random order and the paths are served in pages of
`CHUNK` shuffled together, so each pass (and each `refresh_every` prefix of a pass) follows a
different order, identical on every worker (the shards stay disjoint).

How well this mixes: a pass is a random permutation of the directories and, within each
directory, of its files (a directory's entries are in memory once listed), then pages are
shuffled again; a refresh prefix of a pass therefore samples the first directories of a random
order (one flat directory: a uniform sample of it). With `strides` (passes.ImageSource.records)
a pass is cut into `strides` interleaved sub-walks taken in a random order, so a refresh draws
from the whole listing rather than from its first `refresh_every` paths; the shuffle buffer
mixes what is left.

Paths are bytes end to end (`os.scandir(bytes)`), so a file name that is not UTF-8 is read like
any other. What cannot be listed does not stop a run: an unreadable directory (no permission,
removed during the walk) or a remote listing with an undecodable name becomes a *skip marker*
(decode.skip_marker) that DecodeStats counts as `unreadable_dir` / `bad_name` with its path.

Pages are served through `tf.py_function` (page j of pass i), not `Dataset.from_generator`, whose
iterators cannot be checkpointed: a restored iterator asks for its page again and the pager
re-walks the (seeded, hence identical) listing up to it. The pager never raises: an exception
inside a py_function is re-raised on a tf.data thread, and under MultiWorkerMirroredStrategy the
process then hung at exit, its interpreter finalizer waiting on that thread.
"""

import collections
import fnmatch
import os
import re
import threading

import numpy as np
import tensorflow as tf

from seer_tf.data import decode as decode_lib

CHUNK = 65536  # paths shuffled together
_PAGER_LOCK = threading.Lock()
_MAGIC = re.compile(rb"[*?[]")


def is_remote(path):
    return "://" in os.fsdecode(path)


def marker(status, name):
    """A listing element that counts `status` for `name` instead of being read."""
    return decode_lib.skip_marker(status) + os.fsencode(name)


def chunked_shuffle(paths, rng, chunk=None):
    """Yield object arrays of bytes paths, each a shuffled chunk of the incoming stream."""
    chunk = chunk or CHUNK
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


def _list_dir(directory):
    """(files, subdirs) of one directory as bytes paths; raises OSError/UnicodeError."""
    files, subdirs = [], []
    if is_remote(directory):
        for name in tf.io.gfile.listdir(os.fsdecode(directory)):
            path = os.path.join(os.fsdecode(directory), name.rstrip("/"))
            is_dir = name.endswith("/") or tf.io.gfile.isdir(path)
            (subdirs if is_dir else files).append(path.encode("utf-8", "surrogateescape"))
        return files, subdirs
    with os.scandir(directory) as entries:
        for e in entries:
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            (subdirs if is_dir else files).append(e.path)
    return files, subdirs


def walk(root, rng, accept=None, max_depth=None):
    """Bytes paths of files under root (accept(relative bytes path) -> bool), directories in a
    random (rng) order; symlinked directories are not followed. Unreadable directories yield a
    marker instead."""
    root = os.fsencode(root)
    stack = [(root, 0)]
    while stack:
        directory, depth = stack.pop()
        try:
            files, subdirs = _list_dir(directory)
        except UnicodeError:
            yield marker(decode_lib.BAD_NAME, directory)
            continue
        except (OSError, tf.errors.OpError):
            yield marker(decode_lib.UNREADABLE_DIR, directory)
            continue
        if max_depth is None or depth + 1 < max_depth:
            subdirs.sort()
            rng.shuffle(subdirs)
            stack.extend((d, depth + 1) for d in subdirs)
        files = [p for p in files if accept is None or accept(os.path.relpath(p, root))]
        rng.shuffle(files)  # the directory is in memory anyway: a full shuffle is free
        yield from files


class GeneratedListing:
    """Mixin: a listing produced by `_paths(rng)` (bytes), served as checkpointable pages."""

    def _paths(self, rng):
        raise NotImplementedError

    def _generate(self, index, seed):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])
        try:
            yield from chunked_shuffle(self._paths(rng), rng)
        except Exception as e:  # noqa: BLE001  (never raise on a tf.data thread; see above)
            yield np.array([marker(decode_lib.UNREADABLE_DIR, f"{self}: {e}")], dtype=object)

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
        return pages.unbatch().map(lambda p: (decode_lib.marker_name(p), p))

    def first_path(self):
        """The first path of a listing (None if empty), for start-up checks."""
        for path in self._paths(np.random.default_rng(0)):
            if not path.startswith(decode_lib.SKIP_PREFIX):
                return path
        return None


def glob_matcher(pattern):
    """(root bytes, accept(relative bytes) -> bool, max_depth or None) of a glob pattern.

    Python's glob semantics for the pattern's components (`*`, `?`, `[...]` within a component,
    `**` any number of components), except that hidden files are matched as well.
    """
    parts = os.fsencode(pattern).split(b"/")
    fixed = 0
    while fixed < len(parts) - 1 and not _MAGIC.search(parts[fixed]):
        fixed += 1
    root = b"/".join(parts[:fixed]) or (b"/" if pattern.startswith("/") else b".")
    rest = parts[fixed:]
    regexes = [None if p == b"**" else re.compile(os.fsencode(fnmatch.translate(os.fsdecode(p))))
               for p in rest]

    def match(pat, names):
        if not pat:
            return not names
        if pat[0] is None:
            return any(match(pat[1:], names[k:]) for k in range(len(names) + 1))
        return bool(names) and bool(pat[0].match(names[0])) and match(pat[1:], names[1:])

    max_depth = None if None in regexes else len(regexes)
    return root, lambda rel: match(regexes, rel.split(b"/")), max_depth
