"""Tool calling (`tools`, `tool_choice`) through the real openai client, on the tiny model.

The tiny model's weights are random, so replies are constrained by the tool format's grammar
wherever a test needs a tool call; the parsing of free replies is tested on fixed texts.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from kubellama_server import protocol as P
from kubellama_server.serving.tools import GENERIC, HERMES, plan, tool_format
from kubellama_server.testing.live import LiveServer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}},
                                       "required": ["zone"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]

# A Hermes-style template (Qwen 2.5 family): it renders the tools and <tool_call> blocks itself.
HERMES_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nYou may call functions. <tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\nReturn calls as "
    "<tool_call>\n{\"name\": <name>, \"arguments\": <args>}\n</tool_call><|im_end|>\n{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant\n"
    "{%- for tc in m.tool_calls %}<tool_call>\n{\"name\": \"{{ tc.function.name }}\", \"arguments\": "
    "{{ tc.function.arguments | tojson }}}\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


@pytest.fixture(scope="module")
def generic_server(tiny_model):
    """ChatML (no tool support in the template): the generic format. Its tool list is long in tiny-model tokens."""
    srv = LiveServer(["-m", str(tiny_model), "-t", "1", "-c", "8192", "-np", "2"])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def gclient(generic_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=generic_server.url + "/v1", api_key="x", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def hermes_server(tiny_model):
    srv = LiveServer(["-m", str(tiny_model), "-t", "1", "-c", "4096", "-np", "2", "--chat-template", HERMES_TEMPLATE])
    srv.start()
    yield srv
    srv.stop()


def _check_weather_call(call) -> dict:
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "unit"} and isinstance(args["city"], str) and args["unit"] in ("celsius", "fahrenheit")
    return args


@pytest.mark.parametrize("server", ["generic_server", "hermes_server"])
def test_required_tool_choice_gives_a_call_matching_the_schema(request, server):
    srv = request.getfixturevalue(server)
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
    r = client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER], tool_choice="required",
                                       max_tokens=120, temperature=0, parallel_tool_calls=False)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert len(choice.message.tool_calls) == 1
    _check_weather_call(choice.message.tool_calls[0])
    # the same request streamed: the call arrives as tool_calls deltas (whole, at the end)
    stream = client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER], tool_choice="required",
                                            max_tokens=120, temperature=0, parallel_tool_calls=False, stream=True)
    deltas, finish = [], None
    for chunk in stream:
        for c in chunk.choices:
            deltas += c.delta.tool_calls or []
            finish = c.finish_reason or finish
    assert finish == "tool_calls" and len(deltas) == 1 and deltas[0].index == 0
    assert json.loads(deltas[0].function.arguments) == json.loads(choice.message.tool_calls[0].function.arguments)


def test_a_named_tool_choice_calls_that_function(gclient):
    r = gclient.chat.completions.create(model="m", messages=ASK, tools=[WEATHER, TIME], max_tokens=80, temperature=0,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert r.choices[0].message.tool_calls, r.choices[0]
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_time" and set(json.loads(call.function.arguments)) == {"zone"}


def test_auto_gives_either_a_reply_or_calls(gclient):
    r = gclient.chat.completions.create(model="m", messages=ASK, tools=[WEATHER, TIME], max_tokens=200, temperature=0,
                                       seed=3)
    choice = r.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
    else:
        assert choice.finish_reason in ("stop", "length") and isinstance(choice.message.content, str)


def test_the_conversation_goes_on_after_a_tool_result(gclient, generic_server, hermes_server):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"},
    ]
    r = gclient.chat.completions.create(model="m", messages=history, tools=[WEATHER], max_tokens=8, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    generic = httpx.post(generic_server.url + "/apply-template", json={"messages": history, "tools": [WEATHER]}).json()["prompt"]
    assert "get_weather" in generic and '"tool_response"' in generic and "18 degrees, sunny" in generic
    assert '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}' in generic
    hermes = httpx.post(hermes_server.url + "/apply-template", json={"messages": history, "tools": [WEATHER]}).json()["prompt"]
    # the template got the arguments as an object (not JSON text inside a string) and the tools
    assert '"arguments": {"city": "Paris", "unit": "celsius"}}' in hermes and '"name": "get_weather"' in hermes
    assert "<tool_response>\n18 degrees, sunny\n</tool_response>" in hermes


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not in 'tools'"),
        ({"tool_choice": "required"}, "needs 'tools'"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "cannot be combined"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
        ({"tools": [WEATHER, WEATHER]}, "same name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}, "type object"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ],
)
def test_tool_mistakes_are_400(generic_server, extra, message):
    r = httpx.post(generic_server.url + "/v1/chat/completions", json={"messages": ASK, **extra})
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_tool_choice_none_ignores_the_tools(gclient, generic_server):
    plain = httpx.post(generic_server.url + "/apply-template", json={"messages": ASK}).json()["prompt"]
    none = httpx.post(generic_server.url + "/apply-template", json={"messages": ASK, "tools": [WEATHER], "tool_choice": "none"}).json()["prompt"]
    assert none == plain
    r = gclient.chat.completions.create(model="m", messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=4)
    assert r.choices[0].message.tool_calls is None


def _plan(fmt_template: str, **req):
    return plan(P.parse_request(P.ChatCompletionRequest, {"messages": ASK, "tools": [WEATHER, TIME], **req}), fmt_template)


def test_parsing_hermes_replies():
    p = _plan("... <tool_call> ...")
    assert p.format == HERMES and tool_format("{{ messages }}") == GENERIC
    content, calls = p.parse('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
                             '<tool_call>{"name": "get_time", "arguments": "{\\"zone\\": \\"CET\\"}"}</tool_call>')
    assert content == "Let me check." and [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Oslo"}), ("get_time", {"zone": "CET"})]
    # an unclosed block at the end (the model stopped) still counts; a malformed one leaves the text alone
    assert p.parse('<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}')[1][0].name == "get_time"
    text = '<tool_call>{"name": "get_time", "arguments": [1]}</tool_call>'
    assert p.parse(text) == (text, [])
    assert p.parse("Just an answer.") == ("Just an answer.", [])


def test_parsing_generic_replies():
    p = _plan("{{ messages }}")
    assert p.parse('{"response": "Hello!"}') == ("Hello!", [])
    content, calls = p.parse('{"tool_calls": [{"name": "get_time", "arguments": {"zone": "UTC"}}]}')
    assert content is None and calls[0].name == "get_time" and json.loads(calls[0].arguments) == {"zone": "UTC"}
    assert p.parse('{"tool_calls": [{"name": "get_ti') == ('{"tool_calls": [{"name": "get_ti', [])  # cut short
    assert p.parse('{"response": "It is su') == ("It is su", [])  # an answer cut short: what it said


def test_grammars_of_the_formats():
    required = _plan("{{ messages }}", tool_choice="required").constraint()["json_schema"]
    assert required["properties"]["tool_calls"]["minItems"] == 1
    single = _plan("<tool_call>", tool_choice="required", parallel_tool_calls=False).constraint()["grammar"]
    assert single.startswith('root ::= "<tool_call>\\n" tool-call "\\n</tool_call>"\n') and "tool-call ::=" in single
    assert _plan("<tool_call>").constraint() == {}  # hermes + auto: free text


def test_streamable_text_stops_before_a_tool_call():
    p = _plan("<tool_call>")
    assert p.streamable("Let me look") == len("Let me look")
    assert p.streamable("Let me look <tool") == len("Let me look")  # a tag may be starting (and the space waits)
    assert p.streamable("Let me look <tool_call>{\"name\"") == len("Let me look")
    assert p.streamable("Let me look ") == len("Let me look")
    assert p.streamable("a < b") == len("a < b")
    assert _plan("<tool_call>", tool_choice="required").streamable("anything") == 0
    assert _plan("{{ messages }}").streamable('{"response": "hi"}') == 0  # generic: JSON, parsed at the end


def test_hermes_auto_streams_text_and_matches_the_whole_reply(hermes_server):
    client = openai.OpenAI(base_url=hermes_server.url + "/v1", api_key="x", max_retries=0, timeout=60)
    kwargs = dict(model="m", messages=ASK, tools=[WEATHER], max_tokens=24, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0]
    pieces = [c.choices[0].delta.content for c in client.chat.completions.create(**kwargs, stream=True)
              if c.choices and c.choices[0].delta.content]
    assert whole.message.tool_calls is None  # random weights never write <tool_call>: a free reply ...
    assert "".join(pieces) == whole.message.content and len(pieces) > 1  # ... which streams in pieces


def test_hermes_text_then_a_call_streams_the_text_first(hermes_server):
    # a grammar of the client's (a llama.cpp option) makes the tiny model write text and then a call
    reply = 'Checking the sky. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n</tool_call>'
    grammar = "root ::= " + json.dumps(reply)
    body = {"model": "m", "messages": ASK, "tools": [WEATHER], "max_tokens": 200, "grammar": grammar}
    whole = httpx.post(hermes_server.url + "/v1/chat/completions", json=body, timeout=60).json()["choices"][0]
    assert whole["finish_reason"] == "tool_calls" and whole["message"]["content"] == "Checking the sky."
    (call,) = whole["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'}
    chunks = []
    with httpx.stream("POST", hermes_server.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    text = "".join(d.get("content") or "" for d in deltas)
    calls = [tc for d in deltas for tc in d.get("tool_calls") or []]
    assert text == "Checking the sky." and len([d for d in deltas if d.get("content")]) > 1  # in pieces
    first_call = next(i for i, d in enumerate(deltas) if d.get("tool_calls"))
    assert all(not d.get("content") for d in deltas[first_call:])  # no part of the call leaked as text
    assert calls == [{"index": 0, "id": calls[0]["id"], "type": "function",
                      "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'}}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


# parameters as pydantic's model_json_schema() writes them for nested models (and a recursive part)
BOOKING = {"type": "function", "function": {"name": "book", "parameters": {
    "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6}},
                        "required": ["city"], "additionalProperties": False}},
    "type": "object", "properties": {"to": {"$ref": "#/$defs/Place"}, "nights": {"type": "integer", "maximum": 9}},
    "required": ["to", "nights"], "additionalProperties": False}}}


@pytest.mark.parametrize("server", ["generic_server", "hermes_server"])
def test_parameters_with_defs_and_refs(request, server):
    srv = request.getfixturevalue(server)
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
    r = client.chat.completions.create(model="m", messages=ASK, tools=[BOOKING, WEATHER], max_tokens=200, temperature=0,
                                       tool_choice={"type": "function", "function": {"name": "book"}})
    (call,) = r.choices[0].message.tool_calls
    args = json.loads(call.function.arguments)
    assert call.function.name == "book" and set(args) == {"to", "nights"} and set(args["to"]) == {"city"}
    assert isinstance(args["nights"], int)


def test_refs_are_rewritten_for_the_call_schema():
    tree = {"type": "function", "function": {"name": "tree", "parameters": {
        "type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}}}}
    p = plan(P.parse_request(P.ChatCompletionRequest, {"messages": ASK, "tools": [BOOKING, tree], "tool_choice": "required"}),
             "{{ messages }}")
    schema = p.constraint()["json_schema"]
    assert set(schema["$defs"]) == {"tool0-Place", "tool1-root"}
    items = schema["properties"]["tool_calls"]["items"]["anyOf"]
    assert items[0]["properties"]["arguments"]["properties"]["to"] == {"$ref": "#/$defs/tool0-Place"}
    assert items[1]["properties"]["arguments"]["properties"]["children"]["items"] == {"$ref": "#/$defs/tool1-root"}
    bad = {"type": "function", "function": {"name": "x", "parameters": {"type": "object", "properties": {
        "a": {"$ref": "https://example.com/schema.json"}}}}}
    r = P.parse_request(P.ChatCompletionRequest, {"messages": ASK, "tools": [bad], "tool_choice": "required"})
    with pytest.raises(Exception, match="only #, #/\\$defs/NAME"):
        plan(r, "{{ messages }}").constraint()


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"messages": ASK + [{"role": "assistant", "tool_calls": ["x"]}]}, "messages.1.tool_calls.0"),
        ({"messages": ASK + [{"role": "assistant", "tool_calls": [{"type": "function", "function": {"arguments": "{}"}}]}]},
         "function.name"),
        ({"grammar": "root ::= \"x\""}, "cannot be combined with 'tools'"),
        ({"json_schema": {"type": "object"}}, "cannot be combined with 'tools'"),
    ],
)
def test_more_tool_mistakes_are_400(generic_server, extra, message):
    r = httpx.post(generic_server.url + "/v1/chat/completions", json={"messages": ASK, "tools": [WEATHER], **extra})
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_streamed_logprobs_with_tools_cover_every_token(gclient):
    kwargs = dict(model="m", messages=ASK, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
                  max_tokens=120, temperature=0, logprobs=True, top_logprobs=2)
    whole = gclient.chat.completions.create(**kwargs)
    streamed = [lp for c in gclient.chat.completions.create(**kwargs, stream=True)
                for ch in c.choices if ch.logprobs and ch.logprobs.content for lp in ch.logprobs.content]
    assert streamed and [t.token for t in streamed] == [t.token for t in whole.choices[0].logprobs.content]


def test_generic_replies_stream_their_response_text(generic_server):
    # the generic format holds the tiny model's reply to {"tool_calls": ...} or {"response": ...}; with
    # this seed it answers, and the answer's text streams as it is written
    body = {"model": "m", "messages": ASK, "tools": [WEATHER], "max_tokens": 60, "temperature": 0, "seed": 1}
    whole = httpx.post(generic_server.url + "/v1/chat/completions", json=body, timeout=60).json()["choices"][0]
    chunks = []
    with httpx.stream("POST", generic_server.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    text = "".join(d.get("content") or "" for d in deltas)
    assert text == (whole["message"].get("content") or "")
    assert whole["finish_reason"] == "length" and not whole["message"]["content"].startswith("{")  # the tiny
    assert len([d for d in deltas if d.get("content")]) > 1  # model's answer, cut at 60 tokens, streamed in pieces


def test_generic_visible_text_grows_with_the_reply():
    p = _plan("{{ messages }}")
    full = json.dumps({"response": 'Hi "you"\n é 😀 done'})
    shown = ""
    for i in range(len(full) + 1):
        visible = p.visible(full[:i])
        assert visible.startswith(shown)
        shown = visible
    assert shown == 'Hi "you"\n é 😀 done' == p.parse(full)[0]
    assert p.visible('{"tool_calls": [{"name": "get_time"') == ""
    assert p.rest(full, 'Hi "you"\n é 😀 done', [], 'Hi "you"') == '\n é 😀 done'


def test_lone_surrogate_escapes_do_not_break_a_reply():
    p = _plan("{{ messages }}")
    text = '{"response": "a\\ud83dbc"}'
    assert p.visible(text[:-2]) == "a\ufffdbc" and p.parse(text) == ("a\ufffdbc", [])
    call = '{"tool_calls": [{"name": "get_time", "arguments": {"zone": "\\ud800x"}}]}'
    (parsed,) = p.parse(call)[1]
    assert parsed.arguments.encode() and json.loads(parsed.arguments) == {"zone": "\ufffdx"}
