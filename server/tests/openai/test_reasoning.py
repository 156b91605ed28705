"""Thinking models: `<think>` text as `reasoning_content`, template variables, on the tiny model.

A client grammar (a llama.cpp option) makes the tiny model write a fixed reply, so the splitting
is checked end to end, streamed and not.
"""

from __future__ import annotations

import json

import httpx
import pytest

from kubellama_server.serving.reasoning import Splitter, split
from kubellama_server.testing.live import LiveServer

# DeepSeek-R1 / Qwen3 style: the generation prompt opens the thinking block; NOTHINK shows
# the enable_thinking variable reaching the template
OPENING_TEMPLATE = (
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}"
    "{%- if enable_thinking is defined and not enable_thinking %}NOTHINK{%- endif %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n<think>\n{%- endif %}"
)
ASK = [{"role": "user", "content": "What is 2 + 2?"}]


def grammar(text: str) -> str:
    return "root ::= " + json.dumps(text)


@pytest.fixture(scope="module")
def opening_server(tiny_model):
    srv = LiveServer(["-m", str(tiny_model), "-t", "1", "-c", "2048", "-np", "2", "--chat-template", OPENING_TEMPLATE])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def chatml_server(tiny_model):
    srv = LiveServer(["-m", str(tiny_model), "-t", "1", "-c", "2048", "-np", "2"])
    srv.start()
    yield srv
    srv.stop()


def chat(srv, **body) -> dict:
    r = httpx.post(srv.url + "/v1/chat/completions", json={"messages": ASK, "max_tokens": 200, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def stream(srv, **body) -> tuple[str, str, list[dict]]:
    deltas = []
    with httpx.stream("POST", srv.url + "/v1/chat/completions",
                      json={"messages": ASK, "max_tokens": 200, "stream": True, **body}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                deltas += [c["delta"] for c in json.loads(line[6:])["choices"]]
    return ("".join(d.get("reasoning_content") or "" for d in deltas),
            "".join(d.get("content") or "" for d in deltas), deltas)


@pytest.mark.parametrize("server, reply", [
    ("opening_server", "I should add the numbers.\n</think>\n\nIt is 4."),  # the prompt opened <think>
    ("chatml_server", "<think>\nI should add the numbers.\n</think>\n\nIt is 4."),  # the model opens it
])
def test_thinking_goes_to_reasoning_content(request, server, reply):
    srv = request.getfixturevalue(server)
    message = chat(srv, grammar=grammar(reply))["message"]
    assert message["reasoning_content"] == "I should add the numbers." and message["content"] == "It is 4."
    thoughts, content, deltas = stream(srv, grammar=grammar(reply))
    assert (thoughts, content) == ("I should add the numbers.", "It is 4.")
    assert sum(1 for d in deltas if d.get("reasoning_content")) > 1  # the thoughts stream too
    assert not any("think>" in (d.get("content") or "") + (d.get("reasoning_content") or "") for d in deltas)
    # reasoning_format none: the reply as the model wrote it
    raw = chat(srv, grammar=grammar(reply), reasoning_format="none")["message"]
    assert raw["content"] == reply and raw.get("reasoning_content") is None


def test_replies_without_thinking_are_untouched(chatml_server):
    message = chat(chatml_server, grammar=grammar("Four."))["message"]
    assert message["content"] == "Four." and message.get("reasoning_content") is None
    assert stream(chatml_server, grammar=grammar("Four."))[:2] == ("", "Four.")


def test_a_reply_cut_off_while_thinking_is_all_reasoning(opening_server):
    choice = chat(opening_server, grammar=grammar("a long thought " * 10 + "</think>done"), max_tokens=12)
    assert choice["finish_reason"] == "length" and choice["message"]["content"] == ""
    assert choice["message"]["reasoning_content"].startswith("a long")


def test_thinking_then_a_tool_call(tiny_model):
    template = OPENING_TEMPLATE.replace("{{ m.content }}", "{{ m.content }}{% if tools %}<tool_call>{% endif %}")
    srv = LiveServer(["-m", str(tiny_model), "-t", "1", "-c", "2048", "--chat-template", template])
    srv.start()
    try:
        reply = 'Need the tool.</think>Checking. <tool_call>\n{"name": "calc", "arguments": {"x": "2+2"}}\n</tool_call>'
        tools = [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}]
        choice = chat(srv, grammar=grammar(reply), tools=tools)
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["reasoning_content"] == "Need the tool." and choice["message"]["content"] == "Checking."
        assert choice["message"]["tool_calls"][0]["function"] == {"name": "calc", "arguments": '{"x": "2+2"}'}
        thoughts, content, deltas = stream(srv, grammar=grammar(reply), tools=tools)
        assert thoughts == "Need the tool." and content == "Checking."  # the space before the call is not sent
        assert [tc["function"]["name"] for d in deltas for tc in d.get("tool_calls") or []] == ["calc"]
    finally:
        srv.stop()


def test_template_variables(opening_server, tiny_model):
    def prompt(srv, **body):
        return httpx.post(srv.url + "/apply-template", json={"messages": ASK, **body}).json()["prompt"]

    assert "NOTHINK" not in prompt(opening_server)
    assert "NOTHINK" in prompt(opening_server, chat_template_kwargs={"enable_thinking": False})
    r = httpx.post(opening_server.url + "/v1/chat/completions", json={"messages": ASK, "chat_template_kwargs": {"messages": []}})
    assert r.status_code == 400 and "may not set messages" in r.json()["error"]["message"]
    srv = LiveServer(["-m", str(tiny_model), "-t", "1", "--chat-template", OPENING_TEMPLATE, "--reasoning-budget", "0"])
    srv.start()
    try:
        assert "NOTHINK" in prompt(srv)  # --reasoning-budget 0 turns thinking off in the template
        assert "NOTHINK" not in prompt(srv, chat_template_kwargs={"enable_thinking": True})  # the request wins
    finally:
        srv.stop()


def test_stream_splitting_matches_the_whole_reply():
    replies = [("<think>\nhmm, let me  see\n</think>\n\nThe answer is 4.", False), ("hmm</think>ok", True),
               ("just text", False), ("<thi", False), ("  <think>a</thi", False), ("x <think>y</think>", False),
               ("\n a b \n", True), ("<think></think>x", False), ("  plain with spaces  ", False)]
    for text, opened in replies:
        for size in (1, 2, 3, 7, 100):
            sp, thoughts, content = Splitter(opened), "", ""
            for i in range(0, len(text), size):
                t, c = sp.push(text[i:i + size])
                thoughts, content = thoughts + t, content + c
            t, c = sp.finish()
            whole = split(text, opened)
            assert (thoughts + t, content + c) == (whole[0] or "", whole[1]), (text, opened, size)


def test_a_schema_reply_after_an_opened_think_block_is_content(opening_server):
    """response_format holds the reply to JSON from its first token: it is the answer, not thoughts."""
    fmt = {"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {"n": {"type": "integer"}},
                                                             "required": ["n"], "additionalProperties": False}}}
    message = chat(opening_server, response_format=fmt, max_tokens=40)["message"]
    assert json.loads(message["content"]).keys() == {"n"} and message.get("reasoning_content") is None


def test_streamed_logprobs_include_the_held_back_tags(chatml_server):
    body = {"grammar": grammar("<think>abc</think>"), "logprobs": True, "top_logprobs": 1, "n": 2, "temperature": 0}
    r = httpx.post(chatml_server.url + "/v1/chat/completions", json={"messages": ASK, "max_tokens": 50, **body}, timeout=60)
    whole = [len(c["logprobs"]["content"]) for c in sorted(r.json()["choices"], key=lambda c: c["index"])]
    counts = [0, 0]
    with httpx.stream("POST", chatml_server.url + "/v1/chat/completions",
                      json={"messages": ASK, "max_tokens": 50, "stream": True, **body}, timeout=60) as s:
        for line in s.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for c in json.loads(line[6:])["choices"]:
                    counts[c["index"]] += len((c.get("logprobs") or {}).get("content") or [])
    assert counts == whole and whole[0] > 3


def test_template_variables_may_use_any_name(chatml_server):
    r = httpx.post(chatml_server.url + "/v1/chat/completions",
                   json={"messages": ASK, "max_tokens": 2, "chat_template_kwargs": {"self": 1, "extra": "x"}})
    assert r.status_code == 200, r.text
