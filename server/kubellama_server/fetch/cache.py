"""The cache folder: where files go, their metadata files, and the no-network "already there" check.

Layout for a model file `NAME` in a folder:
    NAME                  the complete, verified model (only ever appears by rename)
    NAME.meta.json        source, size, sha256, ETag/Last-Modified, completion time
    .NAME.part            an interrupted download, resumed on the next attempt
    .NAME.part.json       what the partial download is of (URL, validators, size)
    .NAME.lock            serialises fetchers of NAME sharing the folder
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import DiskFullError, FetchError

GGUF_MAGIC = b"GGUF"
META_VERSION = 1


def default_cache_dir() -> Path:
    """`$LLAMA_CACHE`, else `$KUBELLAMA_CACHE/models`, else `~/.cache/kubellama/models`."""
    if os.environ.get("LLAMA_CACHE"):
        return Path(os.environ["LLAMA_CACHE"]).expanduser()
    base = os.environ.get("KUBELLAMA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "kubellama"
    )
    return Path(base).expanduser() / "models"


@dataclass(frozen=True)
class Paths:
    target: Path

    @property
    def folder(self) -> Path:
        return self.target.parent

    @property
    def meta(self) -> Path:
        return self.target.with_name(self.target.name + ".meta.json")

    @property
    def part(self) -> Path:
        return self.target.with_name(f".{self.target.name}.part")

    @property
    def part_meta(self) -> Path:
        return self.target.with_name(f".{self.target.name}.part.json")

    @property
    def lock(self) -> Path:
        return self.target.with_name(f".{self.target.name}.lock")


def is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def sha256_file(path: Path, on_bytes=None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            if on_bytes:
                on_bytes(len(block))
    return digest.hexdigest()


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise storage_error(exc, path.parent) from exc


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def lookup(paths: Paths, source_key: dict) -> dict | None:
    """The metadata of a complete cached copy of `source_key`, or None. No network, no hashing.

    Complete means: metadata for this very source, the file's size as recorded, and
    the GGUF magic at its start. (The sha256 was checked when the file was written.)
    """
    meta = read_json(paths.meta)
    if not meta or meta.get("source") != source_key:
        return None
    try:
        size = paths.target.stat().st_size
    except OSError:
        return None
    if size != meta.get("size") or not is_gguf(paths.target):
        return None
    return meta


def ensure_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise FetchError(f"{folder} exists and is not a folder; choose another --dest (or LLAMA_CACHE)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, folder) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FetchError(
            f"cannot write to {folder}: permission denied; mount the model volume read-write "
            "(or run as a user that owns it) or choose another --dest"
        )


def storage_error(exc: OSError, folder: Path, *, needed: int | None = None) -> FetchError:
    """Turn a write error into a FetchError that says what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        need = f" (the model needs {human_bytes(needed)})" if needed else ""
        return DiskFullError(
            f"no space left on the device holding {folder}{need}; free space or enlarge the volume "
            "(the model volume's size / PVC request) and try again"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return FetchError(
            f"cannot write to {folder}: {exc.strerror}; mount the model volume read-write or choose another --dest"
        )
    return FetchError(f"cannot write to {folder}: {exc}")


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
