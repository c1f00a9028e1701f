"""RegNetY trunk as a Keras 3 model built from explicit per-stage lists.

The lists come from the generator in `seer_tf.models.family` (RegNet numbers d, w_0, w_a, w_m, g
-> depths/widths/group widths) or straight from a checkpoint's shapes (`seer_tf.convert`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from seer_tf.models import blocks
from seer_tf.models import complexity
from seer_tf.models import remat as remat_lib
from seer_tf.models.family import RegNetSpec, spec_for

# Activation checkpointing granularity: "block" keeps one tensor per Y block (VISSL's default
# for SEER), "stage" one per stage (least memory, most recompute).
REMAT_MODES = ("none", "block", "stage")


def check_remat(remat, remat_fraction=1.0) -> float:
    """ValueError for a checkpointing setting RegNet cannot run (bin/pretrain reports it as a
    config error before building anything); returns the fraction as a float."""
    if remat not in REMAT_MODES:
        raise ValueError(f"remat must be one of {REMAT_MODES}, got {remat!r}")
    remat_fraction = float(remat_fraction)
    if not 0.0 < remat_fraction <= 1.0:
        raise ValueError(f"remat_fraction must be in (0, 1], got {remat_fraction}")
    if remat_fraction < 1.0 and remat != "block":
        raise ValueError(f"remat_fraction={remat_fraction} needs remat='block' (it picks which "
                         f"blocks to checkpoint), got remat={remat!r}")
    return remat_fraction


@keras.saving.register_keras_serializable(package="seer_tf")
class RegNet(keras.Model):
    """RegNetY trunk (channels-last) returning a dict of endpoints.

    Endpoints: "stem", "stage1".."stageN" (feature maps), "pooled" (global average of the last
    stage, the SEER/VISSL "avgpool" feature) and "logits" when `num_classes` > 0. Built from
    plain lists so `get_config()` states the architecture; use `RegNet.from_preset()` or
    `family.generate()` to get the lists from the five RegNet numbers. `remat` recomputes
    block or stage activations in the backward pass (training only; see `models/remat.py`);
    with "block", `remat_fraction` < 1 checkpoints only the earliest blocks that hold that
    share of the trunk's activations (`complexity.block_costs`): they hold the most memory per
    recomputed multiply-add, so e.g. 0.6 keeps most of the saving for under half the recompute.
    """

    def __init__(self, depths, widths, group_widths, bottleneck_multipliers=None, strides=None,
                 se_ratio=0.25, stem_width=32, num_classes=0, sync_bn=False,
                 zero_init_last_bn=False, remat="none", remat_fraction=1.0, **kwargs):
        super().__init__(**kwargs)
        self.remat, self.remat_fraction = remat, check_remat(remat, remat_fraction)
        n = len(depths)
        bottleneck_multipliers = list(bottleneck_multipliers or [1.0] * n)
        strides = list(strides or [2] * n)
        for key, seq in (("widths", widths), ("group_widths", group_widths),
                         ("bottleneck_multipliers", bottleneck_multipliers), ("strides", strides)):
            if len(seq) != n:
                raise ValueError(f"{key} has {len(seq)} entries but depths has {n}")
        self.depths, self.widths = [int(d) for d in depths], [int(w) for w in widths]
        self.group_widths = [int(g) for g in group_widths]
        self.bottleneck_multipliers = [float(b) for b in bottleneck_multipliers]
        self.strides = [int(s) for s in strides]
        self.se_ratio, self.stem_width = se_ratio, int(stem_width)
        self.num_classes, self.sync_bn = int(num_classes), bool(sync_bn)
        self.zero_init_last_bn = bool(zero_init_last_bn)

        self.stem = blocks.ConvBN(self.stem_width, 3, 2, sync_bn=sync_bn, name="stem")
        self.stages = []
        w_in = self.stem_width
        for i, (d, w, g, b, s) in enumerate(zip(self.depths, self.widths, self.group_widths,
                                                self.bottleneck_multipliers, self.strides)):
            stage = [blocks.YBlock(w_in if j == 0 else w, w, s if j == 0 else 1, g, b, se_ratio,
                                   sync_bn, zero_init_last_bn, name=f"stage{i + 1}_block{j}")
                     for j in range(d)]
            self.stages.append(stage)
            w_in = w
        self.remat_blocks = self._checkpointed_prefix() if remat == "block" else 0
        self.fc = (keras.layers.Dense(self.num_classes, name="fc",
                                      kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01))
                   if self.num_classes else None)

    def build(self, input_shape):
        shape = tuple(input_shape)
        self.stem.build(shape)
        shape = self.stem.compute_output_shape(shape)
        for stage in self.stages:
            for block in stage:
                block.build(shape)
                shape = block.compute_output_shape(shape)
        if self.fc is not None:
            self.fc.build((shape[0], self.widths[-1]))
        self.built = True

    def call(self, images, training=None):
        x = self.stem(images, training=training)
        out = {"stem": x}
        # As torch.utils.checkpoint_sequential: the last segment is not recomputed. Its
        # backward comes first, while the activations just made are still wanted, so recomputing
        # it would cost time and save no memory.
        last_stage = len(self.stages) - 1
        index = 0  # of the block, counted over all stages
        for i, stage in enumerate(self.stages):
            if self.remat == "stage" and training and i < last_stage:
                x = remat_lib.recompute(lambda t, s=stage: _run(s, t, training))(x)
            else:
                for block in stage:
                    if training and index < self.remat_blocks:
                        x = remat_lib.recompute(lambda t, b=block: b(t, training=training))(x)
                    else:
                        x = block(x, training=training)
                    index += 1
            out[f"stage{i + 1}"] = x
        out["pooled"] = tf.reduce_mean(x, axis=[1, 2])
        if self.fc is not None:
            out["logits"] = self.fc(out["pooled"])
        return out

    def _checkpointed_prefix(self):
        """How many leading blocks remat="block" recomputes: all but the last (its backward
        runs first, while its activations are still wanted, so recomputing it saves nothing:
        torch.utils.checkpoint_sequential does the same), or with `remat_fraction` < 1 the
        shortest prefix holding that share of their activations, estimated at 224x224."""
        spec = RegNetSpec(self.depths, self.widths, self.group_widths,
                          self.bottleneck_multipliers, self.strides, self.se_ratio,
                          self.stem_width)
        sizes = [c["activation_elements"] for c in complexity.block_costs(spec)][:-1]
        total, running = sum(sizes), 0
        for k, size in enumerate(sizes):
            running += size
            if running >= self.remat_fraction * total:
                return k + 1
        return len(sizes)

    def blocks(self):
        """All Y blocks in order (for per-block activation checkpointing and weight conversion)."""
        return [b for stage in self.stages for b in stage]

    @classmethod
    def from_preset(cls, name, **kwargs):
        kwargs.setdefault("name", "regnet")
        return cls(**{**spec_for(name).as_kwargs(), **kwargs})

    def get_config(self):
        return {**super().get_config(), "depths": self.depths, "widths": self.widths,
                "group_widths": self.group_widths,
                "bottleneck_multipliers": self.bottleneck_multipliers, "strides": self.strides,
                "se_ratio": self.se_ratio, "stem_width": self.stem_width,
                "num_classes": self.num_classes, "sync_bn": self.sync_bn,
                "zero_init_last_bn": self.zero_init_last_bn, "remat": self.remat,
                "remat_fraction": self.remat_fraction}


def _run(blocks_, x, training):
    for block in blocks_:
        x = block(x, training=training)
    return x
