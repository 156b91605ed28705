"""Warm restarts (`--slot-persist`): keep the slots' prompt caches across a restart.

On graceful shutdown (SIGTERM) uvicorn first stops accepting connections and lets
running requests finish (at most `--shutdown-timeout` seconds, then cancels them); then
the engine closes and its `on_shutdown` hook saves every slot that holds a prompt cache
to `--slot-save-path/kubellama-slot-<id>.bin` (slot_files: atomic, with metadata). At
start-up, the `on_ready` hook (model loaded, scheduler not started yet) restores those
files into their slots; a file from another model or context size is skipped with a
warning, and so is a damaged one. Files stay on disk after a restore (they are rewritten
at the next shutdown).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from ..errors import APIError
from . import slot_files

log = logging.getLogger("kubellama.persist")

PREFIX = "kubellama-slot-"
SAVE_TIMEOUT = 60.0  # seconds for saving every slot at shutdown


def persist_filename(slot_id: int) -> str:
    return f"{PREFIX}{slot_id}.bin"


Counter = Callable[[str, str], None]  # (action, result), e.g. ServerMetrics.count_slot_action


def restore_all(sched, folder: str | Path, count: Counter | None = None) -> int:
    """Restore every slot that has a persisted file; returns how many were restored."""
    restored = 0
    for slot in sched.slots:
        name = persist_filename(slot.id)
        if not (Path(folder) / name).is_file():
            continue
        try:
            r = slot_files.restore_slot(sched, slot.id, folder, name)
        except APIError as exc:
            log.warning("warm restart: skipping %s: %s", name, exc.message)
            if count:
                count("restore", getattr(exc, "result", "error"))
            continue
        restored += 1
        if count:
            count("restore", "ok")
        log.info("warm restart: slot %d restored from %s (%d tokens)", slot.id, name, r["n_restored"])
    return restored


def save_all(sched, folder: str | Path, count: Counter | None = None) -> int:
    """Save every slot holding a prompt cache (on the scheduler thread); returns how many."""
    saved = 0
    for slot in sched.slots:
        if not slot.cache_tokens:  # erased or never used: no stale cache may come back
            (Path(folder) / persist_filename(slot.id)).unlink(missing_ok=True)
            slot_files.meta_path(Path(folder) / persist_filename(slot.id)).unlink(missing_ok=True)
            continue
        if slot.is_processing:  # still running after the shutdown timeout: its cache is consistent between steps
            log.warning("warm restart: slot %d still processing at shutdown; saving its cache as it is", slot.id)
            slot.release()
        try:
            slot_files.save_slot(sched, slot.id, folder, persist_filename(slot.id))
        except APIError as exc:
            log.warning("warm restart: could not save slot %d: %s", slot.id, exc.message)
            if count:
                count("save", getattr(exc, "result", "error"))
            continue
        saved += 1
        if count:
            count("save", "ok")
    return saved


def install(engine, count: Counter | None = None) -> None:
    """Register the restore (on_ready) and save (on_shutdown) hooks when --slot-persist is on."""
    s = engine.settings
    if not (s.slot_persist and s.slot_save_path):
        return
    folder = s.slot_save_path

    def on_ready(eng) -> None:
        t0 = time.perf_counter()
        n = restore_all(eng.scheduler, folder, count)
        if n:
            log.info("warm restart: %d slot(s) restored from %s in %.2fs", n, folder, time.perf_counter() - t0)

    def on_shutdown(eng) -> None:
        if not eng.ready or eng.scheduler is None:
            return
        t0 = time.perf_counter()
        try:
            n = eng.call(lambda sched: save_all(sched, folder, count)).result(timeout=SAVE_TIMEOUT)
        except Exception as exc:  # a stuck scheduler must not hang the shutdown
            log.error("warm restart: saving the slots failed: %s", exc)
            return
        log.info("warm restart: %d slot(s) saved to %s in %.2fs", n, folder, time.perf_counter() - t0)

    engine.on_ready.append(on_ready)
    engine.on_shutdown.append(on_shutdown)
