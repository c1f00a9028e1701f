"""seer_tf's kernels: which implementation runs each primitive of the RegNetY trunk.

`seer_tf.models` describes the architecture (SEER's RegNetY, as in the paper and VISSL) and
asks here for each convolution and BatchNorm; this package picks TF's, XLA's or seer_tf's
native C++ kernels (compiled on first use, `native.py`) for the device, the CPU's instruction
sets, the dtype and whether the step is XLA-compiled (docs/kernels.md).

`inside_xla()`: the training loop XLA-compiles the replica step (`tf.function(jit_compile=
True)`), where no native op may run (they have no XLA kernel); layers built inside this context
take the kernels XLA compiles.
"""

from __future__ import annotations

import contextlib
import threading
import weakref

import tensorflow as tf

_LOCAL = threading.local()
_GRAPHS_LOCK = threading.Lock()
_GRAPHS = weakref.WeakKeyDictionary()  # graph -> how many inside_xla() contexts entered on it


@contextlib.contextmanager
def inside_xla():
    """Kernels for a function that XLA compiles, while tracing it.

    Thread-local, so a MirroredStrategy replica thread may enter it; also attached to the graph
    being traced, so replica threads that trace into the graph of the thread that entered it
    (MirroredStrategy.run inside a tf.function) see it as well.
    """
    graph = tf.compat.v1.get_default_graph()
    _LOCAL.depth = getattr(_LOCAL, "depth", 0) + 1
    with _GRAPHS_LOCK:
        _GRAPHS[graph] = _GRAPHS.get(graph, 0) + 1
    try:
        yield
    finally:
        _LOCAL.depth -= 1
        with _GRAPHS_LOCK:
            _GRAPHS[graph] -= 1
            if not _GRAPHS[graph]:
                del _GRAPHS[graph]


def is_inside_xla() -> bool:
    """Whether this thread, or the graph it is tracing (or one enclosing it), is inside
    `inside_xla()`."""
    if getattr(_LOCAL, "depth", 0):
        return True
    if not _GRAPHS:
        return False
    graph = tf.compat.v1.get_default_graph()
    with _GRAPHS_LOCK:
        while graph is not None:
            if graph in _GRAPHS:
                return True
            graph = getattr(graph, "outer_graph", None)
    return False
