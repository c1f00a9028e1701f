"""seer_tf's kernels: the implementation each primitive of the RegNetY trunk runs on.

`seer_tf.models` describes the architecture (SEER's RegNetY, as in the paper and VISSL) and
calls the functions below; `select.py` is the one table that picks TF's, XLA's or seer_tf's
native C++ kernels (`native.py`, compiled on first use) from the device, the CPU's instruction
sets, the dtype, training and `inside_xla()` (docs/kernels.md has the measurements).

`inside_xla()`: the training loop XLA-compiles the replica step (`tf.function(jit_compile=
True)`); layers called inside this context take only kernels XLA compiles (no native op).
"""

from seer_tf.ops.xla_context import inside_xla, is_inside_xla
from seer_tf.ops.conv import conv2d
from seer_tf.ops.normalization import batch_norm
from seer_tf.ops import relu as _relu
from seer_tf.ops import select as _select

__all__ = ["add_relu", "batch_norm", "conv2d", "inside_xla", "is_inside_xla"]


def add_relu(a, b):
    """relu(a + b): the Y block's output (XLA kernels each way for bf16 on CPUs with native
    bf16, `select.xla_relu_grad`)."""
    return _relu.add_relu(a, b, xla=_select.xla_relu_grad(_select.machine(), b.dtype))
