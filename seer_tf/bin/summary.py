"""Describe a RegNet preset: stage depths, widths, groups, SE widths, parameters, GFLOPs at 224.

    python -m seer_tf.bin.summary --preset=seer_regnety_256gf
    python -m seer_tf.bin.summary --preset=regnet_y_400mf --json
    python -m seer_tf.bin.summary --list

Counts are analytic (no weights are allocated), so the 10B trunk is described instantly.
"""

import json
import sys

from absl import app, flags

from seer_tf import usage
from seer_tf.models import complexity, family as regnet

FLAGS = flags.DEFINE_string("preset", "seer_regnety_256gf", "RegNet preset name (see --list).")
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
_LIST = flags.DEFINE_bool("list", False, "List the presets and exit.")
_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier size for the 'with fc' count.")
_RES = flags.DEFINE_integer("resolution", 224, "Input resolution for the FLOP count.")


def summarize(name: str, num_classes: int = 1000, resolution: int = 224) -> dict:
    params = regnet.get_preset(name)
    info = complexity.describe(regnet.generate(params), num_classes, resolution)
    return {"preset": name, "generator": {k: getattr(params, k) for k in (
        "depth", "w_0", "w_a", "w_m", "group_width", "bottleneck_multiplier", "se_ratio",
        "stem_width", "width_rounding")}, **info}


def format_table(s: dict) -> str:
    g = s["generator"]
    lines = [f"{s['preset']}: d={g['depth']} w_0={g['w_0']} w_a={g['w_a']} w_m={g['w_m']} "
             f"g={g['group_width']} se_ratio={g['se_ratio']} rounding={g['width_rounding']}",
             f"stem: 3x3/2 conv, {s['stem_width']} channels",
             f"{'stage':>5} {'depth':>5} {'width':>6} {'g':>5} {'groups':>6} {'out':>5}  SE widths"]
    for st in s["stages"]:
        lines.append(f"{st['stage']:>5} {st['depth']:>5} {st['width']:>6} {st['group_width']:>5} "
                     f"{st['groups']:>6} {st['output_resolution']:>5}  {st['se_widths']}")
    lines += [f"params (trunk):          {s['params_trunk']:,}",
              f"params (+{s['num_classes']}-way fc):  {s['params_with_fc']:,}",
              f"GFLOPs @{s['resolution']} (multiply-adds, with fc): {s['gflops']:.3f}"]
    return "\n".join(lines)


def main(argv):
    return usage.run(lambda: _main(argv))


def _main(argv):
    usage.require_no_extra_args(argv)
    if _LIST.value:
        print("\n".join(regnet.preset_names()))
        return 0
    s = summarize(FLAGS.value, _CLASSES.value, _RES.value)
    print(json.dumps(s, indent=1) if _JSON.value else format_table(s))
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
