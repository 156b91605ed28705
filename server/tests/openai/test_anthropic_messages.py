"""POST /v1/messages (Anthropic's Messages API) through the real `anthropic` client, on the tiny model."""

from __future__ import annotations

import base64
import json

import anthropic
import httpx
import pytest

from kubellama_server.testing.live import LiveServer

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"temperature": 0}  # (this client version has no temperature argument)
WEATHER = {"name": "get_weather", "description": "Current weather of a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
                            "required": ["city"], "additionalProperties": False}}


@pytest.fixture(scope="module")
def srv(tiny_model):
    s = LiveServer(["-m", str(tiny_model), "-t", "1", "-c", "8192", "-np", "2", "--api-key", "sk-ant-local"])
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(srv) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=srv.url, api_key="sk-ant-local", max_retries=0, timeout=60)  # sends x-api-key


def test_a_message_matches_the_chat_completion(client, srv):
    msg = client.messages.create(model="tiny", max_tokens=8, messages=ASK, extra_body=GREEDY, system="Be brief.")
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "tiny" and msg.id.startswith("msg_")
    assert [b.type for b in msg.content] == ["text"] and msg.stop_reason == "max_tokens"
    assert msg.usage.output_tokens == 8 and msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0) > 0
    chat = httpx.post(srv.url + "/v1/chat/completions", headers={"Authorization": "Bearer sk-ant-local"}, json={
        "messages": [{"role": "system", "content": "Be brief."}, *ASK], "max_tokens": 8, "temperature": 0}).json()
    assert msg.content[0].text == chat["choices"][0]["message"]["content"]
    counted = client.messages.count_tokens(model="tiny", messages=ASK, system="Be brief.")
    assert counted.input_tokens == chat["usage"]["prompt_tokens"]


def test_streaming_gives_the_same_text(client):
    whole = client.messages.create(model="tiny", max_tokens=12, messages=ASK, extra_body=GREEDY)
    with client.messages.stream(model="tiny", max_tokens=12, messages=ASK, extra_body=GREEDY) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == whole.content[0].text
    assert final.stop_reason == "max_tokens" and final.content[0].text == whole.content[0].text
    assert final.usage.output_tokens == 12


def test_tool_use_and_the_result_turn(client):
    msg = client.messages.create(model="tiny", max_tokens=120, messages=ASK, tools=[WEATHER], extra_body=GREEDY,
                                 tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert msg.stop_reason == "tool_use"
    (use,) = [b for b in msg.content if b.type == "tool_use"]
    assert use.name == "get_weather" and set(use.input) == {"city"} and isinstance(use.input["city"], str)
    with client.messages.stream(model="tiny", max_tokens=120, messages=ASK, tools=[WEATHER], extra_body=GREEDY,
                                tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        final = stream.get_final_message()
    (streamed,) = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and streamed.input == use.input
    follow = client.messages.create(model="tiny", max_tokens=4, tools=[WEATHER], extra_body=GREEDY, messages=ASK + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees"}]},
    ])
    assert follow.stop_reason in ("max_tokens", "end_turn", "tool_use")


def test_stop_sequences_and_thinking(client):
    grammar = "root ::= " + json.dumps("<think>sunny, I guess</think>It is sunny. STOP and more")
    msg = client.messages.create(model="tiny", max_tokens=60, messages=ASK, stop_sequences=["STOP"],
                                 extra_body={"grammar": grammar})
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == "sunny, I guess" and msg.content[1].text == "It is sunny. "
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "STOP"
    with client.messages.stream(model="tiny", max_tokens=60, messages=ASK, stop_sequences=["STOP"],
                                extra_body={"grammar": grammar}) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert [b.type for b in final.content] == ["thinking", "text"] and final.content[0].thinking == "sunny, I guess"


@pytest.mark.parametrize("body, needle", [
    ({"messages": ASK}, "'max_tokens' is required"),
    ({"max_tokens": 4, "messages": [{"role": "system", "content": "x"}]}, "'messages.0.role'"),
    ({"max_tokens": 4, "messages": ASK, "tool_choice": {"type": "sometimes"}}, "'tool_choice'"),
    ({"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "tool_use", "name": "x"}]}]}, "cannot carry"),
    ({"max_tokens": 4, "messages": ASK, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tool"),
])
def test_mistakes_are_400(srv, body, needle):
    r = httpx.post(srv.url + "/v1/messages", headers={"x-api-key": "sk-ant-local"}, json=body)
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text
    assert httpx.post(srv.url + "/v1/messages", json=body).status_code == 401  # no key


def test_an_image_block(live_server, tmp_path):
    from kubellama_server.testing.tiny_mmproj import build_tiny_mmproj, tiny_png

    s = live_server("--mmproj", str(build_tiny_mmproj(tmp_path / "mm.gguf")), "-c", "1024")
    c = anthropic.Anthropic(base_url=s.url, api_key="x", max_retries=0)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(tiny_png(8, 8)).decode()}}
    with_image = c.messages.create(model="m", max_tokens=2, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, image]}])
    without = c.messages.create(model="m", max_tokens=2, messages=[{"role": "user", "content": "What is this?"}])
    assert with_image.usage.input_tokens >= without.usage.input_tokens + 16  # the image's 16 positions


def test_tool_use_wins_over_a_stop_sequence():
    from types import SimpleNamespace

    from kubellama_server.serving.anthropic import _stop

    res = SimpleNamespace(stopped_word=True, stopping_word="STOP")
    assert _stop(res, "tool_calls") == ("tool_use", None)
    assert _stop(res, "stop") == ("stop_sequence", "STOP")


def test_message_start_reports_the_prompt(client):
    whole = client.messages.create(model="tiny", max_tokens=3, messages=ASK, extra_body={**GREEDY, "cache_prompt": False})
    with client.messages.stream(model="tiny", max_tokens=3, messages=ASK, extra_body={**GREEDY, "cache_prompt": False}) as s:
        start = next(e for e in s if e.type == "message_start")
    assert start.message.usage.input_tokens == whole.usage.input_tokens > 0
