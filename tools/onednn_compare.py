"""oneDNN primitive time, ours vs the PyTorch peer, shape by shape, for one SwAV step.

    python tools/onednn_compare.py [--preset regnet_y_400mf] [--crops 2x224,4x96] [--batch 32]
                                   [--top 30] [--json]

Why: both frameworks run RegNet's convolutions through oneDNN (TF's `_MklNative*` ops; torch's
mkldnn convolution for channels_last), so the step time splits into "same kernels, same shapes"
and everything else. This runs one fresh process per side with `ONEDNN_VERBOSE=1` (through
`benchmarks.isolation.run_isolated`'s malloc setting), keeps the primitives of the *last* step
(after warm-up: primitive creation is not timed), and prints per (propagation, shape) the
milliseconds each side spent, the per-side totals by primitive kind, and the oneDNN versions.

TF's BatchNorm is a oneDNN primitive; torch's is ATen's own kernel, so the batch-norm row has no
peer figure. Under ONEDNN_VERBOSE every primitive is timed with a barrier, so the totals are a
little above an untraced step.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import isolation as peers  # noqa: E402


def parse(lines):
    """[(primitive, implementation, propagation, shape, ms)] of the last step in a verbose log.

    A step starts at the stem's forward convolution (3 input channels); the log's last step is
    the one after warm-up.
    """
    execs = []
    version = None
    for line in lines:
        if line.startswith("onednn_verbose,") and ",info,oneDNN" in line:
            version = line.split("oneDNN", 1)[1].strip()
        if not line.startswith("onednn_verbose,") or ",exec," not in line:
            continue
        fields = line.split(",")
        try:
            ms = float(fields[-1])
        except ValueError:
            continue
        j = fields.index("exec")
        execs.append((fields[j + 2], fields[j + 3], fields[j + 4], fields[-2], ms))
    starts = [i for i, e in enumerate(execs)
              if e[0] == "convolution" and e[2].startswith("forward") and re.search(r"_ic3oc", e[3])]
    if not starts:
        raise RuntimeError("no stem convolution found in the oneDNN log")
    # Both branches (large and small crops) start with a stem conv; a step begins at the first
    # stem conv of its group. Groups repeat once per step, so take the last len(starts)/steps.
    per_step = _stem_convs_per_step(execs, starts)
    return execs[starts[-per_step]:], version


def _stem_convs_per_step(execs, starts):
    """How many stem forward convs one step has (one per crop resolution)."""
    shapes = [execs[i][3] for i in starts]
    first = shapes[0]
    later = [k for k, s in enumerate(shapes) if s == first and k > 0]
    return later[0] if later else len(shapes)


def normalize_shape(desc):
    """Drop input sizes and paddings: ours pads stride-2 convs (1, 0), torch (1, 1)."""
    desc = re.sub(r"i[hw]\d+", "", desc)
    return re.sub(r"p[hw]\d+", "", desc)


def table(execs):
    by_shape, by_kind = collections.Counter(), collections.Counter()
    for prim, impl, prop, shape, ms in execs:
        if prim == "convolution":
            by_shape[(prop, normalize_shape(shape))] += ms
        by_kind[prim] += ms
    return by_shape, by_kind


def run_side(cmd, extra_env=None):
    env = {**os.environ, **peers.MALLOC_ENV, "ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1",
           **(extra_env or {})}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"{cmd[:3]} failed:\n{done.stderr[-2000:]}")
    return parse(done.stdout.splitlines())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="regnet_y_400mf")
    ap.add_argument("--crops", default="2x224,4x96")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--precision", default="float32", help="ours only; the peer is fp32")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    ap.add_argument("--torch_python", default=None)
    args = ap.parse_args()

    ours_cmd = [sys.executable, os.path.join(peers.ROOT, "benchmarks", "swav_step.py"),
                f"--preset={args.preset}",
                f"--crops={args.crops}", f"--batch={args.batch}", "--steps=1", "--warmup=2",
                "--no_matmul_peak", f"--precision={args.precision}"]
    python = peers.find_torch_python(args.torch_python)
    if not python:
        sys.exit("no Python with torch found (set SEER_TF_TORCH_PYTHON)")
    peer_cmd = [python, peers.peer_script("torch_swav.py"), "--arch", args.preset,
                "--batch", str(args.batch), "--crops", args.crops, "--threads", "2",
                "--steps", "1", "--warmup", "2", "--channels_last"]
    # One op at a time on our side, as PyTorch's eager autograd runs them: with TF's default of
    # two concurrent ops, each primitive shares the cores and its time is inflated.
    ours, ours_version = run_side(ours_cmd, {"TF_NUM_INTEROP_THREADS": "1"})
    peer, peer_version = run_side(peer_cmd)
    (o_shape, o_kind), (p_shape, p_kind) = table(ours), table(peer)
    conv_o = sum(o_shape.values())
    conv_p = sum(p_shape.values())
    common = set(o_shape) & set(p_shape)
    report = {
        "onednn": {"ours": ours_version, "peer": peer_version},
        "ms_by_primitive": {"ours": {k: round(v, 1) for k, v in o_kind.most_common()},
                            "peer": {k: round(v, 1) for k, v in p_kind.most_common()}},
        "conv_ms": {"ours": round(conv_o, 1), "peer": round(conv_p, 1)},
        "conv_ms_same_shapes": {"ours": round(sum(o_shape[k] for k in common), 1),
                                "peer": round(sum(p_shape[k] for k in common), 1)},
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(json.dumps(report, indent=1))
    print(f"\n{'ours ms':>8s} {'peer ms':>8s}  convolution (propagation, shape)")
    for key in sorted(set(o_shape) | set(p_shape), key=lambda k: -(o_shape[k] + p_shape[k]))[:args.top]:
        print(f"{o_shape[key]:8.1f} {p_shape[key]:8.1f}  {key[0]} {key[1]}")


if __name__ == "__main__":
    main()
