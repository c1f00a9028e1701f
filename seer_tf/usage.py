"""One-line errors for the command-line binaries.

A user who mistypes a path or a flag should read one `error: ...` line and get exit status 2,
not a TensorFlow traceback. `UsageError` is seer_tf's one user-error type (bad flags, configs,
weight files that do not match the model, workdirs without a checkpoint); every binary's main
body runs under `run()`, which turns UsageError, ValueError, OSError and TensorFlow's OpError
(whose `message` is the useful part) into that line. Anything else is a bug and keeps its
traceback. (TensorFlow's own start-up log lines may come before it.)
"""

from __future__ import annotations

import sys


class UsageError(ValueError):
    """Bad flags or inputs, found before any work starts."""


def first_line(error: BaseException) -> str:
    message = getattr(error, "message", None) or str(error)
    return message.strip().splitlines()[0] if message.strip() else type(error).__name__


def fail(message) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def require_no_extra_args(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}")


def _is_op_error(error) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(error, tf.errors.OpError)


def run(body) -> int:
    """Call `body()`; its return value (None = 0) is the exit status."""
    try:
        status = body()
    except (ValueError, OSError) as e:
        return fail(first_line(e))
    except Exception as e:  # noqa: BLE001  (re-raised unless it is TensorFlow's input error)
        if _is_op_error(e):
            return fail(first_line(e))
        raise
    return 0 if status is None else status
