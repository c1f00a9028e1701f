"""What a running pretraining job says: the log line, TensorBoard scalars, histograms, crops.

Called by the trainer at loop boundaries only, where it fetches the device's metrics anyway:
loss, learning rate, images/s, ETA, loss scale, code entropy and prototypes in use (the SwAV
collapse signals), plus the data counters (`extra_scalars`).
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf
from absl import logging

_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def data_scalars(dataset_fn):
    """() -> the input stream's decode counters as TensorBoard scalars (`data/bad_files`,
    `data/decoded_ok`), logging the bad-file report when there are any."""
    def scalars():
        out = {}
        for stats in getattr(dataset_fn, "decode_stats", []):
            d = stats.as_dict()
            out["data/bad_files"] = out.get("data/bad_files", 0) + d["bad"]
            out["data/decoded_ok"] = out.get("data/decoded_ok", 0) + d["ok"]
            if d["bad"]:
                logging.info("%s", stats.report())
        return out

    return scalars


def current_lr(optimizer) -> float:
    lr = optimizer.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def hms(seconds) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Reporter:
    """Log lines and TensorBoard summaries for one run (summaries only on the chief)."""

    def __init__(self, writer, *, model, optimizer, total_steps: int, global_batch_size: int,
                 histogram_every: int, extra_scalars: Optional[Callable[[], Dict]] = None,
                 on_log: Optional[Callable[[int, Dict], None]] = None):
        self.writer, self.model, self.optimizer = writer, model, optimizer
        self.total_steps, self.global_batch_size = int(total_steps), int(global_batch_size)
        self.histogram_every = int(histogram_every)
        self.extra_scalars, self.on_log = extra_scalars, on_log
        self.t_start = time.time()
        self._window = (time.time(), 0)
        self._first_histogram = True

    def steps_done(self, n: int):
        t, count = self._window
        self._window = (t, count + n)

    def log(self, step: int, metrics: Dict) -> Dict:
        now = time.time()
        t, count = self._window
        steps_per_sec = count / max(now - t, 1e-9)
        self._window = (now, 0)
        values = {k: float(v) for k, v in metrics.items() if k != "finite"}
        values["lr"] = current_lr(self.optimizer)
        values["images_per_sec"] = steps_per_sec * self.global_batch_size
        if self.extra_scalars:  # e.g. data/bad_files from the decoder's counters
            values.update(self.extra_scalars())
        remaining = (self.total_steps - step) / max(steps_per_sec, 1e-9)
        logging.info(
            "step %d/%d loss %.4f lr %.4g %.1f img/s entropy %.3f protos %d%s | %s elapsed, ETA %s",
            step, self.total_steps, values["loss"], values["lr"], values["images_per_sec"],
            values.get("code_entropy", float("nan")), int(values.get("prototypes_used", 0)),
            f" loss_scale {values['loss_scale']:.0f}" if "loss_scale" in values else "",
            hms(now - self.t_start), hms(remaining))
        with self.writer.as_default(step=step):
            for k, v in values.items():
                tf.summary.scalar(k if "/" in k else f"train/{k}", v)
            if self.histogram_every and (step % self.histogram_every == 0 or self._first_histogram):
                variables = self.model.trainable_variables
                for v in variables[:: max(1, len(variables) // 16)]:
                    tf.summary.histogram(f"weights/{v.path}", v)
        self._first_histogram = False
        if self.on_log:
            self.on_log(step, values)
        return values

    def crops(self, step: int, local_crops):
        """A grid of the crops of a few samples, un-normalized for display."""
        with self.writer.as_default(step=step):
            for i, c in enumerate(local_crops):
                img = np.clip(np.asarray(c[:4], np.float32) * _STD + _MEAN, 0, 1)
                tf.summary.image(f"crops/crop{i}", img, max_outputs=4)
