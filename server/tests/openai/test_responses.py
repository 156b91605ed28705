"""POST /v1/responses (OpenAI's Responses API, stateless) through the real `openai` client, on the tiny model."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from kubellama_server.testing.live import LiveServer

ASK = "What is the weather in Paris?"
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
                          "required": ["city"], "additionalProperties": False}}


@pytest.fixture(scope="module")
def srv(tiny_model):
    s = LiveServer(["-m", str(tiny_model), "-t", "1", "-c", "8192", "-np", "2"])
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)


def test_a_response_matches_the_chat_completion(client):
    r = client.responses.create(model="tiny", input=ASK, instructions="Be brief.", max_output_tokens=8, temperature=0)
    assert r.object == "response" and r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert [o.type for o in r.output] == ["message"] and r.output[0].content[0].type == "output_text"
    assert r.usage.output_tokens == 8 and r.usage.input_tokens > 0
    chat = client.chat.completions.create(model="tiny", max_tokens=8, temperature=0, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": ASK}])
    assert r.output_text == chat.choices[0].message.content


def test_streaming_events_give_the_same_text(client):
    whole = client.responses.create(model="tiny", input=ASK, max_output_tokens=12, temperature=0)
    events = list(client.responses.create(model="tiny", input=ASK, max_output_tokens=12, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.incomplete"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == whole.output_text
    assert events[-1].response.output_text == whole.output_text


def test_function_calls_and_their_outputs(client):
    r = client.responses.create(model="tiny", input=ASK, tools=[WEATHER], tool_choice="required",
                                parallel_tool_calls=False, max_output_tokens=120, temperature=0)
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert call.name == "get_weather" and set(json.loads(call.arguments)) == {"city"} and r.status == "completed"
    with client.responses.stream(model="tiny", input=ASK, tools=[WEATHER], max_output_tokens=120, temperature=0,
                                 tool_choice={"type": "function", "name": "get_weather"}) as stream:
        final = stream.get_final_response()
    (streamed,) = [o for o in final.output if o.type == "function_call"]
    assert json.loads(streamed.arguments) == json.loads(call.arguments)
    follow = client.responses.create(model="tiny", tools=[WEATHER], max_output_tokens=4, temperature=0, input=[
        {"role": "user", "content": ASK},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees"},
    ])
    assert follow.status in ("completed", "incomplete")


def test_json_schema_text_format(client):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    r = client.responses.create(model="tiny", input="A number", max_output_tokens=30, temperature=0,
                                text={"format": {"type": "json_schema", "name": "num", "schema": schema}})
    assert set(json.loads(r.output_text)) == {"n"}


def test_reasoning_items(client, srv):
    grammar = "root ::= " + json.dumps("<think>sunny, I guess</think>It is sunny.")
    r = httpx.post(srv.url + "/v1/responses", json={"input": ASK, "max_output_tokens": 60, "grammar": grammar}).json()
    assert [o["type"] for o in r["output"]] == ["reasoning", "message"]
    assert r["output"][0]["content"][0]["text"] == "sunny, I guess" and r["output"][1]["content"][0]["text"] == "It is sunny."
    events = list(client.responses.create(model="tiny", input=ASK, max_output_tokens=60, stream=True,
                                          extra_body={"grammar": grammar}))
    thought = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert thought == "sunny, I guess" and events[-1].type == "response.completed"


@pytest.mark.parametrize("body, needle", [
    ({"input": []}, "'input'"),
    ({"input": "x", "previous_response_id": "resp_1"}, "keeps no responses"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "built-in tools"),
    ({"input": [{"type": "mystery"}]}, "'input.0' has type"),
    ({"input": "x", "text": {"format": {"type": "yaml"}}}, "'text.format.type'"),
])
def test_mistakes_are_400(srv, body, needle):
    r = httpx.post(srv.url + "/v1/responses", json=body)
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text


def test_a_reply_with_text_and_a_call_goes_back_as_input_on_an_alternating_template(tiny_model):
    s = LiveServer(["-m", str(tiny_model), "-t", "1", "-c", "8192", "--chat-template", "gemma"])
    s.start()
    try:
        r = httpx.post(s.url + "/v1/responses", json={"tools": [WEATHER], "max_output_tokens": 4, "input": [
            {"role": "user", "content": ASK},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": [{"type": "input_text", "text": "18 degrees"}]},
        ]})
        assert r.status_code == 200, r.text
    finally:
        s.stop()


def test_stream_message_items_start_empty(client):
    events = list(client.responses.create(model="tiny", input=ASK, max_output_tokens=4, temperature=0, stream=True))
    added = next(e for e in events if e.type == "response.output_item.added")
    assert added.item.type == "message" and added.item.content == []
    done = next(e for e in events if e.type == "response.output_item.done")
    assert done.item.status == "incomplete" and len(done.item.content) == 1  # cut by max_output_tokens
