"""Low-shot evaluation: a linear probe trained on a class-balanced label subset (1%, 10%, k
per class) of the train features, evaluated on all of the eval features.

SEER (Goyal et al. 2021) and SimCLR report ImageNet accuracy with 1% or 10% of the labels; the
subsets (drawn, or the published lists) come from `eval.inputs.subsets`. SEER's 10% number
(77.9% top-1 with 256GF) is a fine-tuning result; `lowshot_linear` gives the cheaper
linear-probe variant, `finetune.finetune` on `balanced_subset` indices the paper's.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from seer_tf.eval.inputs.subsets import balanced_subset, shots_per_class, subset_report
from seer_tf.eval.linear import LinearConfig, linear_probe


def lowshot_linear(train_features, train_labels, eval_features, eval_labels, num_classes: int,
                   fraction: Optional[float] = None, per_class: Optional[int] = None,
                   seed: int = 0, ids: Optional[Sequence] = None,
                   config: Optional[LinearConfig] = None, on_epoch=None) -> Dict:
    """Linear probe trained on a balanced subset of the train features, evaluated on all of
    `eval_features`; the result carries the subset description under "subset"."""
    indices = balanced_subset(train_labels, fraction, per_class, seed, ids, num_classes)
    k = shots_per_class(train_labels, fraction, per_class, num_classes)
    metrics = linear_probe(np.asarray(train_features)[indices],
                           np.asarray(train_labels)[indices], eval_features, eval_labels,
                           num_classes, config, on_epoch)
    metrics["subset"] = {**subset_report(train_labels, indices, num_classes, k),
                         "fraction": fraction, "seed": int(seed)}
    return metrics
