"""Read PyTorch-world weight files into a flat {name: numpy array} dict.

* `.npz`: NumPy archive (no torch needed).
* `.safetensors`: parsed here (8-byte header length, JSON header, raw little-endian buffers), so
  neither torch nor the safetensors package is needed.
* `.pth` / `.pt` / `.torch` / `.bin` / `.ckpt`: pickled by torch; needs torch (optional
  dependency). Loaded with `weights_only=True` unless the caller allows full unpickling.

Nested dicts (VISSL's `classy_state_dict -> base_model -> model -> trunk`) are flattened with
dots. Entries that are not arrays (epoch counters, strings) are returned separately so the caller
can report them instead of dropping them unseen.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Dict, Tuple

import numpy as np

from seer_tf.usage import UsageError

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
TORCH_SUFFIXES = (".pth", ".pt", ".torch", ".bin", ".ckpt")


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (header length {n})")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        buf = data[start:end]
        if info["dtype"] == "BF16":  # widen bfloat16 to float32 (top 16 bits of a float32)
            arr = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] in _SAFETENSORS_DTYPES:
            arr = np.frombuffer(buf, np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<"))
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        out[name] = arr.reshape(info["shape"]).copy()
    return out


def _read_torch(path: str, allow_pickle: bool):
    try:
        import torch
    except ImportError as e:
        raise UsageError(
            f"reading {os.path.basename(path)} needs PyTorch (pip install torch); "
            "or convert it to .npz/.safetensors first") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # torch raises UnpicklingError subclasses with long messages
        if allow_pickle:
            raise
        raise ValueError(
            f"{path}: torch.load(weights_only=True) refused it ({type(e).__name__}); if you trust "
            "the file, pass --allow_pickle") from e


def _to_numpy(v):
    if isinstance(v, np.ndarray):
        return v
    if type(v).__module__.startswith("torch") and hasattr(v, "detach"):
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        return v.numpy()
    return None


def flatten(tree, prefix: str = "") -> Tuple[Dict[str, np.ndarray], Dict[str, object]]:
    """Flatten nested dicts with dots; split array leaves from other leaves."""
    arrays, others = {}, {}
    items = tree.items() if isinstance(tree, dict) else []
    for k, v in items:
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            a, o = flatten(v, name + ".")
            arrays.update(a)
            others.update(o)
        else:
            arr = _to_numpy(v)
            if arr is None:
                others[name] = v
            else:
                arrays[name] = arr
    return arrays, others


def read_weights(path: str, allow_pickle: bool = False):
    """-> (arrays, non_array_entries) for any supported file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    lower = path.lower()
    if lower.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}, {}
    if lower.endswith(".safetensors"):
        return read_safetensors(path), {}
    if lower.endswith(TORCH_SUFFIXES):
        return flatten(_read_torch(path, allow_pickle))
    raise ValueError(f"{path}: unknown weight file type; expected .npz, .safetensors or one of "
                     f"{', '.join(TORCH_SUFFIXES)}")
