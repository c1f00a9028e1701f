"""Analytic size of a RegNet: per-block widths, parameter count, multiply-adds and the
activations a training step keeps per block (which blocks `remat_fraction` checkpoints).

Counting from the spec (not from built Keras variables) lets `bin/summary` describe the 128GF,
256GF and 10B trunks instantly, without allocating billions of weights. Tests check that the
analytic count equals the built model's trainable parameters for presets that fit in memory.
FLOPs follow the RegNet paper's convention: multiply-adds of convolutions, SE and fc at 224x224.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, NamedTuple

from seer_tf.models.family import RegNetSpec, se_width_for


def _out(n: int, k: int, s: int) -> int:
    return (n + 2 * (k // 2) - k) // s + 1  # PyTorch padding k//2


class _Block(NamedTuple):
    """One Y block's geometry at a given input resolution."""

    stage: int
    index: int
    w_in: int
    w_b: int
    w_out: int
    groups: int
    stride: int
    hw_in: int
    hw_out: int


def _blocks(spec: RegNetSpec, resolution: int) -> Iterator[_Block]:
    hw, w_in = _out(resolution, 3, 2), spec.stem_width
    for i, (d, w, g, b, s) in enumerate(zip(spec.depths, spec.widths, spec.group_widths,
                                            spec.bottleneck_multipliers, spec.strides)):
        for j in range(d):
            stride = s if j == 0 else 1
            w_b = int(round(w * b))
            hw_out = _out(hw, 3, stride)
            yield _Block(i + 1, j, w_in, w_b, w, w_b // g, stride, hw, hw_out)
            w_in, hw = w, hw_out


def describe(spec: RegNetSpec, num_classes: int = 1000, resolution: int = 224) -> Dict:
    """Stage table, trunk/fc parameter counts and multiply-adds (GFLOPs) at `resolution`."""
    stem = spec.stem_width
    params = 27 * stem + 2 * stem
    macs = _out(resolution, 3, 2) ** 2 * 27 * stem
    se_widths: Dict[int, List[int]] = {}
    hw_last = {}
    for blk in _blocks(spec, resolution):
        params += _block_params(blk, spec.se_ratio)
        macs += _block_macs(blk, spec.se_ratio)
        w_se = se_width_for(blk.w_in, spec.se_ratio)
        if w_se:
            se_widths.setdefault(blk.stage, []).append(w_se)
        hw_last[blk.stage] = blk.hw_out
    stages: List[Dict] = []
    for i, (d, w, g, b) in enumerate(zip(spec.depths, spec.widths, spec.group_widths,
                                         spec.bottleneck_multipliers)):
        widths = se_widths.get(i + 1, [])
        stages.append({"stage": i + 1, "depth": d, "width": w, "group_width": g,
                       "groups": int(round(w * b)) // g, "bottleneck_multiplier": b,
                       "se_widths": sorted(set(widths), key=widths.index),
                       "output_resolution": hw_last[i + 1]})
    w_last = spec.widths[-1] if spec.widths else stem
    fc_params = w_last * num_classes + num_classes
    return {
        "stem_width": stem,
        "stages": stages,
        "params_trunk": params,
        "params_with_fc": params + fc_params,
        "num_classes": num_classes,
        "resolution": resolution,
        "gflops": (macs + w_last * num_classes) / 1e9,
        "gflops_trunk": macs / 1e9,
    }


def _block_params(blk: _Block, se_ratio) -> int:
    # a: 1x1 w_in -> w_b (+BN); b: 3x3 grouped (+BN); c: 1x1 w_b -> w (+BN)
    params = blk.w_in * blk.w_b + 2 * blk.w_b
    params += 9 * (blk.w_b // blk.groups) * blk.w_b + 2 * blk.w_b
    w_se = se_width_for(blk.w_in, se_ratio)
    if w_se:
        params += blk.w_b * w_se + w_se + w_se * blk.w_b + blk.w_b
    params += blk.w_b * blk.w_out + 2 * blk.w_out
    if blk.w_in != blk.w_out or blk.stride != 1:
        params += blk.w_in * blk.w_out + 2 * blk.w_out
    return params


def _block_macs(blk: _Block, se_ratio) -> int:
    pix_in, pix_out = blk.hw_in ** 2, blk.hw_out ** 2
    macs = pix_in * blk.w_in * blk.w_b + pix_out * 9 * (blk.w_b // blk.groups) * blk.w_b
    w_se = se_width_for(blk.w_in, se_ratio)
    if w_se:
        macs += 2 * blk.w_b * w_se
    macs += pix_out * blk.w_b * blk.w_out
    if blk.w_in != blk.w_out or blk.stride != 1:
        macs += pix_out * blk.w_in * blk.w_out
    return macs


def block_costs(spec: RegNetSpec, resolution: int = 224) -> List[Dict]:
    """Per Y block, per image: the activations a training step keeps for backprop (elements)
    and the forward multiply-adds, i.e. what checkpointing the block saves and what it costs.

    Kept for backprop: a's convolution output (BatchNorm's input) and its BN+ReLU output (b's
    input), the same two for b and for c (c's BN output feeds the residual add+ReLU, whose
    output the ReLU gradient needs), and the projection's convolution output where the shortcut
    has one. Early blocks hold many pixels of few channels, so they keep the most memory per
    recomputed multiply-add (RegNetY-1.6GF at 224: stages 1-2 are ~24% of the trunk's forward
    and about half of its activations): `RegNet(remat_fraction=...)` checkpoints that prefix.
    """
    costs = []
    for blk in _blocks(spec, resolution):
        pix_in, pix_out = blk.hw_in ** 2, blk.hw_out ** 2
        elements = 2 * blk.w_b * pix_in + 2 * blk.w_b * pix_out + 2 * blk.w_out * pix_out
        if blk.w_in != blk.w_out or blk.stride != 1:
            elements += blk.w_out * pix_out
        costs.append({"stage": blk.stage, "block": blk.index, "activation_elements": elements,
                      "macs": _block_macs(blk, spec.se_ratio)})
    return costs
