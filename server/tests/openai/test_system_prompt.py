"""The system prompt: -spf (shared), the per-request `system_prompt` field, KV copied between slots."""

from __future__ import annotations

import json

import httpx
import pytest

from kubellama_server.cli import parse_settings

SYS = "You are a terse assistant that answers in riddles."
SYS2 = "Transcript of a dialog between a user and a helpful bot."


def tok(srv, text, special=False):
    return httpx.post(srv.url + "/tokenize", json={"content": text, "add_special": special}).json()["tokens"]


def complete(srv, **body):
    r = httpx.post(srv.url + "/completion", json={"n_predict": 12, "temperature": 0, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def spf(tmp_path):
    path = tmp_path / "system.json"
    path.write_text(json.dumps({"prompt": SYS, "anti_prompt": "User:", "assistant_name": "Assistant:"}))
    return path


def test_system_prompt_file_shared_by_all_slots(live_server, spf):
    srv = live_server("-np", "3", "-c", "1536", "-spf", str(spf))
    props = httpx.get(srv.url + "/props").json()
    assert props["system_prompt"] == SYS and props["assistant_name"] == "Assistant:" and props["user_name"] == "User:"
    sys_tokens, prompt = tok(srv, SYS, special=True), tok(srv, " What is the time?")
    # the reference: the system tokens in front of the prompt, on a server without a system prompt
    ref = complete(live_server("-c", "512"), prompt=sys_tokens + prompt)
    first = complete(srv, prompt=prompt, id_slot=0)
    assert first["tokens"] == ref["tokens"]
    assert first["tokens_cached"] == 0  # slot 0 evaluated the system prompt ...
    second = complete(srv, prompt=prompt, id_slot=1)
    assert second["tokens"] == ref["tokens"]
    assert second["timings"]["cache_n"] == len(sys_tokens)  # ... slot 1 got a copy of its KV
    assert second["timings"]["prompt_n"] == len(prompt)
    # text prompts get no second BOS after the system prompt
    third = complete(srv, prompt=" What is the time?", id_slot=2)
    assert third["tokens"] == ref["tokens"] and third["tokens_evaluated"] == len(sys_tokens) + len(prompt)


def test_request_system_prompt_applies_to_that_request_only(live_server):
    srv = live_server("-np", "2", "-c", "2048")
    prompt = tok(srv, " Tell me a story.")
    sys1 = tok(srv, SYS, special=True)
    ref = complete(srv, prompt=sys1 + prompt, n_predict=24, ignore_eos=True)
    plain = complete(srv, prompt=prompt, n_predict=24, ignore_eos=True)
    own = complete(srv, prompt=prompt, n_predict=24, ignore_eos=True, system_prompt={"prompt": SYS, "assistant_name": "Bot:"})
    assert own["tokens"] == ref["tokens"] and own["tokens_evaluated"] == len(sys1) + len(prompt)
    again = complete(srv, prompt=prompt, n_predict=24, ignore_eos=True, system_prompt=SYS)
    assert again["tokens"] == ref["tokens"] and again["timings"]["cache_n"] >= len(sys1)  # its KV is shared
    after = complete(srv, prompt=prompt, n_predict=24, ignore_eos=True)  # other requests never see it
    assert after["tokens"] == plain["tokens"] and after["tokens_evaluated"] == len(prompt)
    props = httpx.get(srv.url + "/props").json()
    assert props["system_prompt"] == "" and props["assistant_name"] == ""
    # an empty one switches the server's off for that request
    assert complete(srv, prompt=prompt, n_predict=4, system_prompt="")["tokens_evaluated"] == len(prompt)


def test_chat_uses_the_system_prompt(live_server, spf):
    srv = live_server("-spf", str(spf))
    r = httpx.post(srv.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).json()
    plain = httpx.post(srv.url + "/apply-template", json={"messages": [{"role": "user", "content": "hi"}]}).json()["prompt"]
    assert r["usage"]["prompt_tokens"] == len(tok(srv, plain))  # usage excludes the shared prefix (and its BOS)


@pytest.mark.parametrize("content, fragment", [
    (None, "not found"),
    ("{not json", "not valid JSON"),
    ('{"prompt": 3}', "'prompt' must be a string"),
    ('{"prompt": "x", "extra": 1}', "unknown fields"),
    ('[1]', "must be a string or an object"),
])
def test_spf_errors_at_start_up(tiny_model, tmp_path, capsys, content, fragment):
    path = tmp_path / "sp.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exc:
        parse_settings(["-m", str(tiny_model), "-spf", str(path)], environ={})
    assert exc.value.code == 2 and fragment in capsys.readouterr().err
