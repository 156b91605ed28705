"""The shared cache's cleanup (`python -m kubellama_server.fetch.gc`) and the fetcher's nearly-full warning."""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import filelock
import pytest

from kubellama_server.fetch import ModelSource, fetch_model
from kubellama_server.fetch.gc import main, remove
from kubellama_server.fetch.progress import JsonProgress

SHA_KEY = "sha256-" + "ab" * 32
SRC_KEY = "src-" + "c" * 32


def folder(root, key, size=10):
    (root / key).mkdir()
    (root / key / "m.gguf").write_bytes(b"G" * size)
    return root / key


def test_removes_only_cache_keys_and_reports_them(tmp_path, capsys):
    folder(tmp_path, SHA_KEY, 100)
    folder(tmp_path, SRC_KEY, 20)
    (tmp_path / "not-a-key").mkdir()
    assert main(["--root", str(tmp_path), SHA_KEY, SRC_KEY, "../etc", "not-a-key", "src-" + "d" * 32]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["removed"] == [SHA_KEY, SRC_KEY] and out["freed_bytes"] == 120
    assert out["kept"] == {"../etc": "not a cache key", "not-a-key": "not a cache key",
                           "src-" + "d" * 32: "not in the cache"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-key"]


def test_a_folder_being_downloaded_is_kept(tmp_path):
    f = folder(tmp_path, SHA_KEY)
    lock = filelock.FileLock(str(f / ".m.gguf.lock"))
    with lock:  # a kubellama-fetch writing into it (the same lock file it takes)
        assert remove(tmp_path, [SHA_KEY])["kept"] == {SHA_KEY: "being downloaded"}
    assert remove(tmp_path, [SHA_KEY])["removed"] == [SHA_KEY]


@pytest.fixture
def snug_fs(tmp_path, tiny_bytes):
    """A tmpfs the tiny model fills to over 90% (needs mount privileges; skipped without them)."""
    mnt = tmp_path / "snug"
    mnt.mkdir()
    size = (len(tiny_bytes) * 21 // 20 // 4096 + 2) * 4096
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_a_nearly_full_volume_is_reported_before_a_download_fails(model_server, tiny_bytes, snug_fs, tmp_path):
    url = model_server.add("/tiny.gguf", tiny_bytes)
    log = io.StringIO()
    fetch_model(ModelSource(url=url), dest=snug_fs, progress=JsonProgress(log, interval=60), retries=1, backoff=0)
    events = [json.loads(line) for line in log.getvalue().splitlines()]
    warning = next(e for e in events if e["event"] == "nearly_full")
    assert "nearly full" in warning["message"] and str(snug_fs) in warning["message"]
    # A roomy volume says nothing (when this machine's disk is roomy itself).
    usage = shutil.disk_usage(tmp_path)
    if usage.free - len(tiny_bytes) < 0.1 * usage.total:
        return
    roomy = io.StringIO()
    fetch_model(ModelSource(url=url), dest=tmp_path / "roomy", progress=JsonProgress(roomy, interval=60),
                retries=1, backoff=0)
    assert "nearly_full" not in [json.loads(line)["event"] for line in roomy.getvalue().splitlines()]
