"""seer_tf's benchmarks, each printing one JSON object on stdout (progress goes to stderr).

    python -m benchmarks.run --what=step|memory|pipeline|sinkhorn [--processes=3] \
        [--repetitions=5] [--torch_python=PYTHON] [--output=FILE]
    python benchmarks/run.py --what=...          # the same, as a script

Run from the repository root (benchmarks/ is not part of the installed package). The PyTorch
peers (benchmarks/peers/) run in the interpreter given by --torch_python or
$SEER_TF_TORCH_PYTHON, else this one when it can import torch; without one the peer figures
are omitted and the report says why. `python -m benchmarks.run --what=step --help` lists a
benchmark's own flags.

A benchmark is one module in BENCHMARKS with `run(args) -> dict` (JSON-serialisable) and,
when it has flags of its own, `add_arguments(parser)`; adding one is one line in the table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

if __package__ in (None, ""):  # `python benchmarks/run.py`: the repository root, not benchmarks/
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before a benchmark module loads TensorFlow

# --what -> the module that implements it.
BENCHMARKS = {
    "sinkhorn": "benchmarks.sinkhorn",
    "step": "benchmarks.step",
    "memory": "benchmarks.memory",
    "pipeline": "benchmarks.pipeline",
    "loop": "benchmarks.loop",
    "device": "benchmarks.device",
}


def build_parser(what=None):
    """The common flags, plus those of `what`'s module when it has any."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", default="sinkhorn", choices=sorted(BENCHMARKS),
                        help="which benchmark to run")
    parser.add_argument("--repetitions", type=int, default=5,
                        help="timed calls or steps per measurement, after warm-up")
    parser.add_argument("--processes", type=int, default=3,
                        help="step/memory: fresh processes per configuration (best kept)")
    parser.add_argument("--torch_python", default=None,
                        help="interpreter with torch + torchvision for the PyTorch peers")
    parser.add_argument("--peer", default=True, action=argparse.BooleanOptionalAction,
                        help="also run the PyTorch peer (--no-peer: ours only)")
    parser.add_argument("--output", default=None, help="also write the JSON report here")
    if what in BENCHMARKS:
        module = importlib.import_module(BENCHMARKS[what])
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser.add_argument_group(f"--what={what}"))
    return parser


def parse_args(argv=None):
    """Two passes: --what first, then every flag with that benchmark's own ones known."""
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = ["--no-peer" if a in ("--nopeer", "--no_peer") else a for a in argv]
    what, _ = build_parser().parse_known_args([a for a in argv if a not in ("-h", "--help")])
    return build_parser(what.what).parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    module = importlib.import_module(BENCHMARKS[args.what])
    report = {"what": args.what, "cpu_count": os.cpu_count(), **module.run(args)}
    report["total_s"] = round(time.perf_counter() - start, 2)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
