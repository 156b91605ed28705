"""`fetch_model`: make a model file available locally and return its path."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .cache import (
    META_VERSION,
    Paths,
    default_cache_dir,
    ensure_folder,
    is_gguf,
    lookup,
    now_iso,
    sha256_file,
    storage_error,
    write_json_atomic,
)
from ..fsutil import fsync_dir
from .errors import ChecksumMismatchError, FetchError, NotFoundError, NotGGUFError, OfflineMissError, UsageError
from .locking import download_lock
from .progress import Progress, make_progress
from .source import ModelSource
from . import split as splits

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def fetch_model(
    source: ModelSource,
    *,
    dest: Path | str | None = None,
    sha256: str | None = None,
    offline: bool = False,
    progress: str | Progress = "auto",
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
) -> Path:
    """Return the absolute path of the model file for `source`, downloading it if needed.

    `dest` None means the shared cache folder (`LLAMA_CACHE`, else
    `~/.cache/kubellama/models`) under a name derived from the source; with `dest`
    the file is `dest/<basename of the URL path or Hub file>`. A complete, verified
    cached copy is returned without any network call. Raises `FetchError` subclasses.

    The first shard of a split model (`name-00001-of-00003.gguf`) brings every shard
    (see `split`); `sha256` then checks the first shard, the Hub's hashes all of them.
    """
    source.validate()
    expected = normalize_sha256(sha256)
    reporter = progress if isinstance(progress, Progress) else make_progress(progress)
    if source.path:
        return _local_file(Path(source.path).expanduser(), expected)

    folder = Path(dest).expanduser().absolute() if dest else default_cache_dir().absolute()
    split = splits.parse(source.basename())
    if split is None:
        return _fetch_file(source, folder, bool(dest), expected, reporter, offline=offline,
                           retries=retries, backoff=backoff, timeout=timeout)
    _require_first_shard(split, source.describe())
    sources = [splits.shard_source(source, no) for no in range(1, split.count + 1)]
    names = [s.basename() if dest else s.cache_name() for s in sources]
    first = splits.parse(names[0])
    if first is None or any(splits.parse(n) != splits.SplitName(first.prefix, no, split.count)
                            for no, n in enumerate(names, 1)):
        raise UsageError(
            f"the cache names of this split model ({names[0]}, ...) would break its shard pattern (a URL "
            "with a query or a very long name); pull it into a folder of its own (--dest)")
    reporter.message(f"{source.basename()} is a split model: {split.count} files", "split")
    paths = [_fetch_file(s, folder, bool(dest), expected if no == 1 else None, reporter, offline=offline,
                         retries=retries, backoff=backoff, timeout=timeout)
             for no, s in enumerate(sources, 1)]
    return paths[0]


def _require_first_shard(split: "splits.SplitName", what: str) -> None:
    if split.no != 1:
        raise UsageError(
            f"{what} is shard {split.no} of a split model; give the first shard, "
            f"{split.shard(1)}: llama.cpp loads the others from its folder")


def _fetch_file(source: ModelSource, folder: Path, to_dest: bool, expected: str | None, reporter: Progress, *,
                offline: bool, retries: int, backoff: float, timeout: float) -> Path:
    """One file of `source` in `folder` (under its basename with `to_dest`, else its cache name)."""
    name = source.basename() if to_dest else source.cache_name()
    paths = Paths(folder / name)
    key = source.key()

    found = _cached(paths, key, expected, reporter, offline=offline)
    if found:
        return found
    if offline:
        found = _manual_file(paths, expected, reporter, key=None)
        if found:
            return found
        raise OfflineMissError(
            f"offline mode: {name} ({source.describe()}) is not in {folder}; run once without --offline "
            "to download it, or copy the file there"
        )

    ensure_folder(folder)
    with download_lock(paths.lock, name, reporter):
        found = _cached(paths, key, expected, reporter, report_stale=True)  # another process may have finished it
        if found:
            return found
        if expected:
            found = _manual_file(paths, expected, reporter, key=key)
            if found:
                return found
        return _download(source, paths, key, expected, reporter, retries=retries, backoff=backoff, timeout=timeout)


def normalize_sha256(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    v = value.strip().lower()
    v = v[len("sha256:"):] if v.startswith("sha256:") else v
    if not _HEX64.match(v):
        raise UsageError(f"--sha256 {value!r} is not a sha256: give 64 hex digits (as printed by `sha256sum`)")
    return v


def _cached(paths: Paths, key: dict, expected: str | None, reporter: Progress, *,
            offline: bool = False, report_stale: bool = False) -> Path | None:
    meta = lookup(paths, key)
    if not meta:
        return None
    if expected and meta.get("sha256") != expected:
        if offline:
            raise ChecksumMismatchError(
                f"offline mode: {paths.target} has sha256 {meta.get('sha256')} but {expected} was expected; "
                "run without --offline to download the file again, or fix the expected sha256",
                expected=expected, actual=str(meta.get("sha256")))
        if report_stale:
            reporter.message(f"{paths.target} has sha256 {meta.get('sha256')}, not the expected {expected}; "
                             "downloading again", "stale")
        return None
    reporter.message(f"{paths.target.name} is already in {paths.folder} (completed {meta.get('completed_at')})",
                     "cached")
    return paths.target


def _manual_file(paths: Paths, expected: str | None, reporter: Progress, *, key: dict | None) -> Path | None:
    """A GGUF put in place by hand (no metadata file).

    Offline (`key` None) it is used as is, after a sha256 check when one is expected.
    Online it is only adopted (metadata written for `key`) when it matches `expected`.
    """
    target = paths.target
    if paths.meta.exists() or not target.is_file() or not is_gguf(target):
        return None
    if expected:
        reporter.message(f"verifying the sha256 of {target} (found without download metadata)", "verify")
        actual = sha256_file(target)
        if actual != expected:
            if key is not None:
                return None  # download the right file over it
            raise ChecksumMismatchError(
                f"offline mode: {target} has sha256 {actual} but {expected} was expected; "
                "run without --offline to download the right file, or fix the expected sha256",
                expected=expected, actual=actual)
        if key is not None:
            write_json_atomic(paths.meta, {"version": META_VERSION, "source": key, "file": target.name,
                                           "size": target.stat().st_size, "sha256": actual,
                                           "completed_at": now_iso(), "adopted": True})
    elif key is not None:
        return None
    reporter.message(f"using {target}, found without download metadata", "cached")
    return target


def _download(source: ModelSource, paths: Paths, key: dict, expected: str | None, reporter: Progress,
              *, retries: int, backoff: float, timeout: float) -> Path:
    from .http import Remote, download  # imported here: the cached path needs no HTTP stack

    if source.hf_repo:
        from . import hf

        remote = hf.resolve(source.hf_repo, source.hf_file, source.hf_revision, reporter,
                            retries=retries, backoff=backoff)
    else:
        remote = Remote(url=source.url)
    if expected and remote.sha256 and expected != remote.sha256:
        raise ChecksumMismatchError(
            f"{source.describe()} has sha256 {remote.sha256} according to the Hub, but {expected} was expected; "
            "check the expected sha256 and the revision", expected=expected, actual=remote.sha256)
    want = expected or remote.sha256

    def discard() -> None:
        paths.part.unlink(missing_ok=True)
        paths.part_meta.unlink(missing_ok=True)

    try:
        got = download(remote, paths, key, reporter, retries=retries, backoff=backoff, timeout=timeout,
                       verify_sha256=want)
    except NotGGUFError:
        discard()
        raise

    if remote.size is not None and got.size != remote.size:
        discard()
        raise FetchError(f"{source.describe()}: got {got.size} bytes but {remote.size} were announced; try again")
    if not is_gguf(paths.part):
        discard()
        raise NotGGUFError(f"{source.describe()} is not a GGUF model file; check the URL or file name")
    if want and got.sha256 != want:
        discard()
        raise ChecksumMismatchError(
            f"sha256 mismatch for {source.describe()}: expected {want}, got {got.sha256}; the download was "
            "deleted. Check the expected sha256 (--sha256 / spec) and that the source file did not change",
            expected=want, actual=got.sha256)

    meta = {
        "version": META_VERSION,
        "source": key,
        "file": paths.target.name,
        "url": remote.shown,
        "size": got.size,
        "sha256": got.sha256,
        "sha256_verified_against": "expected" if expected else "hub" if remote.sha256 else None,
        "etag": got.etag,
        "last_modified": got.last_modified,
        "completed_at": now_iso(),
        **{k: v for k, v in remote.info.items() if v is not None},
    }
    try:
        paths.meta.unlink(missing_ok=True)  # a reader never pairs the new file with stale metadata
        os.replace(paths.part, paths.target)
    except OSError as exc:
        raise storage_error(exc, paths.folder) from exc
    write_json_atomic(paths.meta, meta)
    paths.part_meta.unlink(missing_ok=True)
    fsync_dir(paths.folder)
    reporter.finish(str(paths.target), got.sha256)
    return paths.target


def _local_file(path: Path, expected: str | None) -> Path:
    path = path.absolute()
    if not path.exists():
        raise NotFoundError(f"model file {path} does not exist; check the path (-m) and that its volume is mounted")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give the path of the .gguf file inside it")
    if not os.access(path, os.R_OK):
        raise FetchError(f"cannot read {path}: permission denied; fix its permissions or the volume's fsGroup")
    if not is_gguf(path):
        raise NotGGUFError(f"{path} is not a GGUF model file (wrong magic bytes); give a .gguf model")
    split = splits.parse(path.name)
    if split:
        _require_first_shard(split, str(path))
        missing = [split.shard(no) for no in range(1, split.count + 1) if not (path.parent / split.shard(no)).is_file()]
        if missing:
            raise NotFoundError(
                f"{path.name} is the first of {split.count} shards, but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing from {path.parent}; put every shard in that folder")
    if expected:
        actual = sha256_file(path)
        if actual != expected:
            raise ChecksumMismatchError(
                f"sha256 mismatch for {path}: expected {expected}, got {actual}; fix the file or the expected sha256",
                expected=expected, actual=actual)
    return path
