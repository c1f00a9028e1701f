"""Test setup that must happen before TensorFlow initializes.

Two logical CPU devices let MirroredStrategy tests compare one replica against two on the same
global batch. Logical devices can only be configured before the runtime starts, so this runs at
import time of the test session, before any test module imports TensorFlow ops.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as seer_tf/__init__.py: grouped conv gradients on CPU

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One MirroredStrategy over the two logical CPUs, shared by every test in the process.

    docs/design.md section 4: logical devices are fixed at startup; create one strategy per process.
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture
def tensorflow_kernels(monkeypatch):
    """Run a test on the paths taken without seer_tf's native CPU ops (no C++ compiler, or
    SEER_TF_NATIVE_OPS=0): TF's FusedBatchNorm, the folded / XLA bf16 paths, TF's Mul.
    tests/test_native_batch_norm.py and tests/test_channel_scale.py cover the ops."""
    monkeypatch.setenv("SEER_TF_NATIVE_OPS", "0")


@pytest.fixture(scope="session")
def native_ops():
    """The native op library; skips (with the reason) only where there is no C++ compiler, and
    fails where there is one but the build does not work."""
    import shutil

    from seer_tf.ops import native

    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("no C++ compiler: seer_tf runs TensorFlow's own kernels")
    assert native.available(), "a compiler is here, so the native ops must build and load"
    return native.load()
