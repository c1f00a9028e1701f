"""`inside_xla()`: the kernels of a step that XLA compiles (the training loop's replica step).

Why: seer_tf's native CPU ops (`native.py`) have no XLA kernel, so a `tf.function(jit_compile=
True)` that reaches one fails to compile; the selection table (`select.py`) reads
`is_inside_xla()` and picks what XLA compiles instead.
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

    Thread-local, so a MirroredStrategy replica thread may enter it; entered while tracing a
    tf.function, also attached to that graph, so the replica threads that trace into it
    (MirroredStrategy.run inside the tf.function) see it as well.
    """
    graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
    _LOCAL.depth = getattr(_LOCAL, "depth", 0) + 1
    if graph is not None:
        with _GRAPHS_LOCK:
            _GRAPHS[graph] = _GRAPHS.get(graph, 0) + 1
    try:
        yield
    finally:
        _LOCAL.depth -= 1
        if graph is not None:
            with _GRAPHS_LOCK:
                _GRAPHS[graph] -= 1
                if not _GRAPHS[graph]:
                    del _GRAPHS[graph]


def is_inside_xla() -> bool:
    """Whether this thread, or the graph it is tracing (or one enclosing it), is inside
    `inside_xla()`."""
    if getattr(_LOCAL, "depth", 0):
        return True
    if not _GRAPHS or tf.executing_eagerly():
        return False
    graph = tf.compat.v1.get_default_graph()
    with _GRAPHS_LOCK:
        while graph is not None:
            if graph in _GRAPHS:
                return True
            graph = getattr(graph, "outer_graph", None)
    return False
