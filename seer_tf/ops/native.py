"""Build and load seer_tf's C++ ops: compiled on first use against the installed TensorFlow.

Why compile at run time: the kernels (batch_norm_relu.cc, channel_scale.cc, grouped_conv.cc) are plain C++
that must match the TensorFlow wheel's headers and ABI and the CPU they run on (-march=native).
A wheel per TensorFlow version and CPU family would be a release process of its own; a C++
compiler is on every machine that builds Python packages. The library is cached, keyed by the
source, the TensorFlow version, the compiler and the CPU's flags, under $SEER_TF_CACHE (default
~/.cache/seer_tf), so only the first process on a machine pays the ~30 s (2-core EPYC, g++ 12).

Nothing requires the ops: `load()` returns None (with one warning) when there is no compiler,
the build fails, or SEER_TF_NATIVE_OPS=0, and the callers keep TensorFlow's own kernels.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading

from absl import logging

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ("batch_norm_relu.cc", "channel_scale.cc", "grouped_conv.cc")
HEADERS = ("kernel_util.h",)
# -mno-avx512fp16: Eigen's AVX512-FP16 packet header does not compile under g++ 12.
ARCH_FLAGS = (["-march=native", "-mno-avx512fp16"], ["-march=native"], [])
_LOCK = threading.Lock()  # one build and one load_op_library per process, whichever thread asks


def enabled() -> bool:
    return os.environ.get("SEER_TF_NATIVE_OPS", "1") != "0"


def available() -> bool:
    """Whether the ops are on (SEER_TF_NATIVE_OPS is not 0, read each time so tests can compare
    both paths) and loaded (a compiler was found and the build worked)."""
    return enabled() and load() is not None


def cache_dir() -> str:
    return os.environ.get("SEER_TF_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "seer_tf")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return ""


def _compile(cxx, sources, out, tf_flags):
    errors = []
    for arch in ARCH_FLAGS:
        cmd = [cxx, "-O3", *arch, "-fopenmp-simd", "-shared", "-fPIC", "-w", *sources, "-o", out,
               *tf_flags]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode == 0 and os.path.getsize(out) > 0:
            return None
        errors.append(done.stderr[-1500:] or f"{cxx} exited with status {done.returncode}")
    return errors[-1]


def load():
    """The loaded op library (a module with the ops as functions), or None."""
    if not enabled():
        return None
    with _LOCK:
        return _load()


@functools.lru_cache(maxsize=None)
def _load():
    import tensorflow as tf

    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        logging.warning("seer_tf native ops: no C++ compiler (g++/$CXX); using TensorFlow's kernels")
        return None
    tf_flags = tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()
    sources = [os.path.join(HERE, name) for name in SOURCES]
    key = hashlib.sha256()
    for name in SOURCES + HEADERS:
        with open(os.path.join(HERE, name), "rb") as f:
            key.update(f.read())
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    for part in (tf.__version__, tf.sysconfig.get_include(), " ".join(tf_flags), cxx, version,
                 _cpu_flags(), repr(ARCH_FLAGS)):
        key.update(part.encode())
    os.makedirs(cache_dir(), exist_ok=True)
    path = os.path.join(cache_dir(), f"seer_tf_ops-{key.hexdigest()[:20]}.so")
    if not os.path.exists(path):
        logging.info("seer_tf native ops: compiling %s (once per machine)", " ".join(SOURCES))
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir())
        os.close(fd)
        error = _compile(cxx, sources, tmp, tf_flags)
        if error:
            os.unlink(tmp)
            logging.warning("seer_tf native ops: build failed, using TensorFlow's kernels:\n%s", error)
            return None
        os.replace(tmp, path)  # atomic: concurrent processes never load a half-written file
    try:
        return tf.load_op_library(path)
    except (tf.errors.NotFoundError, OSError) as e:
        logging.warning("seer_tf native ops: %s does not load (%s); using TensorFlow's kernels", path, e)
        return None
