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


def test_without_context_shift_a_long_prompt_is_a_400_and_generation_stops_at_the_context(live_server):
    srv = live_server("-np", "1", "-c", "128")
    r = httpx.post(srv.url + "/completion", json={"prompt": "word " * 400, "n_predict": 4})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "exceed_context_size_error" and err["n_prompt_tokens"] > err["n_ctx"] >= 128
    assert "--context-shift" in err["message"]
    r = httpx.post(srv.url + "/v1/completions", json={"prompt": "word " * 400, "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["type"] == "exceed_context_size_error"
    d = httpx.post(srv.url + "/completion", json={"prompt": "keep", "n_predict": 300, "ignore_eos": True}, timeout=60).json()
    assert d["stop_type"] == "limit" and d["truncated"] is True and d["tokens_evaluated"] + d["tokens_predicted"] <= err["n_ctx"] + 1
    full = httpx.post(srv.url + "/completion", json={"prompt": "keep", "n_predict": -1, "ignore_eos": True}, timeout=60).json()
    assert full["stop_type"] == "limit" and full["truncated"] is True
    assert parse_settings(["-m", "x", "--context-shift"], environ={})[0].context_shift
    assert parse_settings(["-m", "x"], environ={"LLAMA_ARG_CONTEXT_SHIFT": "1"})[0].context_shift
    assert not parse_settings(["-m", "x", "--context-shift", "--no-context-shift"], environ={})[0].context_shift


def _preflight(srv, origin: str):
    return httpx.options(srv.url + "/v1/chat/completions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})


def test_cors_origins(live_server):
    from kubellama_server.http.cors import allowed_origin

    assert allowed_origin("http://a.test", "*", True) == "http://a.test" and allowed_origin("", "*", True) == "*"
    assert allowed_origin("http://a.test", "*", False) == "*"
    assert allowed_origin("http://localhost:5173", "localhost", True) == "http://localhost:5173"
    assert allowed_origin("http://[::1]:80", "localhost", True) == "http://[::1]:80"
    assert allowed_origin("http://evil.test", "localhost", True) is None
    assert allowed_origin("https://ui.test", "https://ui.test, https://b.test", True) == "https://ui.test"
    assert allowed_origin("https://c.test", "https://ui.test,https://b.test", True) is None
    srv = live_server("--cors-origins", "localhost", "--no-cors-credentials", "--cors-methods", "GET, POST")
    ok = _preflight(srv, "http://127.0.0.1:3000")
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://127.0.0.1:3000"
    assert ok.headers["access-control-allow-methods"] == "GET, POST" and ok.headers["access-control-allow-credentials"] == "false"
    bad = _preflight(srv, "http://evil.test")
    assert bad.status_code == 200 and "access-control-allow-origin" not in bad.headers
    r = httpx.get(srv.url + "/health", headers={"Origin": "http://evil.test"})
    assert "access-control-allow-origin" not in r.headers
    assert httpx.get(srv.url + "/health", headers={"Origin": "http://localhost"}).headers["access-control-allow-origin"] == "http://localhost"


def test_kv_unified_lets_one_slot_use_the_whole_context(live_server):
    body = {"prompt": "hello", "n_predict": 600, "ignore_eos": True}
    split = live_server("-c", "1024", "-np", "4")  # 256 tokens per slot (llama.cpp's smallest)
    short = httpx.post(split.url + "/completion", json=body, timeout=60).json()
    assert short["generation_settings"]["n_ctx"] == 256 and short["tokens_predicted"] < 256
    srv = live_server("-c", "1024", "-np", "4", "--kv-unified")
    long = httpx.post(srv.url + "/completion", json=body, timeout=60).json()
    assert long["generation_settings"]["n_ctx"] == 1024 and long["tokens_predicted"] == 600
    # the pool is shared: idle caches make room for the next long request, on any slot
    others = [httpx.post(srv.url + "/completion", json={**body, "prompt": f"slot {k}", "n_predict": 500, "id_slot": k},
                         timeout=60).json() for k in range(4)]
    assert all(o["tokens_predicted"] == 500 for o in others), [o.get("tokens_predicted", o) for o in others]
    with pytest.raises(SystemExit):
        parse_settings(["-m", "x", "-kvu", "--embedding"], environ={})


def test_flash_attention_and_jinja_flags(live_server, capsys):
    s = parse_settings(["-m", "x", "-fa", "on", "--jinja"], environ={})[0]
    assert s.flash_attn == "on" and s.jinja
    with pytest.raises(SystemExit):
        parse_settings(["-m", "x", "--no-jinja"], environ={})
    assert "--no-jinja: kubellama always renders chat templates with Jinja" in capsys.readouterr().err
    srv = live_server("-fa", "off", "--jinja")
    assert httpx.post(srv.url + "/completion", json={"prompt": "hi", "n_predict": 2}).status_code == 200
