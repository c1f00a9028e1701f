"""Weighted k-nearest-neighbour classification on frozen features (DINO, VISSL).

DINO's `eval_knn.py` (Caron et al. 2021; after Wu et al. 2018): L2-normalize train and test
features, take the k most cosine-similar train features of each test feature, and let each vote
for its label with weight exp(sim / T); the class scores are the summed votes. DINO uses k=20,
T=0.07 (`DINO`); VISSL's `NEAREST_NEIGHBOR` benchmark the same rule with k=200, sigma=0.1
(`VISSL`).

Memory stays bounded for any train set: test features go in batches of `query_batch`, train
features in chunks of `train_chunk`, and only a running top-k per query is kept (the top-k of a
union is the top-k of the per-chunk top-ks). Weights are computed as exp((sim - max_sim) / T):
a per-query constant factor that changes no ranking but keeps small T from overflowing float32.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import tensorflow as tf

from seer_tf.eval.progress import Progress
from seer_tf.eval.linear import classification_metrics

DINO = {"k": 20, "temperature": 0.07}
VISSL = {"k": 200, "temperature": 0.1}


def l2_normalize(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_neighbors(train_features, test_features, k: int, query_batch: int = 1024,
                      train_chunk: int = 65536, normalized: bool = False):
    """(similarities [M, k] descending, indices [M, k]) of the k most cosine-similar train rows."""
    train = train_features if normalized else l2_normalize(train_features)
    test = test_features if normalized else l2_normalize(test_features)
    k = min(int(k), train.shape[0])
    sims, idxs = [], []
    progress = Progress("kNN", -(-test.shape[0] // query_batch))
    for q in range(0, test.shape[0], query_batch):
        query = tf.constant(test[q:q + query_batch])
        best_s = tf.fill([query.shape[0], 0], -np.inf)
        best_i = tf.zeros([query.shape[0], 0], tf.int64)
        for t in range(0, train.shape[0], train_chunk):
            chunk = tf.constant(train[t:t + train_chunk])
            s = tf.matmul(query, chunk, transpose_b=True)
            top = tf.math.top_k(s, min(k, chunk.shape[0]), sorted=False)
            cand_s = tf.concat([best_s, top.values], axis=1)
            cand_i = tf.concat([best_i, tf.cast(top.indices, tf.int64) + t], axis=1)
            keep = tf.math.top_k(cand_s, min(k, cand_s.shape[1]), sorted=True)
            best_s = keep.values
            best_i = tf.gather(cand_i, keep.indices, batch_dims=1)
        sims.append(best_s.numpy())
        idxs.append(best_i.numpy())
        progress.update(1)
    return np.concatenate(sims), np.concatenate(idxs)


def knn_scores(train_features, train_labels, test_features, num_classes: int, k: int = 20,
               temperature: float = 0.07, query_batch: int = 1024,
               train_chunk: int = 65536) -> np.ndarray:
    """Class scores [M, num_classes]: sum over the k neighbours of exp(sim / T) per label."""
    sims, idxs = nearest_neighbors(train_features, test_features, k, query_batch, train_chunk)
    labels = np.asarray(train_labels).astype(np.int64)[idxs]  # [M, k]
    weights = np.exp((sims - sims[:, :1]) / temperature)  # sims sorted: column 0 is the max
    scores = np.zeros((sims.shape[0], num_classes), np.float64)
    np.add.at(scores, (np.arange(sims.shape[0])[:, None], labels), weights)
    return scores


def knn_classify(train_features, train_labels, test_features, test_labels, num_classes: int,
                 k: int = 20, temperature: float = 0.07, query_batch: int = 1024,
                 train_chunk: int = 65536) -> Dict:
    """`classification_metrics` of the weighted kNN vote (top-1, top-5, per class)."""
    scores = knn_scores(train_features, train_labels, test_features, num_classes, k,
                        temperature, query_batch, train_chunk)
    metrics = classification_metrics(scores, test_labels, num_classes)
    metrics.update(k=int(min(k, len(train_labels))), temperature=float(temperature),
                   num_train=int(len(train_labels)))
    return metrics
