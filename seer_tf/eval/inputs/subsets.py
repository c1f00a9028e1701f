"""Low-shot label subsets: class-balanced draws (1%, 10%, k per class) or published lists.

SEER (Goyal et al. 2021) and SimCLR report ImageNet accuracy when only 1% or 10% of the labels
are used. A drawn subset keeps the same number of images in every class: `per_class`, or for a
`fraction` f, round(f * N / C) (13 per class for 1% of ImageNet-1k, 128 for 10%), capped by the
class size (the shortfall is reported, never hidden).

Deterministic and nested: every example gets a pseudo-random key from (seed, its id), each class
keeps its examples with the smallest keys. The same seed gives the same subset in every process
and on every machine, and the 1% subset is contained in the 10% one. Ids default to the example
index; pass stable ids (file paths) and the subset also survives reordering of the dataset.

For numbers comparable with the papers, use the published ImageNet subsets instead: SimCLR's
`1percent.txt` / `10percent.txt` (one file name per line, e.g. `n01440764_10026.JPEG`), given as
a path; `indices_from_file` finds those names among the split's example ids (basenames).
"""

from __future__ import annotations

import hashlib
import os
from typing import Dict, Optional, Sequence

import numpy as np

from seer_tf.usage import UsageError


def example_keys(num_examples: int, seed: int, ids: Optional[Sequence] = None) -> np.ndarray:
    """uint64 key per example: a hash of (seed, id), independent of Python's hash salt."""
    if ids is None:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EE5]))
        return rng.permutation(num_examples).astype(np.uint64)
    if len(ids) != num_examples:
        raise ValueError(f"{len(ids)} ids for {num_examples} examples")
    keys = np.empty(num_examples, np.uint64)
    for i, example_id in enumerate(ids):
        if isinstance(example_id, bytes):
            example_id = example_id.decode("utf-8", "surrogateescape")
        digest = hashlib.sha256(f"{int(seed)}\0{example_id}".encode("utf-8", "surrogateescape"))
        keys[i] = int.from_bytes(digest.digest()[:8], "little")
    return keys


def shots_per_class(labels, fraction: Optional[float] = None,
                    per_class: Optional[int] = None, num_classes: Optional[int] = None) -> int:
    """Images per class for a `fraction` of the dataset or an explicit `per_class`."""
    if (fraction is None) == (per_class is None):
        raise ValueError("give exactly one of fraction and per_class")
    if per_class is not None:
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        return int(per_class)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    num_classes = num_classes or int(labels.max()) + 1
    return max(1, int(round(fraction * len(labels) / num_classes)))


def balanced_subset(labels, fraction: Optional[float] = None, per_class: Optional[int] = None,
                    seed: int = 0, ids: Optional[Sequence] = None,
                    num_classes: Optional[int] = None) -> np.ndarray:
    """Sorted indices of a class-balanced subset (see module docstring)."""
    labels = np.asarray(labels).astype(np.int64)
    num_classes = num_classes or int(labels.max()) + 1
    k = shots_per_class(labels, fraction, per_class, num_classes)
    keys = example_keys(len(labels), seed, ids)
    order = np.lexsort((np.arange(len(labels)), keys, labels))  # by class, then key
    chosen = []
    start = 0
    counts = np.bincount(labels, minlength=num_classes)
    for c in range(num_classes):
        chosen.append(order[start:start + min(k, counts[c])])
        start += counts[c]
    return np.sort(np.concatenate(chosen))


def subset_report(labels, indices, num_classes: int, requested: Optional[int]) -> Dict:
    """Per-class counts of a subset and the classes that had fewer than requested (a subset
    file requests no count: its smallest class is reported instead)."""
    counts = np.bincount(np.asarray(labels)[indices], minlength=num_classes)
    if requested is None:
        return {"size": int(len(indices)), "min_per_class": int(counts.min()),
                "max_per_class": int(counts.max())}
    short = [int(c) for c in np.flatnonzero(counts < requested)]
    return {"per_class": int(requested), "size": int(len(indices)),
            "short_classes": short[:20], "num_short_classes": len(short)}


def read_subset_file(path: str) -> list:
    """File names of a published subset list (SimCLR's 1percent.txt): one per line."""
    if not os.path.isfile(path):
        raise UsageError(f"--lowshot_subset={path}: no such file")
    with open(path, encoding="utf-8") as f:
        names = [os.path.basename(line.strip()) for line in f if line.strip()]
    if not names:
        raise UsageError(f"{path}: the subset list is empty")
    return names


def indices_from_file(path: str, ids: Sequence[str]) -> np.ndarray:
    """Sorted indices of the examples whose id's basename is listed in `path`; UsageError
    naming the first missing ones when the split lacks any listed file."""
    names = read_subset_file(path)
    position = {os.path.basename(str(i)): k for k, i in enumerate(ids)}
    missing = [n for n in names if n not in position]
    if missing:
        raise UsageError(f"{path}: {len(missing)} of {len(names)} listed files are not in the "
                         f"train split (first: {', '.join(missing[:3])})")
    return np.unique(np.asarray([position[n] for n in names], np.int64))
