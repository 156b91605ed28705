"""Requests that used to crash or hang the server (issue 15), against a server in a child process.

A segmentation fault in llama.cpp cannot be caught, so each of these must be refused (400)
before it gets there; the child process keeps serving afterwards. Before the fix the
schema and nesting cases killed the process and the lone surrogate was never answered.
"""

from __future__ import annotations

import json

import httpx
import pytest

from kubellama_server.testing.live import ServerProcess

TIMEOUT = 20


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    srv = ServerProcess(["-m", str(tiny_model), "-t", "1", "-c", "1024", "-np", "2"])
    srv.start(log_path=tmp_path_factory.mktemp("crash") / "server.log")
    yield srv
    srv.stop()


def assert_serving(srv) -> None:
    assert srv.proc.poll() is None, "the server process died:\n" + srv.log()[-3000:]
    r = httpx.post(srv.url + "/completion", json={"prompt": "Hello", "n_predict": 3, "temperature": 0}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["tokens_predicted"] == 3


def assert_refused(r: httpx.Response, fragment: str, status: int = 400) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and err["type"] == "invalid_request_error" and fragment in err["message"], err


def post(srv, path: str, body) -> httpx.Response:
    return httpx.post(srv.url + path, json=body, timeout=TIMEOUT)


@pytest.mark.parametrize("schema, fragment", [
    ({"type": "string", "maxLength": 200000}, "maxLength is 200000"),
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 100000}, "maxItems is 100000"),
    ({"type": "array", "items": {"type": "integer"}, "minItems": 10**9}, "minItems"),
    ({"type": "object", "properties": {"s": {"type": "string", "pattern": "^a{0,100000}$"}}}, "pattern repeats too much"),
    ({"type": "string", "minLength": 10**6}, "minLength is 1000000"),
])
def test_json_schema_that_would_nest_too_deep_is_refused(server, schema, fragment):
    assert_refused(post(server, "/completion", {"prompt": "JSON:", "n_predict": 2, "json_schema": schema}), fragment)
    assert_serving(server)


def test_response_format_schema_is_bounded_too(server):
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "maxLength": 100000}}}
    r = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                              "response_format": fmt})
    assert_refused(r, "maxLength is 100000")
    assert_serving(server)


def test_reasonable_schema_still_works(server):
    r = post(server, "/completion", {"prompt": "JSON:", "n_predict": 8, "temperature": 0,
                                     "json_schema": {"type": "string", "maxLength": 300}})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("grammar, fragment", [
    ("root ::= " + "(" * 100000 + '"a"' + ")" * 100000, "nests groups 100000 deep"),
    ('root ::= "a"{0,1000000000}', "repeats too much"),
    ("root ::= " + '"a" ' * 70000, "bytes"),
])
def test_deep_or_huge_grammar_is_refused(server, grammar, fragment):
    assert_refused(post(server, "/completion", {"prompt": "x", "n_predict": 2, "grammar": grammar}), fragment)
    assert_serving(server)


def test_lone_surrogate_is_a_400_not_a_hang(server):
    raw = b'{"prompt": "x", "n_predict": 2, "grammar": "root ::= \\"a\\" \\ud800"}'
    r = httpx.post(server.url + "/completion", content=raw, headers={"content-type": "application/json"}, timeout=TIMEOUT)
    assert_refused(r, "'grammar' holds a lone UTF-16 surrogate")
    r = httpx.post(server.url + "/v1/chat/completions", timeout=TIMEOUT, headers={"content-type": "application/json"},
                   content=b'{"messages": [{"role": "user", "content": "a\\udc00b"}]}')
    assert_refused(r, "'messages.0.content' holds a lone UTF-16 surrogate")
    assert_serving(server)


@pytest.mark.parametrize("raw", [
    b'{"prompt": "\xff\xfe", "n_predict": 2}',  # not UTF-8
    b'{"prompt": "\xed\xa0\x80", "n_predict": 2}',  # a surrogate encoded in UTF-8
])
def test_invalid_utf8_is_a_400(server, raw):
    r = httpx.post(server.url + "/completion", content=raw, headers={"content-type": "application/json"}, timeout=TIMEOUT)
    assert_refused(r, "not valid UTF-8")
    assert_serving(server)


def test_deeply_nested_body_is_a_400(server):
    raw = json.dumps({"prompt": "x"})[:-1] + ', "extra": ' + "[" * 5000 + "]" * 5000 + "}"
    r = httpx.post(server.url + "/completion", content=raw.encode(), headers={"content-type": "application/json"},
                   timeout=TIMEOUT)
    assert_refused(r, "nests arrays and objects deeper than")
    assert_serving(server)


@pytest.mark.parametrize("extra", [
    {"ignore_eos": True},  # the grammar is complete and only allows the end of text, which is banned
    {"logit_bias": [["yes", False]], "temperature": 0},  # every token the grammar allows is banned
    # post_sampling_probs samples through the chain by hand (sample_post): the same guard
    {"ignore_eos": True, "n_probs": 3, "post_sampling_probs": True},
    {"logit_bias": [["yes", False]], "n_probs": 3, "post_sampling_probs": True, "samplers": ["penalties", "dry", "xtc",
     "top_n_sigma", "temperature"], "dry_multiplier": 0.8, "repeat_penalty": 1.1, "top_n_sigma": 1.0},
])
def test_grammar_that_allows_no_token_ends_the_request(server, extra):
    """Found by the fuzzer: llama.cpp aborts when its grammar accepts a token it ruled out."""
    r = post(server, "/completion", {"prompt": "x", "n_predict": 10, "grammar": 'root ::= "yes"', **extra})
    assert r.status_code == 200, r.text
    assert r.json()["stop_type"] == "eos"
    assert_serving(server)
