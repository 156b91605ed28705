"""Process-wide llama.cpp initialisation and log routing."""

from __future__ import annotations

import ctypes
import logging
import threading

import llama_cpp as lc

log = logging.getLogger("kubellama.llama")
_init_lock = threading.Lock()
_initialised = False
_log_callback = None  # keep a reference: llama.cpp calls it from C


def init_backend(*, verbose: bool = False, numa: str | None = None) -> None:
    """Initialise llama.cpp once; route its logs to Python logging (debug level unless verbose)."""
    global _initialised, _log_callback
    with _init_lock:
        if _initialised:
            return

        level = logging.INFO if verbose else logging.DEBUG

        @lc.llama_log_callback
        def _cb(_level: int, text: bytes, _user: ctypes.c_void_p) -> None:
            if verbose:
                try:
                    msg = text.decode("utf-8", "replace").rstrip()
                except Exception:  # pragma: no cover - defensive, C callback must not raise
                    return
                if msg:
                    log.log(level, msg)

        _log_callback = _cb
        lc.llama_log_set(_cb, ctypes.c_void_p(0))
        lc.llama_backend_init()
        if numa:
            strategies = {"distribute": 1, "isolate": 2, "numactl": 3}
            lc.llama_numa_init(strategies.get(numa, 1))
        _initialised = True
