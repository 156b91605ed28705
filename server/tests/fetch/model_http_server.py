"""A real HTTP server on 127.0.0.1 for model-download tests, with controllable misbehaviour.

    srv = ModelHTTPServer().start()
    url = srv.add("/tiny.gguf", data, cut_after=1000)   # first GET stops after 1000 bytes
    ... srv.requests_for("/tiny.gguf") ...              # what clients asked and got
    srv.stop()

Files support HEAD, single-range GET (`Range: bytes=a-[b]`, 206/416), `If-Range`,
ETag and Last-Modified. Per-file behaviours (see `Behaviour`) make it answer a
status code, cut the connection after N bytes, ignore Range, serve wrong bytes,
send no length, lie about the length, or send slowly.

`add_hub_file` makes it answer like the Hugging Face Hub's `/{repo}/resolve/{rev}/{file}`
(headers `X-Repo-Commit`, `X-Linked-Etag`, `X-Linked-Size`, error codes in
`X-Error-Code`, gated repos needing `Authorization: Bearer TOKEN`), redirecting LFS
files to a second server acting as the CDN, so the real `huggingface_hub` client
code runs against it via `HF_ENDPOINT`.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


@dataclass
class Behaviour:
    status: int | None = None  # answer this status code instead of the file
    status_times: int | None = None  # ... only for the first N GETs (None: always)
    cut_after: int | None = None  # send only this many body bytes, then close the connection
    cut_times: int | None = 1  # ... for the first N GETs (None: always)
    ignore_range: bool = False  # always answer 200 with the whole file
    corrupt: bool = False  # serve different bytes of the same length
    no_length: bool = False  # no Content-Length: body ends when the connection closes
    claim_length: int | None = None  # announce this Content-Length (and send the real body)
    rate: int | None = None  # bytes per second
    extra_headers: dict = field(default_factory=dict)


@dataclass
class Served:
    data: bytes
    behaviour: Behaviour
    etag: str
    last_modified: str
    gets: int = 0


@dataclass
class Record:
    method: str
    path: str
    headers: dict
    status: int = 0
    sent: int = 0  # body bytes actually written


@dataclass
class HubFile:
    data: bytes
    commit: str
    gated: bool
    token: str | None
    lfs: bool


class ModelHTTPServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.files: dict[str, Served] = {}
        self.hub: dict[str, dict[str, HubFile]] = {}  # repo -> filename -> file
        self.cdn: ModelHTTPServer | None = None
        self.requests: list[Record] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # lifecycle
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def start(self) -> "ModelHTTPServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # content
    def add(self, path: str, data: bytes, **behaviour) -> str:
        """Serve `data` at `path`; returns its URL."""
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        self.files[path] = Served(data, Behaviour(**behaviour), etag, email.utils.formatdate(usegmt=True))
        return self.url(path)

    def set(self, path: str, **behaviour) -> None:
        """Replace the behaviour of an already added file (the GET counter restarts)."""
        served = self.files[path]
        served.behaviour = Behaviour(**behaviour)
        served.gets = 0

    def add_hub_file(self, repo: str, filename: str, data: bytes, *, commit: str | None = None,
                     gated: bool = False, token: str | None = None, lfs: bool = True,
                     **cdn_behaviour) -> str:
        """Publish `data` as `repo/filename` at revision `main` and at `commit`; LFS bytes come from `self.cdn`."""
        commit = commit or hashlib.sha1(repo.encode() + filename.encode() + data[:64]).hexdigest()
        self.hub.setdefault(repo, {})[filename] = HubFile(data, commit, gated, token, lfs)
        if lfs:
            assert self.cdn is not None, "set .cdn to a second ModelHTTPServer for LFS files"
            self.cdn.add(self.cdn_path(data), data, **cdn_behaviour)
        return commit

    @staticmethod
    def cdn_path(data: bytes) -> str:
        return f"/cdn/{hashlib.sha256(data).hexdigest()}"

    # inspection
    def requests_for(self, path: str, method: str | None = None) -> list[Record]:
        with self._lock:
            return [r for r in self.requests if r.path == path and (method is None or r.method == method)]

    def _record(self, rec: Record) -> None:
        with self._lock:
            self.requests.append(rec)


def _make_handler(server: ModelHTTPServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def do_HEAD(self):
            self._serve(head=True)

        def do_GET(self):
            self._serve(head=False)

        # -- routing
        def _serve(self, head: bool) -> None:
            path = unquote(urlparse(self.path).path)
            rec = Record(self.command, path, {k.lower(): v for k, v in self.headers.items()})
            server._record(rec)
            self.close_connection = True
            try:
                if "/resolve/" in path and server.hub:
                    self._hub(path, rec, head)
                elif path.startswith("/api/models/") and "/tree/" in path and server.hub:
                    self._hub_tree(path, rec, head)
                elif path in server.files:
                    self._file(server.files[path], rec, head)
                else:
                    self._plain(rec, 404, b"not found\n")
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _plain(self, rec: Record, status: int, body: bytes = b"", headers: dict | None = None,
                   head: bool = False, content_type: str = "text/plain") -> None:
            rec.status = status
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if not head:
                self.wfile.write(body)
                rec.sent = len(body)

        # -- Hugging Face Hub emulation
        def _hub(self, path: str, rec: Record, head: bool) -> None:
            m = re.match(r"^/(?:models/)?(.+?)/resolve/([^/]+)/(.+)$", path)
            if not m:
                return self._plain(rec, 404, b"bad resolve url", head=head)
            repo, rev, filename = m.groups()
            files = server.hub.get(repo)
            if files is None:
                return self._plain(rec, 401, b"Repository not found", head=head, headers={
                    "X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
            any_file = next(iter(files.values()))
            f = files.get(filename)
            gate = f or any_file
            if gate.gated:
                auth = rec.headers.get("authorization")
                if auth != f"Bearer {gate.token}":
                    status = 401 if auth is None else 403
                    return self._plain(rec, status, b"gated", head=head, headers={
                        "X-Error-Code": "GatedRepo",
                        "X-Error-Message": f"Access to model {repo} is restricted. You must have access to it "
                                           "and be authenticated to access it. Please log in."})
            if rev not in ("main", any_file.commit):
                return self._plain(rec, 404, b"Invalid rev id", head=head, headers={
                    "X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id: " + rev})
            if f is None:
                return self._plain(rec, 404, b"Entry not found", head=head, headers={
                    "X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"})
            sha = hashlib.sha256(f.data).hexdigest()
            common = {"X-Repo-Commit": f.commit, "Accept-Ranges": "bytes"}
            if f.lfs:
                return self._plain(rec, 302, b"", head=head, headers={
                    **common,
                    "Location": server.cdn.url(server.cdn_path(f.data)),
                    "ETag": f'"{sha}"',
                    "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(len(f.data)),
                })
            git_sha1 = hashlib.sha1(b"blob %d\0" % len(f.data) + f.data).hexdigest()
            served = Served(f.data, Behaviour(extra_headers={**common}), f'"{git_sha1}"',
                            email.utils.formatdate(usegmt=True))
            self._file(served, rec, head)

        def _hub_tree(self, path: str, rec: Record, head: bool) -> None:
            """The Hub's file list API (`HfApi.list_repo_files`): one page, every file."""
            m = re.match(r"^/api/models/(.+?)/tree/([^/]+)$", path)
            files = server.hub.get(m.group(1)) if m else None
            if files is None:
                return self._plain(rec, 401, b"Repository not found", head=head, headers={
                    "X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
            any_file = next(iter(files.values()))
            if any_file.gated and rec.headers.get("authorization") != f"Bearer {any_file.token}":
                return self._plain(rec, 401, b"gated", head=head, headers={
                    "X-Error-Code": "GatedRepo", "X-Error-Message": f"Access to model {m.group(1)} is restricted."})
            if m.group(2) not in ("main", any_file.commit):
                return self._plain(rec, 404, b"Invalid rev id", head=head, headers={
                    "X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id: " + m.group(2)})
            body = json.dumps([{"type": "file", "path": name, "size": len(f.data),
                                "oid": hashlib.sha1(f.data).hexdigest()} for name, f in files.items()]).encode()
            self._plain(rec, 200, body, head=head, content_type="application/json")

        # -- plain files
        def _file(self, f: Served, rec: Record, head: bool) -> None:
            b = f.behaviour
            if not head:
                f.gets += 1
            if b.status is not None and (b.status_times is None or f.gets <= b.status_times or head):
                return self._plain(rec, b.status, f"status {b.status}\n".encode(), head=head,
                                   headers=b.extra_headers)
            data = bytes(x ^ 0x5A for x in f.data[:64]) + f.data[64:] if b.corrupt else f.data
            if b.corrupt and data[:4] != b"GGUF":  # keep the magic: only the checksum may catch it
                data = b"GGUF" + data[4:]
            total = len(data)
            start, end = 0, total - 1
            status = 200
            rng = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            range_ok = rng and not b.ignore_range and (if_range is None or if_range in (f.etag, f.last_modified))
            if range_ok:
                m = _RANGE.match(rng.strip())
                if m and (m.group(1) or m.group(2)):
                    if m.group(1):
                        start = int(m.group(1))
                        end = min(int(m.group(2)), total - 1) if m.group(2) else total - 1
                    else:
                        start, end = max(total - int(m.group(2)), 0), total - 1
                    if start >= total:
                        return self._plain(rec, 416, b"", head=head,
                                           headers={"Content-Range": f"bytes */{total}"})
                    status = 206
            body = data[start:end + 1]
            rec.status = status
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            if f.etag:
                self.send_header("ETag", f.etag)
            if f.last_modified:
                self.send_header("Last-Modified", f.last_modified)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
            if b.claim_length is not None:
                self.send_header("Content-Length", str(b.claim_length))
            elif not b.no_length:
                self.send_header("Content-Length", str(len(body)))
            for k, v in b.extra_headers.items():
                self.send_header(k, v)
            self.send_header("Connection", "close")
            self.end_headers()
            if head:
                return
            limit = len(body)
            if b.cut_after is not None and (b.cut_times is None or f.gets <= b.cut_times):
                limit = min(limit, b.cut_after)
            self._send(body[:limit], rec, b.rate)
            self.wfile.flush()

        def _send(self, body: bytes, rec: Record, rate: int | None) -> None:
            step = 16384 if rate else 1 << 20
            t0 = time.monotonic()
            for i in range(0, len(body), step):
                chunk = body[i:i + step]
                self.wfile.write(chunk)
                rec.sent += len(chunk)
                if rate:
                    ahead = rec.sent / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)

    return Handler
