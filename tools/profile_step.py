"""Where does a SwAV training step spend its time? Per-op-type table from tf.profiler.

    python tools/profile_step.py [--preset regnet_y_400mf] [--crops 2x224,4x96] [--batch 32]
                                 [--precision float32] [--top 30] [--steps 1] [--inter_op 1]
                                 [--remat none]

Traces --steps steps (after warm-up; times are per step) with tf.profiler, reads the XPlane protobuf the trace writes,
and prints the host time summed per TensorFlow op type and per op name (self time of the
executor's op events, so nested events are not counted twice). The trace is also left in the
log directory for TensorBoard's profile plugin.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def op_times(xspace_path):
    """{(op_type, op_name): total_ps} over host-thread events whose metadata names a TF op."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xspace_path, "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for ev in line.events:
                name = plane.event_metadata[ev.metadata_id].name
                if ":" not in name or name.startswith(("Iterator", "EagerExecute")):
                    continue
                op_name, op_type = name.rsplit(":", 1)
                totals[(op_type, op_name)] += ev.duration_ps
    return totals


# Which part of the network an op belongs to, from its name (first match wins).
PARTS = (("grouped 3x3 conv (b)", re.compile(r"/b(_\d+)?/conv")),
         ("1x1 conv (a, c, proj)", re.compile(r"/(a|c|proj)(_\d+)?/conv")),
         ("stem conv", re.compile(r"stem(_\d+)?/conv")),
         ("batch norm", re.compile(r"/bn(_\d+)?/")),
         ("squeeze-excite", re.compile(r"/se(_\d+)?/")),
         # XLA-compiled ops (bf16 ReLU gradients and folded BatchNorm, the LARC step, Sinkhorn)
         # show up only as the executor's async launch event, which spans the compiled kernel
         # (CpuExecutable, skipped: nested).
         ("XLA kernels (ReLU/BN grads, LARC, Sinkhorn)", re.compile(r"^ExecutorState::ProcessAsync")),
         ("trunk other (relu, add, pool)", re.compile(r"reg_net")),
         ("head, prototypes, loss, optimizer", re.compile(r".")))


def part_of(op_name, op_type=""):
    """The network part of an op; the native grouped conv's gradient by its type (as a custom
    gradient of the bf16 hybrid it is named after the tape, not the layer)."""
    if op_type.startswith("SeerGroupedConv3x3"):
        return PARTS[0][0]
    return next(label for label, pattern in PARTS if pattern.search(op_name))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="regnet_y_400mf")
    ap.add_argument("--crops", default="2x224,4x96")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--remat", default="none", help="RegNet's remat mode (models/remat.py)")
    ap.add_argument("--remat_fraction", type=float, default=1.0,
                    help="with --remat block: the share of activations checkpointed")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--steps", type=int, default=1,
                    help="steps traced; times are per step (the mean), so one noisy step weighs less")
    ap.add_argument("--inter_op", type=int, default=0,
                    help="1 runs one op at a time, so op times add up to the step time")
    args = ap.parse_args()

    import seer_tf  # noqa: F401  (sets oneDNN before TensorFlow loads)
    import tensorflow as tf

    from benchmarks.swav_step import build_train_fn

    if args.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)

    train = build_train_fn(args.preset, args.crops, args.batch, args.precision, args.remat,
                           args.remat_fraction)
    train().numpy()
    train().numpy()
    logdir = tempfile.mkdtemp(prefix="seer_profile_")
    tf.profiler.experimental.start(logdir)
    for _ in range(args.steps):
        train().numpy()
    tf.profiler.experimental.stop()
    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
    totals = collections.Counter({k: v / args.steps for k, v in op_times(path).items()})
    by_type = collections.Counter()
    for (op_type, _), ps in totals.items():
        by_type[op_type] += ps
    all_s = sum(by_type.values()) / 1e12
    print(f"trace: {path}\nsummed op time {all_s:.3f} s (2 threads can overlap)")
    print(f"{'op type':40s} {'s':>8s} {'%':>6s}")
    for op_type, ps in by_type.most_common(args.top):
        print(f"{op_type:40s} {ps / 1e12:8.3f} {100 * ps / 1e12 / all_s:6.1f}")
    by_part, by_kind = collections.Counter(), collections.Counter()
    for (op_type, op_name), ps in totals.items():
        if (op_type not in ("Process", "Run") and not op_type.startswith(" __inference")
                and not op_name.startswith("CpuExecutable")):
            part = part_of(op_name, op_type)
            by_part[part] += ps
            by_kind[(part, op_type)] += ps
    ops_s = sum(by_part.values()) / 1e12
    print(f"\n{'network part':40s} {'s':>8s} {'%':>6s}")
    for label, ps in by_part.most_common():
        print(f"{label:40s} {ps / 1e12:8.3f} {100 * ps / 1e12 / ops_s:6.1f}")
    print(f"\n{'network part / op type':70s} {'s':>8s}")
    for (label, op_type), ps in by_kind.most_common(args.top):
        print(f"{label + ' / ' + op_type:70s} {ps / 1e12:8.3f}")
    print(f"\n{'op name':80s} {'ms':>8s}")
    for (op_type, op_name), ps in totals.most_common(args.top):
        print(f"{op_name[-70:] + ':' + op_type:80s} {ps / 1e9:8.1f}")


if __name__ == "__main__":
    main()
