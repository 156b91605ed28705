"""One fetcher per file and folder, across processes and hosts sharing the folder (RWX volumes)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import filelock

from .progress import Progress


@contextlib.contextmanager
def download_lock(lock_path: Path, name: str, progress: Progress):
    """Hold an exclusive lock on `lock_path`; say so when another process has it and we wait.

    The lock is an OS file lock (flock), so it is released when its holder dies.
    """
    lock = filelock.FileLock(str(lock_path), mode=0o666)  # pods with other UIDs share RWX volumes
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        progress.message(f"another process is downloading {name} into {lock_path.parent}; waiting for it", "waiting")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
