"""Files: slot saves are bounded, slot metadata always describes its data, and model downloads
keep URL credentials out of their metadata and logs and never resume into a changed file."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from kubellama_server.fetch import fetch_model
from kubellama_server.fetch.source import ModelSource

TIMEOUT = 30


def complete(srv, prompt):
    r = httpx.post(srv.url + "/completion", json={"prompt": prompt, "n_predict": 2, "id_slot": 0, "cache_prompt": True},
                   timeout=TIMEOUT)
    assert r.status_code == 200, r.text


def slot(srv, action, filename=None):
    return httpx.post(f"{srv.url}/slots/0?action={action}", json={"filename": filename} if filename else None,
                      timeout=TIMEOUT)


def test_slot_saves_are_bounded(live_server, tmp_path):
    srv = live_server("--slot-save-path", str(tmp_path), "--slot-save-max-files", "2")
    complete(srv, "Hello there")
    assert slot(srv, "save", "a.bin").status_code == 200
    assert slot(srv, "save", "b.bin").status_code == 200
    r = slot(srv, "save", "c.bin")
    assert r.status_code == 507, r.text
    assert r.json()["error"]["code"] == 507 and "--slot-save-max-files" in r.json()["error"]["message"]
    assert not (tmp_path / "c.bin").exists()
    assert slot(srv, "save", "a.bin").status_code == 200  # overwriting a kept file is fine
    assert slot(srv, "restore", "b.bin").status_code == 200


def test_slot_metadata_never_pairs_with_other_data(live_server, tmp_path):
    srv = live_server("--slot-save-path", str(tmp_path))
    complete(srv, [5, 6, 7, 8, 9])
    assert slot(srv, "save", "a.bin").status_code == 200
    complete(srv, [10, 11, 12, 13, 14])  # as many tokens: a file of the same size
    assert slot(srv, "save", "b.bin").status_code == 200
    assert (tmp_path / "a.bin").stat().st_size == (tmp_path / "b.bin").stat().st_size
    # a crash between the renames of a save of b over a: new data, old metadata
    shutil.copyfile(tmp_path / "b.bin", tmp_path / "a.bin")
    r = slot(srv, "restore", "a.bin")
    assert r.status_code == 400 and "does not match its metadata" in r.json()["error"]["message"], r.text
    # the folder copied elsewhere (new inodes, same contents): still restorable
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path, copy, ignore=shutil.ignore_patterns("copy"))
    srv2 = live_server("--slot-save-path", str(copy))
    assert slot(srv2, "restore", "b.bin").status_code == 200


# -- downloads -------------------------------------------------------------------

@pytest.fixture
def model_server():
    from fetch.model_http_server import ModelHTTPServer

    srv = ModelHTTPServer().start()
    yield srv
    srv.stop()


def test_url_credentials_never_reach_metadata_or_logs(model_server, tiny_model, tmp_path, capsys):
    data = tiny_model.read_bytes()
    url = model_server.add("/m/tiny.gguf", data)
    secret_url = url.replace("http://", "http://alice:hunter2@") + "?token=TOPSECRET&X-Amz-Signature=SIG123&v=2"
    path = fetch_model(ModelSource(url=secret_url), dest=tmp_path / "models", progress="json")
    assert path.read_bytes() == data
    texts = [p.read_text() for p in (tmp_path / "models").rglob("*") if p.is_file() and p.suffix == ".json"]
    texts += [p.name for p in (tmp_path / "models").rglob("*")]
    out = capsys.readouterr()
    texts += [out.out, out.err]
    for secret in ("hunter2", "TOPSECRET", "SIG123"):
        assert not any(secret in t for t in texts), secret
    meta = json.loads(next((tmp_path / "models").glob("*.meta.json")).read_text())
    assert "v=2" in meta["url"]  # what is not a credential stays
    # the cache name in the shared folder holds no credentials either
    assert "hunter2" not in ModelSource(url=secret_url).cache_name()


def test_resume_without_validator_never_mixes_two_files(model_server, tiny_model, tmp_path):
    data = tiny_model.read_bytes()
    url = model_server.add("/tiny.gguf", data, cut_after=len(data) // 2, extra_headers={})
    served = model_server.files["/tiny.gguf"]
    served.etag = served.last_modified = None  # a plain server: no ETag, no Last-Modified
    with pytest.raises(Exception):
        fetch_model(ModelSource(url=url), dest=tmp_path, progress="none", retries=0)
    half = len(data) // 2
    changed = data[:1000] + bytes(b ^ 0xFF for b in data[1000:half]) + data[half:]  # same size, the first half differs
    served.data = changed
    path = fetch_model(ModelSource(url=url), dest=tmp_path, progress="none", retries=0)
    assert path.read_bytes() == changed  # downloaded again from byte 0, not half old, half new
