"""The one place (besides train/, eval/ and bin/) that touches tf.distribute.

Numerical code (sinkhorn, losses) takes its cross-replica reductions as plain callables so it
can be tested on one device and reused under any strategy. This module builds those callables
from the replica context they are CALLED in, so the same callable works inside
`strategy.run` (reduces over replicas) and outside any strategy (identity).
"""

import tensorflow as tf


def _replica_context():
    """The current replica context if it has more than one replica, else None."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    return ctx


def replica_sum_fn():
    """Returns x -> sum of x over replicas (identity with one replica)."""

    def replica_sum(x):
        ctx = _replica_context()
        return x if ctx is None else ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)

    return replica_sum


def replica_max_fn():
    """Returns x -> elementwise max of x over replicas (identity with one replica).

    tf.distribute.ReduceOp has only SUM and MEAN, so the max is an all-gather along a new
    leading axis followed by a local reduce_max. Meant for small tensors (Sinkhorn's scalar).
    """

    def replica_max(x):
        ctx = _replica_context()
        if ctx is None:
            return x
        return tf.reduce_max(ctx.all_gather(x[None], axis=0), axis=0)

    return replica_max


def replica_all_gather_fn():
    """Returns x -> concat of x over replicas along axis 0, in replica order (identity if one).

    Replica order is the order in which a global batch is split, so the result equals the
    single-device tensor for that global batch (used to keep the feature queue global).
    """

    def all_gather(x):
        ctx = _replica_context()
        return x if ctx is None else ctx.all_gather(x, axis=0)

    return all_gather


def replica_index():
    """(replica id, number of replicas) of the current replica context; (0, 1) outside one."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        return 0, 1
    return ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync


def should_jit(strategy=None):
    """Whether code with cross-replica collectives may be XLA-compiled under `strategy`.

    True for one replica (no collectives) and for GPU/TPU replicas (XLA is the fast path
    there). False for several CPU replicas: XLA plus any collective fails on CPU (docs/design.md
    section 4), e.g. MirroredStrategy over logical CPUs or CPU MultiWorkerMirroredStrategy.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync == 1:
        return True
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    devices = getattr(strategy.extended, "worker_devices", ())
    kinds = {tf.DeviceSpec.from_string(d).device_type for d in devices}
    return bool(kinds) and kinds <= {"GPU", "TPU"}


STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def get_strategy(name: str = "default", tpu_address: str = ""):
    """A tf.distribute strategy by name.

    default: one device (the first GPU if any, else CPU). mirrored: all local GPUs (or the
    logical CPUs configured before TF started). multi_worker: MultiWorkerMirroredStrategy from
    TF_CONFIG (see experiments/launch/). tpu: TPUStrategy via TPUClusterResolver(tpu_address).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")


def is_chief(strategy) -> bool:
    """Whether this worker writes summaries and exports (worker 0; every single-host run)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type in ("chief", "worker") and resolver.task_id == 0 and \
        (resolver.task_type == "chief" or "chief" not in resolver.cluster_spec().as_dict())


def on_accelerators(strategy) -> bool:
    """Whether every replica runs on a GPU or TPU (where XLA-compiling the whole step pays);
    on CPU, XLA makes grouped convolutions ~100x slower (docs/design.md section 4)."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: one device, GPU:0 when there is one
        return bool(tf.config.list_logical_devices("GPU"))
    kinds = {tf.DeviceSpec.from_string(d).device_type for d in devices}
    return bool(kinds) and kinds <= {"GPU", "TPU"}
