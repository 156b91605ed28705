"""Remove folders of a shared model cache: `python -m kubellama_server.fetch.gc --root DIR KEY...`.

The operator's cleanup Job runs it for cache keys no LlamaServer has used for its grace period. Only
folder names that are cache keys (`sha256-<64 hex>`, `src-<32 hex>`) are touched, and a folder whose
download lock is held (a fetcher is writing it again) is left alone. Prints, and leaves as the
termination message, `{"removed": [...], "freed_bytes": N, "kept": {key: why}}`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import filelock

from .termination import write_termination_message

KEY = re.compile(r"^(sha256-[0-9a-f]{64}|src-[0-9a-f]{32})$")
MAX_KEYS = 256


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _busy(folder: Path) -> bool:
    """Whether a fetcher holds one of the folder's download locks."""
    for lock_path in folder.glob(".*.lock"):
        lock = filelock.FileLock(str(lock_path))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return True
        lock.release()
    return False


def remove(root: Path, keys: list[str]) -> dict:
    """Remove `root/<key>` for each key; what was removed, the bytes freed, and why others were kept."""
    removed: list[str] = []
    kept: dict[str, str] = {}
    freed = 0
    for key in keys:
        if not KEY.match(key):
            kept[key] = "not a cache key"
            continue
        folder = root / key
        if not folder.is_dir():
            kept[key] = "not in the cache"
            continue
        if _busy(folder):
            kept[key] = "being downloaded"
            continue
        size = _size(folder)
        shutil.rmtree(folder)
        removed.append(key)
        freed += size
    return {"removed": removed, "freed_bytes": freed, "kept": kept}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kubellama_server.fetch.gc", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, required=True, help="the cache's mount point")
    p.add_argument("keys", nargs="+", metavar="KEY")
    args = p.parse_args(argv)
    if len(args.keys) > MAX_KEYS:
        p.error(f"at most {MAX_KEYS} keys per run")
    result = remove(args.root, args.keys)
    line = json.dumps(result, separators=(",", ":"), sort_keys=True)
    print(line)
    write_termination_message(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
