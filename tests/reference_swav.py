"""NumPy float64 port of facebookresearch/swav main_swav.py (`distributed_sinkhorn`, `train`).

Written independently of seer_tf so the tests compare two implementations. Ranks are simulated:
`all_reduce` sums a list of per-rank arrays. Like the original, no max is subtracted before exp
(float64 holds exp(1/0.03)); seer_tf subtracts it, and the tests show that changes nothing.
"""

import numpy as np


def distributed_sinkhorn(outs, epsilon, iterations):
    """outs: list (one per rank) of [B_r, K] scores -> list of [B_r, K] codes."""
    qs = [np.exp(np.asarray(o, np.float64) / epsilon).T for o in outs]  # K x B_r, as the paper
    k = qs[0].shape[0]
    b = sum(q.shape[1] for q in qs)  # global number of samples
    total = sum(q.sum() for q in qs)  # dist.all_reduce(sum_Q)
    qs = [q / total for q in qs]
    for _ in range(iterations):
        rows = sum(q.sum(axis=1, keepdims=True) for q in qs)  # dist.all_reduce(sum_of_rows)
        qs = [q / rows / k for q in qs]
        qs = [q / q.sum(axis=0, keepdims=True) / b for q in qs]
    return [(q * b).T for q in qs]


def log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


class ReferenceSwav:
    """One rank of main_swav.py `train`: loss and queue bookkeeping, world size 1."""

    def __init__(self, num_crops, crops_for_assign=(0, 1), temperature=0.1, epsilon=0.05,
                 iterations=3, queue_length=0, dim=None):
        self.num_crops = num_crops
        self.crops_for_assign = crops_for_assign
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, iterations
        self.queue_length, self.dim = queue_length, dim
        self.queue = None
        self.use_the_queue = False
        self.last_codes = None

    def start_queue(self):  # `if epoch >= args.epoch_queue_starts and queue is None`
        self.queue = np.zeros((len(self.crops_for_assign), self.queue_length, self.dim))

    def step(self, embedding, prototypes):
        """embedding: [num_crops * bs, D] (crop-major); prototypes: [K, D]. Returns the loss."""
        embedding = np.asarray(embedding, np.float64)
        prototypes = np.asarray(prototypes, np.float64)
        output = embedding @ prototypes.T
        bs = embedding.shape[0] // self.num_crops
        loss = 0.0
        self.last_codes = []
        for i, crop_id in enumerate(self.crops_for_assign):
            out = output[bs * crop_id: bs * (crop_id + 1)]
            if self.queue is not None:
                if self.use_the_queue or not np.all(self.queue[i, -1, :] == 0):
                    self.use_the_queue = True
                    out = np.concatenate([self.queue[i] @ prototypes.T, out])
                self.queue[i, bs:] = self.queue[i, :-bs].copy()
                self.queue[i, :bs] = embedding[crop_id * bs: (crop_id + 1) * bs]
            q = distributed_sinkhorn([out], self.epsilon, self.iterations)[0][-bs:]
            self.last_codes.append(q)
            subloss = 0.0
            for v in np.delete(np.arange(self.num_crops), crop_id):
                x = output[bs * v: bs * (v + 1)] / self.temperature
                subloss -= np.mean(np.sum(q * log_softmax(x), axis=1))
            loss += subloss / (self.num_crops - 1)
        return loss / len(self.crops_for_assign)
