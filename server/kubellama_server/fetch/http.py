"""HTTP(S) download into the partial file, resuming with Range requests.

Within one run, connection errors, timeouts, 408/429 and 5xx answers are retried
with exponential backoff; each retry resumes where the last one stopped. Across
runs, the partial file and its `.part.json` let the next run resume the same way.
A server that ignores Range (answers 200) or a file that changed upstream (If-Range
fails) restarts the download cleanly from byte 0. Without a validator (no ETag or
Last-Modified) a change upstream cannot be seen, so the download is only resumed when a
sha256 will check the result (`verify_sha256`); otherwise it starts over.
"""

from __future__ import annotations

import hashlib
import os
import sys
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

from .cache import GGUF_MAGIC, Paths, human_bytes, read_json, storage_error, write_json_atomic
from .errors import (
    DiskFullError,
    FetchError,
    NetworkError,
    NotFoundError,
    NotGGUFError,
    ServerError,
    UnauthorizedError,
)
from .progress import Progress
from .redact import redact_url

CHUNK = 1 << 20
try:
    from importlib.metadata import version as _version

    __version__ = _version("kubellama")
except Exception:  # noqa: BLE001 - running from a source tree without install
    __version__ = "0.1.0"
USER_AGENT = f"kubellama-fetch/{__version__}"
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


@dataclass
class Remote:
    """What to GET: the URL plus request headers (auth for the Hub) and what is known in advance."""

    url: str
    headers: dict = field(default_factory=dict)
    size: int | None = None
    sha256: str | None = None  # e.g. the LFS sha256 the Hub publishes
    hint: str = ""  # appended to 401/403/404 messages: what to do for this kind of source
    info: dict = field(default_factory=dict)  # extra metadata to record (e.g. the Hub commit)

    @property
    def shown(self) -> str:
        """The URL for messages, logs and metadata: without its credentials."""
        return redact_url(self.url)


@dataclass
class Downloaded:
    size: int
    sha256: str
    etag: str | None
    last_modified: str | None
    final_url: str


class _Retry(Exception):
    def __init__(self, why: str, *, status: int | None = None, connect: bool = False):
        super().__init__(why)
        self.status = status
        self.connect = connect


class _Restart(Exception):
    """Throw the partial file away and try again at once (counts as an attempt)."""


class _PartFile:
    """The partial file plus a running sha256 of its contents."""

    def __init__(self, path: Path, keep: bool):
        self.path = path
        self.hasher = hashlib.sha256()
        try:
            self.f = path.open("r+b" if keep and path.exists() else "w+b")
            self.size = 0
            if keep:
                while block := self.f.read(CHUNK):
                    self.hasher.update(block)
                    self.size += len(block)
        except OSError as exc:
            raise storage_error(exc, path.parent) from exc

    def truncate(self) -> None:
        self.f.seek(0)
        self.f.truncate()
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        try:
            self.f.write(data)
        except OSError as exc:
            raise storage_error(exc, self.path.parent) from exc
        self.hasher.update(data)
        self.size += len(data)

    def sync(self) -> None:
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as exc:
            raise storage_error(exc, self.path.parent) from exc

    def head(self, n: int) -> bytes:
        self.f.flush()
        with self.path.open("rb") as f:
            return f.read(n)

    def close(self) -> None:
        """Close the part file; a flush that fails (disk full) is a DiskFullError, never a bare OSError
        that would hide the error already being raised."""
        try:
            self.f.close()
        except OSError as exc:
            raise storage_error(exc, self.path.parent) from exc


def download(
    remote: Remote,
    paths: Paths,
    source_key: dict,
    progress: Progress,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
    verify_sha256: str | None = None,
) -> Downloaded:
    """Download `remote` into `paths.part` (resuming a matching partial file); the caller verifies and renames.

    `verify_sha256`: the caller checks the result against it, so resuming without a validator is safe."""
    host = urlparse(remote.shown).netloc
    state = read_json(paths.part_meta)
    keep = bool(state and state.get("source") == source_key and paths.part.exists()
                and (verify_sha256 or remote.sha256 or _validator(state)))
    part = _PartFile(paths.part, keep)
    if not keep:
        state = {}
    attempt = 0
    ever_connected = False
    client = httpx.Client(
        follow_redirects=True,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
        headers={"User-Agent": USER_AGENT},
        trust_env=True,
    )
    try:
        while True:
            attempt += 1
            before = part.size
            try:
                result = _attempt(client, remote, paths, source_key, part, state, progress)
                return result
            except _Restart as why:
                progress.message(f"{why}; starting {paths.target.name} over from the beginning", "restart")
                part.truncate()
                state = {}
                if attempt > retries:
                    raise ServerError(f"{host} kept answering inconsistent ranges for {remote.shown}; try again later")
                continue
            except httpx.TransportError as exc:  # connect/read/write errors, timeouts, cut connections
                connect = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                ever_connected |= not connect
                err = _Retry(_describe_transport(exc), connect=connect)
            except _Retry as exc:
                ever_connected = True
                err = exc
            except httpx.RequestError as exc:  # too many redirects, redirect to a non-http URL, bad URL
                raise FetchError(f"cannot download {remote.shown}: {_describe_transport(exc)}; check the URL") from exc
            if part.size > before:
                attempt = 1  # progress was made: the retry budget is for stalls, not for long downloads
            if part.size and not (verify_sha256 or remote.sha256 or _validator(state)):
                part.truncate()  # nothing would notice a change upstream between the two parts
                state = {}
            if attempt > retries:
                raise _give_up(err, remote, host, part, ever_connected)
            delay = min(backoff * 2 ** (attempt - 1), 30.0)
            progress.message(
                f"{err} (have {human_bytes(part.size)}); retrying in {delay:.1f}s (attempt {attempt + 1} of {retries + 1})",
                "retry",
            )
            time.sleep(delay)
    finally:
        failing = sys.exc_info()[0] is not None  # an error is on its way out: closing must not replace it
        try:
            part.close()
        except FetchError:
            if not failing:  # the close itself failed (a flush onto a full disk)
                raise
        finally:
            client.close()


def _attempt(client, remote, paths, source_key, part, state, progress) -> Downloaded:
    offset = part.size
    headers = {**remote.headers, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        validator = _validator(state)
        if validator:
            headers["If-Range"] = validator
    with client.stream("GET", remote.url, headers=headers) as resp:
        status = resp.status_code
        if status == 416 and offset:
            total = _content_range(resp.headers.get("Content-Range", ""))[2]
            if total is not None and total == offset == state.get("total"):
                return _done(part, state, redact_url(str(resp.url)))  # the partial file was already complete
            raise _Restart("the server refused to resume (416)")
        _raise_for_status(resp, remote)
        if status == 206:
            start, _end, total = _content_range(resp.headers.get("Content-Range", ""))
            if start != offset or (state.get("total") not in (None, total)):
                raise _Restart(f"the server resumed at byte {start} instead of {offset} or the file changed")
        else:  # 200: a full body
            if offset:
                progress.message(
                    f"the server ignored the Range request or the file changed upstream; discarding "
                    f"{human_bytes(offset)} already downloaded", "restart")
                part.truncate()
                offset = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        total = total if total is not None else remote.size
        state.clear()
        state.update(source=source_key, url=remote.shown, total=total,
                     etag=resp.headers.get("ETag"), last_modified=resp.headers.get("Last-Modified"))
        write_json_atomic(paths.part_meta, state)
        _check_space(paths.folder, total, offset, progress)
        progress.start(paths.target.name, total, offset, remote.shown)
        checked_magic = offset >= 4
        for chunk in resp.iter_bytes():  # no chunk size: a cut connection loses no received bytes
            part.write(chunk)
            progress.update(part.size)
            if not checked_magic and part.size >= 4:
                checked_magic = True
                head = part.head(4)
                if head != GGUF_MAGIC:
                    raise NotGGUFError(
                        f"{remote.shown} is not a GGUF model file (it starts with {head!r}, content type "
                        f"{resp.headers.get('Content-Type', 'unknown')}); point the URL at the .gguf file itself "
                        "(on Hugging Face: .../resolve/main/FILE.gguf, not .../blob/...) and check the server "
                        "did not answer with an error or login page"
                    )
        if total is not None and part.size != total:
            raise _Retry(f"the transfer ended after {part.size} of {total} bytes")
        return _done(part, state, redact_url(str(resp.url)))


def _done(part: _PartFile, state: dict, final_url: str) -> Downloaded:
    part.sync()
    return Downloaded(part.size, part.hasher.hexdigest(), state.get("etag"), state.get("last_modified"), final_url)


def _raise_for_status(resp: httpx.Response, remote: Remote) -> None:
    status = resp.status_code
    if status in (200, 206):
        return
    where = remote.shown
    hint = f"; {remote.hint}" if remote.hint else ""
    if status == 404 or status == 410:
        raise NotFoundError(f"{where} was not found (HTTP {status}); check the URL or file name{hint}")
    if status in (401, 403):
        raise UnauthorizedError(
            f"{where} refused access (HTTP {status} {resp.reason_phrase}); the file needs credentials "
            f"that were not given or are not allowed{hint or '; use a URL that does not need a login'}"
        )
    if status in (408, 429) or status >= 500:
        raise _Retry(f"{urlparse(where).netloc} answered HTTP {status} {resp.reason_phrase}", status=status)
    raise FetchError(f"{where} answered HTTP {status} {resp.reason_phrase}; check the URL{hint}")


def _give_up(err: _Retry, remote: Remote, host: str, part: _PartFile, ever_connected: bool) -> FetchError:
    if err.status is not None:
        return ServerError(
            f"{host} kept answering HTTP {err.status} for {remote.shown}; the server has a problem, try again later"
        )
    kept = (f"; {human_bytes(part.size)} downloaded so far are kept in {part.path} and the next attempt resumes"
            if part.size else "")
    if not ever_connected:
        return NetworkError(
            f"cannot reach {host} ({err}); check the URL, DNS, proxy settings (HTTPS_PROXY/NO_PROXY) "
            f"and that the pod's network policy allows egress to it{kept}"
        )
    return NetworkError(f"the connection to {host} kept failing ({err}){kept}")


#: Below this share of the volume left free after a download, the fetcher says the volume is nearly full.
NEARLY_FULL = 0.1


def _check_space(folder: Path, total: int | None, offset: int, progress: Progress | None = None) -> None:
    """Fail before downloading what cannot fit; say so (event "nearly_full") when it fits but leaves under
    NEARLY_FULL of the volume free, so that the next download's failure is announced before it happens."""
    if total is None:
        return
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return
    free = usage.free
    if progress is not None and total - offset <= free and free - (total - offset) < NEARLY_FULL * usage.total:
        progress.message(f"the volume holding {folder} is nearly full: {human_bytes(free - (total - offset))} of "
                         f"{human_bytes(usage.total)} will be free after this download", "nearly_full")
    if total - offset > free:
        raise DiskFullError(
            f"not enough space in {folder}: the model needs {human_bytes(total - offset)} more but only "
            f"{human_bytes(free)} are free; free space or enlarge the volume (PVC size) and try again"
        )


def _content_range(value: str) -> tuple[int | None, int | None, int | None]:
    m = _CONTENT_RANGE.match(value.strip())
    if not m:
        return None, None, None
    start = int(m.group(1)) if m.group(1) else None
    end = int(m.group(2)) if m.group(2) else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, end, total


def _validator(state: dict | None) -> str | None:
    """What If-Range can check a resumed download against: a strong ETag, else Last-Modified."""
    if not state:
        return None
    return state.get("etag") if _strong(state.get("etag")) else state.get("last_modified")


def _strong(etag: str | None) -> bool:
    return bool(etag) and not etag.startswith("W/")


def _describe_transport(exc: httpx.RequestError) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
