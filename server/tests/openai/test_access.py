"""API keys and CORS."""

from __future__ import annotations

import logging

import httpx
import openai
import pytest

from kubellama_server.cli import parse_settings
from kubellama_server.http.auth import key_matches, read_key_file


@pytest.fixture(scope="module")
def keyed_server(tiny_model, tmp_path_factory):
    from kubellama_server.testing.live import LiveServer

    keyfile = tmp_path_factory.mktemp("keys") / "keys.txt"
    keyfile.write_text("# team keys\n\nfile-key-1\n  file-key-2  \n# old-key\n")
    srv = LiveServer(["-m", str(tiny_model), "-t", "1", "--embedding", "--api-key", "cli-key", "--api-key-file", str(keyfile)])
    srv.start()
    yield srv
    srv.stop()


ENDPOINTS = [
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2}),
    ("GET", "/v1/models", None),
    ("POST", "/v1/embeddings", {"input": "hi"}),
    ("POST", "/embedding", {"content": "hi"}),
    ("POST", "/completion", {"prompt": "hi", "n_predict": 2}),
    ("POST", "/infill", {"input_prefix": "a", "input_suffix": "b", "n_predict": 2}),
    ("POST", "/tokenize", {"content": "hi"}),
    ("GET", "/props", None),
    ("GET", "/slots", None),
    ("POST", "/apply-template", {"messages": [{"role": "user", "content": "hi"}]}),
]


@pytest.mark.parametrize("method, path, body", ENDPOINTS)
def test_every_endpoint_needs_a_key(keyed_server, method, path, body):
    url = keyed_server.url + path
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic cli-key"}, {"Authorization": "Bearer cli-key2"}):
        r = httpx.request(method, url, json=body, headers=headers, timeout=60)
        assert r.status_code == 401, (path, headers)
        e = r.json()["error"]
        assert e["type"] == "authentication_error" and e["code"] == 401
    for key in ("cli-key", "file-key-1", "file-key-2"):
        r = httpx.request(method, url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert r.status_code == 200, (path, key, r.text)
    r = httpx.request(method, url, json=body, headers={"Authorization": "Bearer # old-key"}, timeout=60)
    assert r.status_code == 401


def test_health_metrics_and_static_page_are_public(tiny_model):
    from kubellama_server.testing.live import LiveServer

    srv = LiveServer(["-m", str(tiny_model), "-t", "1", "--api-key", "k", "--metrics"]).start()
    try:
        r = httpx.get(srv.url + "/metrics")  # Prometheus scrapes without the key
        assert r.status_code == 200 and "llamacpp:prompt_tokens_total" in r.text
        assert httpx.get(srv.url + "/slots").status_code == 401  # slots show prompts: keyed
    finally:
        srv.stop()


def test_health_and_static_page_are_public(keyed_server):
    assert httpx.get(keyed_server.url + "/health").status_code == 200
    assert httpx.get(keyed_server.url + "/").status_code == 200
    assert httpx.get(keyed_server.url + "/completion.js").status_code == 200


def test_openai_client_with_keys(keyed_server):
    good = openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="file-key-2", max_retries=0)
    assert good.models.list().data[0].id == "tiny.gguf"
    bad = openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 401 and exc.value.body["type"] == "authentication_error"


def test_keys_never_logged(tiny_model, tmp_path, caplog):
    from kubellama_server.testing.live import LiveServer

    with caplog.at_level(logging.DEBUG):
        srv = LiveServer(["-m", str(tiny_model), "-t", "1", "--api-key", "s3cret-key-value", "--verbose"]).start()
        try:
            httpx.get(srv.url + "/props", headers={"Authorization": "Bearer wrong-s3cret-attempt"})
            httpx.get(srv.url + "/props", headers={"Authorization": "Bearer s3cret-key-value"})
        finally:
            srv.stop()
    assert "/props" in caplog.text  # the request log was captured ...
    assert "s3cret" not in caplog.text  # ... and holds no key


def test_key_file_errors(tiny_model, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    for path, msg in ((tmp_path / "missing.txt", "not found"), (empty, "holds no keys")):
        with pytest.raises(SystemExit) as exc:
            parse_settings(["-m", str(tiny_model), "--api-key-file", str(path)], environ={})
        assert exc.value.code == 2 and msg in capsys.readouterr().err


def test_key_compare():
    assert key_matches("b", ["a", "b"]) and not key_matches("", ["a"]) and not key_matches("ab", ["a"])
    assert read_key_file.__doc__


def test_cors_headers_and_preflight(keyed_server):
    url = keyed_server.url
    r = httpx.options(url + "/v1/chat/completions", headers={
        "Origin": "http://example.test", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status_code == 200  # as today's llama-server
    assert r.headers["access-control-allow-origin"] == "http://example.test"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-headers"] == "authorization, content-type"
    assert r.headers["access-control-allow-credentials"] == "true"
    # on ordinary responses, errors and 401s too
    for headers, status in (({}, 401), ({"Authorization": "Bearer cli-key"}, 200)):
        r = httpx.get(url + "/props", headers={"Origin": "http://example.test", **headers})
        assert r.status_code == status and r.headers["access-control-allow-origin"] == "http://example.test"
    assert httpx.get(url + "/health").headers["access-control-allow-origin"] == "*"
