"""The RegNetY family: a generator and a table of numbers (pure Python: no TensorFlow import).

Radosavovic et al. (2020), "Designing Network Design Spaces", describe every RegNet with a handful
of numbers: depth d, initial width w_0, slope w_a, log-step w_m and group width g. The generator
turns them into per-stage lists (depths, widths, group widths); the Keras model only ever sees
those lists (`seer_tf.models.regnet.RegNet`), so a checkpoint's config says exactly what was built.
Kept free of TensorFlow so `bin/summary` answers instantly.

Two width-rounding rules exist in the wild and differ for Y-800MF and Y-8GF:
  * "pycls" (pycls, ClassyVision, VISSL, SEER, timm): w = round(w / g') * g'.
  * "torchvision": w = _make_divisible(w, g'), which never rounds down by more than 10%.
Use "torchvision" to load torchvision weights, "pycls" for VISSL/SEER/timm checkpoints.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Dict, List, Optional, Sequence

import numpy as np

WIDTH_QUANTUM = 8  # block widths are multiples of 8 before group adjustment (pycls QUANT)


@dataclasses.dataclass(frozen=True)
class RegNetSpec:
    """The per-stage lists a RegNet model is built from (what the Keras model's config holds)."""

    depths: List[int]
    widths: List[int]
    group_widths: List[int]
    bottleneck_multipliers: List[float]
    strides: List[int]
    se_ratio: Optional[float] = 0.25
    stem_width: int = 32

    def as_kwargs(self) -> Dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RegNetParams:
    """The five RegNet numbers (plus SE ratio and rounding rule) that generate a RegNetSpec."""

    depth: int
    w_0: int
    w_a: float
    w_m: float
    group_width: int
    bottleneck_multiplier: float = 1.0
    se_ratio: Optional[float] = 0.25
    stem_width: int = 32
    width_rounding: str = "pycls"


def _make_divisible(v: float, divisor: int) -> int:
    """torchvision/TF-slim rounding: nearest multiple, but never more than 10% below `v`."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def block_widths(depth: int, w_0: int, w_a: float, w_m: float) -> List[int]:
    """Quantized linear widths: u_j = w_0 + w_a*j, s_j = round(log(u_j/w_0)/log(w_m)),
    w_j = round(w_0 * w_m^s_j / 8) * 8 (NumPy rounding, half to even, as pycls and torch)."""
    if w_a < 0 or w_0 <= 0 or w_m <= 1 or w_0 % WIDTH_QUANTUM != 0 or depth < 1:
        raise ValueError(
            f"invalid RegNet numbers: need depth >= 1, w_0 > 0 and a multiple of 8, w_a >= 0, "
            f"w_m > 1; got depth={depth}, w_0={w_0}, w_a={w_a}, w_m={w_m}"
        )
    u = np.arange(depth) * w_a + w_0
    s = np.round(np.log(u / w_0) / math.log(w_m))
    w = np.round(w_0 * np.power(w_m, s) / WIDTH_QUANTUM) * WIDTH_QUANTUM
    return [int(x) for x in w]


def adjust_widths_groups(
    widths: Sequence[int],
    bottleneck_multipliers: Sequence[float],
    group_widths: Sequence[int],
    rounding: str,
):
    """Make every bottleneck width a multiple of its group width: g' = min(g, w_b)."""
    if rounding not in ("pycls", "torchvision"):
        raise ValueError(f"width_rounding must be 'pycls' or 'torchvision', got {rounding!r}")
    w_bot = [int(w * b) for w, b in zip(widths, bottleneck_multipliers)]
    g_min = [min(g, wb) for g, wb in zip(group_widths, w_bot)]
    if rounding == "pycls":
        w_bot = [max(g, int(round(wb / g) * g)) for wb, g in zip(w_bot, g_min)]
    else:
        w_bot = [_make_divisible(wb, g) for wb, g in zip(w_bot, g_min)]
    widths = [int(wb / b) for wb, b in zip(w_bot, bottleneck_multipliers)]
    return widths, g_min


def generate(params: RegNetParams) -> RegNetSpec:
    """Expand the RegNet numbers into per-stage lists (stages = runs of equal block width)."""
    ws = block_widths(params.depth, params.w_0, params.w_a, params.w_m)
    stage_widths, stage_depths = [], []
    for w in ws:
        if stage_widths and stage_widths[-1] == w:
            stage_depths[-1] += 1
        else:
            stage_widths.append(w)
            stage_depths.append(1)
    n = len(stage_widths)
    bms = [params.bottleneck_multiplier] * n
    widths, groups = adjust_widths_groups(
        stage_widths, bms, [params.group_width] * n, params.width_rounding
    )
    return RegNetSpec(
        depths=stage_depths,
        widths=widths,
        group_widths=groups,
        bottleneck_multipliers=bms,
        strides=[2] * n,
        se_ratio=params.se_ratio,
        stem_width=params.stem_width,
    )


def _p(depth, w_0, w_a, w_m, g, rounding="pycls"):
    return RegNetParams(depth, w_0, w_a, w_m, g, width_rounding=rounding)


# The table. pycls `configs/dds_baselines/regnety/*`, torchvision `regnet_y_*` builders, VISSL
# SEER configs (`regnet{8,16,32,64,128,256}Gf*.yaml`, SEER 10B). SEER's paper text gives the
# 256GF model the 128GF widths; the released checkpoint and configs use w_0=640 (746..10444).
PRESETS: Dict[str, RegNetParams] = {
    # pycls / ClassyVision / timm RegNetY (pycls rounding).
    "regnety_200mf": _p(13, 24, 36.44, 2.49, 8),
    "regnety_400mf": _p(16, 48, 27.89, 2.09, 8),
    "regnety_600mf": _p(15, 48, 32.54, 2.32, 16),
    "regnety_800mf": _p(14, 56, 38.84, 2.4, 16),
    "regnety_1.6gf": _p(27, 48, 20.71, 2.65, 24),
    "regnety_3.2gf": _p(21, 80, 42.63, 2.66, 24),
    "regnety_4gf": _p(22, 96, 31.41, 2.24, 64),
    "regnety_6.4gf": _p(25, 112, 33.22, 2.27, 72),
    "regnety_8gf": _p(17, 192, 76.82, 2.19, 56),
    "regnety_12gf": _p(19, 168, 73.36, 2.37, 112),
    "regnety_16gf": _p(18, 200, 106.23, 2.48, 112),
    "regnety_32gf": _p(20, 232, 115.89, 2.53, 232),
    # torchvision `regnet_y_*` (torchvision rounding: needed for torchvision weight parity).
    "regnet_y_400mf": _p(16, 48, 27.89, 2.09, 8, "torchvision"),
    "regnet_y_800mf": _p(14, 56, 38.84, 2.4, 16, "torchvision"),
    "regnet_y_1_6gf": _p(27, 48, 20.71, 2.65, 24, "torchvision"),
    "regnet_y_3_2gf": _p(21, 80, 42.63, 2.66, 24, "torchvision"),
    "regnet_y_8gf": _p(17, 192, 76.82, 2.19, 56, "torchvision"),
    "regnet_y_16gf": _p(18, 200, 106.23, 2.48, 112, "torchvision"),
    "regnet_y_32gf": _p(20, 232, 115.89, 2.53, 232, "torchvision"),
    "regnet_y_128gf": _p(27, 456, 160.83, 2.52, 264, "torchvision"),
    # SEER trunks as VISSL built them (pycls rounding).
    "seer_regnety_8gf": _p(17, 192, 76.82, 2.19, 56),
    "seer_regnety_16gf": _p(18, 200, 106.23, 2.48, 112),
    "seer_regnety_32gf": _p(20, 232, 115.89, 2.53, 232),
    "seer_regnety_64gf": _p(20, 352, 147.48, 2.4, 328),
    "seer_regnety_128gf": _p(27, 456, 160.83, 2.52, 264),
    "seer_regnety_256gf": _p(27, 640, 230.83, 2.53, 373),
    "seer_regnety_10b": _p(27, 1744, 620.83, 2.52, 1010),
    # Tiny (the parity-fixture numbers): 4 strided stages, 2 groups per 3x3 conv, SE, widths
    # 32/32/32/64 in pycls rounding (32/32/48/64 in torchvision's); for tests and CPU smoke runs.
    "regnety_tiny": _p(7, 24, 4.0, 1.3, 16),
}


def preset_names() -> List[str]:
    return list(PRESETS)


def get_preset(name: str) -> RegNetParams:
    """Look a preset up; unknown names raise one line naming the closest presets."""
    if name in PRESETS:
        return PRESETS[name]
    close = difflib.get_close_matches(name, PRESETS, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see --list"
    raise ValueError(f"unknown RegNet preset {name!r}; {hint}")


def spec_for(name_or_params) -> RegNetSpec:
    params = get_preset(name_or_params) if isinstance(name_or_params, str) else name_or_params
    return generate(params)




def se_width_for(width_in: int, se_ratio) -> int:
    """w_se = round(se_ratio * block input width), Python rounding (half to even: 186.5 -> 186)."""
    return int(round(se_ratio * width_in)) if se_ratio else 0
