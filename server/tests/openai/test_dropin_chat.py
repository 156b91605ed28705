"""Chat as today's llama-server answers it: n > 1, system_fingerprint, the first delta, continuation
flags, token counting and __verbose."""

from __future__ import annotations

import json

import httpx

MSGS = [{"role": "user", "content": "hello world"}]


def chat(srv, **body):
    return httpx.post(srv.url + "/v1/chat/completions", json={"messages": MSGS, "max_tokens": 6, **body}, timeout=60)


def stream(srv, **body) -> list[dict]:
    with httpx.stream("POST", srv.url + "/v1/chat/completions",
                      json={"messages": MSGS, "max_tokens": 6, "stream": True, **body}, timeout=60) as r:
        assert r.status_code == 200
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]


def test_n_choices_fingerprint_and_timings(tiny_server):
    r = chat(tiny_server, n=3, seed=5, temperature=1.0)
    assert r.status_code == 200, r.text
    d = r.json()
    assert [c["index"] for c in d["choices"]] == [0, 1, 2]
    assert d["system_fingerprint"].startswith("kubellama-") and d["timings"]["predicted_n"] >= 1
    assert 3 <= d["usage"]["completion_tokens"] <= 18
    chunks = stream(tiny_server, n=2, seed=5)
    assert {c["choices"][0]["index"] for c in chunks if c["choices"]} == {0, 1}
    assert all(c["system_fingerprint"] == d["system_fingerprint"] for c in chunks)


def test_first_streamed_delta_has_null_content(tiny_server):
    first = stream(tiny_server)[0]["choices"][0]["delta"]
    assert first == {"role": "assistant", "content": None}


def test_continue_final_message_and_add_generation_prompt(tiny_server):
    msgs = MSGS + [{"role": "assistant", "content": "The answer"}]
    r = chat(tiny_server, messages=msgs, continue_final_message=True, add_generation_prompt=True)
    assert r.status_code == 400 and "Cannot set both add_generation_prompt and continue_final_message" in r.json()["error"]["message"]
    tmpl = lambda **kw: httpx.post(tiny_server.url + "/apply-template", json={"messages": msgs, **kw}).json()["prompt"]
    cont = tmpl(continue_final_message=True, add_generation_prompt=False)
    assert cont.endswith("The answer") and cont == tmpl()  # a final assistant message is continued by default
    whole = tmpl(continue_final_message=False)  # as a finished turn, then a new assistant turn
    assert whole.endswith("The answer<|im_end|>\n<|im_start|>assistant\n")
    assert tmpl(messages=MSGS, add_generation_prompt=False).endswith("hello world<|im_end|>\n")
    assert chat(tiny_server, messages=msgs, continue_final_message=True, add_generation_prompt=False).status_code == 200


def test_input_tokens_routes(tiny_server):
    r = httpx.post(tiny_server.url + "/v1/chat/completions/input_tokens", json={"messages": MSGS})
    assert r.status_code == 200, r.text
    n = r.json()
    assert n["object"] == "response.input_tokens"
    assert n["input_tokens"] == chat(tiny_server).json()["usage"]["prompt_tokens"]
    r = httpx.post(tiny_server.url + "/v1/responses/input_tokens", json={"input": "hello world"})
    assert r.status_code == 200 and r.json()["input_tokens"] == n["input_tokens"], r.text


def test_verbose_adds_the_native_result(live_server, tiny_server):
    assert "__verbose" not in chat(tiny_server).json()
    assert chat(tiny_server, verbose=True).json()["__verbose"]["tokens_predicted"] >= 1
    srv = live_server("--verbose")
    d = chat(srv).json()
    assert d["__verbose"]["generation_settings"]["n_predict"] == 6 and "timings" in d["__verbose"]


def test_return_progress_on_chat(tiny_server):
    chunks = stream(tiny_server, return_progress=True)
    progress = [c for c in chunks if "prompt_progress" in c]
    assert progress and progress[-1]["prompt_progress"]["processed"] == progress[-1]["prompt_progress"]["total"]
    assert all(c["choices"][0]["delta"] == {"role": "assistant", "content": None} for c in progress)
    assert not any("prompt_progress" in c for c in stream(tiny_server))
