"""Today's llama-server flags: several --alias names, --tags, --host forms, --no-slots."""

from __future__ import annotations

import httpx
import pytest

from kubellama_server.cli import parse_settings
from kubellama_server.http.listen import hosts, needs_sockets
from kubellama_server.testing.live import ServerProcess


def test_aliases_and_tags(live_server):
    srv = live_server("--alias", "gemma-small, gpt-4o-mini", "--tags", "chat,small", "--no-slots")
    card = httpx.get(srv.url + "/v1/models").json()["data"][0]
    assert card["id"] == "gemma-small" and card["aliases"] == ["gemma-small", "gpt-4o-mini"]
    assert card["tags"] == ["chat", "small"] and card["architecture"]["input_modalities"] == ["text"]
    props = httpx.get(srv.url + "/props").json()
    assert props["model_alias"] == ["gemma-small", "gpt-4o-mini"] and props["model_tags"] == ["chat", "small"]
    r = httpx.post(srv.url + "/completion", json={"prompt": "hi", "n_predict": 1}).json()
    assert r["model"] == "gemma-small"
    chat = httpx.post(srv.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert chat.json()["model"] == "gemma-small"
    assert httpx.get(srv.url + "/slots").status_code == 501  # --no-slots


def test_slots_flags_and_environment():
    assert parse_settings(["-m", "x", "--no-slots"], environ={})[0].slots_endpoint_disable
    assert not parse_settings(["-m", "x", "--no-slots", "--slots"], environ={})[0].slots_endpoint_disable
    assert parse_settings(["-m", "x"], environ={"LLAMA_ARG_ENDPOINT_SLOTS": "0"})[0].slots_endpoint_disable
    assert not parse_settings(["-m", "x"], environ={"LLAMA_ARG_ENDPOINT_SLOTS": "1"})[0].slots_endpoint_disable


def test_host_forms():
    assert hosts("127.0.0.1") == ["127.0.0.1"] and not needs_sockets("0.0.0.0")
    assert hosts("127.0.0.1, ::1") == ["127.0.0.1", "::1"] and needs_sockets("127.0.0.1,::1")
    assert needs_sockets("/run/llama.sock")
    with pytest.raises(SystemExit):
        parse_settings(["-m", "x", "--host", "127.0.0.1,,x"], environ={})


def test_several_addresses_and_a_unix_socket(tiny_model, tmp_path):
    sock = tmp_path / "llama.sock"
    srv = ServerProcess(["-m", str(tiny_model), "-t", "1"])
    at = len(srv.cmd) - 1 - srv.cmd[::-1].index("--host")
    srv.cmd[at + 1] = f"127.0.0.1,{sock}"
    srv.start(log_path=tmp_path / "log")
    try:
        assert httpx.get(srv.url + "/health").status_code == 200
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as c:
            assert c.get("http://localhost/health").json()["status"] == "ok"
    finally:
        assert srv.stop() in (0, -15), srv.log()  # uvicorn re-raises the SIGTERM it handled gracefully
