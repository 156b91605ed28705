"""Every error path of the OpenAI-style endpoints: the {"error": {code, message, type}} shape and status."""

from __future__ import annotations

import httpx
import pytest

MSGS = [{"role": "user", "content": "hi"}]


def err(r: httpx.Response, status: int, type_: str, fragment: str = "") -> dict:
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert e["code"] == status and e["type"] == type_, e
    assert fragment in e["message"], e["message"]
    return e


def chat(srv, body, path="/v1/chat/completions"):
    return httpx.post(srv.url + path, json=body, timeout=60)


@pytest.mark.parametrize("body, fragment", [
    ({}, "'messages'"),
    ({"messages": []}, "'messages'"),
    ({"messages": "hi"}, "'messages'"),
    ({"messages": [{"content": "hi"}]}, "'messages.0.role'"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "'messages.0.role'"),
    ({"messages": [{"role": "user", "content": 5}]}, "'messages.0.content"),
    ({"messages": [{"role": "user"}]}, "'messages.0.content' is required"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "--mmproj"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "unknown type 'video'"),
    ({"messages": MSGS, "n": 0}, "'n'"),
    ({"messages": MSGS, "n": 2, "id_slot": 1}, "'id_slot'"),
    ({"messages": MSGS, "temperature": "hot"}, "'temperature'"),
    ({"messages": MSGS, "max_tokens": -5}, "'max_tokens'"),
    ({"messages": MSGS, "top_logprobs": 2}, "'top_logprobs' needs 'logprobs'"),
    ({"messages": MSGS, "logprobs": True, "top_logprobs": 50}, "'top_logprobs'"),
    ({"messages": MSGS, "stop": 3}, "'stop'"),
    ({"messages": MSGS, "logit_bias": {"1": "x"}}, "'logit_bias"),
    ({"messages": MSGS, "response_format": {"type": "yaml"}}, "'response_format.type'"),
    ({"messages": MSGS, "response_format": {"type": "json_schema"}}, "needs a 'json_schema'"),
    ({"messages": MSGS, "system_prompt": 3}, "'system_prompt' must be"),
    ({"messages": MSGS, "grammar": "root ::= nope"}, "grammar"),
])
def test_malformed_chat_requests(oai_server, body, fragment):
    err(chat(oai_server, body), 400, "invalid_request_error", fragment)


@pytest.mark.parametrize("schema, fragment", [
    ({"type": "frobnicate"}, "cannot be converted"),
    ({"type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}}, "cannot be converted"),
    ({"type": "integer", "maximum": 3}, "'maximum'"),
])
def test_unconvertible_response_schema_is_400(oai_server, schema, fragment):
    for stream in (False, True):
        body = {"messages": MSGS, "stream": stream, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
        err(chat(oai_server, body), 400, "invalid_request_error", fragment)


def test_chat_context_exceeded(oai_server):
    long = [{"role": "user", "content": "hello " * 800}]
    for stream in (False, True):
        e = err(chat(oai_server, {"messages": long, "stream": stream}), 400, "exceed_context_size_error", "context size")
        assert e["n_ctx"] == 512 and e["n_prompt_tokens"] > 512


@pytest.mark.parametrize("body, fragment", [
    ({}, "'prompt'"),
    ({"prompt": {"a": 1}}, "'prompt'"),
    ({"prompt": "x", "suffix": "y"}, "/infill"),
    ({"prompt": "x", "logprobs": 99}, "'logprobs'"),
    ({"prompt": [1, 2, 999999]}, "outside the vocabulary"),
])
def test_malformed_text_completions(oai_server, body, fragment):
    err(chat(oai_server, body, "/v1/completions"), 400, "invalid_request_error", fragment)


@pytest.mark.parametrize("path, body, fragment", [
    ("/v1/embeddings", {}, "'input'"),
    ("/v1/embeddings", {"input": []}, "'input'"),
    ("/v1/embeddings", {"input": ""}, "empty"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, "'encoding_format'"),
    ("/v1/embeddings", {"input": [1.5]}, "'input'"),
    ("/embedding", {}, "'content'"),
    ("/embedding", {"content": "x", "image_data": [{"data": "AAAA", "id": 1}]}, "--mmproj"),
    ("/completion", {"prompt": "x", "image_data": [{"data": "AAAA", "id": 1}]}, "--mmproj"),
])
def test_malformed_embedding_requests(oai_server, path, body, fragment):
    err(chat(oai_server, body, path), 400, "invalid_request_error", fragment)


def test_embedding_too_long(oai_server):
    e = err(chat(oai_server, {"input": "word " * 900}, "/v1/embeddings"), 400, "exceed_context_size_error", "too large")
    assert e["n_prompt_tokens"] > 512


def test_embeddings_need_the_flag(live_server):
    srv = live_server()
    err(chat(srv, {"input": "x"}, "/v1/embeddings"), 501, "not_supported_error", "--embedding")
    err(chat(srv, {"content": "x"}, "/embedding"), 501, "not_supported_error", "--embedding")


def test_malformed_json_and_methods(oai_server):
    r = httpx.post(oai_server.url + "/v1/chat/completions", content=b"{oops", headers={"content-type": "application/json"})
    err(r, 400, "invalid_request_error", "not valid JSON")
    r = httpx.post(oai_server.url + "/v1/chat/completions", content=b"[]")
    err(r, 400, "invalid_request_error", "JSON object")
    err(httpx.get(oai_server.url + "/v1/nothing-here"), 404, "not_found_error")
