"""What this machine's CPU can do, from /proc/cpuinfo (standard library only).

Why: oneDNN picks its kernels from the CPU's instruction sets, so the same TensorFlow program
has different fast paths on an AVX2 EPYC and on an AMX Xeon (bfloat16 is emulated, ~8x slower
than float32, without AVX512_BF16/AMX; with AMX its matmuls are ~4x faster than float32).
The kernel selection table (`seer_tf/ops/select.py`), the pretrain binary's warning and the
benchmarks' reports all ask here.
"""

from __future__ import annotations

import functools
import os

# The flags that decide oneDNN's float32 / bfloat16 kernels (named in benchmark reports).
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16")
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


def describe(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """{"cpu": model name or None, "cores": n, "isa": [ISA_FLAGS present], "known": readable}."""
    model, flags, known = None, set(), True
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        known = False  # not Linux: no way to tell
    return {"cpu": model, "cores": os.cpu_count(), "isa": [f for f in ISA_FLAGS if f in flags],
            "known": known}


@functools.lru_cache(maxsize=None)
def has_native_bf16() -> bool:
    """AVX512_BF16 or AMX-BF16 present; True when the CPU cannot be inspected (assume modern)."""
    info = describe()
    return not info["known"] or any(f in info["isa"] for f in NATIVE_BF16)
