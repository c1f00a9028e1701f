"""Analytic size of a RegNet: per-block widths, parameter count and multiply-adds.

Counting from the spec (not from built Keras variables) lets `bin/summary` describe the 128GF,
256GF and 10B trunks instantly, without allocating billions of weights. Tests check that the
analytic count equals the built model's trainable parameters for presets that fit in memory.
FLOPs follow the RegNet paper's convention: multiply-adds of convolutions, SE and fc at 224x224.
"""

from __future__ import annotations

from typing import Dict, List

from seer_tf.models.family import RegNetSpec, se_width_for


def _out(n: int, k: int, s: int) -> int:
    return (n + 2 * (k // 2) - k) // s + 1  # PyTorch padding k//2


def describe(spec: RegNetSpec, num_classes: int = 1000, resolution: int = 224) -> Dict:
    """Stage table, trunk/fc parameter counts and multiply-adds (GFLOPs) at `resolution`."""
    params = 0
    macs = 0
    hw = _out(resolution, 3, 2)
    stem = spec.stem_width
    params += 27 * stem + 2 * stem
    macs += hw * hw * 27 * stem
    stages: List[Dict] = []
    w_in = stem
    for i, (d, w, g, b, s) in enumerate(zip(spec.depths, spec.widths, spec.group_widths,
                                            spec.bottleneck_multipliers, spec.strides)):
        se_widths = []
        for j in range(d):
            stride = s if j == 0 else 1
            w_b = int(round(w * b))
            groups = w_b // g
            hw_out = _out(hw, 3, stride)
            # a: 1x1 w_in -> w_b (+BN); b: 3x3 grouped (+BN); c: 1x1 w_b -> w (+BN)
            params += w_in * w_b + 2 * w_b
            macs += hw * hw * w_in * w_b
            params += 9 * (w_b // groups) * w_b + 2 * w_b
            macs += hw_out * hw_out * 9 * (w_b // groups) * w_b
            w_se = se_width_for(w_in, spec.se_ratio)
            if w_se:
                params += w_b * w_se + w_se + w_se * w_b + w_b
                macs += w_b * w_se + w_se * w_b
                se_widths.append(w_se)
            params += w_b * w + 2 * w
            macs += hw_out * hw_out * w_b * w
            if w_in != w or stride != 1:
                params += w_in * w + 2 * w
                macs += hw_out * hw_out * w_in * w
            w_in, hw = w, hw_out
        stages.append({"stage": i + 1, "depth": d, "width": w, "group_width": g,
                       "groups": int(round(w * b)) // g, "bottleneck_multiplier": b,
                       "se_widths": sorted(set(se_widths), key=se_widths.index),
                       "output_resolution": hw})
    fc_params = w_in * num_classes + num_classes
    return {
        "stem_width": stem,
        "stages": stages,
        "params_trunk": params,
        "params_with_fc": params + fc_params,
        "num_classes": num_classes,
        "resolution": resolution,
        "gflops": (macs + w_in * num_classes) / 1e9,
        "gflops_trunk": macs / 1e9,
    }
