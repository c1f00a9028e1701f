"""A progress line for long evaluation loops (feature extraction, probes, kNN, fine-tuning).

Extracting SEER features of ImageNet takes hours on one accelerator; the log says how far it is
and when it will end.
"""

from __future__ import annotations

import time
from typing import Optional

from absl import logging


class Progress:
    """Logs `name: done/total, rate, elapsed, ETA` every `every_s` seconds and at the end."""

    def __init__(self, name: str, total: Optional[int] = None, unit: str = "batches",
                 every_s: float = 30.0):
        self.name, self.total, self.unit, self.every_s = name, total, unit, every_s
        self.done, self.start, self.last = 0, time.time(), time.time()

    def update(self, n: int = 1, extra: str = ""):
        self.done += n
        now = time.time()
        if now - self.last >= self.every_s or (self.total and self.done >= self.total):
            self.last = now
            logging.info("%s", self.line(extra))

    def line(self, extra: str = "") -> str:
        elapsed = time.time() - self.start
        rate = self.done / max(elapsed, 1e-9)
        if self.total:
            eta = hms((self.total - self.done) / max(rate, 1e-9))
            where = f"{self.done}/{self.total} {self.unit}"
        else:
            eta, where = "?", f"{self.done} {self.unit}"
        return (f"{self.name}: {where}, {rate:.2f} {self.unit}/s, elapsed {hms(elapsed)}, "
                f"ETA {eta}" + (f" | {extra}" if extra else ""))


def hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
