"""seer_tf's native grouped 3x3 convolution vs TF's oneDNN one, shape by shape.

    python tools/grouped_conv_compare.py [--preset regnet_y_400mf] [--crops 2x224,4x96]
                                         [--batch 32] [--repeats 5] [--dtype float32]

Why: `seer_tf.ops.select.native_grouped_conv` picks the native op on every CPU because of
this comparison (AVX2 and AVX-512 EPYCs, AMX Xeon), and in bfloat16 only its gradient (AMX Xeon:
oneDNN's bf16 forward is faster, its gradients slower); run it on a new CPU family to check
those rules. For every grouped convolution shape of one SwAV step (the preset's b convolutions
at each crop resolution, counted as often as the step runs them) it times, in one process and
alternating the two sides: the forward, and the forward's two gradients (oneDNN:
Conv2DBackpropInput + Conv2DBackpropFilter on the PyTorch-padded input; native: its one gradient
op), the native op with its widest kernels (`native`: 512-bit ones for group width 8 on AVX-512
builds) and with its 256-bit ones (`native256`; the same kernels on AVX2), in `--dtype` float32
or bfloat16. Prints JSON: per shape the best of `--repeats` milliseconds and GFLOP/s of each
side, and the step totals.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import seer_tf  # noqa: E402,F401  (oneDNN on before TensorFlow starts)
import tensorflow as tf  # noqa: E402

from seer_tf import cpu  # noqa: E402
from seer_tf.models import family  # noqa: E402
from seer_tf.ops import grouped_conv as native_grouped  # noqa: E402


def step_shapes(preset: str, crops: str, batch: int):
    """[(N, H, C, stride, count, group width)] of the b convolutions in one step."""
    spec = family.spec_for(preset)
    shapes = {}
    for crop in crops.split(","):
        copies, size = (int(v) for v in crop.split("x"))
        h = (size - 1) // 2 + 1  # after the stem
        for depth, width, gw, bm, first_stride in zip(spec.depths, spec.widths, spec.group_widths,
                                                       spec.bottleneck_multipliers, spec.strides):
            w_b = int(round(width * bm))
            for block in range(depth):
                stride = first_stride if block == 0 else 1
                key = (copies * batch, h, w_b, stride, min(gw, w_b))
                shapes[key] = shapes.get(key, 0) + 1
                h = (h - 1) // stride + 1
    return [(n, h, c, s, count, gw) for (n, h, c, s, gw), count in shapes.items()]


def _best(fn, args, repeats):
    fn(*args)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(*args)
        (out[0] if isinstance(out, (list, tuple)) else out).numpy()
        times.append(time.perf_counter() - t)
    return min(times)


def compare(n, h, c, stride, group_width, repeats, dtype="float32"):
    x = tf.random.normal([n, h, h, c], dtype=dtype)
    k = tf.random.normal([3, 3, group_width, c], dtype=dtype)
    xp = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    ho = (h - 1) // stride + 1
    dy = tf.random.normal([n, ho, ho, c], dtype=dtype)
    strides = [1, stride, stride, 1]
    onednn_fwd = tf.function(lambda xp, k: tf.nn.conv2d(xp, k, stride, "VALID"))
    onednn_bwd = tf.function(lambda dy, xp, k: (
        tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(xp), filter=k, out_backprop=dy,
                                       strides=strides, padding="VALID"),
        tf.raw_ops.Conv2DBackpropFilter(input=xp, filter_sizes=tf.shape(k), out_backprop=dy,
                                        strides=strides, padding="VALID")))
    lib = native_grouped.native.load()
    def native_fwd(bits):
        return tf.function(lambda x, k: lib.seer_grouped_conv3x3(
            x=x, kernel=k, stride=stride, vector_bits=bits))

    def native_bwd(bits):
        return tf.function(lambda dy, x, k: lib.seer_grouped_conv3x3_grad(
            dy=dy, x=x, kernel=k, stride=stride, vector_bits=bits))

    flop = 2 * n * ho * ho * c * 9 * group_width
    ms = {"onednn_forward": _best(onednn_fwd, (xp, k), repeats),
          "native_forward": _best(native_fwd(0), (x, k), repeats),
          "native256_forward": _best(native_fwd(256), (x, k), repeats),
          "onednn_backward": _best(onednn_bwd, (dy, xp, k), repeats),
          "native_backward": _best(native_bwd(0), (dy, x, k), repeats),
          "native256_backward": _best(native_bwd(256), (dy, x, k), repeats)}
    row = {"shape": [n, h, h, c], "stride": stride, "group_width": group_width}
    for key, seconds in ms.items():
        row[key + "_ms"] = round(seconds * 1e3, 2)
        row[key + "_gflops"] = round(flop * (2 if key.endswith("backward") else 1) / seconds / 1e9, 1)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="regnet_y_400mf")
    parser.add_argument("--crops", default="2x224,4x96")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="tensor dtype of both sides (the native op computes in float32)")
    args = parser.parse_args(argv)
    if not native_grouped.available():
        sys.exit("the native ops did not build here (see the warning above)")
    rows, totals = [], {}
    ms_keys = [f"{side}_{way}" for side in ("onednn", "native", "native256")
               for way in ("forward", "backward")]
    for n, h, c, stride, count, gw in step_shapes(args.preset, args.crops, args.batch):
        if gw % 8:
            continue
        row = compare(n, h, c, stride, gw, args.repeats, args.dtype)
        row["per_step"] = count
        rows.append(row)
        for key in ms_keys:
            totals[key + "_ms"] = round(totals.get(key + "_ms", 0) + count * row[key + "_ms"], 1)
        print(json.dumps(row), file=sys.stderr, flush=True)
    onednn = totals["onednn_forward_ms"] + totals["onednn_backward_ms"]
    native = totals["native_forward_ms"] + totals["native_backward_ms"]
    native256 = totals["native256_forward_ms"] + totals["native256_backward_ms"]
    print(json.dumps({"machine": cpu.describe(), "preset": args.preset, "crops": args.crops,
                      "batch": args.batch, "dtype": args.dtype, "step_totals": totals,
                      "native_speedup": round(onednn / native, 2),
                      "native256_speedup": round(onednn / native256, 2), "shapes": rows}, indent=1))


if __name__ == "__main__":
    main()
