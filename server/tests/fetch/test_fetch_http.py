"""fetch_model against a real loopback HTTP server: download, cache, resume, verify, errors."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from kubellama_server.fetch import (
    ChecksumMismatchError,
    DiskFullError,
    FetchError,
    ModelSource,
    NetworkError,
    NotFoundError,
    NotGGUFError,
    OfflineMissError,
    ServerError,
    UnauthorizedError,
    UsageError,
    fetch_model,
)

FAST = {"progress": "none", "retries": 2, "backoff": 0.0}


def test_fresh_download_lands_at_dest_basename_with_metadata(model_server, tiny_bytes, tiny_sha, tmp_path):
    url = model_server.add("/models/tiny.gguf", tiny_bytes)
    dest = tmp_path / "vol"
    path = fetch_model(ModelSource(url=url), dest=dest, **FAST)
    assert path == dest / "tiny.gguf" and path.is_absolute()
    assert path.read_bytes() == tiny_bytes
    meta = json.loads((dest / "tiny.gguf.meta.json").read_text())
    assert meta["source"] == {"url": url}
    assert meta["size"] == len(tiny_bytes) and meta["sha256"] == tiny_sha
    assert meta["etag"] == model_server.files["/models/tiny.gguf"].etag and meta["last_modified"]
    assert meta["completed_at"]
    # nothing temporary left behind; exactly one full GET
    assert sorted(p.name for p in dest.iterdir() if not p.name.endswith(".lock")) == ["tiny.gguf", "tiny.gguf.meta.json"]
    gets = model_server.requests_for("/models/tiny.gguf", "GET")
    assert len(gets) == 1 and gets[0].sent == len(tiny_bytes) and "range" not in gets[0].headers


def test_second_run_uses_cache_without_network(model_server, tiny_bytes, tmp_path):
    url = model_server.add("/tiny.gguf", tiny_bytes)
    first = fetch_model(ModelSource(url=url), dest=tmp_path, **FAST)
    n = len(model_server.requests)
    t0 = time.monotonic()
    second = fetch_model(ModelSource(url=url), dest=tmp_path, **FAST)
    assert second == first
    assert len(model_server.requests) == n, "a cached, complete file must not cause any request"
    assert time.monotonic() - t0 < 2.0


def test_default_cache_folder_names_files_after_the_source(model_server, tiny_bytes, tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_CACHE", str(tmp_path / "cache"))
    a = fetch_model(ModelSource(url=model_server.add("/a/tiny.gguf", tiny_bytes)), **FAST)
    b = fetch_model(ModelSource(url=model_server.add("/b/tiny.gguf", tiny_bytes)), **FAST)
    assert a.parent == b.parent == tmp_path / "cache"
    assert a != b, "two sources with the same basename must not share a cache file"
    assert a.name == f"127.0.0.1_{model_server.port}_a_tiny.gguf"


def test_expected_sha256_accepted(model_server, tiny_bytes, tiny_sha, tmp_path):
    url = model_server.add("/tiny.gguf", tiny_bytes)
    path = fetch_model(ModelSource(url=url), dest=tmp_path, sha256="SHA256:" + tiny_sha.upper(), **FAST)
    assert json.loads(path.with_name("tiny.gguf.meta.json").read_text())["sha256_verified_against"] == "expected"


def test_checksum_mismatch_deletes_download_and_names_both_hashes(model_server, tiny_bytes, tiny_sha, tmp_path):
    url = model_server.add("/tiny.gguf", tiny_bytes, corrupt=True)
    with pytest.raises(ChecksumMismatchError) as err:
        fetch_model(ModelSource(url=url), dest=tmp_path, sha256=tiny_sha, **FAST)
    served = hashlib.sha256(bytes(x ^ 0x5A for x in tiny_bytes[:64]) + tiny_bytes[64:]).hexdigest()
    assert err.value.exit_code == 7
    assert tiny_sha in str(err.value) and err.value.actual in str(err.value) and err.value.actual != tiny_sha
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    assert served != tiny_sha


def test_cached_file_with_other_expected_sha_is_downloaded_again(model_server, tiny_bytes, tmp_path):
    url = model_server.add("/tiny.gguf", tiny_bytes)
    fetch_model(ModelSource(url=url), dest=tmp_path, **FAST)
    new = tiny_bytes + b"\0" * 16  # the operator pinned a new version of the file
    model_server.add("/tiny.gguf", new)
    path = fetch_model(ModelSource(url=url), dest=tmp_path, sha256=hashlib.sha256(new).hexdigest(), **FAST)
    assert path.read_bytes() == new
    assert len(model_server.requests_for("/tiny.gguf", "GET")) == 2


def test_not_a_gguf_is_rejected_at_the_first_bytes(model_server, tmp_path):
    html = b"<!DOCTYPE html><html>login</html>" + b"x" * (8 << 20)
    url = model_server.add("/blob/main/model.gguf", html, rate=4 << 20)  # the whole body would take 2 s
    t0 = time.monotonic()
    with pytest.raises(NotGGUFError) as err:
        fetch_model(ModelSource(url=url), dest=tmp_path, **FAST)
    assert time.monotonic() - t0 < 1.5, "the download must stop at the first bytes"
    assert err.value.exit_code == 8 and "GGUF" in str(err.value) and "resolve" in str(err.value)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.parametrize("status,exc,code", [(404, NotFoundError, 3), (401, UnauthorizedError, 4),
                                             (403, UnauthorizedError, 4)])
def test_http_errors_map_to_exit_codes(model_server, tiny_bytes, tmp_path, status, exc, code):
    url = model_server.add("/tiny.gguf", tiny_bytes, status=status)
    with pytest.raises(exc) as err:
        fetch_model(ModelSource(url=url), dest=tmp_path, **FAST)
    assert err.value.exit_code == code and str(status) in str(err.value)
    assert len(model_server.requests_for("/tiny.gguf")) == 1, "client errors are not retried"


def test_5xx_is_retried_then_reported(model_server, tiny_bytes, tmp_path):
    url = model_server.add("/tiny.gguf", tiny_bytes, status=500)
    with pytest.raises(ServerError) as err:
        fetch_model(ModelSource(url=url), dest=tmp_path, **FAST)
    assert err.value.exit_code == 1 and "500" in str(err.value)
    assert len(model_server.requests_for("/tiny.gguf")) == 3  # 1 + 2 retries


def test_transient_5xx_recovers(model_server, tiny_bytes, tmp_path):
    url = model_server.add("/tiny.gguf", tiny_bytes, status=503, status_times=2)
    assert fetch_model(ModelSource(url=url), dest=tmp_path, **FAST).read_bytes() == tiny_bytes


def test_unreachable_host_is_a_network_error(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NetworkError) as err:
        fetch_model(ModelSource(url=f"http://127.0.0.1:{port}/tiny.gguf"), dest=tmp_path, **FAST)
    assert err.value.exit_code == 5 and f"127.0.0.1:{port}" in str(err.value)
    assert "cannot reach" in str(err.value)


def test_cut_connection_resumes_within_the_run(model_server, tiny_bytes, tiny_sha, tmp_path):
    cut = 200_000
    url = model_server.add("/tiny.gguf", tiny_bytes, cut_after=cut)
    path = fetch_model(ModelSource(url=url), dest=tmp_path, sha256=tiny_sha, **FAST)
    assert path.read_bytes() == tiny_bytes
    first, second = model_server.requests_for("/tiny.gguf", "GET")
    assert first.sent == cut
    assert second.headers["range"] == f"bytes={cut}-" and second.headers["if-range"]
    assert second.status == 206 and second.sent == len(tiny_bytes) - cut


def test_interrupted_download_resumes_on_next_run(model_server, tiny_bytes, tiny_sha, tmp_path):
    cut = 300_000
    url = model_server.add("/tiny.gguf", tiny_bytes, cut_after=cut)
    with pytest.raises(NetworkError) as err:
        fetch_model(ModelSource(url=url), dest=tmp_path, progress="none", retries=0)
    assert "resumes" in str(err.value)
    assert (tmp_path / ".tiny.gguf.part").stat().st_size == cut
    assert not (tmp_path / "tiny.gguf").exists(), "an incomplete file never gets the final name"

    path = fetch_model(ModelSource(url=url), dest=tmp_path, sha256=tiny_sha, **FAST)
    assert path.read_bytes() == tiny_bytes
    gets = model_server.requests_for("/tiny.gguf", "GET")
    assert len(gets) == 2
    assert gets[1].headers["range"] == f"bytes={cut}-"
    assert gets[1].sent == len(tiny_bytes) - cut, "the second attempt transfers only the remaining bytes"
    assert not (tmp_path / ".tiny.gguf.part").exists() and not (tmp_path / ".tiny.gguf.part.json").exists()


def test_server_ignoring_range_starts_over_cleanly(model_server, tiny_bytes, tiny_sha, tmp_path):
    url = model_server.add("/tiny.gguf", tiny_bytes, cut_after=100_000)
    with pytest.raises(NetworkError):
        fetch_model(ModelSource(url=url), dest=tmp_path, progress="none", retries=0)
    model_server.set("/tiny.gguf", ignore_range=True)
    path = fetch_model(ModelSource(url=url), dest=tmp_path, sha256=tiny_sha, **FAST)
    assert path.read_bytes() == tiny_bytes  # not 100 000 stale bytes + the whole file
    last = model_server.requests_for("/tiny.gguf", "GET")[-1]
    assert "range" in last.headers and last.status == 200 and last.sent == len(tiny_bytes)


def test_file_changed_upstream_between_runs_restarts(model_server, tiny_bytes, tmp_path):
    url = model_server.add("/tiny.gguf", tiny_bytes, cut_after=100_000)
    with pytest.raises(NetworkError):
        fetch_model(ModelSource(url=url), dest=tmp_path, progress="none", retries=0)
    new = tiny_bytes[:50] + b"\1" * 10 + tiny_bytes[60:]  # same size, new ETag
    model_server.add("/tiny.gguf", new)
    path = fetch_model(ModelSource(url=url), dest=tmp_path, **FAST)
    assert path.read_bytes() == new
    last = model_server.requests_for("/tiny.gguf", "GET")[-1]
    assert last.status == 200, "If-Range with the old ETag must make the server send the whole new file"


def test_not_enough_space_is_reported_before_writing(model_server, tiny_bytes, tmp_path):
    url = model_server.add("/huge.gguf", tiny_bytes, claim_length=1 << 60)
    with pytest.raises(DiskFullError) as err:
        fetch_model(ModelSource(url=url), dest=tmp_path, **FAST)
    assert err.value.exit_code == 6 and "enlarge" in str(err.value)
    assert not (tmp_path / "huge.gguf").exists()


@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs (needs mount privileges; skipped without them)."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_while_writing(model_server, tiny_bytes, small_fs):
    url = model_server.add("/tiny.gguf", tiny_bytes, no_length=True)  # size unknown: no up-front check
    with pytest.raises(DiskFullError) as err:
        fetch_model(ModelSource(url=url), dest=small_fs, **FAST)
    assert err.value.exit_code == 6 and "no space left" in str(err.value)
    assert not (small_fs / "tiny.gguf").exists()


def test_offline_miss_fails_without_network(model_server, tiny_bytes, tmp_path):
    url = model_server.add("/tiny.gguf", tiny_bytes)
    with pytest.raises(OfflineMissError) as err:
        fetch_model(ModelSource(url=url), dest=tmp_path, offline=True, **FAST)
    assert err.value.exit_code == 3 and "offline" in str(err.value) and "without --offline" in str(err.value)
    assert model_server.requests == []


def test_offline_hit_after_download_and_server_gone(model_server, tiny_bytes, tiny_sha, tmp_path):
    url = model_server.add("/tiny.gguf", tiny_bytes)
    fetch_model(ModelSource(url=url), dest=tmp_path, **FAST)
    model_server.stop()
    path = fetch_model(ModelSource(url=url), dest=tmp_path, sha256=tiny_sha, offline=True, **FAST)
    assert path.read_bytes() == tiny_bytes
    with pytest.raises(ChecksumMismatchError):
        fetch_model(ModelSource(url=url), dest=tmp_path, sha256="0" * 64, offline=True, **FAST)


def test_offline_uses_a_file_put_there_by_hand(tiny_model, tiny_sha, tmp_path):
    (tmp_path / "tiny.gguf").write_bytes(tiny_model.read_bytes())
    src = ModelSource(url="http://127.0.0.1:9/tiny.gguf")
    assert fetch_model(src, dest=tmp_path, offline=True, **FAST) == tmp_path / "tiny.gguf"
    assert fetch_model(src, dest=tmp_path, offline=True, sha256=tiny_sha, **FAST) == tmp_path / "tiny.gguf"
    with pytest.raises(ChecksumMismatchError) as err:
        fetch_model(src, dest=tmp_path, offline=True, sha256="1" * 64, **FAST)
    assert tiny_sha in str(err.value) and "1" * 64 in str(err.value)


def test_local_path_is_used_in_place(tiny_model, tiny_sha, tmp_path):
    assert fetch_model(ModelSource(path=str(tiny_model)), sha256=tiny_sha, **FAST) == tiny_model
    with pytest.raises(NotFoundError) as err:
        fetch_model(ModelSource(path=str(tmp_path / "missing.gguf")), **FAST)
    assert err.value.exit_code == 3
    (tmp_path / "x.gguf").write_text("hello")
    with pytest.raises(NotGGUFError):
        fetch_model(ModelSource(path=str(tmp_path / "x.gguf")), **FAST)


@pytest.mark.parametrize("source,sha,needle", [
    (ModelSource(), None, "exactly one"),
    (ModelSource(url="http://h/a.gguf", hf_repo="a/b", hf_file="c.gguf"), None, "exactly one"),
    (ModelSource(url="ftp://h/a.gguf"), None, "http(s)"),
    (ModelSource(url="http://h/"), None, "file name"),
    (ModelSource(hf_repo="a/b"), None, "--hf-file"),
    (ModelSource(hf_repo="not a repo", hf_file="x.gguf"), None, "org/name"),
    (ModelSource(url="http://h/a.gguf"), "abc", "64 hex"),
])
def test_usage_errors(source, sha, needle, tmp_path):
    with pytest.raises(UsageError) as err:
        fetch_model(source, dest=tmp_path, sha256=sha, **FAST)
    assert err.value.exit_code == 2 and needle in str(err.value)


def test_every_error_has_a_distinct_documented_exit_code():
    codes = {cls.exit_code for cls in (FetchError, UsageError, NotFoundError, UnauthorizedError, NetworkError,
                                       DiskFullError, ChecksumMismatchError, NotGGUFError)}
    assert codes == {1, 2, 3, 4, 5, 6, 7, 8}


def test_redirect_loop_is_a_clear_error(model_server, tmp_path):
    url = model_server.add("/loop.gguf", b"", status=302,
                           extra_headers={"Location": "/loop.gguf"})
    with pytest.raises(FetchError) as err:
        fetch_model(ModelSource(url=url), dest=tmp_path, **FAST)
    assert type(err.value) is FetchError and "redirect" in str(err.value).lower()


def test_a_caller_can_plug_in_its_own_progress_reporter(model_server, tiny_bytes, tmp_path):
    """The server passes a `Progress` subclass to route progress into its own logs."""
    from kubellama_server.fetch import Progress

    class Recorder(Progress):
        def __init__(self):
            super().__init__()
            self.events = []

        def start(self, name, total, offset=0, url=""):
            super().start(name, total, offset, url)
            self.events.append(("start", name, total, offset))

        def update(self, done):
            super().update(done)
            self.events.append(("update", done))

        def finish(self, path, sha256):
            self.events.append(("finish", path))

        def message(self, text, event="message"):
            self.events.append((event, text))

    url = model_server.add("/tiny.gguf", tiny_bytes, cut_after=100_000)
    rec = Recorder()
    path = fetch_model(ModelSource(url=url), dest=tmp_path, progress=rec, retries=1, backoff=0)
    kinds = [e[0] for e in rec.events]
    assert rec.events[0] == ("start", "tiny.gguf", len(tiny_bytes), 0)
    assert "retry" in kinds and ("start", "tiny.gguf", len(tiny_bytes), 100_000) in rec.events
    assert rec.events[-1] == ("finish", str(path))
    updates = [e[1] for e in rec.events if e[0] == "update"]
    assert updates[-1] == len(tiny_bytes) and updates == sorted(updates)


def test_a_flush_that_fails_on_close_is_a_disk_full_error(tmp_path):
    """A full disk may only show when the buffered part file is flushed on close: still a DiskFullError
    (not a bare OSError), and never hiding the error that was already on its way out."""
    import errno

    from kubellama_server.fetch.http import _PartFile

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def close(self):
            self.f.close()
            raise OSError(errno.ENOSPC, "No space left on device")

    part = _PartFile(tmp_path / ".x.part", keep=False)
    part.f = FullDisk(part.f)
    with pytest.raises(DiskFullError, match="no space left"):
        part.close()
