"""Which config changes a resumed run may make.

A workdir holds one run. Resuming it with another batch size, other crops, another model or
other data would silently train something else from a checkpoint of the first (or fail deep in
a restore with a shape error), so such changes are refused. Keys that only move the schedule or
the bookkeeping (how long, how often to log and save, the learning rate) are the ones people
change on purpose when they extend or tune a run: those are accepted and logged.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from absl import logging

from seer_tf.usage import UsageError

# Exact keys and prefixes ("optim." = every key under optim) a resume may change.
SCHEDULE_KEYS = (
    "optim.", "demo.",
    "train.total_steps", "train.log_every", "train.checkpoint_every", "train.histogram_every",
    "train.image_every", "train.steps_per_loop", "train.jit_step", "train.max_nonfinite_steps",
    "train.require_workdir", "train.tpu_address",
)


def flatten(config: Dict, prefix: str = "") -> Dict[str, object]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def _schedule_only(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in SCHEDULE_KEYS)


def changes(stored: Dict, current: Dict) -> Tuple[List[str], List[str]]:
    """(blocking, accepted): the changed keys that a resume refuses and those it accepts."""
    old, new = flatten(stored), flatten(current)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    blocking = [k for k in changed if not _schedule_only(k)]
    return blocking, [k for k in changed if _schedule_only(k)]


def check_resume(stored: Optional[Dict], current: Dict, workdir: str, allow: bool = False):
    """Raises UsageError naming the changed keys a resume refuses (unless `allow`); logs the
    accepted ones. `stored` is the workdir's config.json (None: a new run)."""
    if stored is None:
        return
    blocking, accepted = changes(stored, current)
    for key in accepted:
        logging.info("config change accepted on resume: %s", key)
    if blocking and not allow:
        raise UsageError(f"{workdir} was started with another config: {', '.join(blocking)} "
                         f"changed (--allow_config_change to resume anyway)")
    for key in blocking:
        logging.warning("config change forced on resume (--allow_config_change): %s", key)
