"""Kubernetes termination message: the reason a container failed, shown by `kubectl describe pod`."""

from __future__ import annotations

import os

DEFAULT_PATH = "/dev/termination-log"
MAX_BYTES = 4096  # Kubernetes keeps at most 4096 bytes


def write_termination_message(message: str) -> bool:
    """Write `message` to `$KUBELLAMA_TERMINATION_LOG` (default /dev/termination-log) if that file is writable.

    The file must already exist (Kubernetes mounts it); nothing is created elsewhere.
    """
    path = os.environ.get("KUBELLAMA_TERMINATION_LOG", DEFAULT_PATH)
    if not path or not os.path.isfile(path) or not os.access(path, os.W_OK):
        return False
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(message.encode("utf-8")[:MAX_BYTES].decode("utf-8", "ignore"))
    except OSError:
        return False
    return True
