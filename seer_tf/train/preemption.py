"""Preemption: every worker saves at the same step, then the run exits with a restart code.

A SEER run lives for days on preemptible GPU hosts and TPU VMs. A scheduler stops a worker with
SIGTERM; the run must then
  * agree, across all workers, on ONE step at which to stop: synchronous training runs the same
    step everywhere, so a worker that stopped alone would leave its peers hanging in a
    collective;
  * save there (the chief the real checkpoint, the others a scratch copy they delete at once),
  * skip everything that follows training (the demo's evaluation, "finished" summaries), and
  * exit with `RESTART_EXIT_CODE`, which a scheduler can tell from success (0) and from a crash
    (1, or 128 + signal).

How workers agree: at every loop boundary (every `steps_per_loop` steps) each worker adds its
own "SIGTERM seen" bit to a cross-worker sum (`strategy.reduce`), so every worker learns of a
preemption at the same boundary. This is the coordination TF's
`tf.distribute.experimental.PreemptionCheckpointHandler` does through its coordination service,
but that class switches itself off on Google Cloud CPU and TPU VMs, polls GCE metadata instead
of watching SIGTERM on GPU VMs, and counts "runs" in a variable of its own; the reduce works on
every strategy whose training collectives work, with one 4-byte all-reduce per loop.
Single-worker strategies need no collective: the local bit is the answer.
"""

from __future__ import annotations

import signal
import threading

import tensorflow as tf
from absl import logging

# "Restart me": the run saved a checkpoint at `step` because it was preempted. 42 is what
# TF's own preemption handling exits with on Borg; it is none of the codes a crash gives.
RESTART_EXIT_CODE = 42


class Preempted(Exception):
    """Raised by the trainer after the preemption checkpoint is written."""

    def __init__(self, step: int, checkpoint: str | None):
        super().__init__(f"preempted at step {step}; checkpoint {checkpoint}")
        self.step, self.checkpoint = int(step), checkpoint


class SigtermWatch:
    """Records SIGTERM instead of dying, so the loop can checkpoint first (context manager)."""

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        if not self.received:
            logging.warning("SIGTERM received: saving at the next loop boundary, then exiting "
                            "with code %d (restart me)", RESTART_EXIT_CODE)
        self.received = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def multi_worker(strategy) -> bool:
    """Whether the strategy spans several processes (their SIGTERMs must be combined)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return False
    try:
        jobs = resolver.cluster_spec().as_dict()
    except (ValueError, RuntimeError):
        return False
    return sum(len(tasks) if isinstance(tasks, (list, dict)) else 1
               for tasks in jobs.values()) > 1


class Agreement:
    """`stop_requested(local)`: whether any worker has seen SIGTERM (same answer everywhere)."""

    def __init__(self, strategy):
        self.strategy = strategy
        self.collective = multi_worker(strategy)
        self._fn = None

    def stop_requested(self, local: bool) -> bool:
        if not self.collective:
            return bool(local)
        if self._fn is None:
            strategy = self.strategy

            @tf.function
            def combine(flag):
                per_replica = strategy.run(lambda: tf.identity(flag))
                return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

            self._fn = combine
        return float(self._fn(tf.constant(1.0 if local else 0.0))) > 0
