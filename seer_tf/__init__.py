"""seer_tf: SEER (SwAV-pretrained RegNetY on uncurated images) in Keras 3 / TensorFlow."""

import os

# TensorFlow enables its oneDNN CPU kernels by default only on CPUs with AVX-512 VNNI/BF16/AMX.
# Without them, the gradient of a grouped convolution (every RegNet 3x3) is not implemented on
# CPU at all ("Gradients for grouped convolutions are not supported on CPU"), and convolutions
# are slower. The variable is read when TensorFlow initializes, so it only takes effect if
# seer_tf is imported first; `ops.conv2d` falls back to per-group convolutions otherwise.
# It must stay above every import that loads TensorFlow.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"

# Every Keras-serializable class, registered on `import seer_tf`: a .keras file or a workdir's
# model.json then loads with plain `keras.saving.load_model` / `deserialize_keras_object`.
# (After the environment line above: these imports start TensorFlow.)
from seer_tf.models import heads, regnet, swav  # noqa: E402,F401
from seer_tf.eval import finetune, linear  # noqa: E402,F401
