"""x * scale[:, None, None, :] as one native op each way, on CPU: the SE excitation on
b's output wherever conv c does not fold it into its kernel (RegNetY stages 3 and 4).

Why: see channel_scale.cc; TF's broadcasting Mul, its gradient's Mul and the Sum over H, W
become one pass each way.
"""

from __future__ import annotations

import tensorflow as tf

from seer_tf.ops import native


available = native.available  # the op library is one: both ops or neither


def channel_scale(x, scale):
    """x * scale[:, None, None, :] for NHWC x and an (N, C) scale of x's dtype."""
    return native.load().seer_channel_scale(x=x, scale=scale)


@tf.RegisterGradient("SeerChannelScale")
def _channel_scale_grad(op, dy):
    x, scale = op.inputs
    dx, dscale = native.load().seer_channel_scale_grad(dy=dy, x=x, scale=scale)
    return dx, dscale
