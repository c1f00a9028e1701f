"""Activation checkpointing (recompute in the backward pass) that keeps BatchNorm honest.

SEER trains a 1.3B-parameter RegNet by keeping only block boundaries in memory and recomputing
each block's activations during backprop (fairscale `checkpoint_wrapper` in VISSL). TF's
`tf.recompute_grad` / `keras.remat` do the same, but re-running a training-mode BatchNorm also
re-runs its moving-statistics update, so every recomputed BN would update twice per step.

`recompute(fn)` is a `tf.custom_gradient`: the forward pass runs `fn` normally; the backward
pass re-runs it under `recomputing()`, during which our `BatchNorm` uses momentum 1.0 (the
moving statistics are rewritten with their own value: moving * 1 + batch * 0). Inside a
tf.function, automatic control dependencies order that write after the forward update, so the
statistics end exactly as without recomputation. Gradients are identical: same ops, same inputs.
"""

from __future__ import annotations

import contextlib
import threading

import tensorflow as tf

_STATE = threading.local()


def is_recomputing() -> bool:
    return getattr(_STATE, "depth", 0) > 0


@contextlib.contextmanager
def recomputing():
    _STATE.depth = getattr(_STATE, "depth", 0) + 1
    try:
        yield
    finally:
        _STATE.depth -= 1


def recompute(fn):
    """Wrap `fn(x) -> y` (one tensor in, one out) so its activations are recomputed in backward."""

    @tf.custom_gradient
    def wrapped(x):
        y = fn(x)

        def grad_fn(dy, variables=None):
            variables = list(variables or [])
            # Recompute from a copy of x that waits for dy: otherwise grappler's common-
            # subexpression pass sees the forward ops again (same op, same input) and merges
            # them, which keeps every activation alive and checkpoints nothing.
            with tf.control_dependencies([dy]):
                x_again = tf.identity(x)
            with recomputing(), tf.GradientTape() as tape:
                tape.watch(x_again)
                y_again = fn(x_again)
            grads = tape.gradient(y_again, [x_again] + variables, output_gradients=dy,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return grads[0], grads[1:]

        return y, grad_fn

    return wrapped
