"""Static files: the built-in page, --path DIR, content types, no escape from the folder."""

from __future__ import annotations

import httpx
import pytest

from kubellama_server.cli import parse_settings


def test_builtin_page_and_script(live_server):
    srv = live_server()
    r = httpx.get(srv.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html") and "<title>kubellama</title>" in r.text
    r = httpx.get(srv.url + "/completion.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript") and "export async function* llama" in r.text
    assert httpx.get(srv.url + "/index.html").status_code == 200
    head = httpx.head(srv.url + "/completion.js")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 1000
    r = httpx.get(srv.url + "/missing.css")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_path_folder(live_server, tmp_path):
    (tmp_path / "index.html").write_text("<p>mine</p>")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "app.css").write_text("p{}")
    (tmp_path.parent / "secret.txt").write_text("no")
    srv = live_server("--path", str(tmp_path))
    assert httpx.get(srv.url + "/").text == "<p>mine</p>"
    r = httpx.get(srv.url + "/sub/app.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    assert "export async function* llama" in httpx.get(srv.url + "/completion.js").text  # built-in fallback
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/sub/../../secret.txt"):
        with httpx.Client() as c:
            req = c.build_request("GET", srv.url + "/")
            req.url = req.url.copy_with(raw_path=path.encode())
            r = c.send(req)
        assert r.status_code == 404, path
    # API routes still win over files
    assert httpx.get(srv.url + "/health").json()["status"] == "ok"


def test_path_must_be_a_folder(tiny_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_settings(["-m", str(tiny_model), "--path", str(tmp_path / "nope")], environ={})
    assert exc.value.code == 2 and "is not a folder" in capsys.readouterr().err
